"""What navai_mw knows of a relayed call once it is over: the end-of-call
report its sideband kept (:class:`CallReport`), with the usage OpenAI
reported and the backend functions the server ran."""

from __future__ import annotations

from typing import Literal

import attrs

from .identity import identity_key

__all__ = ["CallReport", "CallUsage", "EndReason", "FunctionCallRecord"]

EndReason = Literal[
    "hangup", "time_cap", "remote", "sideband_lost", "shutdown", "budget", "accept_failed"
]


@attrs.frozen(kw_only=True)
class CallUsage:
    """What a call used, as OpenAI reported it on the sideband.

    Realtime (summed over every response): input_tokens, output_tokens, and
    their detail: input_text_tokens, input_audio_tokens, input_cached_tokens
    (a part of the input, billed less; input_cached_audio_tokens the audio
    of it), output_text_tokens,
    output_audio_tokens; the input audio's transcription, billed at the
    transcription model's price: transcription_input_tokens,
    transcription_output_tokens, or transcription_seconds when billed by
    duration. GPT-Live: seconds (the session's billable time, as last
    reported: cumulative, never summed).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    input_cached_tokens: int = 0
    input_cached_audio_tokens: int = 0
    output_text_tokens: int = 0
    output_audio_tokens: int = 0
    transcription_input_tokens: int = 0
    transcription_output_tokens: int = 0
    transcription_seconds: float = 0.0
    seconds: float = 0.0


@attrs.frozen(kw_only=True)
class FunctionCallRecord:
    """One backend function the server ran for the model during the call:
    its name, whether it gave a result (``ok``), and the seconds it took."""

    name: str
    ok: bool
    seconds: float


@attrs.frozen(kw_only=True)
class CallReport:
    """A relayed call, once it is over.

    Fields:
        call_id: OpenAI's id of the call (``rtc_...``) or Live session.
        kind: ``"realtime"`` or ``"live"``.
        identity: who started it, as the guard proved it (None without one).
        model: the session's model.
        started_at, ended_at: UNIX seconds.
        end_reason: ``"hangup"`` (its owner's DELETE), ``"time_cap"``,
            ``"remote"`` (the browser or OpenAI ended it), ``"sideband_lost"``
            (the sideband dropped and could not reconnect), ``"shutdown"``
            (this server stopped while it ran), ``"budget"``,
            ``"accept_failed"`` (a phone call OpenAI did not accept on the
            server's word: it never started).
        metered: whether the sideband saw the call through (False when it
            never attached, or was lost: then ``usage`` is partial).
        usage: :class:`CallUsage`.
        cost_usd: the usage priced at OpenAI's list prices, or None when a
            model's price is not known (never a guess).
        function_calls: the backend functions run, in order.
    """

    call_id: str
    kind: Literal["realtime", "live"]
    identity: str | None
    model: str
    started_at: float
    ended_at: float
    end_reason: EndReason
    metered: bool
    usage: CallUsage
    cost_usd: float | None = None
    function_calls: tuple[FunctionCallRecord, ...] = ()

    @property
    def identity_key(self) -> str | None:
        """The identity with the scheme that proved it (``token:ops``,
        ``jwt:{issuer}:alice``, ``app:bob``): two authorities may prove the
        same name, this tells their callers apart."""
        return identity_key(self.identity)

    @property
    def seconds(self) -> float:
        """How long the call lasted."""
        return max(0.0, self.ended_at - self.started_at)
