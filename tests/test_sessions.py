"""Session templates (``session=``, ``OPENAI_REALTIME_SESSION``), the
``customize_session`` hook, and how they combine with a request and the
options (issue 12, parts 1 and 2).

Every session sent upstream is checked against openai-python's published
types (``openai.types.realtime``): it must validate, come back unchanged
from a dump, and carry no key those types do not know (their models accept
any extra key, so ``model_extra`` is checked at every level).

The merge runs four ways: both middlewares (in process, over httpx) and
both client functions. The helpers here (``shells``, ``every_way``,
``openai_problems``) serve test_transcription.py and test_azure.py too.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

import anyio
import anyio.from_thread
import httpx
import pydantic
import pytest
import sniffio
from openai.types.realtime import (
    RealtimeSessionCreateRequest,
    RealtimeTranscriptionSessionCreateRequest,
)

from navai_mw import (
    AsyncNavaiHandler,
    NavaiASGIMiddleware,
    NavaiError,
    NavaiHandler,
    NavaiVoiceBackendOptions,
    NavaiWSGIMiddleware,
    OptionsError,
    RequestError,
    SessionContext,
    create_realtime_client_secret,
    create_realtime_client_secret_sync,
    create_transcription_client_secret,
    create_transcription_client_secret_sync,
    get_navai_voice_backend_options_from_env,
)
from navai_mw.core.sessions import check_json, check_session
from navai_mw.testing import FakeOpenAIRealtime
from navai_mw.transports import HttpxAsyncTransport, HttpxSyncTransport

from .conftest import CANARY_KEY, log_message

TOKEN = "/navai/realtime/client-secret"
TRANSCRIPTION = "/navai/realtime/transcription-secret"
NOT_PREPARED = {"error": "The session could not be prepared; try again shortly."}


# -- OpenAI's published schema --------------------------------------------------------


def _unknown_keys(value: object, where: str) -> list[str]:
    """Keys, at any depth, that openai-python's models took as extras."""
    found: list[str] = []
    if isinstance(value, pydantic.BaseModel):
        found += [f"{where}.{key}" for key in value.model_extra or {}]
        for name in type(value).model_fields:
            found += _unknown_keys(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _unknown_keys(item, f"{where}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            found += _unknown_keys(item, f"{where}.{key}")
    return found


def openai_problems(session: Mapping[str, Any]) -> list[str]:
    """What openai-python's types find wrong with ``session`` (a realtime or
    transcription session, by its ``type``): [] when it validates, dumps back
    unchanged, and has no key the types do not know."""
    kind = (
        RealtimeTranscriptionSessionCreateRequest
        if session.get("type") == "transcription"
        else RealtimeSessionCreateRequest
    )
    try:
        model = kind.model_validate(session)
    except pydantic.ValidationError as exc:
        return [f"refused: {exc}"]
    problems = [f"unknown key {key}" for key in _unknown_keys(model, "session")]
    if model.model_dump(mode="json", exclude_unset=True) != session:
        problems.append("changed by validation")
    return problems


def assert_openai_accepts(session: Mapping[str, Any]) -> None:
    assert openai_problems(session) == [], session


# -- ways to mint ------------------------------------------------------------------------


class Upstream(Protocol):
    """A fake upstream that both shells and both client functions can reach."""

    def sync_transport(self) -> HttpxSyncTransport: ...

    def async_transport(self) -> HttpxAsyncTransport: ...


async def inner_asgi(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


def inner_wsgi(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"app"]


Post = Callable[..., httpx.Response]


def is_async(hook: object) -> bool:
    return inspect.iscoroutinefunction(hook) or inspect.iscoroutinefunction(
        getattr(hook, "__call__", None)  # noqa: B004 - an object's own async __call__
    )


@contextmanager
def shells(
    opts: NavaiVoiceBackendOptions, upstream: Upstream, **keywords: Any
) -> Iterator[list[tuple[str, Post]]]:
    """``post(path, json=..., headers=...)`` for each middleware, built with
    the same keywords and reaching ``upstream`` in process; the ASGI one runs
    on a portal. With an async ``customize_session`` (which WSGI refuses),
    ASGI only."""
    with anyio.from_thread.start_blocking_portal() as portal:
        async_upstream = upstream.async_transport()
        asgi = NavaiASGIMiddleware(inner_asgi, opts, transport=async_upstream, **keywords)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=asgi, client=("203.0.113.7", 5000)),
            base_url="http://api.test",
        )

        def asgi_post(path: str, **kw: Any) -> httpx.Response:
            return portal.call(lambda: client.post(path, **kw))

        try:
            with upstream.sync_transport() as sync_upstream:
                if is_async(keywords.get("customize_session")):
                    yield [("asgi", asgi_post)]
                    return
                wsgi = NavaiWSGIMiddleware(inner_wsgi, opts, transport=sync_upstream, **keywords)
                with httpx.Client(
                    transport=httpx.WSGITransport(app=wsgi, remote_addr="203.0.113.7"),
                    base_url="http://api.test",
                ) as sync_client:
                    yield [("asgi", asgi_post), ("wsgi", sync_client.post)]
        finally:
            portal.call(client.aclose)
            portal.call(async_upstream.aclose)


Mint = Callable[[Any], int]


@contextmanager
def every_way(
    opts: NavaiVoiceBackendOptions,
    upstream: Upstream,
    *,
    kind: str = "realtime",
    customize: Callable[[SessionContext], Any] | None = None,
    **keywords: Any,
) -> Iterator[list[tuple[str, Mint]]]:
    """``mint(body) -> status`` four ways: both middlewares (route ``kind``)
    and both client functions (200, or the NavaiError's status)."""
    path = TOKEN if kind == "realtime" else TRANSCRIPTION
    sync_function = (
        create_realtime_client_secret_sync
        if kind == "realtime"
        else create_transcription_client_secret_sync
    )
    async_function = (
        create_realtime_client_secret if kind == "realtime" else create_transcription_client_secret
    )

    def sync_mint(body: Any) -> int:
        with upstream.sync_transport() as transport:
            try:
                sync_function(opts, body, transport=transport, customize_session=customize)
            except NavaiError as exc:
                return exc.status
        return 200

    def async_mint(body: Any) -> int:
        async def mint() -> int:
            async with upstream.async_transport() as transport:
                try:
                    await async_function(
                        opts, body, transport=transport, customize_session=customize
                    )
                except NavaiError as exc:
                    return exc.status
            return 200

        return anyio.run(mint)

    with shells(opts, upstream, customize_session=customize, **keywords) as both:
        ways: list[tuple[str, Mint]] = [
            (name, lambda body, post=post: post(path, json=body).status_code) for name, post in both
        ]
        yield [*ways, ("sync function", sync_mint), ("async function", async_mint)]


def options(fake: FakeOpenAIRealtime, **kw: Any) -> NavaiVoiceBackendOptions:
    return NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=fake.base_url, upstream_timeout_seconds=5, **kw
    )


