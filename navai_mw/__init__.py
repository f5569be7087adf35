"""navai_mw: hand browser and mobile voice clients an OpenAI Realtime session
without ever handing them the server's API key.

The public names are re-exported here; everything in a module whose name
starts with an underscore is private.
"""

from ._client import (
    create_realtime_client_secret,
    create_realtime_client_secret_sync,
    create_transcription_client_secret,
    create_transcription_client_secret_sync,
    synthesize_speech,
    synthesize_speech_sync,
)
from ._env import get_navai_voice_backend_options_from_env
from ._errors import AuthError, NavaiError, OptionsError, RequestError, UpstreamError
from ._guard import RequestInfo
from ._mint import SessionContext
from ._models import (
    CreateClientSecretRequest,
    CreateTranscriptionSecretRequest,
    HttpRequest,
    HttpResponse,
    NavaiVoiceBackendOptions,
    OpenAIRealtimeClientSecretResponse,
    VoiceSettings,
)
from ._speech import SynthesizedSpeech
from .asgi import NavaiASGIMiddleware
from .functions import (
    FunctionContext,
    FunctionRegistry,
    NavaiFunctionError,
    load_navai_functions,
)
from .views import AsyncNavaiHandler, NavaiHandler, NavaiResponse
from .wsgi import NavaiWSGIMiddleware

__all__ = [
    "AsyncNavaiHandler",
    "AuthError",
    "CreateClientSecretRequest",
    "CreateTranscriptionSecretRequest",
    "FunctionContext",
    "FunctionRegistry",
    "HttpRequest",
    "HttpResponse",
    "NavaiASGIMiddleware",
    "NavaiError",
    "NavaiFunctionError",
    "NavaiHandler",
    "NavaiResponse",
    "NavaiVoiceBackendOptions",
    "NavaiWSGIMiddleware",
    "OpenAIRealtimeClientSecretResponse",
    "OptionsError",
    "RequestError",
    "RequestInfo",
    "SessionContext",
    "SynthesizedSpeech",
    "UpstreamError",
    "VoiceSettings",
    "create_realtime_client_secret",
    "create_realtime_client_secret_sync",
    "create_transcription_client_secret",
    "create_transcription_client_secret_sync",
    "get_navai_voice_backend_options_from_env",
    "load_navai_functions",
    "synthesize_speech",
    "synthesize_speech_sync",
]
