"""A Django project that serves the navai routes from its own view, behind
Django's sessions, login and CSRF protection (instead of wrapping the whole
project in the middleware, which answers before Django's auth runs).

Run it from ``examples/`` with ``OPENAI_API_KEY=sk-...`` set (or, offline,
``OPENAI_API_KEY=sk-anything OPENAI_BASE_URL=...`` from ``navai-mw
fake-upstream``)::

    DJANGO_DEMO_USER=ana DJANGO_DEMO_PASSWORD=secret python -m django_views.wsgi

It creates its SQLite database (``DJANGO_DB_PATH``, default
``django_views.sqlite3`` here) and that user, then serves on waitress:
``GET /csrf`` sets the CSRF cookie, ``POST /login`` (JSON username and
password, ``X-CSRFToken`` header) logs in, and every route under
``/api/navai/`` answers only a logged-in user.
"""
