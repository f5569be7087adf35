"""Litestar: wrap the whole app, because Litestar runs its own middleware only
for requests that match one of its routes, and the token path is not one.

Run it with ``OPENAI_API_KEY=sk-... python examples/litestar_app.py`` (or
``uvicorn litestar_app:app``; ``litestar run`` wants a Litestar object), then
``curl -X POST http://127.0.0.1:8000/navai/realtime/client-secret``.

No key, or no network? Run ``navai-mw fake-upstream`` in another terminal,
paste the two ``export`` lines it prints, and set ``OPENAI_API_KEY=sk-anything``:
the same commands then mint fake tokens (``ek_fake_...``) from a fake OpenAI
on loopback.
"""

from __future__ import annotations

import os

from litestar import Litestar, get
from litestar.datastructures import State

from navai_mw import NavaiASGIMiddleware


def greet(app: Litestar) -> None:
    app.state.greeting = "hello from litestar"


@get("/hello")
async def hello(state: State) -> dict[str, str]:
    return {"greeting": state.greeting}


# The outermost ASGI callable: it answers the token path and hands everything
# else to Litestar, lifespan events included, so on_startup hooks still run
# (and the middleware closes its upstream client after Litestar's shutdown).
# Options come from the environment (OPENAI_API_KEY, ...).
app = NavaiASGIMiddleware(Litestar([hello], on_startup=[greet]))

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
