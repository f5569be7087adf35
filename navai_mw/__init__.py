"""navai_mw: hand browser and mobile voice clients an OpenAI Realtime session
without ever handing them the server's API key.

The public names are re-exported here; everything in a module whose name
starts with an underscore is private.
"""

from ._client import create_realtime_client_secret, create_realtime_client_secret_sync
from ._env import get_navai_voice_backend_options_from_env
from ._errors import AuthError, NavaiError, OptionsError, RequestError, UpstreamError
from ._guard import RequestInfo
from ._models import (
    CreateClientSecretRequest,
    HttpRequest,
    HttpResponse,
    NavaiVoiceBackendOptions,
    OpenAIRealtimeClientSecretResponse,
)
from .asgi import NavaiASGIMiddleware
from .wsgi import NavaiWSGIMiddleware

__all__ = [
    "AuthError",
    "CreateClientSecretRequest",
    "HttpRequest",
    "HttpResponse",
    "NavaiASGIMiddleware",
    "NavaiError",
    "NavaiVoiceBackendOptions",
    "NavaiWSGIMiddleware",
    "OpenAIRealtimeClientSecretResponse",
    "OptionsError",
    "RequestError",
    "RequestInfo",
    "UpstreamError",
    "create_realtime_client_secret",
    "create_realtime_client_secret_sync",
    "get_navai_voice_backend_options_from_env",
]
