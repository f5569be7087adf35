"""Every effect the sans-IO code yields, and each result sent back: the one
contract between the decisions and the I/O that performs them."""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from typing import Any, Literal, NamedTuple, Protocol

import attrs

from .budgets import BudgetLimit
from .http import HttpRequest, HttpResponse
from .rate_limit_policy import RateLimitPolicy
from .reports import CallReport, EndReason


@attrs.frozen(kw_only=True)
class Attempt:
    """Send ``request`` after waiting ``delay`` seconds; give up after ``timeout``.

    ``first`` marks the first attempt of an exchange: the driver measures
    ``Outcome.elapsed`` from there.
    """

    request: HttpRequest
    delay: float
    timeout: float
    first: bool = False


@attrs.frozen
class Outcome:
    """What an :class:`Attempt` gave.

    Fields:
        response: the upstream response, or None when none arrived.
        timed_out: True when the attempt ran out of time.
        elapsed: seconds since the exchange began, measured by the driver.
        jitter: a fresh random number in [0, 1), drawn by the driver.
    """

    response: HttpResponse | None
    timed_out: bool = False
    elapsed: float = 0.0
    jitter: float = 0.0


@attrs.frozen
class Pause:
    """Wait ``seconds`` (without holding an event loop), then send back None:
    for a step that waits on another request's work (a key fetch in
    flight) and looks again. The drivers sleep it, as they sleep a retry's
    delay: no performer sees it."""

    seconds: float


@attrs.frozen
class CallHook:
    """Call ``hook(*args)`` (awaited when it is async); send back a
    :class:`HookResult`. The ``authorize`` hook gets the request view; a
    ``customize_session`` hook the session context; an Azure token provider
    nothing.

    ``timeout``, when set, is how many seconds the caller waits for the hook
    at most (an Azure token provider gets what is left of the upstream
    budget): past it, send back ``HookResult(timed_out=True)`` without
    waiting for the hook any longer."""

    hook: Callable[..., Any]
    args: tuple[Any, ...] = ()
    timeout: float | None = None


@attrs.frozen
class HookResult:
    """What a hook call gave: its return value, or the exception it raised;
    ``timed_out`` when it was still running at the :class:`CallHook`'s
    ``timeout``; ``elapsed``, the seconds it took (or was waited for)."""

    value: object = None
    error: BaseException | None = None
    timed_out: bool = False
    elapsed: float = 0.0


class HitLimit(NamedTuple):
    """Count one request of ``key`` against ``policy`` in the limiter's
    storage; send back a :class:`LimitResult`. (A named tuple, as that
    result: one of each per request.)"""

    policy: RateLimitPolicy
    key: str


class LimitResult(NamedTuple):
    """What the storage said (a named tuple: one is made per request, and a
    tuple is the cheapest immutable record to make).

    Fields:
        allowed: False when one of the windows is full (nothing more counted).
        windows: for each item of the policy, in order, the requests left
            and the Unix time at which the window next frees a slot.
        now: the Unix time the driver read.
        unavailable: True when the storage could not be reached.
    """

    allowed: bool = True
    windows: tuple[tuple[int, float], ...] = ()
    now: float = 0.0
    unavailable: bool = False


@attrs.frozen
class CallFunction:
    """Run ``run()`` (await it when ``is_async``), for at most ``timeout``
    seconds; send back a :class:`FunctionOutcome`. ``name`` is the
    function's, for the operator's metrics."""

    run: Callable[[], Any] = attrs.field(repr=False)
    is_async: bool
    timeout: float
    name: str = ""


@attrs.frozen
class FunctionOutcome:
    """How a call ended: its value, the exception it raised, out of time, or
    not started because every worker was busy."""

    value: object = None
    error: BaseException | None = None
    timed_out: bool = False
    busy: bool = False

    @property
    def kind(self) -> str:
        """How it went, in a word: ``ok``, ``error``, ``timeout``, ``busy``."""
        if self.busy:
            return "busy"
        if self.timed_out:
            return "timeout"
        return "error" if self.error is not None else "ok"


@attrs.frozen
class RememberCall:
    """Remember ``key`` as started by ``owner``; when ``deadline`` (seconds
    from now) is set, end it then. Send back None."""

    key: str
    owner: str | None
    deadline: float | None = None


