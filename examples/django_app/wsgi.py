"""WSGI entry point: Django's application, wrapped by the middleware.

To try it with no key and no network, export the lines that
``navai-mw fake-upstream`` prints and set ``OPENAI_API_KEY=sk-anything``.
"""

import os

from django.core.wsgi import get_wsgi_application

from navai_mw import NavaiWSGIMiddleware

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_app.settings")

# The middleware answers POST /navai/realtime/client-secret before Django sees
# the request (so Django's middleware, CSRF included, does not apply to it);
# everything else goes to Django. Options come from the environment.
application = NavaiWSGIMiddleware(get_wsgi_application())

if __name__ == "__main__":
    import waitress

    waitress.serve(application, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
