"""What a browser may ask for, as ``@navai/voice-frontend`` spells it, and the
one cattrs converter that structures it (a 400 naming the field)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from .errors import RequestError
from .values import check_text, clean_key, optional_text


@attrs.frozen(kw_only=True)
class CreateClientSecretRequest:
    """What a client may ask for; every field optional.

    Fields: model, voice, instructions, language, voice_accent, voice_tone,
    api_key. On the wire (JSON) the last three are ``voiceAccent``,
    ``voiceTone`` and ``apiKey``. Blank strings count as absent.
    """

    model: str | None = optional_text()
    voice: str | None = optional_text()
    instructions: str | None = optional_text()
    language: str | None = optional_text()
    voice_accent: str | None = optional_text()
    voice_tone: str | None = optional_text()
    api_key: str | None = attrs.field(
        default=None, converter=clean_key, validator=check_text, repr=False
    )


@attrs.frozen(kw_only=True)
class CreateTranscriptionSecretRequest:
    """What a client may ask of a transcription session: language, prompt
    and (where the options allow it) api_key, ``apiKey`` on the wire."""

    language: str | None = optional_text()
    prompt: str | None = optional_text()
    api_key: str | None = attrs.field(
        default=None, converter=clean_key, validator=check_text, repr=False
    )


# Wire spelling of CreateClientSecretRequest, as @navai/voice-frontend sends it.
WIRE_NAMES: Final = {
    "model": "model",
    "voice": "voice",
    "instructions": "instructions",
    "language": "language",
    "voice_accent": "voiceAccent",
    "voice_tone": "voiceTone",
    "api_key": "apiKey",
}


def _strict_str(value: object, _: object) -> str:
    # cattrs would turn 5 into "5"; a wrong JSON type is the client's mistake.
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


converter: Final = cattrs.Converter()

NOT_AN_OBJECT: Final = "Request body must be a JSON object."


def structure_request(
    data: CreateClientSecretRequest | Mapping[str, Any] | None,
) -> CreateClientSecretRequest:
    """Turn a wire-spelled mapping (``voiceAccent``...) into a request.

    A field of the wrong JSON type is a 400 naming the field, in wire spelling.
    """
    if data is None:
        return CreateClientSecretRequest()
    if isinstance(data, CreateClientSecretRequest):
        return data
    if not isinstance(data, Mapping):  # a number, a list, a string from a view's json.loads
        raise RequestError(NOT_AN_OBJECT)
    try:
        return converter.structure(data, CreateClientSecretRequest)
    except TypeError:
        fields = sorted(
            wire
            for wire in WIRE_NAMES.values()
            if data.get(wire) is not None and not isinstance(data[wire], str)
        )
        raise RequestError(
            f"Invalid request field {', '.join(fields)}: expected a string."
        ) from None


def structure_transcription_request(
    data: CreateTranscriptionSecretRequest | Mapping[str, Any] | None,
) -> CreateTranscriptionSecretRequest:
    """A transcription-secret request from its wire spelling (``language``,
    ``prompt``, ``apiKey``); a field of the wrong type is a 400 naming it."""
    if data is None:
        return CreateTranscriptionSecretRequest()
    if isinstance(data, CreateTranscriptionSecretRequest):
        return data
    if not isinstance(data, Mapping):
        raise RequestError(NOT_AN_OBJECT)
    try:
        return converter.structure(data, CreateTranscriptionSecretRequest)
    except TypeError:
        fields = sorted(
            name
            for name in ("apiKey", "language", "prompt")
            if data.get(name) is not None and not isinstance(data[name], str)
        )
        raise RequestError(
            f"Invalid request field {', '.join(fields)}: expected a string."
        ) from None


converter.register_structure_hook(str, _strict_str)
converter.register_structure_hook(
    CreateClientSecretRequest,
    make_dict_structure_fn(
        CreateClientSecretRequest,
        converter,
        _cattrs_forbid_extra_keys=False,
        # Plain errors are several times faster to structure with; the field
        # names for the 400 are worked out only when structuring fails.
        _cattrs_detailed_validation=False,
        voice_accent=override(rename=WIRE_NAMES["voice_accent"]),
        voice_tone=override(rename=WIRE_NAMES["voice_tone"]),
        api_key=override(rename=WIRE_NAMES["api_key"]),
    ),
)
converter.register_structure_hook(
    CreateTranscriptionSecretRequest,
    make_dict_structure_fn(
        CreateTranscriptionSecretRequest,
        converter,
        _cattrs_forbid_extra_keys=False,
        _cattrs_detailed_validation=False,
        api_key=override(rename="apiKey"),
    ),
)
