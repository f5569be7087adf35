"""FastAPI with every navai route under ``/api``, next to the app's own routes.

Run it with ``OPENAI_API_KEY=sk-... python examples/fastapi_prefixed.py``, then
``curl -X POST http://127.0.0.1:8000/api/navai/realtime/client-secret`` and
``curl http://127.0.0.1:8000/api/navai/functions``.

No key, or no network? Run ``navai-mw fake-upstream`` in another terminal,
paste the two ``export`` lines it prints, and set ``OPENAI_API_KEY=sk-anything``:
the same commands then mint fake tokens (``ek_fake_...``) from a fake OpenAI
on loopback.

Three ways to the same URLs, one per way of owning the upstream client:
``app`` (the middleware wraps the whole FastAPI app and closes its client at
shutdown), ``mounted_app`` (the middleware is mounted, and the parent app
closes it) and ``own_transport_app`` (``add_middleware`` on a mounted app,
with an upstream client you close yourself).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from navai_mw import NavaiASGIMiddleware
from navai_mw.transports import HttpxAsyncTransport

# -- 1. One prefix for every navai route -----------------------------------------

api = FastAPI()


@api.get("/api/hello")
async def hello() -> dict[str, str]:
    return {"hello": "fastapi"}


# prefix="/api" moves the whole route table: /api/navai/realtime/client-secret,
# /api/navai/functions, /api/navai/functions/execute, /api/navai/speech/synthesize.
# The middleware wraps the app the server runs, so the server's lifespan
# events reach it: it closes its upstream client after FastAPI has shut down.
# And `app` is the instance, should you want `await app.aclose()` yourself.
app = NavaiASGIMiddleware(api, prefix="/api")


# -- 2. Mounted: the parent's lifespan closes the middleware -----------------------

voice_api = FastAPI()


@voice_api.get("/hello")
async def voice_hello() -> dict[str, str]:
    return {"hello": "fastapi"}


# Mounted at /api, the middleware counts its paths from the mount point (the
# ASGI root_path): no prefix keyword, the same URLs as above.
voice = NavaiASGIMiddleware(voice_api)


# Starlette and FastAPI send lifespan events to the top app only, never to a
# mounted one: the top app closes the mounted middleware's client itself.
@asynccontextmanager
async def close_voice(_: FastAPI) -> AsyncIterator[None]:
    yield
    await voice.aclose()


mounted_app = FastAPI(lifespan=close_voice)
mounted_app.mount("/api", voice)


# -- 3. add_middleware, mounted: bring the upstream client you close --------------

# add_middleware hands Starlette the class, not an instance: there is nothing
# to call aclose() on. Pass a transport of your own instead, and close it.
upstream = HttpxAsyncTransport()
sub_app = FastAPI()
sub_app.add_middleware(NavaiASGIMiddleware, transport=upstream)


@sub_app.get("/hello")
async def sub_hello() -> dict[str, str]:
    return {"hello": "fastapi"}


@asynccontextmanager
async def close_upstream(_: FastAPI) -> AsyncIterator[None]:
    yield
    await upstream.aclose()


own_transport_app = FastAPI(lifespan=close_upstream)
own_transport_app.mount("/api", sub_app)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