def sent(fake: FakeOpenAIRealtime, index: int = -1) -> dict[str, Any]:
    """The session of the ``index``-th request the fake received."""
    session: dict[str, Any] = fake.requests[index].json["session"]
    return session


# -- templates that reach OpenAI -----------------------------------------------------------

SERVER_VAD = {
    "type": "server_vad",
    "threshold": 0.6,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "idle_timeout_ms": 6000,
    "create_response": True,
    "interrupt_response": False,
}
FUNCTION_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Tell the weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
MCP_TOOL = {
    "type": "mcp",
    "server_label": "docs",
    "server_url": "https://mcp.example/sse",
    "server_description": "The product manual.",
    "headers": {"X-Tenant": "acme"},
    "allowed_tools": ["search", "fetch"],
    "require_approval": "never",
}

GOOD_TEMPLATES: dict[str, dict[str, Any]] = {
    "server_vad": {"audio": {"input": {"turn_detection": SERVER_VAD}}},
    "semantic_vad": {
        "audio": {
            "input": {
                "turn_detection": {
                    "type": "semantic_vad",
                    "eagerness": "low",
                    "create_response": True,
                    "interrupt_response": True,
                }
            }
        }
    },
    "turn_detection_off": {"audio": {"input": {"turn_detection": None}}},
    "ranges_at_their_low_ends": {
        "audio": {
            "input": {
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0,
                    "prefix_padding_ms": 0,
                    "silence_duration_ms": 0,
                    "idle_timeout_ms": 0,
                }
            },
            "output": {"speed": 0.25},
        },
        "truncation": {
            "type": "retention_ratio",
            "retention_ratio": 0,
            "token_limits": {"post_instructions": 0},
        },
    },
    "ranges_at_their_high_ends": {
        "audio": {
            "input": {"turn_detection": {"type": "server_vad", "threshold": 1}},
            "output": {"speed": 1.5},
        },
        "truncation": {"type": "retention_ratio", "retention_ratio": 1},
    },
    "input_audio": {
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "noise_reduction": {"type": "near_field"},
                "transcription": {
                    "model": "gpt-4o-mini-transcribe",
                    "language": "es",
                    "prompt": "Place names in Andalusia",
                },
            }
        }
    },
    "transcription_lists": {
        "audio": {
            "input": {
                "transcription": {
                    "model": "whisper-1",
                    "languages": ["en", "es"],
                    "keywords": ["navai"],
                    "delay": "low",
                }
            }
        }
    },
    "pcmu_in_pcma_out": {
        "audio": {
            "input": {"format": {"type": "audio/pcmu"}},
            "output": {"format": {"type": "audio/pcma"}},
        }
    },
    "output_speed_and_format": {
        "audio": {"output": {"speed": 1.25, "format": {"type": "audio/pcm", "rate": 24000}}}
    },
    "function_tool": {"tools": [FUNCTION_TOOL], "tool_choice": "auto", "parallel_tool_calls": True},
    "mcp_tool": {
        "tools": [MCP_TOOL],
        "tool_choice": {"type": "mcp", "server_label": "docs", "name": "search"},
    },
    "tool_choice_function": {
        "tools": [FUNCTION_TOOL],
        "tool_choice": {"type": "function", "name": "get_weather"},
    },
    "max_output_tokens": {"max_output_tokens": 800},
    "max_output_tokens_inf": {"max_output_tokens": "inf"},
    "max_output_tokens_one": {"max_output_tokens": 1},
    "max_output_tokens_most": {"max_output_tokens": 4096},
    "text_only": {"output_modalities": ["text"]},
    "include_logprobs": {"include": ["item.input_audio_transcription.logprobs"]},
    "truncation_ratio": {
        "truncation": {
            "type": "retention_ratio",
            "retention_ratio": 0.5,
            "token_limits": {"post_instructions": 2000},
        }
    },
    "truncation_disabled": {"truncation": "disabled"},
    "tracing_auto": {"tracing": "auto"},
    "mcp_approval_filter": {
        "tools": [
            {
                **MCP_TOOL,
                "require_approval": {
                    "always": {"tool_names": ["fetch"]},
                    "never": {"read_only": True},
                },
            }
        ]
    },
    "prompt_input_variable": {
        "prompt": {
            "id": "pmpt_123",
            "variables": {
                "city": "Seville",
                "logo": {"type": "input_text", "text": "Seville"},
            },
        }
    },
    "mcp_tool_filter": {
        "tools": [{**MCP_TOOL, "allowed_tools": {"tool_names": ["search"], "read_only": True}}]
    },
    "tracing_object": {
        "tracing": {"workflow_name": "support", "group_id": "g1", "metadata": {"tier": "gold"}}
    },
    "prompt": {"prompt": {"id": "pmpt_123", "version": "2", "variables": {"city": "Seville"}}},
    "reasoning": {"reasoning": {"effort": "low"}},
    "everything": {
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "noise_reduction": {"type": "far_field", "strength": 0.5},
                "transcription": {"model": "gpt-4o-transcribe"},
                "turn_detection": SERVER_VAD,
            },
            "output": {"speed": 0.9},
        },
        "tools": [FUNCTION_TOOL, MCP_TOOL],
        "tool_choice": "required",
        "max_output_tokens": 4096,
        "output_modalities": ["audio"],
        "include": ["item.input_audio_transcription.logprobs"],
        "truncation": "auto",
        "tracing": "auto",
    },
}


def navai_fields(model: str = "gpt-realtime", voice: str = "marin", **extra: Any) -> dict[str, Any]:
    return {
        "type": "realtime",
        "model": model,
        "instructions": "You are a helpful assistant.",
        "audio": {"output": {"voice": voice}},
        **extra,
    }


