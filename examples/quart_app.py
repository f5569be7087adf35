"""Quart: wrap ``app.asgi_app``, the ASGI callable behind the app, as Quart's
docs do for any ASGI middleware.

Run it with ``OPENAI_API_KEY=sk-... python examples/quart_app.py``, then
``curl -X POST http://127.0.0.1:8000/navai/realtime/client-secret``.

No key, or no network? Run ``navai-mw fake-upstream`` in another terminal,
paste the two ``export`` lines it prints, and set ``OPENAI_API_KEY=sk-anything``:
the same commands then mint fake tokens (``ek_fake_...``) from a fake OpenAI
on loopback.
"""

from __future__ import annotations

import os

from quart import Quart

from navai_mw import NavaiASGIMiddleware

app = Quart(__name__)
# The token path is answered here; every other request, and the lifespan
# events that run Quart's before_serving hooks, go on to Quart. Options come
# from the environment (OPENAI_API_KEY, ...).
app.asgi_app = NavaiASGIMiddleware(app.asgi_app)


@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "quart"}


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
