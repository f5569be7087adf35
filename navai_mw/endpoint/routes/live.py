"""``POST /navai/live/sessions``: the browser's SDP offer relayed to GPT-Live
with the server's session and key; the SDP answer back, and where to end
the session (``Location``)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from ...upstreams.live import build_live_session, relay_live
from ...upstreams.mint import credential_for
from ..call_sideband import with_server_side
from ..route import Call, Reply, Settings
from .relay_steps import check_offer, relay_and_answer, relay_request


def handle(settings: Settings, call: Call) -> Generator[Any, Any, Reply]:
    opts = settings.opts
    offer = check_offer(call.raw)
    req = relay_request(settings, call)
    session = build_live_session(
        opts, req, safety_identifier=settings.guard.safety_identifier(call.identity)
    )
    session = with_server_side(settings, session, "live")
    credential, budget = yield from credential_for(opts, opts.openai_api_key)
    relay = relay_live(opts, offer, session, credential=credential, budget=budget)
    return (
        yield from relay_and_answer(
            settings, call, relay, kind="live", session=session, credential=credential
        )
    )
