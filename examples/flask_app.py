"""Flask: wrap ``app.wsgi_app``, so that ``app`` stays the Flask object.

Run it with ``OPENAI_API_KEY=sk-... python examples/flask_app.py``, then
``curl -X POST http://127.0.0.1:8000/navai/realtime/client-secret``.

No key, or no network? Run ``navai-mw fake-upstream`` in another terminal,
paste the two ``export`` lines it prints, and set ``OPENAI_API_KEY=sk-anything``:
the same commands then mint fake tokens (``ek_fake_...``) from a fake OpenAI
on loopback.
"""

from __future__ import annotations

import os

from flask import Flask

from navai_mw import NavaiWSGIMiddleware

app = Flask(__name__)
# The token path is answered here, before Flask routes anything; every other
# request reaches Flask untouched. Options come from the environment
# (OPENAI_API_KEY, ...); one pooled upstream client serves all threads.
app.wsgi_app = NavaiWSGIMiddleware(app.wsgi_app)


@app.get("/hello")
def hello() -> dict[str, str]:
    return {"hello": "flask"}


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
