"""A minimal Django project serving the token endpoint next to its own views.

Run it from ``examples/`` with ``OPENAI_API_KEY=sk-...`` set:
``python -m django_app.asgi`` (uvicorn) or ``python -m django_app.wsgi``
(waitress); or ``uvicorn django_app.asgi:application``.

No key, or no network? Run ``navai-mw fake-upstream`` in another terminal,
paste the two ``export`` lines it prints, and set ``OPENAI_API_KEY=sk-anything``:
the same commands then mint fake tokens (``ek_fake_...``) from a fake OpenAI
on loopback.
"""
