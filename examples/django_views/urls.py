"""The project's routes: navai's under /api/navai/, and a login."""

from django.urls import path

from .views import csrf, login_view, navai_view

urlpatterns = [
    path("csrf", csrf),
    path("login", login_view),
    path("api/navai/<path:rest>", navai_view),
]