@attrs.frozen
class CallOwned:
    """Whether ``owner`` started ``key`` (and it is not over); send back a bool."""

    key: str
    owner: str | None


@attrs.frozen
class ForgetCall:
    """``key`` has ended: forget it and its deadline. Send back None."""

    key: str


@attrs.frozen
class CloseLive:
    """Open the Live session's sideband WebSocket (``url``, ``headers``),
    send ``session.close`` and close, all within ``timeout`` seconds; send
    back None, or the exception."""

    url: str
    headers: tuple[tuple[str, str], ...] = attrs.field(repr=False)
    timeout: float = 10.0


# -- a relayed call's sideband ---------------------------------------------------------------


class SidebandSession(Protocol):
    """One call's sideband as the socket loop drives it (the sans-IO side:
    ``navai_mw.endpoint.call_sideband.CallSideband``). Each method answers
    with the actions to take, in order."""

    @property
    def call_id(self) -> str: ...

    @property
    def ended(self) -> bool: ...

    def opened(self) -> list[SidebandAction]: ...

    def receive(self, data: str | bytes) -> list[SidebandAction]: ...

    def closed(self, code: int | None) -> Literal["reconnect", "ended"]: ...

    def function_done(
        self, action: RunFunction, outcome: FunctionOutcome, seconds: float
    ) -> list[SidebandAction]: ...

    def report(
        self, *, started_at: float, ended_at: float, reason: EndReason, metered: bool
    ) -> CallReport: ...

    @property
    def reservation(self) -> Reservation | None:
        """The caller's budget reservation the call holds, if any."""
        ...

    @property
    def reverts(self) -> int:
        """Changes to the pinned session reverted so far."""
        ...

    def charged(self, counts: tuple[BudgetCount, ...] | None) -> list[SidebandAction]:
        """A :class:`ChargeCall` was performed: the counts after it (None:
        the store was down)."""
        ...


@attrs.frozen
class SidebandRoom:
    """Whether this process may hold one more sideband; send back a bool."""


@attrs.frozen
class AttachSideband:
    """Open a sideband to the relayed call ``key`` at ``url`` (with
    ``headers``) and hold it, feeding ``session``, until the call ends;
    required: hang the call up when it cannot attach. Send back None at once
    (the sideband runs on its own)."""

    key: str
    url: str
    headers: tuple[tuple[str, str], ...] = attrs.field(repr=False)
    session: SidebandSession = attrs.field(repr=False)
    required: bool = False


@attrs.frozen
class EndSideband:
    """The call ``key`` is being ended, for ``reason``: close its sideband
    (when it has one) and report the call so. Send back None."""

    key: str
    reason: EndReason


@attrs.frozen
class SendEvent:
    """Send ``event`` (a client event) on the sideband."""

    event: Mapping[str, Any]


@attrs.frozen
class RunFunction:
    """Run ``run()`` (a backend function bound to the model's arguments),
    awaited when ``is_async``, within ``timeout`` seconds; give the
    :class:`FunctionOutcome` and the seconds it took back to the session."""

    tool_call_id: str
    name: str
    run: Callable[[], Any] = attrs.field(repr=False)
    is_async: bool
    timeout: float


@attrs.frozen
class CallEnded:
    """OpenAI says the call is over (GPT-Live's ``session.closed``)."""


@attrs.frozen
class EndCall:
    """The server ends the call, for ``reason`` (its caller's budget is
    spent): hang it up, and report it so."""

    reason: EndReason


# -- budgets ------------------------------------------------------------------------------------


@attrs.frozen
class BudgetCount:
    """One of a caller's budget counts, as the store saw it (store units:
    seconds for minutes).

    Fields:
        limit: the limit counted.
        used: what settled calls used in the period.
        elapsed: what calls in progress have used so far (minutes only).
        reserved: the rest of their reservations (minutes only).
        resets_at: the period's end (UNIX seconds).
        frees_at: the earliest end of a reservation, or None.
    """

    limit: BudgetLimit
    used: float = 0.0
    elapsed: float = 0.0
    reserved: float = 0.0
    resets_at: float = 0.0
    frees_at: float | None = None

    @property
    def remaining(self) -> float:
        return self.limit.quantity - self.used - self.elapsed - self.reserved


