"""What OpenAI's webhooks leave behind: the deliveries already received (so
that a redelivery is done once), and the safety identifiers OpenAI blocked
(so that their callers are refused), in this process (``memory://``, or no
storage) or in a shared Redis (the guard's storage), where every worker
sees them.

Keys: ``navai:webhook:{webhook-id}`` (``SET NX`` with the dedup's expiry:
the first worker to set it does the work, every other sees a redelivery),
and ``navai:blocked:{identifier}`` (JSON: its category and when it was
blocked; an expiry when blocks are given one). An identifier is a keyed
hash of a caller's identity: nothing here holds an identity in clear.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
from typing import Any, Final

import attrs

from ..core.effects import BlockIdentifier, FirstDelivery, ForgetDelivery, IsBlocked
from ..core.storage import redis_client_url, shown_url
from .aio import _wait, attempt_deadline, keep_inherited
from .call_deadlines import redis_client
from .call_store import CallStore

__all__ = [
    "BlockedIdentifier",
    "WebhookKeeper",
    "blocked_key",
    "delivery_key",
]

logger = logging.getLogger("navai_mw")

_DELIVERY_PREFIX: Final = "navai:webhook:"
_BLOCKED_PREFIX: Final = "navai:blocked:"
# Deliveries one process remembers at most (the oldest forgotten first): far
# above what OpenAI sends one project in a dedup window.
MAX_REMEMBERED_DELIVERIES: Final = 100_000
MAX_CONNECTIONS: Final = 8
# A store operation, Redis's answer included, ends within this.
STORE_TIMEOUT_SECONDS: Final = 2.0

WebhookEffect = FirstDelivery | ForgetDelivery | BlockIdentifier | IsBlocked


def delivery_key(key: str) -> str:
    return f"{_DELIVERY_PREFIX}{key}"


def blocked_key(identifier: str) -> str:
    return f"{_BLOCKED_PREFIX}{identifier}"


@attrs.frozen(kw_only=True)
class BlockedIdentifier:
    """A safety identifier OpenAI blocked: the identifier (a keyed hash of
    the caller's identity, as navai_mw sent it), the category OpenAI gave,
    when it was blocked, and until when (UNIX seconds; None: until it is
    unblocked)."""

    identifier: str
    category: str
    blocked_at: float
    until: float | None = None


def _record(effect: BlockIdentifier) -> BlockedIdentifier:
    until = None if effect.seconds is None else effect.at + effect.seconds
    return BlockedIdentifier(
        identifier=effect.identifier, category=effect.category, blocked_at=effect.at, until=until
    )


def _encoded(record: BlockedIdentifier) -> str:
    return json.dumps({"category": record.category, "at": record.blocked_at, "until": record.until})


def _decoded(identifier: str, raw: bytes | str | None) -> BlockedIdentifier | None:
    try:
        fields: Any = json.loads(raw) if raw is not None else None
        return BlockedIdentifier(
            identifier=identifier,
            category=str(fields["category"]),
            blocked_at=float(fields["at"]),
            until=None if fields.get("until") is None else float(fields["until"]),
        )
    except (ValueError, TypeError, KeyError):
        return None  # a key somebody else wrote: not one of ours


class MemoryWebhooks:
    """Deliveries and blocks in this process, under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deliveries: dict[str, float] = {}  # key -> when it is forgotten
        self._blocked: dict[str, BlockedIdentifier] = {}

    def first(self, effect: FirstDelivery, now: float) -> bool:
        with self._lock:
            expires = self._deliveries.get(effect.key)
            if expires is not None and expires > now:
                return False
            if len(self._deliveries) >= MAX_REMEMBERED_DELIVERIES:
                self._prune(now)
            self._deliveries[effect.key] = now + effect.seconds
            return True

    def _prune(self, now: float) -> None:
        for key in [key for key, expires in self._deliveries.items() if expires <= now]:
            del self._deliveries[key]
        while len(self._deliveries) >= MAX_REMEMBERED_DELIVERIES:
            del self._deliveries[next(iter(self._deliveries))]

    def forget(self, key: str) -> None:
        with self._lock:
            self._deliveries.pop(key, None)

    def block(self, record: BlockedIdentifier) -> None:
        with self._lock:
            self._blocked[record.identifier] = record

    def is_blocked(self, identifier: str, now: float) -> bool:
        with self._lock:
            record = self._blocked.get(identifier)
            if record is not None and record.until is not None and record.until <= now:
                del self._blocked[identifier]
                return False
            return record is not None

    def blocked(self, now: float) -> list[BlockedIdentifier]:
        with self._lock:
            return [
                record
                for record in self._blocked.values()
                if record.until is None or record.until > now
            ]

    def unblock(self, identifier: str) -> bool:
        with self._lock:
            return self._blocked.pop(identifier, None) is not None


class RedisWebhooks:
    """Deliveries and blocks in a shared Redis (see the module docstring).
    Its client belongs to the loop that first used it (the calls' store's)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: Any = None

    def _redis(self) -> Any:
        if self._client is None:
            self._client = redis_client(self.url, "navai-webhooks", MAX_CONNECTIONS)
        return self._client

    def forget_client(self, *, inherited: bool = False) -> None:
        """As :meth:`RedisCalls.forget_client`."""
        if inherited:
            keep_inherited(self._client)
        self._client = None

    async def perform(self, effect: WebhookEffect) -> bool | None:
        client = self._redis()
        if isinstance(effect, IsBlocked):
            return bool(await client.exists(blocked_key(effect.identifier)))
        if isinstance(effect, FirstDelivery):
            seconds = max(1, int(effect.seconds))
            return bool(await client.set(delivery_key(effect.key), "1", nx=True, ex=seconds))
        if isinstance(effect, ForgetDelivery):
            await client.delete(delivery_key(effect.key))
            return None
        record = _record(effect)
        expiry = None if effect.seconds is None else max(1, int(effect.seconds))
        await client.set(blocked_key(effect.identifier), _encoded(record), ex=expiry)
        return True

    async def blocked(self) -> list[BlockedIdentifier]:
        client = self._redis()
        keys = [key async for key in client.scan_iter(match=f"{_BLOCKED_PREFIX}*", count=500)]
        found: list[BlockedIdentifier] = []
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            for key, raw in zip(chunk, await client.mget(chunk), strict=True):
                name = key.decode() if isinstance(key, bytes) else str(key)
                record = _decoded(name.removeprefix(_BLOCKED_PREFIX), raw)
                if record is not None:
                    found.append(record)
        return found

    async def unblock(self, identifier: str) -> bool:
        return bool(await self._redis().delete(blocked_key(identifier)))

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


class WebhookKeeper:
    """The deliveries and blocks of one handler, in memory or in a shared
    Redis (the guard's storage): the effects performed, from either shell,
    and the app's own reading and unblocking (:mod:`navai_mw.safety`).
    Redis is used on the calls' store's loop (its client belongs there)."""

    def __init__(self, uri: str | None, store: CallStore) -> None:
        shared = redis_client_url(uri)
        self._store = store
        self.where = shown_url(uri) if uri is not None else "memory://"
        self._memory = MemoryWebhooks() if shared is None else None
        self._redis = None if shared is None else RedisWebhooks(shared)
        if self._redis is not None:
            # The parent's client belongs to a loop a forked child does not have.
            store.after_fork(functools.partial(self._redis.forget_client, inherited=True))

    def _in_memory(self, effect: WebhookEffect) -> bool | None:
        memory = self._memory
        assert memory is not None
        now = time.time()
        if isinstance(effect, FirstDelivery):
            return memory.first(effect, now)
        if isinstance(effect, ForgetDelivery):
            memory.forget(effect.key)
            return None
        if isinstance(effect, IsBlocked):
            return memory.is_blocked(effect.identifier, now)
        memory.block(_record(effect))
        return True

    def perform_sync(self, effect: WebhookEffect) -> bool | None:
        """The effect performed, blocking (the WSGI shell)."""
        if self._memory is not None:
            return self._in_memory(effect)
        assert self._redis is not None
        future = self._store.submit(self._redis.perform(effect))
        try:
            return future.result(STORE_TIMEOUT_SECONDS)
        except Exception as exc:
            future.cancel()
            return self._failed(effect, exc)

    async def perform(self, effect: WebhookEffect) -> bool | None:
        """The effect performed, awaited (the ASGI shell)."""
        if self._memory is not None:
            return self._in_memory(effect)
        assert self._redis is not None
        try:
            if self._store.on_store_loop():
                async with attempt_deadline(STORE_TIMEOUT_SECONDS):
                    return await self._redis.perform(effect)
            future = self._store.submit(self._redis.perform(effect))
            if not await _wait(future, STORE_TIMEOUT_SECONDS):
                future.cancel()
                raise TimeoutError("the webhooks' store did not answer in time")
            return future.result()
        except Exception as exc:
            return self._failed(effect, exc)

    def _failed(self, effect: WebhookEffect, exc: BaseException) -> bool | None:
        """Unanswered (None): the core decides what a store that is down
        means (a webhook answered 503, which OpenAI delivers again)."""
        logger.warning(
            "navai_mw: the webhooks' store %s failed (%s): %s",
            self.where,
            type(effect).__name__,
            type(exc).__name__,
        )
        return None

    # -- the app's own: navai_mw.safety ------------------------------------------------------

    def block_sync(self, effect: BlockIdentifier) -> None:
        """Block an identifier (blocking); raises when the store is down."""
        if self.perform_sync(effect) is None:
            raise ConnectionError("the webhooks' store could not be reached")

    async def block(self, effect: BlockIdentifier) -> None:
        """:meth:`block_sync`, awaited."""
        if await self.perform(effect) is None:
            raise ConnectionError("the webhooks' store could not be reached")

    def blocked_sync(self) -> list[BlockedIdentifier]:
        """Every blocked identifier (blocking)."""
        if self._memory is not None:
            return self._memory.blocked(time.time())
        assert self._redis is not None
        future = self._store.submit(self._redis.blocked())
        return future.result(STORE_TIMEOUT_SECONDS * 5)

    async def blocked(self) -> list[BlockedIdentifier]:
        """Every blocked identifier."""
        if self._memory is not None:
            return self._memory.blocked(time.time())
        assert self._redis is not None
        found: list[BlockedIdentifier] = await self._on_store(self._redis.blocked())
        return found

    def unblock_sync(self, identifier: str) -> bool:
        """Unblock ``identifier`` (blocking): whether it was blocked."""
        if self._memory is not None:
            return self._memory.unblock(identifier)
        assert self._redis is not None
        future = self._store.submit(self._redis.unblock(identifier))
        return future.result(STORE_TIMEOUT_SECONDS)

    async def unblock(self, identifier: str) -> bool:
        """:meth:`unblock_sync`, awaited."""
        if self._memory is not None:
            return self._memory.unblock(identifier)
        assert self._redis is not None
        unblocked: bool = await self._on_store(self._redis.unblock(identifier))
        return unblocked

    async def _on_store(self, work: Any) -> Any:
        if self._store.on_store_loop():
            return await work
        future = self._store.submit(work)
        if not await _wait(future, STORE_TIMEOUT_SECONDS * 5):
            future.cancel()
            raise TimeoutError("the webhooks' store did not answer in time")
        return future.result()

    def close(self) -> None:
        """Close the Redis client, on the calls' store's loop (blocking)."""
        if self._redis is None or self._store.running_loop() is None:
            return
        with contextlib.suppress(Exception):
            self._store.submit(self._redis.aclose()).result(STORE_TIMEOUT_SECONDS)

    async def aclose(self) -> None:
        """:meth:`close`, awaited."""
        if self._redis is None or self._store.running_loop() is None:
            return
        if self._store.on_store_loop():
            await self._redis.aclose()
            return
        with contextlib.suppress(Exception):
            await _wait(self._store.submit(self._redis.aclose()), STORE_TIMEOUT_SECONDS)
