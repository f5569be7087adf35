"""The sans-IO core, per request: build the upstream request, parse the answer.

Three arms, timed in-process with garbage collection paused (as ``timeit``
does):

* the peer: what one would write by hand, a dict, ``json.dumps`` out and
  ``json.loads`` back, no validation beyond reading two fields;
* navai_mw's core: ``build_upstream_request`` (structuring and validating
  the front end's fields, the key policy, the instructions) and
  ``parse_upstream_response``;
* navai_mw's whole sans-IO endpoint, for scale: headers checked, body bytes
  parsed (duplicate keys, depth), the exchange generator driven with a
  canned answer, the JSON answer made.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from typing import Any

from navai_mw.core.effects import Outcome
from navai_mw.endpoint.answers import Answer
from navai_mw.endpoint.endpoint import Endpoint
from navai_mw.upstreams.openai_secrets import build_upstream_request, parse_upstream_response

from ._apps import options
from ._harness import (
    BENCH_KEY,
    REQUEST_BODY,
    Context,
    Ratio,
    Section,
    Target,
    calibrate,
    interleave,
    median,
)
from ._inproc import CANNED_UPSTREAM_BODY, CANNED_UPSTREAM_RESPONSE

ARMS = ("hand", "core", "endpoint")
LABELS = {
    "hand": "hand-written dict + json (peer)",
    "core": "navai_mw build_upstream_request + parse_upstream_response",
    "endpoint": "navai_mw sans-IO endpoint, whole request (for scale)",
}
BASE_URL = "http://127.0.0.1:9/v1"
TARGET_MICROSECONDS = 20.0


def _hand_build(data: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
    lines = [(data.get("instructions") or "You are a helpful assistant.").strip()]
    if data.get("language"):
        lines.append(f"Always reply in {data['language']}.")
    if data.get("voiceAccent"):
        lines.append(f"Use a {data['voiceAccent']} accent while speaking.")
    if data.get("voiceTone"):
        lines.append(f"Use a {data['voiceTone']} tone while speaking.")
    body = {
        "expires_after": {"anchor": "created_at", "seconds": 600},
        "session": {
            "type": "realtime",
            "model": data.get("model") or "gpt-realtime",
            "instructions": "\n".join(lines),
            "audio": {"output": {"voice": data.get("voice") or "marin"}},
        },
    }
    headers = {"Authorization": f"Bearer {BENCH_KEY}", "Content-Type": "application/json"}
    return f"{BASE_URL}/realtime/client_secrets", headers, json.dumps(body).encode()


def _hand_parse(status: int, body: bytes) -> tuple[str, int]:
    if status != 200:
        raise RuntimeError(body.decode())
    payload = json.loads(body)
    return payload["value"], payload["expires_at"]


def make_calls() -> dict[str, Callable[[], object]]:
    """One request's worth of work, per arm."""
    opts = options(BASE_URL)
    data = json.loads(REQUEST_BODY)
    endpoint = Endpoint(opts)
    headers = {
        "content-type": "application/json",
        "content-length": str(len(REQUEST_BODY)),
    }
    outcome = Outcome(CANNED_UPSTREAM_RESPONSE)

    def hand() -> object:
        _hand_build(data)
        return _hand_parse(200, CANNED_UPSTREAM_BODY)

    def core() -> object:
        build_upstream_request(opts, data)
        return parse_upstream_response(CANNED_UPSTREAM_RESPONSE, secret=BENCH_KEY)

    def whole() -> object:
        wanted = endpoint.begin("POST", headers)
        assert not isinstance(wanted, Answer)
        steps = endpoint.finish(wanted, REQUEST_BODY)
        next(steps)
        try:
            steps.send(outcome)
        except StopIteration as done:
            return done.value
        raise AssertionError("the endpoint asked for a second attempt")

    return {"hand": hand, "core": core, "endpoint": whole}


def _sampler(fn: Callable[[], object]) -> Callable[[int], float]:
    def sample(n: int) -> float:
        gc.collect()
        gc.disable()
        try:
            began = time.perf_counter()
            for _ in range(n):
                fn()
            return time.perf_counter() - began
        finally:
            gc.enable()

    return sample


def run(ctx: Context) -> Section:
    calls = make_calls()
    samplers = {arm: _sampler(fn) for arm, fn in calls.items()}
    counts = {arm: calibrate(s, ctx.profile.inproc_seconds) for arm, s in samplers.items()}
    per_call: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for _, arm in interleave(ARMS, ctx.profile.rounds):
        per_call[arm].append(samplers[arm](counts[arm]) / counts[arm] * 1e6)

    section = Section(
        key="core",
        title="Sans-IO core, per request",
        intro=(
            "Build the upstream request from the front end's fields and parse OpenAI's answer, "
            "timed in-process (microseconds per request, garbage collector paused)."
        ),
        headers=["arm", "us / request", "fastest round", "slowest round"],
    )
    for arm in ARMS:
        values = per_call[arm]
        section.rows.append(
            [LABELS[arm], f"{median(values):.2f}", f"{min(values):.2f}", f"{max(values):.2f}"]
        )
        section.data[arm] = values
    section.ratios.append(
        ("navai_mw core / hand-written", Ratio.of(per_call["core"], per_call["hand"]))
    )
    section.ratios.append(
        ("navai_mw whole endpoint / hand-written", Ratio.of(per_call["endpoint"], per_call["hand"]))
    )
    values = per_call["core"]
    core = median(values)
    section.targets.append(
        Target(
            goal=f"core build + parse <= {TARGET_MICROSECONDS:.0f} us",
            measured=f"{core:.2f} us (range {min(values):.2f}-{max(values):.2f})",
            met=core <= TARGET_MICROSECONDS,
        )
    )
    return section
