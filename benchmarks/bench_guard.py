"""The guard's cost: minting under uvicorn with and without ``authorize=`` and ``rate_limit=``.

Three navai_mw processes under uvicorn (asyncio loop, h11, one worker, the
default transport), all reaching one fake upstream, as in the minting
benchmark; wrk (one thread) POSTs the front end's JSON with 50 connections.

* ``unguarded``: no guard at all;
* ``jwt+redis``: ``jwt_bearer`` against a JWKS that a thread of this process
  serves on loopback (an RSA key generated for the run; wrk sends a valid
  RS256 token), and ``rate_limit`` counted in a real ``redis-server``
  started for the run (loopback, nothing persisted) and stopped at the end;
* ``memory``: ``rate_limit`` counted on ``memory://``.

The limits are far above what wrk can reach: they never refuse, so every
answer is a 200 and the guarded arms pay the counting, not the refusals.
Before the runs each server is asked once, to check that the guard is on
(and off) as meant; that first request also fetches the JWKS.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import importlib.util
import json
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from ._apps import JWT_AUDIENCE, JWT_ISSUER
from ._harness import (
    MINT_PATH,
    REQUEST_BODY,
    Context,
    Ratio,
    Section,
    Target,
    fmt_ms,
    fmt_rate,
    interleave,
    median,
)
from ._procs import Server, Servers, WrkArm, WrkResult, have_wrk, run_wrk
from ._redis import RedisServer, redis_executable

CONNECTIONS = 50
ARMS = ("unguarded", "jwt+redis", "memory")
LABELS = {
    "unguarded": "navai_mw, no guard",
    "jwt+redis": "navai_mw, jwt_bearer + rate_limit on Redis",
    "memory": "navai_mw, rate_limit on memory://",
}
# Far above what one uvicorn worker mints: never refuses.
RATE_LIMIT = "100000000/minute"
MIN_RATIO = {"jwt+redis": 0.8, "memory": 0.95}
# Rounds of a full run: the targets are ratios a few percent from 1, and one
# wrk run on this kind of machine moves by as much; more pairs narrow the median.
FULL_ROUNDS = 9

JWKS_PATH = "/.well-known/jwks.json"
KEY_ID = "bench-key-1"
SUBJECT = "bench-user"
TOKEN_LIFETIME = 24 * 3600  # seconds; longer than any run
# The packages the guarded arms need (the ``guard`` extra).
GUARD_MODULES = ("jwt", "cryptography", "limits", "redis")


def run(ctx: Context) -> Section:
    profile = ctx.profile
    rounds = FULL_ROUNDS if profile.name == "full" else profile.rounds
    section = Section(
        key="guard",
        title="The guard under uvicorn, driven by wrk",
        intro=(
            f"`POST {MINT_PATH}` with the front end's JSON, wrk (1 thread, {CONNECTIONS} "
            f"connections) for {profile.wrk_seconds} s per run, {rounds} interleaved "
            "rounds; navai_mw with its default transport, each arm in its own uvicorn process, "
            "the fake upstream in another. *jwt+redis* verifies an RS256 token (`jwt_bearer`, "
            "JWKS on loopback) and counts the request in a local `redis-server`; *memory* "
            f"counts it on `memory://`. The limits ({RATE_LIMIT}) never refuse. Latencies are "
            "wrk's, in milliseconds."
        ),
        headers=[
            "arm",
            "req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "errors",
            "server CPU us/req",
            "redis CPU us/req",
        ],
    )
    missing = _missing()
    if missing:
        section.notes.append(f"skipped: {missing}")
        return section

    jwks, token = _signing_material()
    with contextlib.ExitStack() as stack:
        jwks_server = stack.enter_context(JwksServer(jwks))
        redis = stack.enter_context(RedisServer(log_dir=ctx.workdir))
        servers = stack.enter_context(Servers())
        upstream = servers.start("upstream", logdir=ctx.workdir)
        servers.wait_ready()
        base = f"{upstream.url}/v1"
        guard_args = {
            "unguarded": (),
            "jwt+redis": (
                "--jwks",
                jwks_server.url,
                "--rate-limit",
                RATE_LIMIT,
                "--rate-limit-storage",
                redis.url,
            ),
            "memory": ("--rate-limit", RATE_LIMIT, "--rate-limit-storage", "memory://"),
        }
        apps = {
            arm: servers.start(
                "navai",
                "--upstream",
                base,
                *guard_args[arm],
                logdir=ctx.workdir,
                name=f"guard-{arm.replace('+', '-')}",
            )
            for arm in ARMS
        }
        servers.wait_ready()

        authorization = f"Bearer {token}"
        targets = {
            arm: WrkArm(
                f"{apps[arm].url}{MINT_PATH}",
                REQUEST_BODY,
                (authorization,) if arm == "jwt+redis" else (),
            )
            for arm in ARMS
        }
        _check_guards(apps["unguarded"].url, apps["jwt+redis"].url, apps["memory"].url, token)
        if profile.name == "full":
            # One unrecorded run each: imports, pools and caches warm up.
            for target in targets.values():
                run_wrk(
                    target.url,
                    connections=CONNECTIONS,
                    seconds=1,
                    body=target.body,
                    headers=target.headers,
                )
        before = redis.stats()
        runs = _rounds(targets, apps, redis, ctx, rounds)
        after = redis.stats()
        section.data["jwks_fetches"] = jwks_server.fetches
        section.data["redis_version"] = redis.version

    _report(section, runs)
    _redis_notes(section, before, after, [run.wrk for run in runs["jwt+redis"]], len(token))
    return section


@dataclass(frozen=True)
class GuardRun:
    """One wrk run of an arm, with the CPU seconds its server and redis-server used."""

    wrk: WrkResult
    app_cpu: float
    redis_cpu: float

    def per_request(self, seconds: float) -> float:
        """Microseconds per request wrk counted (the few left in flight at
        the end make it slightly high, for every arm alike)."""
        return seconds / self.wrk.requests * 1e6 if self.wrk.requests else math.nan


def _cpu_seconds(pid: int | None) -> float:
    """User and system CPU time of a process and all its threads (Linux's
    /proc); NaN where it cannot be read."""
    if pid is None:
        return math.nan
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return math.nan


def _rounds(
    targets: dict[str, WrkArm],
    apps: dict[str, Server],
    redis: RedisServer,
    ctx: Context,
    rounds: int,
) -> dict[str, list[GuardRun]]:
    """wrk each arm once per round, interleaved, reading CPU times around each run."""
    profile = ctx.profile
    runs: dict[str, list[GuardRun]] = {arm: [] for arm in targets}
    for index, arm in interleave(list(targets), rounds):
        target = targets[arm]
        pid = apps[arm].proc.pid
        app_before, redis_before = _cpu_seconds(pid), _cpu_seconds(redis.pid)
        result = run_wrk(
            target.url,
            connections=CONNECTIONS,
            seconds=profile.wrk_seconds,
            body=target.body,
            headers=target.headers,
        )
        run = GuardRun(
            result, _cpu_seconds(pid) - app_before, _cpu_seconds(redis.pid) - redis_before
        )
        runs[arm].append(run)
        ctx.log(
            f"  round {index + 1}: {arm:10} c={CONNECTIONS} {result.rate:8.0f} req/s "
            f"p50 {result.p50 * 1e3:7.2f} ms  p99 {result.p99 * 1e3:7.2f} ms  "
            f"server CPU {run.per_request(run.app_cpu):5.0f} us/req"
            + (f"  ERRORS {result.errors}" if result.errors else "")
        )
    return runs


def _missing() -> str | None:
    """Why the benchmark cannot run here, or None."""
    if not have_wrk():
        return "wrk is not installed (apt-get install wrk)"
    if redis_executable() is None:
        return "redis-server is not installed (apt-get install redis-server)"
    absent = [name for name in GUARD_MODULES if importlib.util.find_spec(name) is None]
    if absent:
        return f"{', '.join(absent)} not installed (pip install -e '.[bench]')"
    return None


def _report(section: Section, runs: dict[str, list[GuardRun]]) -> None:
    for arm in ARMS:
        wrk = [run.wrk for run in runs[arm]]
        rates = [r.rate for r in wrk]
        errors = sum(r.errors for r in wrk)
        app_us = [run.per_request(run.app_cpu) for run in runs[arm]]
        redis_us = [run.per_request(run.redis_cpu) for run in runs[arm]]
        section.rows.append(
            [
                LABELS[arm],
                fmt_rate(median(rates)),
                fmt_ms(median([r.p50 for r in wrk])),
                fmt_ms(median([r.p90 for r in wrk])),
                fmt_ms(median([r.p99 for r in wrk])),
                str(errors),
                fmt_rate(median(app_us)),
                fmt_rate(median(redis_us)) if arm == "jwt+redis" else "-",
            ]
        )
        section.data[arm] = {
            "rate": rates,
            "p50": [r.p50 for r in wrk],
            "p90": [r.p90 for r in wrk],
            "p99": [r.p99 for r in wrk],
            "errors": errors,
            "server_cpu_us": app_us,
            "redis_cpu_us": redis_us,
        }
    errors = sum(run.wrk.errors for arm_runs in runs.values() for run in arm_runs)
    if errors:
        section.notes.append(
            f"{errors} errors (a refusal would be one): the rates count only the answered requests"
        )
    baseline = [run.wrk.rate for run in runs["unguarded"]]
    for arm, minimum in MIN_RATIO.items():
        ratio = Ratio.of([run.wrk.rate for run in runs[arm]], baseline)
        section.ratios.append((f"{arm} / unguarded, req/s at {CONNECTIONS} connections", ratio))
        section.targets.append(
            Target(
                f"{LABELS[arm]}: req/s at {CONNECTIONS} connections >= {minimum:g}x no guard",
                str(ratio),
                ratio.median >= minimum,
            )
        )
    baseline_cpu = [run.per_request(run.app_cpu) for run in runs["unguarded"]]
    if not any(math.isnan(v) for v in baseline_cpu):
        for arm in MIN_RATIO:
            cpu = [run.per_request(run.app_cpu) for run in runs[arm]]
            section.ratios.append(
                (f"{arm} / unguarded, server CPU per request", Ratio.of(cpu, baseline_cpu))
            )
        section.notes.append(
            "*server CPU* is the CPU time (user and system, every thread) of the arm's uvicorn "
            "process per request answered, from /proc; *redis CPU* the same for redis-server. "
            "Less moved by other load on the machine than req/s, it shows what the guard costs."
        )


SCRIPT_COMMANDS = ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro")


def _redis_notes(
    section: Section,
    before: dict[str, int],
    after: dict[str, int],
    jwt_runs: list[WrkResult],
    token_chars: int,
) -> None:
    requests = sum(r.requests for r in jwt_runs)
    if requests:
        calls = {
            name: (after.get(name, 0) - before.get(name, 0)) / requests
            for name in after
            if name != "total" and after.get(name, 0) > before.get(name, 0)
        }
        sent = {name: per for name, per in calls.items() if name in SCRIPT_COMMANDS}
        ran = {name: per for name, per in calls.items() if name not in SCRIPT_COMMANDS}

        def spell(counts: dict[str, float]) -> str:
            return ", ".join(f"{name} {per:.2f}" for name, per in sorted(counts.items()))

        scripts = (
            f"{spell(sent)} (under load several go out in one write and come back in one "
            "read); the commands those scripts ran: "
        )
        section.notes.append(
            "Redis calls per *jwt+redis* request (per answer wrk counted, so slightly high): "
            + (scripts if sent else "")
            + f"{spell(ran) or 'none'}. redis-server {section.data['redis_version']} runs on "
            "the same cores as the servers and wrk."
        )
    section.notes.append(
        f"The JWKS was fetched {section.data['jwks_fetches']} time(s) over the run; "
        f"the token is {token_chars} characters."
    )


# -- the checks before the runs -------------------------------------------------------


def _post(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    host, _, port = url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        sent = {"Content-Type": "application/json", **headers}
        conn.request("POST", MINT_PATH, body=REQUEST_BODY, headers=sent)
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def _check_guards(unguarded: str, jwt_redis: str, memory: str, token: str) -> None:
    """Each arm guards as meant: else the ratios would compare the wrong things."""
    bearer = {"Authorization": f"Bearer {token}"}
    checks = [
        ("unguarded", unguarded, {}, 200, False),
        ("jwt+redis without a token", jwt_redis, {}, 401, False),
        ("jwt+redis", jwt_redis, bearer, 200, True),
        ("memory", memory, {}, 200, True),
    ]
    for name, url, headers, status, limited in checks:
        got, answer_headers = _post(url, headers)
        if got != status or ("ratelimit" in answer_headers) != limited:
            raise RuntimeError(
                f"{name}: answered {got} {'with' if 'ratelimit' in answer_headers else 'without'}"
                f" a RateLimit header; expected {status} "
                f"{'with' if limited else 'without'} one (NAVAI_* in the environment?)"
            )


# -- the token and its JWKS -----------------------------------------------------------


def _signing_material() -> tuple[bytes, str]:
    """A JWKS holding one fresh RSA public key, and a token signed with it."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=KEY_ID, use="sig", alg="RS256")
    now = int(time.time())
    claims = {
        "sub": SUBJECT,
        "aud": JWT_AUDIENCE,
        "iss": JWT_ISSUER,
        "iat": now,
        "exp": now + TOKEN_LIFETIME,
    }
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": KEY_ID})
    return json.dumps({"keys": [jwk]}).encode(), token


class JwksServer:
    """Serves ``GET /.well-known/jwks.json`` on loopback from a thread, and
    counts the fetches."""

    def __init__(self, jwks: bytes) -> None:
        owner = self
        self.fetches = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != JWKS_PATH:
                    self.send_error(404)
                    return
                owner.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(jwks)))
                self.end_headers()
                self.wfile.write(jwks)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}{JWKS_PATH}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)
