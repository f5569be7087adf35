"""Starlette: the token endpoint is one entry in the app's middleware list.

Run it with ``OPENAI_API_KEY=sk-... python examples/starlette_app.py``, then
``curl -X POST http://127.0.0.1:8000/navai/realtime/client-secret``.

No key, or no network? Run ``navai-mw fake-upstream`` in another terminal,
paste the two ``export`` lines it prints, and set ``OPENAI_API_KEY=sk-anything``:
the same commands then mint fake tokens (``ek_fake_...``) from a fake OpenAI
on loopback.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from navai_mw import NavaiASGIMiddleware


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": "starlette"})


# Starlette runs app middleware for every request, routed or not, so the
# middleware answers POST /navai/realtime/client-secret by itself. Given no
# options, it reads them (OPENAI_API_KEY, ...) from the environment.
app = Starlette(
    routes=[Route("/hello", hello)],
    middleware=[Middleware(NavaiASGIMiddleware)],
)

# Below a prefix: the middleware matches paths below its mount point (the
# ASGI root_path), so here the token path is /api/navai/realtime/client-secret.
api = NavaiASGIMiddleware(Starlette(routes=[Route("/hello", hello)]))


# Starlette sends lifespan events to the top app only, never to mounted ones,
# so the top app closes the mounted middleware's upstream client itself.
@asynccontextmanager
async def close_api(_: Starlette) -> AsyncIterator[None]:
    yield
    await api.aclose()


prefixed_app = Starlette(routes=[Mount("/api", app=api)], lifespan=close_api)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