@attrs.frozen
class Reservation:
    """A call's hold on its caller's budgets: ``granted`` seconds (None: no
    minutes limit and no cap) reserved from ``started_at``, in the periods
    starting at ``starts`` (one per limit)."""

    id: str
    subject: str
    limits: tuple[BudgetLimit, ...]
    starts: tuple[float, ...]
    granted: float | None
    started_at: float


@attrs.frozen
class AdmitCall:
    """Check ``subject``'s ``limits`` and, when none is spent, reserve at
    most ``cap`` seconds (None: what is left) against each minutes limit,
    all in one atomic step; the time is ``clock()``. Send back an
    :class:`Admission`."""

    subject: str
    limits: tuple[BudgetLimit, ...]
    cap: float | None
    clock: Callable[[], float] = attrs.field(repr=False)


@attrs.frozen
class Admission:
    """What the store decided: ``reservation`` when the call may start,
    else the limit that refused it; ``counts`` as they stood at ``now``."""

    reservation: Reservation | None = None
    refused_by: BudgetLimit | None = None
    counts: tuple[BudgetCount, ...] = ()
    unavailable: bool = False
    now: float = 0.0


@attrs.frozen
class SettleCall:
    """The call holding ``reservation`` ended after ``seconds``: charge its
    minutes (at most what was granted) and drop the reservation. Send back
    None (True when the store could not be reached)."""

    reservation: Reservation
    seconds: float


@attrs.frozen
class ChargeCall:
    """Charge ``tokens`` and ``usd`` more to the tokens and USD limits of
    ``reservation``'s caller. Send back the counts after it (None when the
    store could not be reached)."""

    reservation: Reservation
    tokens: float = 0.0
    usd: float = 0.0


@attrs.frozen
class ReadBudget:
    """``subject``'s counts of ``limits`` now (``clock()``). Send back the
    counts, or None when the store could not be reached."""

    subject: str
    limits: tuple[BudgetLimit, ...]
    clock: Callable[[], float] = attrs.field(repr=False)


# What a call's sideband may ask of the socket loop (a list, in order).
SidebandAction = SendEvent | RunFunction | CallEnded | EndCall | ChargeCall


# -- webhooks, and the safety identifiers OpenAI blocks ---------------------------------------


@attrs.frozen
class ReadClock:
    """Read ``clock()`` (UNIX seconds) and send it back: for a decision that
    holds a time a caller sent against now (a webhook's timestamp)."""

    clock: Callable[[], float] = attrs.field(repr=False)


@attrs.frozen
class FirstDelivery:
    """Remember the webhook delivery ``key`` for ``seconds``, in one atomic
    step; send back True when it was not known yet, False for a
    redelivery, None when the store could not be reached."""

    key: str
    seconds: float


@attrs.frozen
class ForgetDelivery:
    """Forget the webhook delivery ``key`` (its work could not be taken:
    OpenAI's redelivery must find it new). Send back None."""

    key: str


@attrs.frozen
class BlockIdentifier:
    """Add ``identifier`` (a safety identifier OpenAI blocked, for
    ``category``) to the blocked set at ``at`` (UNIX seconds), for
    ``seconds`` (None: until unblocked). Send back True, or None when the
    store could not be reached."""

    identifier: str
    category: str
    at: float
    seconds: float | None = None


@attrs.frozen
class IsBlocked:
    """Whether ``identifier`` is in the blocked set; send back a bool, or
    None when the store could not be reached."""

    identifier: str


@attrs.frozen
class AfterAnswer:
    """Drive ``steps`` (effects, as a request's) once the answer has gone
    out, on their own: ``what`` says what they do, for a log line when they
    fail. Send back True when taken, False when this process already holds
    as much such work as it may (then nothing of it runs)."""

    steps: Generator[Any, Any, None] = attrs.field(repr=False)
    what: str


@attrs.frozen
class ReportCall:
    """A call that never started (a phone call whose accept failed) is
    reported: logged, and given to ``on_call_end``. Send back None."""

    report: CallReport
