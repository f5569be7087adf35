"""WSGI entry point: plain Django; navai's routes are one of its views."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_views.settings")

application = get_wsgi_application()


def _prepare() -> None:
    """Create the tables, and the demo user when one is named."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    username = os.environ.get("DJANGO_DEMO_USER")
    password = os.environ.get("DJANGO_DEMO_PASSWORD")
    if username and password:
        users = get_user_model()
        user = users.objects.filter(username=username).first() or users(username=username)
        user.set_password(password)
        user.save()


if __name__ == "__main__":
    import waitress

    _prepare()
    waitress.serve(application, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