def laid_over(template: Mapping[str, Any], computed: Mapping[str, Any]) -> dict[str, Any]:
    """What the issue promises is sent: ``computed`` laid over ``template``
    object by object (written out here, not navai's merge)."""
    result = copy.deepcopy(dict(template))
    for key, value in computed.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = laid_over(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


@pytest.mark.parametrize("template", list(GOOD_TEMPLATES.values()), ids=list(GOOD_TEMPLATES))
def test_a_template_reaches_openai_as_given_and_openai_knows_every_key(
    template: dict[str, Any],
) -> None:
    # The template is a fixture checked against openai-python, as the issue asks.
    assert_openai_accepts({"type": "realtime", **template})
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = options(fake, session=template)
    assert opts.session == template
    with fake.sync_transport() as transport:
        create_realtime_client_secret_sync(opts, transport=transport)
    session = sent(fake)
    assert session == laid_over(template, navai_fields())
    assert_openai_accepts(session)
    assert fake.requests[0].json["expires_after"] == {"anchor": "created_at", "seconds": 600}


@pytest.mark.parametrize("name", ["everything", "input_audio", "function_tool"])
def test_the_environment_spells_the_template_as_json(name: str) -> None:
    template = GOOD_TEMPLATES[name]
    from_env = get_navai_voice_backend_options_from_env(
        {"OPENAI_API_KEY": "sk-x", "OPENAI_REALTIME_SESSION": json.dumps(template)}
    )
    assert from_env.session == template
    assert (
        from_env.session
        == NavaiVoiceBackendOptions(openai_api_key="sk-x", session=template).session
    )


def test_a_json_string_in_code_is_read_like_the_environment() -> None:
    template = GOOD_TEMPLATES["server_vad"]
    opts = NavaiVoiceBackendOptions(openai_api_key="sk-x", session=json.dumps(template))
    assert opts.session == template


def test_no_template_and_an_empty_one_send_navai_fields_only() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    for template in (None, {}, "{}"):
        opts = options(fake, session=template)
        with fake.sync_transport() as transport:
            create_realtime_client_secret_sync(opts, transport=transport)
        assert sent(fake) == navai_fields()
        assert_openai_accepts(sent(fake))


def test_the_options_hold_their_own_copy_of_the_template() -> None:
    template = {
        "tools": [dict(FUNCTION_TOOL)],
        "audio": {"input": {"turn_detection": dict(SERVER_VAD)}},
    }
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = options(fake, session=template)
    template["tools"].append({"type": "function", "name": "late"})
    template["audio"]["input"]["turn_detection"]["threshold"] = 0.9
    with fake.sync_transport() as transport:
        create_realtime_client_secret_sync(opts, transport=transport)
    assert sent(fake)["tools"] == [FUNCTION_TOOL]
    assert sent(fake)["audio"]["input"]["turn_detection"]["threshold"] == 0.6


# -- templates refused at start-up -------------------------------------------------------------

# navai's own fields: the error names the field and the option to use instead.
OWNED: list[tuple[dict[str, Any], str, str]] = [
    # (template, the field named, the way out named)
    ({"type": "realtime"}, "type", "remove it"),
    ({"model": "gpt-realtime-mini"}, "model", "default_model"),
    ({"instructions": "Be brief."}, "instructions", "default_instructions"),
    (
        {"audio": {"output": {"voice": "cedar", "speed": 1.1}}},
        "audio.output.voice",
        "default_voice",
    ),
]


@pytest.mark.parametrize(
    ("template", "field", "instead"), OWNED, ids=["type", "model", "instructions", "voice"]
)
def test_a_template_setting_navai_fields_is_an_options_error_naming_the_option(
    template: dict[str, Any], field: str, instead: str
) -> None:
    with pytest.raises(OptionsError) as caught:
        NavaiVoiceBackendOptions(openai_api_key="sk-x", session=template)
    message = caught.value.message
    assert message.startswith(f"session sets {field}, which navai sets itself;"), message
    assert instead in message.partition(";")[2]
    # The same from the environment, and allow_unknown_session_fields does not relax it.
    with pytest.raises(OptionsError) as from_env:
        get_navai_voice_backend_options_from_env(
            {"OPENAI_API_KEY": "sk-x", "OPENAI_REALTIME_SESSION": json.dumps(template)}
        )
    assert from_env.value.message == message
    with pytest.raises(OptionsError):
        NavaiVoiceBackendOptions(
            openai_api_key="sk-x", session=template, allow_unknown_session_fields=True
        )


# Values OpenAI's API refuses (openai-python's types check their shapes, not
# their ranges): (template, the words the error must hold).
BAD: dict[str, tuple[Any, str]] = {
    "unknown_top_level": ({"tool_choise": "auto"}, "extra fields found (tool_choise) @ session"),
    "number_keys": (
        {"audio": {"output": {1: "x", "speed": 1.0, 2.5: "y"}}},
        "extra fields found (1, 2.5) @ session.audio.output",
    ),
    "unknown_nested": (
        {"audio": {"input": {"noise_reduction": {"type": "near_field", "level": 2}}}},
        "extra fields found (level) @ session.audio.input.noise_reduction",
    ),
    "unknown_in_a_tool": (
        {"tools": [{**FUNCTION_TOOL, "strict": True}]},
        "extra fields found (strict) @ session.tools[0]",
    ),
    "tool_without_name": ({"tools": [{"type": "function"}]}, "session.tools[0].name"),
    "tool_of_unknown_type": (
        {"tools": [{"type": "web_search"}]},
        "@ session.tools[0]",
    ),
    "threshold_out_of_range": (
        {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 2}}}},
        "threshold must be between 0 and 1 @ session.audio.input.turn_detection",
    ),
    "turn_detection_type": (
        {"audio": {"input": {"turn_detection": {"type": "loud"}}}},
        "@ session.audio.input.turn_detection",
    ),
    "eagerness": (
        {"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "very"}}}},
        "'very' is not one of ['low', 'medium', 'high', 'auto'] "
        "@ session.audio.input.turn_detection.eagerness",
    ),
    "audio_format": (
        {"audio": {"input": {"format": {"type": "audio/wav"}}}},
        "expected an object with type 'audio/pcm' or an object with type 'audio/pcmu' "
        "or an object with type 'audio/pcma' @ session.audio.input.format",
    ),
    "audio_rate": (
        {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
        "@ session.audio.input.format.rate",
    ),
    "audio_rate_as_a_float": (
        {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000.0}}}},
        "24000.0 is not one of [24000] @ session.audio.input.format.rate",
    ),
    "noise_reduction_type": (
        {"audio": {"input": {"noise_reduction": {"type": "mid_field"}}}},
        "@ session.audio.input.noise_reduction.type",
    ),
    "transcription_model_type": (
        {"audio": {"input": {"transcription": {"model": 5}}}},
        "expected a string, got int @ session.audio.input.transcription.model",
    ),
    "transcription_delay": (
        {"audio": {"input": {"transcription": {"delay": "never"}}}},
        "@ session.audio.input.transcription.delay",
    ),
    "padding_below_zero": (
        {"audio": {"input": {"turn_detection": {"type": "server_vad", "prefix_padding_ms": -1}}}},
        "session is not a valid session: prefix_padding_ms must be at least 0 "
        "@ session.audio.input.turn_detection",
    ),
    "speed_out_of_range": (
        {"audio": {"output": {"speed": 3}}},
        "speed must be between 0.25 and 1.5 @ session.audio.output",
    ),
    "max_output_tokens_zero": ({"max_output_tokens": 0}, "@ session.max_output_tokens"),
    "max_output_tokens_bool": ({"max_output_tokens": True}, "@ session.max_output_tokens"),
    "max_output_tokens_over": ({"max_output_tokens": 4097}, "@ session.max_output_tokens"),
    "max_output_tokens_word": ({"max_output_tokens": "lots"}, "@ session.max_output_tokens"),
    "modality": ({"output_modalities": ["video"]}, "@ session.output_modalities[0]"),
    "include": ({"include": ["everything"]}, "@ session.include[0]"),
    "tool_choice": (
        {"tool_choice": "sometimes"},
        "expected 'none' or 'auto' or 'required' or an object with type 'function' "
        "or an object with type 'mcp' @ session.tool_choice",
    ),
    "truncation_ratio": (
        {"truncation": {"type": "retention_ratio", "retention_ratio": 1.5}},
        "@ session.truncation",
    ),
    "tracing": ({"tracing": "manual"}, "expected 'auto' or an object @ session.tracing"),
    "tracing_field": (
        {"tracing": {"workflow_name": 5}},
        "expected a string, got int @ session.tracing.workflow_name",
    ),
    "mcp_allowed_tool_names": (
        {"tools": [{**MCP_TOOL, "allowed_tools": ["search", 1]}]},
        "expected a list of tool names @ session.tools[0].allowed_tools",
    ),
    "mcp_allowed_tools_filter": (
        {"tools": [{**MCP_TOOL, "allowed_tools": {"tool_names": "search"}}]},
        "expected a list, got str @ session.tools[0].allowed_tools.tool_names",
    ),
    "mcp_require_approval_word": (
        {"tools": [{**MCP_TOOL, "require_approval": "sometimes"}]},
        "expected 'always' or 'never' or an object @ session.tools[0].require_approval",
    ),
    "mcp_require_approval_filter": (
        {"tools": [{**MCP_TOOL, "require_approval": {"always": {"tool_names": 3}}}]},
        "expected a list, got int @ session.tools[0].require_approval.always.tool_names",
    ),
    "prompt_variable_number": (
        {"prompt": {"id": "pmpt_123", "variables": {"count": 5}}},
        "expected a string or an object @ session.prompt.variables['count']",
    ),
    "prompt_input_field": (
        {"prompt": {"id": "pmpt_123", "variables": {"logo": {"type": "input_text", "text": 5}}}},
        "expected a string, got int @ session.prompt.variables['logo'].text",
    ),
    "mcp_allowed_tools_word": (
        {"tools": [{**MCP_TOOL, "allowed_tools": "search"}]},
        "expected a list of tool names or an object @ session.tools[0].allowed_tools",
    ),
    "parallel_tool_calls": (
        {"parallel_tool_calls": "yes"},
        "expected true or false, got str @ session.parallel_tool_calls",
    ),
    "prompt_without_id": ({"prompt": {"version": "1"}}, "@ session.prompt.id"),
    "reasoning_effort": ({"reasoning": {"effort": "max"}}, "@ session.reasoning.effort"),
    "mcp_header_value": (
        {"tools": [{**MCP_TOOL, "headers": {"X-Tenant": 1}}]},
        "@ session.tools[0]",
    ),
    "not_an_object": ([{"tools": []}], "session must be a JSON object of session fields."),
    "not_json": ('{"tools": [', "session is not valid JSON"),
    "json_not_an_object": ("[1, 2]", "session must be a JSON object of session fields."),
}


