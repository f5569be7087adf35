"""Just enough settings for one view: no database, no apps."""

import os

# Not a secret worth keeping here: this project signs nothing.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-navai-example")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "django_app.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
USE_TZ = True
