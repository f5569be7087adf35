"""The Realtime session a server configures: the ``session=`` template,
checked against OpenAI's session schema when the options are built.

The attrs classes below mirror the fields of OpenAI's
``POST /v1/realtime/client_secrets`` session that navai_mw knows (their
types, enums and ranges); a template is structured into them with a strict
cattrs converter, so that a typo or a value OpenAI would refuse is an
options error at start-up, not a 502 on every request. What is sent is the
template as given (after the check), merged with the fields navai computes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Literal

import attrs
import cattrs

from .errors import OptionsError
from .strict_json import describe_problems as _problems
from .strict_json import strict_lists, strict_scalars

__all__: list[str] = []


def _between(low: float, high: float) -> Any:
    def check(_: object, field: attrs.Attribute[Any], value: object) -> None:
        if value is not None and not low <= value <= high:  # type: ignore[operator]
            raise ValueError(f"{field.name} must be between {low:g} and {high:g}")

    return check


def _at_least(low: int) -> Any:
    def check(_: object, field: attrs.Attribute[Any], value: object) -> None:
        if value is not None and value < low:  # type: ignore[operator]
            raise ValueError(f"{field.name} must be at least {low}")

    return check


# -- audio ----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class PcmFormat:
    type: Literal["audio/pcm"]
    rate: Literal[24000] | None = None


@attrs.frozen(kw_only=True)
class G711Format:
    type: Literal["audio/pcmu", "audio/pcma"]


AudioFormat = PcmFormat | G711Format


@attrs.frozen(kw_only=True)
class ServerVad:
    type: Literal["server_vad"]
    threshold: float | None = attrs.field(default=None, validator=_between(0, 1))
    prefix_padding_ms: int | None = attrs.field(default=None, validator=_at_least(0))
    silence_duration_ms: int | None = attrs.field(default=None, validator=_at_least(0))
    idle_timeout_ms: int | None = attrs.field(default=None, validator=_at_least(0))
    create_response: bool | None = None
    interrupt_response: bool | None = None


@attrs.frozen(kw_only=True)
class SemanticVad:
    type: Literal["semantic_vad"]
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None


@attrs.frozen(kw_only=True)
class NoiseReduction:
    type: Literal["near_field", "far_field"] | None = None
    strength: float | None = attrs.field(default=None, validator=_between(0, 1))


@attrs.frozen(kw_only=True)
class Transcription:
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    languages: list[str] | None = None
    keywords: list[str] | None = None
    delay: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None


@attrs.frozen(kw_only=True)
class AudioInput:
    format: AudioFormat | None = None
    noise_reduction: NoiseReduction | None = None
    transcription: Transcription | None = None
    turn_detection: ServerVad | SemanticVad | None = None


@attrs.frozen(kw_only=True)
class AudioOutput:
    format: AudioFormat | None = None
    speed: float | None = attrs.field(default=None, validator=_between(0.25, 1.5))
    voice: str | None = None


@attrs.frozen(kw_only=True)
class Audio:
    input: AudioInput | None = None
    output: AudioOutput | None = None


# -- tools ----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class FunctionTool:
    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


@attrs.frozen(kw_only=True)
class McpToolFilter:
    tool_names: list[str] | None = None
    read_only: bool | None = None


@attrs.frozen(kw_only=True)
class McpApprovalFilter:
    always: McpToolFilter | None = None
    never: McpToolFilter | None = None


McpAllowedTools = list[str] | McpToolFilter
McpApproval = Literal["always", "never"] | McpApprovalFilter
Connector = Literal[
    "connector_dropbox",
    "connector_gmail",
    "connector_googlecalendar",
    "connector_googledrive",
    "connector_microsoftteams",
    "connector_outlookcalendar",
    "connector_outlookemail",
    "connector_sharepoint",
]


@attrs.frozen(kw_only=True)
class McpTool:
    type: Literal["mcp"]
    server_label: str
    server_url: str | None = None
    server_description: str | None = None
    connector_id: Connector | None = None
    authorization: str | None = None
    headers: dict[str, str] | None = None
    allowed_tools: McpAllowedTools | None = None
    require_approval: McpApproval | None = None
    allowed_callers: list[Literal["direct", "programmatic"]] | None = None
    defer_loading: bool | None = None
    tunnel_id: str | None = None


@attrs.frozen(kw_only=True)
class ToolChoiceFunction:
    type: Literal["function"]
    name: str


@attrs.frozen(kw_only=True)
class ToolChoiceMcp:
    type: Literal["mcp"]
    server_label: str
    name: str | None = None


# -- the rest -------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Tracing:
    workflow_name: str | None = None
    group_id: str | None = None
    metadata: dict[str, Any] | None = None


@attrs.frozen(kw_only=True)
class PromptInput:
    """A prompt variable that is not plain text: text, an image or a file."""

    type: Literal["input_text", "input_image", "input_file"]
    text: str | None = None
    image_url: str | None = None
    file_id: str | None = None
    file_url: str | None = None
    file_data: str | None = None
    filename: str | None = None
    detail: Literal["low", "high", "auto"] | None = None


PromptVariable = str | PromptInput


@attrs.frozen(kw_only=True)
class Prompt:
    id: str
    version: str | None = None
    variables: dict[str, PromptVariable] | None = None


@attrs.frozen(kw_only=True)
class TokenLimits:
    post_instructions: int | None = attrs.field(default=None, validator=_at_least(0))


@attrs.frozen(kw_only=True)
class RetentionRatio:
    type: Literal["retention_ratio"]
    retention_ratio: float = attrs.field(validator=_between(0, 1))
    token_limits: TokenLimits | None = None


@attrs.frozen(kw_only=True)
class Reasoning:
    effort: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None


ToolChoice = Literal["none", "auto", "required"] | ToolChoiceFunction | ToolChoiceMcp
Truncation = Literal["auto", "disabled"] | RetentionRatio
MaxTokens = int | Literal["inf"]
TracingConfig = Literal["auto"] | Tracing


@attrs.frozen(kw_only=True)
class RealtimeSession:
    """The fields of a realtime session (navai's own included, so that a
    ``customize_session`` hook's result is checked whole)."""

    type: Literal["realtime"] | None = None
    model: str | None = None
    instructions: str | None = None
    audio: Audio | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None
    max_output_tokens: MaxTokens | None = None
    output_modalities: list[Literal["text", "audio"]] | None = None
    parallel_tool_calls: bool | None = None
    prompt: Prompt | None = None
    reasoning: Reasoning | None = None
    tool_choice: ToolChoice | None = None
    tools: list[FunctionTool | McpTool] | None = None
    tracing: TracingConfig | None = None
    truncation: Truncation | None = None


@attrs.frozen(kw_only=True)
class TranscriptionAudio:
    input: AudioInput | None = None


@attrs.frozen(kw_only=True)
class TranscriptionSession:
    type: Literal["transcription"] | None = None
    audio: TranscriptionAudio | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None


# -- the converter ----------------------------------------------------------------------


def _by_type(
    converter: cattrs.Converter, options: Mapping[str, type], words: tuple[str, ...] = ()
) -> Any:
    """A union told apart by its ``type`` field, or one of ``words``."""

    def structure(value: object, _: object) -> Any:
        if isinstance(value, str) and value in words:
            return value
        if isinstance(value, dict):
            kind = options.get(value.get("type"))  # type: ignore[arg-type]
            if kind is not None:
                return converter.structure(value, kind)
        wanted = [*map(repr, words), *(f"an object with type {key!r}" for key in options)]
        raise ValueError(f"expected {' or '.join(wanted)}")

    return structure


def _tracing(converter: cattrs.Converter) -> Any:
    def structure(value: object, _: object) -> Any:
        if value == "auto":
            return value
        if isinstance(value, dict):
            return converter.structure(value, Tracing)
        raise ValueError("expected 'auto' or an object")

    return structure


def _list_or(converter: cattrs.Converter, kind: type, what: str) -> Any:
    """A list of strings, or an object of ``kind``."""

    def structure(value: object, _: object) -> Any:
        if isinstance(value, list):
            if not all(isinstance(item, str) for item in value):
                raise ValueError(f"expected {what}")
            return value
        if isinstance(value, dict):
            return converter.structure(value, kind)
        raise ValueError(f"expected {what} or an object")

    return structure


def _word_or(converter: cattrs.Converter, kind: type, words: tuple[str, ...] | None) -> Any:
    """One of ``words`` (any string when None), or an object of ``kind``."""

    def structure(value: object, _: object) -> Any:
        if isinstance(value, str) and (words is None or value in words):
            return value
        if isinstance(value, dict):
            return converter.structure(value, kind)
        expected = "a string" if words is None else " or ".join(map(repr, words))
        raise ValueError(f"expected {expected} or an object")

    return structure


def _max_tokens(value: object, _: object) -> Any:
    if value == "inf":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise ValueError("expected an integer from 1 to 4096, or 'inf'")
    return value


def _or_none(hook: Any) -> Any:
    def structure(value: object, kind: object) -> Any:
        return None if value is None else hook(value, kind)

    return structure


def _make_converter(forbid_extra: bool) -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=forbid_extra)
    strict_lists(converter)
    strict_scalars(converter)
    unions: list[tuple[Any, Any]] = [
        (
            ServerVad | SemanticVad,
            _by_type(converter, {"server_vad": ServerVad, "semantic_vad": SemanticVad}),
        ),
        (FunctionTool | McpTool, _by_type(converter, {"function": FunctionTool, "mcp": McpTool})),
        (
            ToolChoice,
            _by_type(
                converter,
                {"function": ToolChoiceFunction, "mcp": ToolChoiceMcp},
                ("none", "auto", "required"),
            ),
        ),
        (
            Truncation,
            _by_type(converter, {"retention_ratio": RetentionRatio}, ("auto", "disabled")),
        ),
        (TracingConfig, _tracing(converter)),
        (
            AudioFormat,
            _by_type(
                converter,
                {"audio/pcm": PcmFormat, "audio/pcmu": G711Format, "audio/pcma": G711Format},
            ),
        ),
        (McpAllowedTools, _list_or(converter, McpToolFilter, "a list of tool names")),
        (McpApproval, _word_or(converter, McpApprovalFilter, ("always", "never"))),
        (PromptVariable, _word_or(converter, PromptInput, None)),
        (MaxTokens, _max_tokens),
    ]
    for union, hook in unions:
        converter.register_structure_hook(union, hook)
        converter.register_structure_hook(union | None, _or_none(hook))
    return converter


@functools.cache
def _converter(unknown_ok: bool) -> cattrs.Converter:
    """Made on first use: most deployments configure no session template."""
    return _make_converter(forbid_extra=not unknown_ok)


def _structure(data: Any, kind: type, *, unknown_ok: bool, path: str) -> None:
    converter = _converter(unknown_ok)
    try:
        converter.structure(data, kind)
    except cattrs.BaseValidationError as exc:
        # Every failure is one: the converter validates in detail, so the
        # class's structuring collects what its fields' hooks and its
        # constructor raise.
        raise OptionsError(f"{path} is not a valid session: {_problems(exc, path)}") from None