@pytest.mark.parametrize(("template", "words"), list(BAD.values()), ids=list(BAD))
def test_a_template_openai_would_refuse_is_an_options_error_at_start_up(
    template: Any, words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(OptionsError) as caught:
        NavaiVoiceBackendOptions(openai_api_key="sk-x", session=template)
    assert words in caught.value.message
    assert caught.value.message.startswith("session ")
    # From the environment, a middleware without opts fails when it is built.
    raw = template if isinstance(template, str) else json.dumps(template)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    monkeypatch.setenv("OPENAI_REALTIME_SESSION", raw)
    with pytest.raises(OptionsError) as at_start:
        NavaiWSGIMiddleware(inner_wsgi)
    assert words in at_start.value.message
    with pytest.raises(OptionsError):
        NavaiASGIMiddleware(inner_asgi)


# Values navai's schema lets through that openai-python's types refuse, or
# keys those types do not know. Each should be an options error at start-up.
LOOSER_THAN_OPENAI: dict[str, dict[str, Any]] = {
    "rate_on_pcmu": {"audio": {"input": {"format": {"type": "audio/pcmu", "rate": 24000}}}},
    "rate_on_pcma": {"audio": {"output": {"format": {"type": "audio/pcma", "rate": 24000}}}},
    "prompt_variable_not_a_string": {"prompt": {"id": "pmpt_123", "variables": {"count": 5}}},
    "mcp_connector_id": {"tools": [{**MCP_TOOL, "connector_id": "connector_nowhere"}]},
    "mcp_allowed_tools_filter": {
        "tools": [{**MCP_TOOL, "allowed_tools": {"tool_names": "search"}}]
    },
    "mcp_require_approval_filter": {
        "tools": [{**MCP_TOOL, "require_approval": {"always": {"tool_names": 3}}}]
    },
}


@pytest.mark.parametrize(
    "template", list(LOOSER_THAN_OPENAI.values()), ids=list(LOOSER_THAN_OPENAI)
)
def test_a_template_openai_python_refuses_is_refused_at_start_up(template: dict[str, Any]) -> None:
    assert openai_problems({"type": "realtime", **template}) != []
    with pytest.raises(OptionsError):
        NavaiVoiceBackendOptions(openai_api_key="sk-x", session=template)


def test_the_error_lists_the_first_problems_of_a_bad_template() -> None:
    with pytest.raises(OptionsError) as caught:
        NavaiVoiceBackendOptions(
            openai_api_key="sk-x",
            session={"tool_choice": "sometimes", "max_output_tokens": 0},
        )
    assert "@ session.tool_choice" in caught.value.message
    assert "@ session.max_output_tokens" in caught.value.message


# -- unknown fields, when the server opts in -----------------------------------------------------


def test_unknown_fields_pass_through_only_when_allowed() -> None:
    template = {
        "new_field": {"enabled": True},
        "audio": {"input": {"noise_reduction": {"type": "near_field", "new_knob": 3}}},
        "max_output_tokens": 800,
    }
    with pytest.raises(OptionsError) as caught:
        NavaiVoiceBackendOptions(openai_api_key="sk-x", session=template)
    assert "new_field" in caught.value.message
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = options(fake, session=template, allow_unknown_session_fields=True)
    with fake.sync_transport() as transport:
        create_realtime_client_secret_sync(opts, transport=transport)
    session = sent(fake)
    assert session == laid_over(template, navai_fields())
    # Exactly the unknown keys are what openai-python does not know.
    assert sorted(openai_problems(session)) == [
        "unknown key session.audio.input.noise_reduction.new_knob",
        "unknown key session.new_field",
    ]


def test_allowing_unknown_fields_still_checks_the_known_ones() -> None:
    with pytest.raises(OptionsError) as caught:
        NavaiVoiceBackendOptions(
            openai_api_key="sk-x",
            allow_unknown_session_fields=True,
            session={"new_field": 1, "max_output_tokens": 5000},
        )
    assert caught.value.message == (
        "session is not a valid session: expected an integer from 1 to 4096, or 'inf' "
        "@ session.max_output_tokens"
    )


def test_the_template_check_refuses_unknown_fields_unless_told_otherwise() -> None:
    with pytest.raises(OptionsError) as caught:
        check_session({"new_field": 1})
    assert caught.value.message == (
        "session is not a valid session: extra fields found (new_field) @ session"
    )
    assert check_session({"new_field": 1}, unknown_ok=True) == {"new_field": 1}


def test_the_template_check_reads_json_text() -> None:
    assert check_session('{"max_output_tokens": 800}') == {"max_output_tokens": 800}


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            '{"tools": [',
            "realtime_session is not valid JSON: Expecting value: line 1 column 12 (char 11)",
        ),
        ("[1, 2]", "realtime_session must be a JSON object of session fields."),
        ([{"tools": []}], "realtime_session must be a JSON object of session fields."),
    ],
    ids=["not-json", "json-not-an-object", "not-an-object"],
)
def test_the_template_check_names_its_option_for_what_is_not_a_json_object(
    template: Any, message: str
) -> None:
    with pytest.raises(OptionsError) as caught:
        check_session(template, option="realtime_session")
    assert caught.value.message == message


