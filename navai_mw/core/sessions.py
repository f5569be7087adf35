"""Session templates checked and merged: the Realtime ``session=`` (against
the schema in :mod:`~navai_mw.core.session_schema`) and GPT-Live's
``live_session=``. Every session checked here can be sent: JSON carries all
of it, without NaN or the infinities."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from typing import Any, Final, Literal

from .errors import OptionsError
from .http import compact_json
from .session_schema import RealtimeSession, TranscriptionSession, _structure

# Past this depth a session is not one anybody wrote (or it holds itself).
_MAX_DEPTH: Final = 64


def check_json(data: object, path: str) -> None:
    """Raise :class:`OptionsError` naming where ``data`` (a session called
    ``path``) holds what cannot be sent as JSON: a set, a date, an object,
    NaN or an infinity, a circular reference."""
    try:
        compact_json(data)
    except (TypeError, ValueError, RecursionError) as exc:
        where = _unencodable(data, path, 0) or f"{path} {type(exc).__name__}"
        raise OptionsError(f"{path} cannot be sent as JSON: {where}.") from None


def _unwritable(number: float) -> str | None:
    """What ``number`` is when JSON cannot write it, else None."""
    if isinstance(number, float):
        return None if math.isfinite(number) else repr(number)
    try:
        str(number)
    except ValueError:  # past sys.get_int_max_str_digits()
        return "an integer too long to write"
    return None


def _unencodable(value: object, path: str, depth: int) -> str | None:
    """Where ``value`` holds what JSON cannot carry, and what it is."""
    if value is None or isinstance(value, str):
        return None
    if isinstance(value, (int, float)):  # bool is an int
        unwritable = _unwritable(value)
        return None if unwritable is None else f"{path} is {unwritable}"
    if depth >= _MAX_DEPTH:
        return f"{path[:80]}... nests deeper than {_MAX_DEPTH} levels (or holds itself)"
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _unencodable(item, f"{path}[{index}]", depth + 1)
            if found:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if key is not None and not isinstance(key, (str, int, float)):
                return f"{path} has a key that is a {type(key).__name__}"
            # JSON writes a number key as a string, and cannot write these.
            unwritable = None if key is None or isinstance(key, str) else _unwritable(key)
            if unwritable is not None:
                return f"{path} has a key that is {unwritable}"
            found = _unencodable(item, f"{path}.{key}", depth + 1)
            if found:
                return found
        return None
    return f"{path} is a {type(value).__name__}"


# What a live_session template may set: everything but navai's own fields.
LIVE_TEMPLATE_FIELDS: Final = frozenset(
    {"delegation", "input", "client", "idle_timeout_s", "store", "triggers", "wake_policy"}
)

LIVE_NAVAI_FIELDS: Final = {
    "model": "use live_model",
    "instructions": "use default_instructions",
    "audio": "use default_voice",
    "safety_identifier": "remove it: the guard sets it per caller",
}

_DELEGATIONS: Final = ("client", "responses", "decisions")


def session_template(value: object, option: str, fields: str) -> dict[str, Any] | None:
    """A template as given: a mapping, or JSON text (the environment's
    spelling) of an object; None when there is none. Anything else is an
    error naming ``option``."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise OptionsError(f"{option} is not valid JSON: {exc}") from None
    if not isinstance(value, Mapping):
        raise OptionsError(f"{option} must be a JSON object of {fields}.")
    return dict(value)


def check_live_session(template: object) -> dict[str, Any] | None:
    """The ``live_session`` template, checked: the fields of a Live session
    navai does not set itself, each of the right JSON kind."""
    template = session_template(template, "live_session", "Live session fields")
    if template is None:
        return None
    check_json(template, "live_session")
    for name in template:
        if name in LIVE_NAVAI_FIELDS:
            raise OptionsError(
                f"live_session sets {name}, which navai sets itself; {LIVE_NAVAI_FIELDS[name]}."
            )
        if name not in LIVE_TEMPLATE_FIELDS:
            raise OptionsError(
                f"live_session has an unknown field {name!r}. Known: "
                f"{', '.join(sorted(LIVE_TEMPLATE_FIELDS))}."
            )
    kinds: dict[str, tuple[type, ...]] = {
        "delegation": (dict,),
        "input": (list,),
        "client": (dict,),
        "idle_timeout_s": (int,),
        "store": (bool,),
        "triggers": (list,),
        "wake_policy": (dict,),
    }
    for name, value in template.items():
        wanted = kinds[name]
        if not isinstance(value, wanted) or (int in wanted and isinstance(value, bool)):
            raise OptionsError(f"live_session.{name} must be a JSON {wanted[0].__name__}.")
    delegation = template.get("delegation")
    if delegation is not None and delegation.get("type") not in (
        "client",
        "responses",
        "decisions",
    ):
        raise OptionsError(
            "live_session.delegation.type must be 'client', 'responses' or 'decisions'."
        )
    if not all(isinstance(item, dict) for item in template.get("input", [])):
        raise OptionsError("live_session.input must be a list of items (JSON objects).")
    return dict(template)


# What navai computes, and the option that sets each instead.
NAVAI_FIELDS: Final = {
    ("type",): "remove it: the route decides it",
    ("model",): "use default_model",
    ("instructions",): "use default_instructions",
    ("audio", "output", "voice"): "use default_voice",
}

# Under ElevenLabs speech the session answers in text: these are navai's too.
ELEVENLABS_FIELDS: Final = {
    ("output_modalities",): "remove it: with ElevenLabs speech the session answers in text",
    ("audio", "output"): "remove it: ElevenLabs voices the answers",
}


def _has(data: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = data
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True


def check_session(
    template: object,
    *,
    option: str = "session",
    kind: Literal["realtime", "transcription"] = "realtime",
    unknown_ok: bool = False,
    elevenlabs: bool = False,
) -> dict[str, Any] | None:
    """The template as a JSON object, checked; None when there is none.

    A string is read as JSON (the environment's spelling). Raises
    :class:`OptionsError` naming the field for anything OpenAI's schema
    would refuse, and for a field navai sets itself."""
    template = session_template(template, option, "session fields")
    if template is None:
        return None
    check_json(template, option)
    data = copy.deepcopy(dict(template))
    owned = {**NAVAI_FIELDS, **(ELEVENLABS_FIELDS if elevenlabs else {})}
    for path, instead in owned.items():
        if _has(data, path):
            raise OptionsError(
                f"{option} sets {'.'.join(path)}, which navai sets itself; {instead}."
            )
    _structure(
        data,
        RealtimeSession if kind == "realtime" else TranscriptionSession,
        unknown_ok=unknown_ok,
        path=option,
    )
    return data


def check_final_session(session: Mapping[str, Any], *, unknown_ok: bool) -> None:
    """A whole session (after a ``customize_session`` hook): JSON can carry
    it, and it fits the schema."""
    check_json(dict(session), "session")
    kind = TranscriptionSession if session.get("type") == "transcription" else RealtimeSession
    _structure(dict(session), kind, unknown_ok=unknown_ok, path="session")


def merge_session(template: Mapping[str, Any] | None, computed: dict[str, Any]) -> dict[str, Any]:
    """``computed`` (navai's fields) laid over a copy of ``template``, object
    by object; the two share no field, so nothing is overwritten."""
    if not template:
        return computed
    merged = copy.deepcopy(dict(template))
    _lay(merged, computed)
    return merged


def _lay(target: dict[str, Any], source: Mapping[str, Any]) -> None:
    for key, value in source.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _lay(target[key], value)
        else:
            target[key] = value
