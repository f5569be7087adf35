"""The relayed calls in a shared Redis: owners, deadlines, and claiming a
deadline that has passed with a lease.

Keys: ``navai:call:{key}`` holds the owner (it expires when no call could
still be running), ``navai:call-deadlines`` is a sorted set of keys by the
Unix time they must end. A worker claims due keys with one script that
moves each one's score to the end of a lease (now + the hangup's own bound
and a margin), so that exactly one worker ends each call, and a worker that
dies mid-hangup leaves a lease that runs out: another worker then claims
the call again. A successful end removes the key (``ForgetCall``). A key
whose owner has expired (the call started longer ago than any call lasts)
is dropped, not claimed, so a call that can never be hung up is not
retried forever.

Everything here runs on the calls' store's own event loop
(:mod:`navai_mw.runtime.call_store`), through one bounded connection pool.
"""

from __future__ import annotations

import time
from typing import Any, Final

from ..core.effects import CallOwned, ForgetCall, RememberCall
from .aio import keep_inherited

__all__ = [
    "DEADLINES",
    "MAX_CONNECTIONS",
    "OWNER_TTL_SECONDS",
    "RedisCalls",
    "owner_key",
    "owner_mark",
]

DEADLINES: Final = "navai:call-deadlines"
_OWNER_PREFIX: Final = "navai:call:"
# A Realtime session lasts an hour at most: past two, nothing is left to end.
OWNER_TTL_SECONDS: Final = 2 * 3600
# At most this many connections to Redis per store (per worker); a store
# operation beyond them waits for one, within the store's timeout.
MAX_CONNECTIONS: Final = 32
# A connection to Redis answers within this, or the operation fails.
SOCKET_SECONDS: Final = 2.0


def redis_client(url: str, name: str, max_connections: int) -> Any:
    """A Redis client of the running loop, as navai_mw's stores keep one:
    a bounded pool (a caller waits for a connection rather than opening
    more), every wait, read and connect bounded by :data:`SOCKET_SECONDS`,
    and ``name`` shown by ``CLIENT LIST``."""
    import redis.asyncio

    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=SOCKET_SECONDS,
        socket_timeout=SOCKET_SECONDS,
        socket_connect_timeout=SOCKET_SECONDS,
        client_name=name,
    )
    return redis.asyncio.Redis.from_pool(pool)


# Claims at most ARGV[3] keys due by ARGV[1] (now): each one whose owner is
# still known gets a lease until ARGV[2]; one whose owner expired is dropped.
_CLAIM: Final = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local claimed = {}
for _, key in ipairs(due) do
  if redis.call('EXISTS', ARGV[4] .. key) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[2], key)
    claimed[#claimed + 1] = key
  else
    redis.call('ZREM', KEYS[1], key)
  end
end
return claimed
"""


def owner_key(key: str) -> str:
    return f"{_OWNER_PREFIX}{key}"


def owner_mark(owner: str | None) -> str:
    """How an owner is stored: ``id:<identity>``, or ``-`` for nobody (no guard)."""
    return "-" if owner is None else f"id:{owner}"


class RedisCalls:
    """The calls' owners and deadlines in Redis, for one store's loop.

    The client is made on first use, on the loop that uses it (the store's
    own), with at most :data:`MAX_CONNECTIONS` connections.
    """

    def __init__(self, url: str, *, lease_seconds: float) -> None:
        self.url = url
        self.lease_seconds = lease_seconds
        self._client: Any = None
        self._claim: Any = None

    def _redis(self) -> Any:
        if self._client is None:
            self._client = redis_client(self.url, "navai-calls", MAX_CONNECTIONS)
            self._claim = self._client.register_script(_CLAIM)
        return self._client

    async def perform(self, effect: RememberCall | CallOwned | ForgetCall) -> bool | None:
        """What the effect asks: remember, answer whether owned, or forget."""
        client = self._redis()
        if isinstance(effect, CallOwned):
            stored = await client.get(owner_key(effect.key))
            return stored is not None and bool(stored.decode() == owner_mark(effect.owner))
        async with client.pipeline() as pipe:
            if isinstance(effect, RememberCall):
                mark = owner_mark(effect.owner)
                pipe.set(owner_key(effect.key), mark, ex=OWNER_TTL_SECONDS)
                if effect.deadline is not None:
                    pipe.zadd(DEADLINES, {effect.key: time.time() + effect.deadline})
            else:
                pipe.delete(owner_key(effect.key))
                pipe.zrem(DEADLINES, effect.key)
            await pipe.execute()
        return None

    async def claim(self, limit: int) -> list[str]:
        """Up to ``limit`` keys whose deadline has passed, each now leased to
        this worker (no other worker gets it until the lease runs out)."""
        self._redis()
        now = time.time()
        claimed = await self._claim(
            keys=[DEADLINES], args=[repr(now), repr(now + self.lease_seconds), limit, _OWNER_PREFIX]
        )
        return [raw.decode() for raw in claimed]

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def forget_client(self, *, inherited: bool = False) -> None:
        """The next use makes a client: this one's loop stopped, or (with
        ``inherited``, in a forked child) it is the parent's, kept unclosed."""
        if inherited:
            keep_inherited(self._client)
        self._client = self._claim = None