def test_a_transcription_template_is_checked_as_one() -> None:
    template = {"max_output_tokens": 800}  # a realtime field only
    assert check_session(template) == template
    with pytest.raises(OptionsError) as caught:
        check_session(template, kind="transcription")
    assert caught.value.message == (
        "session is not a valid session: extra fields found (max_output_tokens) @ session"
    )


def test_allow_unknown_session_fields_must_be_a_bool() -> None:
    with pytest.raises(OptionsError) as caught:
        NavaiVoiceBackendOptions(openai_api_key="sk-x", allow_unknown_session_fields="yes")
    assert "allow_unknown_session_fields must be True or False" in caught.value.message


# -- ElevenLabs speech: output is navai's ---------------------------------------------------------


def elevenlabs(fake: FakeOpenAIRealtime, **kw: Any) -> NavaiVoiceBackendOptions:
    return options(fake, tts_provider="elevenlabs", elevenlabs_api_key="xi-test", **kw)


@pytest.mark.parametrize(
    ("template", "field"),
    [
        ({"output_modalities": ["text"]}, "output_modalities"),
        ({"audio": {"output": {"speed": 1.2}}}, "audio.output"),
        ({"audio": {"output": {"format": {"type": "audio/pcm"}}}}, "audio.output"),
    ],
    ids=["output_modalities", "speed", "format"],
)
def test_under_elevenlabs_output_fields_in_the_template_are_options_errors(
    template: dict[str, Any], field: str
) -> None:
    with pytest.raises(OptionsError) as caught:
        NavaiVoiceBackendOptions(openai_api_key="sk-x", tts_provider="elevenlabs", session=template)
    message = caught.value.message
    assert message.startswith(f"session sets {field}, which navai sets itself;"), message
    assert "ElevenLabs" in message
    # The same template is fine when OpenAI voices the session.
    assert NavaiVoiceBackendOptions(openai_api_key="sk-x", session=template).session == template


def test_under_elevenlabs_the_template_keeps_its_input_audio() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    template = GOOD_TEMPLATES["input_audio"] | {"tools": [FUNCTION_TOOL]}
    opts = elevenlabs(fake, session=template)
    with fake.sync_transport() as transport:
        secret = create_realtime_client_secret_sync(opts, {"voice": "ash"}, transport=transport)
    assert secret.speech == {"provider": "elevenlabs"}
    session = sent(fake)
    assert session == {
        **template,
        "type": "realtime",
        "model": "gpt-realtime",
        "instructions": "You are a helpful assistant.",
        "output_modalities": ["text"],
    }
    assert "output" not in session["audio"]
    assert_openai_accepts(session)


# -- precedence: request > option default > built-in; the template for the rest -----------------

TEMPLATE = {
    "audio": {"input": {"turn_detection": SERVER_VAD}, "output": {"speed": 1.1}},
    "tools": [FUNCTION_TOOL],
}

