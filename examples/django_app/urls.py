"""The project's own view; the token path never reaches Django's URL routing."""

from django.http import HttpRequest, JsonResponse
from django.urls import path


def hello(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"hello": "django"})


urlpatterns = [path("hello", hello)]
