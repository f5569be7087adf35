"""A fake OpenAI for the sideband benchmark, on aiohttp's server (which
holds thousands of WebSockets cheaply): Realtime calls made and hung up,
and their sidebands.

* ``POST /v1/realtime/calls``: 201 (after ``stall`` seconds), a canned SDP answer, and
  ``Location: /v1/realtime/calls/rtc_N`` (no WebRTC: the relay's work is
  what is measured);
* ``POST /v1/realtime/calls/{id}/hangup``: 200, and the call's sideband is
  closed (1000), as OpenAI ends a call;
* ``GET /v1/realtime?call_id=``: the sideband. ``session.created`` first;
  then, with ``rate`` > 0, ``rate`` events a second, a call's typical mix:
  nine transcript deltas and one ``response.done`` with its usage; with
  ``hold`` > 0 it is closed (1000) that many seconds after it opened (the
  call ended);
* ``GET /_bench/stats``: ``{"open": N, "opened": N, "sent": N}``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from typing import Any

from aiohttp import WSMsgType, web

ANSWER = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
_DELTA = json.dumps(
    {
        "type": "response.output_audio_transcript.delta",
        "event_id": "event_bench",
        "response_id": "resp_bench",
        "item_id": "item_bench",
        "output_index": 0,
        "content_index": 0,
        "delta": "Sure, your order left the warehouse ",
    }
)
_DONE = json.dumps(
    {
        "type": "response.done",
        "event_id": "event_bench_done",
        "response": {
            "id": "resp_bench",
            "object": "realtime.response",
            "status": "completed",
            "output": [],
            "usage": {
                "total_tokens": 420,
                "input_tokens": 300,
                "output_tokens": 120,
                "input_token_details": {"text_tokens": 40, "audio_tokens": 260, "cached_tokens": 0},
                "output_token_details": {"text_tokens": 30, "audio_tokens": 90},
            },
        },
    }
)
MIX = (*([_DELTA] * 9), _DONE)


class SidebandUpstream:
    def __init__(self, *, rate: float, hold: float, stall: float = 0.0) -> None:
        self.rate = rate
        self.hold = hold
        self.stall = stall
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.opened = 0
        self.sent = 0
        self._ids = itertools.count(1)

    async def create(self, request: web.Request) -> web.Response:
        await request.read()
        if self.stall:
            await asyncio.sleep(self.stall)  # OpenAI takes its time to set a call up
        call_id = f"rtc_{next(self._ids):016x}"
        return web.Response(
            status=201,
            text=ANSWER,
            content_type="application/sdp",
            headers={"Location": f"/v1/realtime/calls/{call_id}"},
        )

    async def hangup(self, request: web.Request) -> web.Response:
        socket_ = self.sockets.get(request.match_info["id"])
        if socket_ is not None:
            await socket_.close(code=1000)
        return web.json_response({})

    async def sideband(self, request: web.Request) -> web.WebSocketResponse:
        call_id = request.query.get("call_id", "")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.sockets[call_id] = ws
        self.opened += 1
        session = {"type": "realtime", "id": call_id, "model": "gpt-realtime"}
        await ws.send_str(
            json.dumps({"type": "session.created", "event_id": "e", "session": session})
        )
        sender = asyncio.create_task(self._send(ws)) if self.rate > 0 else None
        closer = asyncio.create_task(_close_after(ws, self.hold)) if self.hold > 0 else None
        try:
            async for message in ws:
                if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
        finally:
            if sender is not None:
                sender.cancel()
            if closer is not None:
                closer.cancel()
            self.sockets.pop(call_id, None)
        return ws

    async def _send(self, ws: web.WebSocketResponse) -> None:
        interval = 1.0 / self.rate
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        for text in itertools.cycle(MIX):
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            if ws.closed:
                return
            await ws.send_str(text)
            self.sent += 1

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"open": len(self.sockets), "opened": self.opened, "sent": self.sent}
        )

    async def ready(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")


async def _close_after(ws: web.WebSocketResponse, seconds: float) -> None:
    await asyncio.sleep(seconds)
    await ws.close(code=1000)


def serve(sock: socket.socket, *, rate: float, hold: float, stall: float = 0.0) -> None:
    upstream = SidebandUpstream(rate=rate, hold=hold, stall=stall)
    app = web.Application()
    app.router.add_post("/v1/realtime/calls", upstream.create)
    app.router.add_post("/v1/realtime/calls/{id}/hangup", upstream.hangup)
    app.router.add_get("/v1/realtime", upstream.sideband)
    app.router.add_get("/_bench/stats", upstream.stats)
    app.router.add_get("/_bench/ready", upstream.ready)
    web.run_app(app, sock=sock, print=None, access_log=None, backlog=4096)


def stats(url: str) -> dict[str, Any]:
    from ._procs import get

    _, body = get(url, "/_bench/stats")
    data: dict[str, Any] = json.loads(body)
    return data