PRECEDENCE: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    # (options, request body, navai's fields expected)
    "built_in_defaults": (
        {},
        {},
        {"model": "gpt-realtime", "voice": "marin", "instructions": "You are a helpful assistant."},
    ),
    "option_defaults": (
        {
            "default_model": "gpt-realtime-mini",
            "default_voice": "cedar",
            "default_instructions": "Be brief.",
        },
        {},
        {"model": "gpt-realtime-mini", "voice": "cedar", "instructions": "Be brief."},
    ),
    "request_over_option_defaults": (
        {
            "default_model": "gpt-realtime-mini",
            "default_voice": "cedar",
            "default_instructions": "Be brief.",
        },
        {"model": "gpt-4o-realtime-preview", "voice": "ash", "instructions": "Talk like a pirate."},
        {"model": "gpt-4o-realtime-preview", "voice": "ash", "instructions": "Talk like a pirate."},
    ),
    "request_over_built_in": (
        {},
        {"model": "gpt-realtime-mini", "voice": "verse"},
        {
            "model": "gpt-realtime-mini",
            "voice": "verse",
            "instructions": "You are a helpful assistant.",
        },
    ),
    "language_accent_tone": (
        {
            "default_language": "French",
            "default_voice_accent": "Parisian",
            "default_voice_tone": "calm",
        },
        {"language": "Spanish", "voiceTone": "cheerful"},
        {
            "model": "gpt-realtime",
            "voice": "marin",
            "instructions": "You are a helpful assistant.\nAlways reply in Spanish.\n"
            "Use a Parisian accent while speaking.\nUse a cheerful tone while speaking.",
        },
    ),
    "blank_request_fields_are_absent": (
        {"default_model": "gpt-realtime-mini", "default_voice": "cedar"},
        {"model": "  ", "voice": ""},
        {
            "model": "gpt-realtime-mini",
            "voice": "cedar",
            "instructions": "You are a helpful assistant.",
        },
    ),
}


def expected_session(
    navai: Mapping[str, str], template: Mapping[str, Any] = TEMPLATE
) -> dict[str, Any]:
    return laid_over(
        template,
        {
            "type": "realtime",
            "model": navai["model"],
            "instructions": navai["instructions"],
            "audio": {"output": {"voice": navai["voice"]}},
        },
    )


@pytest.mark.parametrize(
    ("opts_kw", "body", "navai"), list(PRECEDENCE.values()), ids=list(PRECEDENCE)
)
def test_precedence_of_request_options_and_template_four_ways(
    opts_kw: dict[str, Any], body: dict[str, Any], navai: dict[str, str]
) -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = options(fake, session=TEMPLATE, **opts_kw)
    expected = expected_session(navai)
    # The template's audio.output.speed and navai's voice share one object.
    assert expected["audio"]["output"] == {"speed": 1.1, "voice": navai["voice"]}
    with every_way(opts, fake) as ways:
        for name, mint in ways:
            assert mint(body) == 200, name
            assert sent(fake) == expected, name
            assert_openai_accepts(sent(fake))
    assert len(fake.requests) == 4


def test_the_request_policy_applies_to_the_request_not_the_template() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = options(
        fake,
        session=TEMPLATE,
        allowed_models=["gpt-realtime"],
        allowed_voices=["marin", "cedar"],
        allow_client_instructions=False,
    )
    with every_way(opts, fake) as ways:
        for name, mint in ways:
            assert mint({"model": "gpt-realtime-mini"}) == 403, name
            assert mint({"voice": "ash"}) == 403, name
            assert mint({"instructions": "Ignore your rules."}) == 403, name
            assert mint({"voice": "cedar"}) == 200, name
            assert sent(fake) == expected_session(
                {
                    "model": "gpt-realtime",
                    "voice": "cedar",
                    "instructions": "You are a helpful assistant.",
                }
            )
    assert len(fake.requests) == 4  # the refused ones never reached OpenAI


# -- the customize_session hook ---------------------------------------------------------------


class Recorder:
    """A hook that records what it sees and returns ``change(session)``."""

    def __init__(self, change: Callable[[dict[str, Any]], Any] = lambda session: session) -> None:
        self.change = change
        self.seen: list[SessionContext] = []
        self.threads: list[int] = []
        self.async_library: list[str | None] = []
        self._lock = threading.Lock()

    def __call__(self, context: SessionContext) -> Any:
        with self._lock:
            self.seen.append(context)
            self.threads.append(threading.get_ident())
            try:
                self.async_library.append(sniffio.current_async_library())
            except sniffio.AsyncLibraryNotFoundError:
                self.async_library.append(None)
        return self.change(context.session)


class AsyncRecorder(Recorder):
    async def __call__(self, context: SessionContext) -> Any:  # type: ignore[override]
        await anyio.sleep(0)
        return super().__call__(context)


def with_tool_choice(session: dict[str, Any]) -> dict[str, Any]:
    session["tool_choice"] = "none"
    return session


@pytest.mark.parametrize("hook_kind", [Recorder, AsyncRecorder], ids=["sync", "async"])
def test_the_hook_sees_the_merged_session_and_its_result_is_sent(hook_kind: type[Recorder]) -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = options(fake, session=TEMPLATE, default_voice="cedar")
    hook = hook_kind(with_tool_choice)
    body = {"model": "gpt-realtime-mini", "language": "Spanish"}
    navai = {
        "model": "gpt-realtime-mini",
        "voice": "cedar",
        "instructions": "You are a helpful assistant.\nAlways reply in Spanish.",
    }
    with every_way(opts, fake, customize=hook) as ways:
        for name, mint in ways:
            assert mint(body) == 200, name
            assert hook.seen[-1].session == {**expected_session(navai), "tool_choice": "none"}, name
            assert hook.seen[-1].kind == "realtime"
            assert sent(fake) == {**expected_session(navai), "tool_choice": "none"}, name
            assert_openai_accepts(sent(fake))
        count = len(ways)
    assert len(hook.seen) == count == len(fake.requests)
    # Each call had a copy of its own: the options' template is untouched.
    assert opts.session == TEMPLATE


@pytest.mark.parametrize("hook_kind", [Recorder, AsyncRecorder], ids=["sync", "async"])
def test_the_hook_runs_last_and_may_change_navai_fields(hook_kind: type[Recorder]) -> None:
    def override(session: dict[str, Any]) -> dict[str, Any]:
        session["model"] = "gpt-realtime-2025-08-28"
        session["instructions"] = "Tenant instructions."
        session["audio"]["output"]["voice"] = "sage"
        del session["tools"]
        return session

    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = options(
        fake,
        session=TEMPLATE,
        allowed_models=["gpt-realtime", "gpt-realtime-2025-08-28"],
        allow_client_instructions=False,
    )
    with every_way(opts, fake, customize=hook_kind(override)) as ways:
        for name, mint in ways:
            assert mint({"model": "gpt-realtime", "voice": "ash"}) == 200, name
            session = sent(fake)
            assert session["model"] == "gpt-realtime-2025-08-28", name
            assert session["instructions"] == "Tenant instructions."
            assert session["audio"] == {
                "input": {"turn_detection": SERVER_VAD},
                "output": {"speed": 1.1, "voice": "sage"},
            }
            assert "tools" not in session
            assert_openai_accepts(session)


