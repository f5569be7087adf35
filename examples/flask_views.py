"""Flask: the navai routes as one Flask view, behind Flask's session login.

Run it with ``OPENAI_API_KEY=sk-... FLASK_DEMO_PASSWORD=secret python
examples/flask_views.py``; ``POST /login`` with ``{"username": ...,
"password": ...}`` logs in (any name, the demo password), and every route
under ``/api/navai/`` answers only a logged-in user. Offline: point
``OPENAI_BASE_URL`` at ``navai-mw fake-upstream``.
"""

from __future__ import annotations

import hmac
import os

from flask import Flask, Response, jsonify, request, session

from navai_mw import NavaiHandler

app = Flask(__name__)
app.secret_key = os.environ.get("FLASK_SECRET_KEY", "flask-insecure-navai-example")
app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")

# Every navai route under /api; options from the environment. One handler
# for the process: it holds the pooled upstream client.
navai = NavaiHandler(prefix="/api")


@app.route("/api/navai/<path:rest>", methods=["GET", "POST", "DELETE", "OPTIONS"])
def navai_view(rest: str) -> Response | tuple[Response, int]:
    user = session.get("user")
    # A CORS preflight carries no cookies: it is answered without a login.
    if user is None and request.method != "OPTIONS":
        return jsonify(error="Authentication required."), 401
    answer = navai.handle(
        request.method,
        request.path,
        request.headers,
        request.get_data(),
        client=request.remote_addr,
        environ=request.environ,
        identity=user,  # rate limits per user; OpenAI's safety id
        query=request.query_string.decode("latin-1"),  # the relay's overrides
        mount=request.root_path,  # for a relayed call's Location
    )
    return Response(answer.body, status=answer.status, headers=answer.headers)


@app.post("/login")
def login() -> Response | tuple[Response, int]:
    credentials = request.get_json(silent=True) or {}
    password = os.environ.get("FLASK_DEMO_PASSWORD", "")
    given = str(credentials.get("password", ""))
    if not password or not hmac.compare_digest(given, password):
        return jsonify(error="Wrong username or password."), 401
    session["user"] = str(credentials.get("username", "")) or "user"
    return jsonify(ok=True)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
