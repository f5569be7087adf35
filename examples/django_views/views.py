"""The navai routes as one Django view, behind Django's own auth."""

from __future__ import annotations

import json

from django.contrib.auth import authenticate, login
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt, ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from navai_mw import NavaiHandler

# Every navai route under /api (client secret, functions, speech); options
# from the environment, as the middleware reads them. One handler for the
# process: it holds the pooled upstream client.
navai = NavaiHandler(prefix="/api")


# CSRF: the published front end sends no CSRF token, so the view is exempt.
# That is safe here because the navai routes accept only JSON bodies (415
# for anything else), and a page on another site cannot send
# Content-Type: application/json without a CORS preflight, which is refused
# unless its origin is listed. Django's CSRF check still guards /login.
@csrf_exempt
def navai_view(request: HttpRequest, rest: str = "") -> HttpResponse:
    # login_required would redirect to a login page; an API answers 401. A
    # CORS preflight carries no cookies: it is answered without a login.
    if request.method != "OPTIONS" and not request.user.is_authenticated:
        return JsonResponse({"error": "Authentication required."}, status=401)
    answer = navai.handle(
        request.method or "GET",
        request.path_info,  # below the mount point, as the handler's paths are
        request.headers,
        request.body,
        client=request.META.get("REMOTE_ADDR"),
        environ=request.META,
        identity=str(request.user.pk),  # rate limits per user; OpenAI's safety id
        query=request.META.get("QUERY_STRING", ""),  # the relay's overrides
        mount=request.META.get("SCRIPT_NAME", ""),  # for a relayed call's Location
    )
    response = HttpResponse(answer.body, status=answer.status)
    for name, value in answer.headers:
        response[name] = value
    return response


@require_GET
@ensure_csrf_cookie
def csrf(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


@require_POST
def login_view(request: HttpRequest) -> JsonResponse:
    credentials = json.loads(request.body or b"{}")
    user = authenticate(
        request,
        username=str(credentials.get("username", "")),
        password=str(credentials.get("password", "")),
    )
    if user is None:
        return JsonResponse({"error": "Wrong username or password."}, status=401)
    login(request, user)
    return JsonResponse({"ok": True})