def test_a_request_refused_by_policy_never_reaches_the_hook() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    hook = Recorder()
    opts = options(fake, allowed_models=["gpt-realtime"])
    with every_way(opts, fake, customize=hook) as ways:
        for name, mint in ways:
            assert mint({"model": "gpt-realtime-mini"}) == 403, name
    assert hook.seen == []
    assert fake.requests == []


def test_the_hook_gets_the_request_view_and_the_identity_on_both_shells() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    hook = Recorder()
    opts = options(fake)

    def authorize(info: Any) -> str | None:
        return info.headers.get("x-user")

    with shells(opts, fake, customize_session=hook, authorize=authorize) as both:
        for name, post in both:
            response = post(TOKEN, json={}, headers={"x-user": "alice", "x-trace": "t1"})
            assert response.status_code == 200, (name, response.text)
            context = hook.seen[-1]
            assert context.identity == "alice"
            assert context.request is not None
            assert context.request.route == "client_secret"
            assert context.request.path == TOKEN
            assert context.request.headers["x-trace"] == "t1"
            assert context.request.client == "203.0.113.7"
            if name == "asgi":
                assert context.request.scope is not None
                assert context.request.environ is None
            else:
                assert context.request.environ is not None
                assert context.request.scope is None
    with shells(opts, fake, customize_session=hook) as both:
        for _, post in both:
            assert post(TOKEN, json={}).status_code == 200
            assert hook.seen[-1].identity is None  # no guard, no identity
            assert hook.seen[-1].request is not None


def test_the_client_functions_give_the_hook_no_request_and_no_identity() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    hook = Recorder()
    with every_way(options(fake), fake, customize=hook) as ways:
        for name, mint in ways[2:]:
            assert mint({}) == 200, name
            assert hook.seen[-1].request is None
            assert hook.seen[-1].identity is None


def test_a_view_identity_reaches_the_hook() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    hook = Recorder()
    with fake.sync_transport() as transport:
        handler = NavaiHandler(options(fake), transport=transport, customize_session=hook)
        answer = handler.handle(
            "POST", TOKEN, {"Content-Type": "application/json"}, b"{}", identity="u42"
        )
    assert answer.status == 200
    assert hook.seen[-1].identity == "u42"


def test_where_each_shell_runs_a_sync_hook() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    hook = Recorder()
    with shells(options(fake), fake, customize_session=hook) as both:
        for name, post in both:
            assert post(TOKEN, json={}).status_code == 200, name
    # ASGI: off the event loop (a worker thread); WSGI: inline, on the caller's thread.
    assert hook.async_library == [None, None]
    assert hook.threads[1] == threading.get_ident()
    assert hook.threads[0] != threading.get_ident()


def test_an_async_hook_is_awaited_on_the_event_loop() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    hook = AsyncRecorder()
    with shells(options(fake), fake, customize_session=hook) as both:
        assert [name for name, _ in both] == ["asgi"]
        assert both[0][1](TOKEN, json={}).status_code == 200
    assert hook.async_library == ["asyncio"]


class AsyncCallable:
    async def __call__(self, context: SessionContext) -> dict[str, Any]:
        return context.session


@pytest.mark.parametrize("hook", [AsyncRecorder(), AsyncCallable()], ids=["function", "object"])
def test_wsgi_refuses_an_async_hook_when_it_is_built(hook: Any) -> None:
    opts = NavaiVoiceBackendOptions(openai_api_key="sk-x")
    for build in (
        lambda: NavaiWSGIMiddleware(inner_wsgi, opts, customize_session=hook),
        lambda: NavaiHandler(opts, customize_session=hook),
    ):
        with pytest.raises(OptionsError) as caught:
            build()
        assert "customize_session is an async function" in caught.value.message


def test_a_hook_that_is_not_callable_is_refused_when_built() -> None:
    opts = NavaiVoiceBackendOptions(openai_api_key="sk-x")
    with pytest.raises(ValueError, match="customize_session must be a function"):
        NavaiASGIMiddleware(inner_asgi, opts, customize_session="tenant_hook")


def _raises(session: dict[str, Any]) -> dict[str, Any]:
    raise KeyError(f"tenant {CANARY_KEY}")


BROKEN_RESULTS: dict[str, tuple[Callable[[dict[str, Any]], Any], dict[str, Any], str]] = {
    # (change, extra options, what the log says)
    "raises": (_raises, {}, "the customize_session hook raised KeyError"),
    "returns_none": (lambda s: None, {}, "it returned NoneType, not a session object"),
    "returns_a_list": (lambda s: [s], {}, "it returned list, not a session object"),
    "changes_the_type": (
        lambda s: {**s, "type": "transcription"},
        {},
        "it changed the session's type to 'transcription'",
    ),
    "drops_the_type": (
        lambda s: {k: v for k, v in s.items() if k != "type"},
        {},
        "it changed the session's type to None",
    ),
    "unknown_field": (
        lambda s: {**s, "tool_choise": "auto"},
        {},
        "extra fields found (tool_choise) @ session",
    ),
    "bad_value": (
        lambda s: {**s, "max_output_tokens": 0},
        {},
        "@ session.max_output_tokens",
    ),
    "bad_voice_type": (
        lambda s: {**s, "audio": {"output": {"voice": 7}}},
        {},
        "@ session.audio.output.voice",
    ),
    "model_outside_policy": (
        lambda s: {**s, "model": "gpt-realtime-mini"},
        {"allowed_models": ["gpt-realtime"]},
        "model 'gpt-realtime-mini' is not in allowed_models",
    ),
    "voice_outside_policy": (
        lambda s: {**s, "audio": {"output": {"voice": "alloy"}}},
        {"allowed_voices": ["marin"]},
        "voice 'alloy' is not in allowed_voices",
    ),
}


