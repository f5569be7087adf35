"""Flask: wrap ``app.wsgi_app``, so that ``app`` stays the Flask object.

Run it with ``OPENAI_API_KEY=sk-... python examples/flask_app.py``, then
``curl -X POST http://127.0.0.1:8000/navai/realtime/client-secret``.
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
