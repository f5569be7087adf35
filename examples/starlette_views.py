"""Starlette: the navai routes as one endpoint of your own, behind your login.

Run it with ``OPENAI_API_KEY=sk-... python examples/starlette_views.py``;
every route under ``/api/navai/`` answers only a request with an
``X-Demo-User`` header, which stands for your session's user. Offline: point
``OPENAI_BASE_URL`` at ``navai-mw fake-upstream``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from navai_mw import AsyncNavaiHandler

# Every navai route under /api; options from the environment. One handler
# for the process: it holds the pooled upstream client.
navai = AsyncNavaiHandler(prefix="/api")


async def navai_view(request: Request) -> Response:
    user = request.headers.get("x-demo-user")  # your session's user, in a real app
    # A CORS preflight carries no cookies: it is answered without a login.
    if user is None and request.method != "OPTIONS":
        return JSONResponse({"error": "Authentication required."}, status_code=401)
    # Mounted (a Mount, a server's root_path), Starlette's path still holds
    # the mount point; the handler's paths are below it.
    mount = request.scope.get("root_path", "")
    answer = await navai.handle(
        request.method,
        request.url.path.removeprefix(mount),
        request.headers,
        await request.body(),
        client=request.client.host if request.client else None,  # per-address limits
        scope=request.scope,  # what an authorize hook, if any, is given
        identity=user,  # rate limits per user; OpenAI's safety identifier
        query=request.url.query,  # the relay's overrides (?voice=...)
        mount=mount,  # for a relayed call's Location
    )
    return Response(answer.body, status_code=answer.status, headers=dict(answer.headers))


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": "starlette views"})


@asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[None]:
    yield
    await navai.aclose()  # the handler's upstream client, at shutdown


app = Starlette(
    routes=[
        Route("/hello", hello),
        # DELETE too: a relayed call (NAVAI_RELAY=true) is hung up with a
        # DELETE of the Location its POST answered.
        Route("/api/navai/{rest:path}", navai_view, methods=["GET", "POST", "DELETE", "OPTIONS"]),
    ],
    lifespan=lifespan,
)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