@pytest.mark.parametrize(
    ("change", "opts_kw", "logged"), list(BROKEN_RESULTS.values()), ids=list(BROKEN_RESULTS)
)
@pytest.mark.parametrize("hook_kind", [Recorder, AsyncRecorder], ids=["sync", "async"])
def test_a_hook_that_raises_or_breaks_the_schema_or_policy_is_logged_and_503(
    change: Callable[[dict[str, Any]], Any],
    opts_kw: dict[str, Any],
    logged: str,
    hook_kind: type[Recorder],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = options(fake, **opts_kw)
    hook = hook_kind(change)
    caplog.set_level(logging.ERROR, logger="navai_mw")
    with shells(opts, fake, customize_session=hook) as both:
        for name, post in both:
            caplog.clear()
            response = post(TOKEN, json={})
            assert response.status_code == 503, (name, response.text)
            assert response.json() == NOT_PREPARED
            assert CANARY_KEY not in response.text
            messages = [record.getMessage() for record in caplog.records]
            assert any(logged in message for message in messages), messages
            if change is _raises:  # the app's own traceback, for its developer
                [raised] = [r for r in caplog.records if "hook raised" in r.getMessage()]
                assert log_message(raised) == "navai_mw: the customize_session hook raised KeyError"
                assert raised.exc_info is not None
                assert isinstance(raised.exc_info[1], KeyError)
    with every_way(opts, fake, customize=hook) as ways:
        for name, mint in ways[-2:]:
            assert mint({}) == 503, name
    assert fake.requests == []  # nothing unfit was sent
    assert len(hook.seen) >= 3


def test_a_hook_raising_a_request_error_refuses_with_its_own_status() -> None:
    def refuse(context: SessionContext) -> dict[str, Any]:
        raise RequestError("Voice is not in your plan.", status=403)

    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    with shells(options(fake), fake, customize_session=refuse) as both:
        for name, post in both:
            response = post(TOKEN, json={})
            assert response.status_code == 403, name
            assert response.json() == {"error": "Voice is not in your plan."}
    assert fake.requests == []


def test_a_hook_result_with_unknown_fields_is_sent_when_they_are_allowed() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)

    def future(session: dict[str, Any]) -> dict[str, Any]:
        return {**session, "new_field": {"on": True}}

    for allowed, status in ((False, 503), (True, 200)):
        opts = options(fake, allow_unknown_session_fields=allowed)
        with every_way(opts, fake, customize=Recorder(future)) as ways:
            for name, mint in ways:
                assert mint({}) == status, (name, allowed)
    assert len(fake.requests) == 4
    assert sent(fake)["new_field"] == {"on": True}


def test_a_hook_may_mutate_its_copy_without_touching_the_next_request() -> None:
    def grow(session: dict[str, Any]) -> dict[str, Any]:
        session["tools"].append({"type": "function", "name": f"extra_{len(session['tools'])}"})
        session["audio"]["input"]["turn_detection"]["threshold"] = 0.1
        return session

    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = options(fake, session=TEMPLATE)
    with every_way(opts, fake, customize=Recorder(grow)) as ways:
        for name, mint in ways:
            assert mint({}) == 200, name
            assert [tool["name"] for tool in sent(fake)["tools"]] == ["get_weather", "extra_1"]
    assert opts.session == TEMPLATE


def test_a_hook_may_drop_the_audio_object() -> None:
    """OpenAI's schema lets ``audio`` be null, and so does navai's check:
    such a result passes both checks, and must be sent (not crash)."""

    def no_audio(session: dict[str, Any]) -> dict[str, Any]:
        return {**session, "audio": None}

    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    assert_openai_accepts({**navai_fields(), "audio": None})
    with every_way(options(fake), fake, customize=Recorder(no_audio)) as ways:
        for name, mint in ways:
            assert mint({}) == 200, name
            assert sent(fake)["audio"] is None


@pytest.mark.anyio
async def test_async_handler_runs_the_hook() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    hook = AsyncRecorder(with_tool_choice)
    handler = AsyncNavaiHandler(
        options(fake), transport=fake.async_transport(), customize_session=hook
    )
    try:
        answer = await handler.handle(
            "POST", TOKEN, {"content-type": "application/json"}, b"{}", identity="u7"
        )
    finally:
        await handler.transport.aclose()  # type: ignore[attr-defined]
    assert answer.status == 200
    assert hook.seen[-1].identity == "u7"
    assert sent(fake)["tool_choice"] == "none"


# -- what a session cannot carry, named -------------------------------------------------------


def _nested(value: Any, levels: int) -> Any:
    for _ in range(levels):
        value = [value]
    return value


def _nested_objects(value: Any, levels: int) -> Any:
    for _ in range(levels):
        value = {"a": value}
    return value


def _holding_itself() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    ("data", "where"),
    [
        pytest.param({"a": 1.5, "b": {1}}, "s.b is a set", id="a-set"),
        pytest.param({"a": float("-inf")}, "s.a is -inf", id="an-infinity"),
        pytest.param({None: float("nan")}, "s.None is nan", id="nan-under-a-null-key"),
        pytest.param({(1, 2): 1}, "s has a key that is a tuple", id="a-tuple-key"),
        pytest.param({"a": {float("nan"): 1}}, "s.a has a key that is nan", id="a-nan-key"),
        pytest.param(
            {"a": 10**5000}, "s.a is an integer too long to write", id="a-too-long-integer"
        ),
        pytest.param(
            {10**5000: 1}, "s has a key that is an integer too long to write", id="a-too-long-key"
        ),
        pytest.param(_nested_objects({1}, 63), "s" + ".a" * 63 + " is a set", id="63-objects-down"),
        pytest.param(
            _nested_objects({1}, 64),
            ("s" + ".a" * 64)[:80] + "... nests deeper than 64 levels (or holds itself)",
            id="64-objects-down",
        ),
        pytest.param(_nested({1}, 63), "s" + "[0]" * 63 + " is a set", id="63-levels-down"),
        pytest.param(
            _nested({1}, 64),
            ("s" + "[0]" * 64)[:80] + "... nests deeper than 64 levels (or holds itself)",
            id="64-levels-down",
        ),
        pytest.param(
            _holding_itself(),
            ("s" + "[0]" * 64)[:80] + "... nests deeper than 64 levels (or holds itself)",
            id="holds-itself",
        ),
    ],
)
def test_what_json_cannot_carry_is_named_where_it_is(data: Any, where: str) -> None:
    with pytest.raises(OptionsError) as caught:
        check_json(data, "s")
    assert caught.value.message == f"s cannot be sent as JSON: {where}."
