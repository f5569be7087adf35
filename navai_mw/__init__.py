"""navai_mw: hand browser and mobile voice clients an OpenAI Realtime session
without ever handing them the server's API key.

The public names are re-exported here, and from the other top-level
modules (``asgi``, ``wsgi``, ``views``, ``auth``, ``functions``,
``transports``, ``sansio``, ``testing``, ``cli``); the layers below them
(``core``, ``upstreams``, ``guard``, ``backend_functions``, ``endpoint``,
``config``, ``runtime``) are private.
"""

from .asgi import NavaiASGIMiddleware
from .backend_functions.loading import load_navai_functions
from .backend_functions.registry import FunctionContext, FunctionRegistry, NavaiFunctionError
from .config.env import get_navai_voice_backend_options_from_env
from .core.client_requests import CreateClientSecretRequest, CreateTranscriptionSecretRequest
from .core.errors import AuthError, NavaiError, OptionsError, RequestError, UpstreamError
from .core.faces import publish
from .core.http import HttpRequest, HttpResponse, RequestInfo
from .core.options import NavaiVoiceBackendOptions, VoiceSettings
from .core.reports import CallReport, CallUsage, FunctionCallRecord
from .core.sip import Accept, IncomingCall, Refer, Reject
from .runtime.client_functions import (
    create_realtime_client_secret,
    create_realtime_client_secret_sync,
    create_transcription_client_secret,
    create_transcription_client_secret_sync,
    synthesize_speech,
    synthesize_speech_sync,
)
from .upstreams.elevenlabs import SynthesizedSpeech
from .upstreams.mint import SessionContext
from .upstreams.openai_secrets import OpenAIRealtimeClientSecretResponse
from .views import AsyncNavaiHandler, NavaiHandler, NavaiResponse
from .wsgi import NavaiWSGIMiddleware

__all__ = [
    "Accept",
    "AsyncNavaiHandler",
    "AuthError",
    "CallReport",
    "CallUsage",
    "CreateClientSecretRequest",
    "CreateTranscriptionSecretRequest",
    "FunctionCallRecord",
    "FunctionContext",
    "FunctionRegistry",
    "HttpRequest",
    "HttpResponse",
    "IncomingCall",
    "NavaiASGIMiddleware",
    "NavaiError",
    "NavaiFunctionError",
    "NavaiHandler",
    "NavaiResponse",
    "NavaiVoiceBackendOptions",
    "NavaiWSGIMiddleware",
    "OpenAIRealtimeClientSecretResponse",
    "OptionsError",
    "Refer",
    "Reject",
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

publish(__name__, globals(), __all__)
