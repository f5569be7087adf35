"""``POST /navai/realtime/calls``: the browser's SDP offer relayed to OpenAI
with the server's session and key; the SDP answer back, and where to end
the call (``Location``)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from ...upstreams.mint import credential_for, customized
from ...upstreams.openai_secrets import build_session
from ...upstreams.realtime_calls import relay_call
from ..call_sideband import with_server_side
from ..route import Call, Reply, Settings
from .relay_steps import check_offer, relay_and_answer, relay_request


def handle(settings: Settings, call: Call) -> Generator[Any, Any, Reply]:
    opts = settings.opts
    offer = check_offer(call.raw)
    req = relay_request(settings, call)
    session = yield from customized(
        opts,
        build_session(opts, req),
        kind="realtime",
        customize=settings.customize_session,
        identity=call.identity,
        request=call.info,
    )
    session = with_server_side(settings, session, "realtime")
    credential, budget = yield from credential_for(opts, opts.openai_api_key)
    relay = relay_call(
        opts,
        offer,
        session,
        credential=credential,
        safety_identifier=settings.guard.safety_identifier(call.identity),
        budget=budget,
    )
    return (
        yield from relay_and_answer(
            settings, call, relay, kind="realtime", session=session, credential=credential
        )
    )
