"""The ``navai-mw`` command: a standalone NAVAI backend, an offline demo, the
fake upstreams on their own, and a look at the backend functions a folder
holds.

::

    navai-mw serve          # real client secrets; options from the environment
    navai-mw serve --page   # the same, plus the voice page at /
    navai-mw demo           # the whole flow offline, against an embedded fake OpenAI
    navai-mw fake-upstream  # a fake OpenAI and ElevenLabs on loopback, for your own app
    navai-mw functions      # what serve would load from here, and what failed

``serve`` and ``demo`` run uvicorn (the ``server`` extra) with every navai
route (the client secret at ``--path``, the WebRTC relay, the backend
functions, speech) and ``GET /health``, and print where they listen, the
configuration in effect, the functions loaded and a ``curl`` line that mints
a token. The demo serves its own example functions and, with ``--speech``, a
fake ElevenLabs; it ignores every credential in the environment.

The demo (and ``serve --page``) also serves the voice page at ``/``: plain
HTML and JavaScript (``navai_mw/cli/page/``, read with :func:`page_file`) that
sends the microphone over WebRTC through the relay and shows the call's
events. The demo's fake OpenAI answers both client secrets
(:class:`~navai_mw.testing.FakeOpenAIRealtime`) and WebRTC calls
(:class:`~navai_mw.testing.FakeRealtimeWebRTC`, which needs aiortc, the
``webrtc`` extra; without it the demo still mints, and says so).

``fake-upstream`` serves :mod:`navai_mw.testing`'s fakes, nothing else, and
prints two shell lines to paste where your own app (a recipe in
``examples/``, say) will run, so that it mints and speaks offline::

    export OPENAI_BASE_URL=http://127.0.0.1:PORT/v1
    export ELEVENLABS_BASE_URL=http://127.0.0.1:PORT2

The fake OpenAI accepts any API key (``OPENAI_API_KEY=sk-anything``), or
only the one given with ``--api-key``; the fake ElevenLabs accepts any.

Promises:

* the API key is never printed, whatever the configuration;
* a configuration mistake (environment or flags), a port already in use or a
  missing uvicorn is one line on stderr and exit status 2, never a traceback;
* Ctrl-C and SIGTERM shut the server down gracefully (the middleware closes
  its upstream client) and exit with status 0.

A served process (each worker, with several) sets its garbage collector for
a server once its app is built (:func:`tune_gc`).
"""

from __future__ import annotations

from ..core.faces import publish

# Re-exported for the tests and tools that used them from the old single module.
from .banner import UNGUARDED_WARNING as UNGUARDED_WARNING
from .banner import WEBRTC_MISSING as WEBRTC_MISSING
from .demo import DEMO_API_KEY as DEMO_API_KEY
from .demo import DEMO_ELEVENLABS_KEY as DEMO_ELEVENLABS_KEY
from .demo import DEMO_VOICE_ID as DEMO_VOICE_ID
from .demo import _demo_upstream as _demo_upstream
from .main import UVICORN_MISSING as UVICORN_MISSING
from .main import main
from .serve import per_process_state as per_process_state
from .serve import tune_gc, worker_app
from .site import HEALTH_PATH as HEALTH_PATH
from .site import PAGE_HEADERS, page_file
from .site import _own_routes as _own_routes

__all__ = ["PAGE_HEADERS", "main", "page_file", "tune_gc", "worker_app"]

publish(__name__, globals(), __all__)
