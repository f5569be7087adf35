"""A minimal Django project serving the token endpoint next to its own views.

Run it from ``examples/`` with ``OPENAI_API_KEY=sk-...`` set:
``python -m django_app.asgi`` (uvicorn) or ``python -m django_app.wsgi``
(waitress); or ``uvicorn django_app.asgi:application``.
"""
