"""FastAPI: add the middleware like any other; your routes stay as they are.

Run it with ``OPENAI_API_KEY=sk-... python examples/fastapi_app.py``, then
``curl -X POST http://127.0.0.1:8000/navai/realtime/client-secret``.

No key, or no network? Run ``navai-mw fake-upstream`` in another terminal,
paste the two ``export`` lines it prints, and set ``OPENAI_API_KEY=sk-anything``:
the same commands then mint fake tokens (``ek_fake_...``) from a fake OpenAI
on loopback.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from navai_mw import NavaiASGIMiddleware

app = FastAPI()
# FastAPI runs app middleware for every request, routed or not, so the
# middleware answers POST /navai/realtime/client-secret before any route is
# looked up. Given no options, it reads them (OPENAI_API_KEY, ...) from the
# environment when the app starts.
app.add_middleware(NavaiASGIMiddleware)


@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "fastapi"}


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
