"""Backend functions on both shells, in process: the list and execute
routes, the reference's payload conventions, errors from the app's code,
results, the timeout, the bounded worker pool, 50 calls in flight, and the
guard and route switches around them.

Loading from module folders is in test_function_loading.py; the published
front end against real servers in test_frontend_client.py."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, Literal, NewType

import anyio
import attrs
import httpx
import pytest

from navai_mw import (
    FunctionContext,
    NavaiASGIMiddleware,
    NavaiFunctionError,
    NavaiVoiceBackendOptions,
    NavaiWSGIMiddleware,
    OptionsError,
    load_navai_functions,
)
from navai_mw.testing import FakeOpenAIRealtime

from .conftest import CANARY_KEY, log_message

LIST = "/navai/functions"
EXECUTE = "/navai/functions/execute"


# -- the functions ----------------------------------------------------------------------


def get_weather(city: str, unit: str = "C") -> dict[str, str]:
    """Tell the weather in a city."""
    return {"city": city, "unit": unit}


def echo(payload: Any) -> Any:
    return payload


def add(a: int, b: int) -> int:
    return a + b


async def double(x: int) -> int:
    await anyio.sleep(0)
    return x * 2


def whoami(context: FunctionContext) -> dict[str, Any]:
    return {
        "function": context.function,
        "identity": context.identity,
        "client": context.client,
        "header": context.headers.get("x-trace"),
        "route": context.request.route,
    }


def refuse(reason: str) -> None:
    raise NavaiFunctionError(f"Cannot do that: {reason}")


def explode() -> None:
    raise RuntimeError(f"database password {CANARY_KEY}")


def unencodable() -> set[int]:
    return {1, 2}


def not_a_number() -> float:
    return float("nan")


@attrs.frozen
class Point:
    x: int
    y: int


@dataclasses.dataclass
class Box:
    width: int


def point() -> Point:
    return Point(1, 2)


def box() -> Box:
    return Box(3)


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.start = start

    def bump(self, by: int = 1) -> int:
        """Add to the count."""
        return self.start + by

    async def abump(self, by: int = 1) -> int:
        await anyio.sleep(0)
        return self.start + by

    @staticmethod
    def zero() -> int:
        return 0

    def _private(self) -> None:
        raise AssertionError("never listed")


def no_parameters() -> str:
    return "none needed"


def keywords(**options: Any) -> dict[str, Any]:
    return options


def only_context(context: FunctionContext) -> str:
    return context.function


async def exits() -> None:
    raise SystemExit(2)


class Greeter:
    def __init__(self, name: str) -> None:
        self.name = name

    def greet(self) -> str:
        return f"Hello {self.name}"

    @classmethod
    def kind(cls) -> str:
        return cls.__name__


# -- functions whose context stands among the payload's parameters ---------------------


async def weather_in(city: str, context: FunctionContext, units: str = "metric") -> list[str]:
    return [city, context.function, units]


def context_first(context: FunctionContext, a: int, b: int = 0) -> list[Any]:
    return [context.function, a, b]


def context_keyword_only(a: int, *rest: int, ctx: FunctionContext) -> list[Any]:
    return [a, list(rest), ctx.function]


def context_positional_only(
    a: int = 1, ctx: FunctionContext | None = None, /, b: int = 2
) -> list[Any]:
    return [a, ctx.function if ctx else None, b]


def context_then_rest(a: str, context: FunctionContext, *rest: str) -> list[Any]:
    return [a, context.function, list(rest)]


def context_after_a_required(a: int, ctx: FunctionContext, /) -> list[Any]:
    return [a, ctx.function]


# -- functions with type hints -----------------------------------------------------------


class Units(enum.Enum):
    METRIC = "metric"
    IMPERIAL = "imperial"


@attrs.frozen
class Place:
    city: str
    country: str = "PT"


def typed(
    city: str,
    days: int = 1,
    ratio: float = 1.0,
    tags: list[str] | None = None,
    units: Units = Units.METRIC,
    mode: Literal["fast", "slow"] = "fast",
) -> list[Any]:
    return [city, days, ratio, tags, units.value, mode, type(ratio).__name__]


def visit(place: Place, span: tuple[int, int] = (0, 0), **more: int) -> list[Any]:
    return [type(place).__name__, place.city, place.country, list(span), more]


def untyped(city, days=1):  # type: ignore[no-untyped-def]
    return [city, days]


def labelled_visit(label, place: Place) -> list[Any]:  # type: ignore[no-untyped-def]
    return [label, type(place).__name__, place.city]


def loose_hint(when: datetime.date, anything: object = None) -> list[Any]:
    # Hints with no hook (a date) check nothing: the value arrives as sent.
    return [when, anything]


class Account:
    def __init__(self, owner: str, limit: int = 10) -> None:
        self.owner = owner
        self.limit = limit

    def spend(self, amount: float) -> list[Any]:
        return [self.owner, self.limit, amount]


RELEASE = threading.Event()


def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


async def async_sleepy(seconds: float) -> str:
    await anyio.sleep(seconds)
    return "woke"


def blocked() -> str:
    RELEASE.wait(10)
    return "released"


FUNCTIONS = [
    get_weather,
    echo,
    add,
    double,
    whoami,
    refuse,
    explode,
    unencodable,
    not_a_number,
    point,
    box,
    Counter,
    no_parameters,
    keywords,
    only_context,
    exits,
    Greeter,
    sleepy,
    async_sleepy,
    blocked,
]

INJECTED = [
    weather_in,
    context_first,
    context_keyword_only,
    context_positional_only,
    context_then_rest,
    context_after_a_required,
]
TYPED = [typed, visit, untyped, loose_hint, labelled_visit, Account, get_weather, add]


# -- both shells ------------------------------------------------------------------------


async def hello_asgi(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


def hello_wsgi(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"app"]


Request = Callable[..., httpx.Response]


@contextmanager
def both_shells(**keywords: Any) -> Iterator[list[tuple[str, Request]]]:
    """One ``request(method, path, ...)`` per shell, each with its own
    middleware built with the same keywords; ASGI runs on a portal."""
    import anyio.from_thread

    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = keywords.pop("opts", None) or NavaiVoiceBackendOptions(
        openai_api_key=CANARY_KEY, openai_base_url=fake.base_url
    )
    keywords.setdefault("functions", FUNCTIONS)
    with anyio.from_thread.start_blocking_portal() as portal:
        upstream = fake.async_transport()
        asgi = NavaiASGIMiddleware(hello_asgi, opts, transport=upstream, **keywords)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=asgi, client=("203.0.113.7", 5000)),
            base_url="http://api.test",
        )

        def asgi_request(method: str, path: str, **kw: Any) -> httpx.Response:
            return portal.call(lambda: client.request(method, path, **kw))

        with fake.sync_transport() as sync_upstream:
            wsgi = NavaiWSGIMiddleware(hello_wsgi, opts, transport=sync_upstream, **keywords)
            with httpx.Client(
                transport=httpx.WSGITransport(app=wsgi, remote_addr="203.0.113.7"),
                base_url="http://api.test",
                timeout=30,
            ) as sync_client:
                yield [("asgi", asgi_request), ("wsgi", sync_client.request)]
        portal.call(client.aclose)
        portal.call(upstream.aclose)


def execute(request: Request, name: str, payload: Any = None, **kw: Any) -> httpx.Response:
    body: dict[str, Any] = {"function_name": name}
    if payload is not None:
        body["payload"] = payload
    return request("POST", EXECUTE, json=body, **kw)


# -- listing ----------------------------------------------------------------------------


def test_the_list_names_describes_and_orders_as_given() -> None:
    with both_shells() as shells:
        for _, request in shells:
            response = request("GET", LIST)
            assert response.status_code == 200
            assert response.headers["cache-control"] == "no-store"
            payload = response.json()
            assert payload["warnings"] == []
            items = payload["items"]
            assert [item["name"] for item in items] == [
                "get_weather",
                "echo",
                "add",
                "double",
                "whoami",
                "refuse",
                "explode",
                "unencodable",
                "not_a_number",
                "point",
                "box",
                "counter_bump",
                "counter_abump",
                "counter_zero",
                "no_parameters",
                "keywords",
                "only_context",
                "exits",
                "greeter_greet",
                "greeter_kind",
                "sleepy",
                "async_sleepy",
                "blocked",
            ]
            by_name = {item["name"]: item for item in items}
            assert by_name["get_weather"] == {
                "name": "get_weather",
                "description": "Tell the weather in a city.",
                "source": f"{__name__}#get_weather",
            }
            assert by_name["echo"]["description"] == "Call exported function echo."
            assert by_name["counter_bump"]["description"] == "Add to the count."
            assert by_name["counter_zero"] == {
                "name": "counter_zero",
                "description": "Call class method Counter.zero().",
                "source": f"{__name__}#Counter.zero",
            }


def test_duplicates_in_code_are_renamed_with_a_warning() -> None:
    def getWeather() -> int:
        return 2

    registry = load_navai_functions([get_weather, getWeather])
    assert registry.names == ["get_weather", "get_weather_2"]
    assert registry.warnings == (
        '[navai] Renamed duplicated function "getWeather" to "get_weather_2".',
    )
    with pytest.raises(TypeError, match="functions must hold"):
        load_navai_functions([42])  # type: ignore[list-item]


# -- the payload conventions ------------------------------------------------------------

CONVENTIONS = [
    pytest.param("get_weather", {"args": ["Paris"]}, {"city": "Paris", "unit": "C"}, id="args"),
    pytest.param("add", {"arguments": [2, 3]}, 5, id="arguments"),
    pytest.param("add", {"args": [1, 2], "arguments": [5, 5]}, 3, id="args-before-arguments"),
    pytest.param("echo", {"value": 7}, 7, id="value"),
    pytest.param("echo", {"value": None}, None, id="value-null"),
    pytest.param("echo", {"args": [], "value": "v"}, "v", id="empty-args-then-value"),
    pytest.param(
        "get_weather", {"city": "Rome", "unit": "F"}, {"city": "Rome", "unit": "F"}, id="keywords"
    ),
    pytest.param("echo", {"a": 1, "b": [2]}, {"a": 1, "b": [2]}, id="whole-payload"),
    pytest.param("point", "not an object", {"x": 1, "y": 2}, id="payload-not-an-object"),
    pytest.param("double", {"value": 4}, 8, id="async"),
    pytest.param("counter_bump", {"constructorArgs": [10], "methodArgs": [5]}, 15, id="methodArgs"),
    pytest.param("counter_bump", {"constructorArgs": [10], "by": 2}, 12, id="method-keywords"),
    pytest.param("counter_bump", {"args": [3]}, 3, id="method-args"),
    pytest.param("counter_abump", {"constructorArgs": [1], "value": 1}, 2, id="async-method"),
    pytest.param("counter_zero", None, 0, id="staticmethod"),
    pytest.param("point", None, {"x": 1, "y": 2}, id="attrs-result"),
    pytest.param("box", None, {"width": 3}, id="dataclass-result"),
    pytest.param("  GET_Weather ", {"args": ["Oslo"]}, {"city": "Oslo", "unit": "C"}, id="name"),
    # JavaScript ignores what a function takes no parameter for; so does this.
    pytest.param("no_parameters", {"args": []}, "none needed", id="no-parameters-empty-args"),
    pytest.param("no_parameters", {"x": 1}, "none needed", id="no-parameters-payload"),
    pytest.param("keywords", {"a": 1, "b": 2}, {"a": 1, "b": 2}, id="var-keywords"),
    pytest.param("only_context", {"a": 1}, "only_context", id="only-context"),
    pytest.param("greeter_greet", {"constructorArgs": ["Ana"]}, "Hello Ana", id="constructor"),
    pytest.param("greeter_kind", None, "Greeter", id="classmethod-needs-no-instance"),
]


@pytest.mark.parametrize(("name", "payload", "result"), CONVENTIONS)
def test_payload_conventions(name: str, payload: Any, result: Any) -> None:
    with both_shells() as shells:
        for shell, request in shells:
            response = execute(request, name, payload)
            assert response.status_code == 200, (shell, response.text)
            body = response.json()
            assert body["ok"] is True
            assert body["result"] == result
            assert body["function_name"] == name.strip().lower()
            assert body["source"].startswith(f"{__name__}#")


def test_the_context_reaches_a_function_that_asks_for_it() -> None:
    with both_shells(authorize=lambda info: "user-42") as shells:
        for _, request in shells:
            response = execute(request, "whoami", {}, headers={"x-trace": "t-1"})
            assert response.json()["result"] == {
                "function": "whoami",
                "identity": "user-42",
                "client": "203.0.113.7",
                "header": "t-1",
                "route": "functions_execute",
            }


# -- the context wherever it stands ------------------------------------------------------

INJECTED_CALLS = [
    pytest.param(
        "weather_in",
        {"args": ["Porto", "imperial"]},
        ["Porto", "weather_in", "imperial"],
        id="positional-around-the-context",
    ),
    pytest.param("weather_in", {"args": ["Porto"]}, ["Porto", "weather_in", "metric"], id="one"),
    pytest.param("weather_in", {"value": "Porto"}, ["Porto", "weather_in", "metric"], id="value"),
    pytest.param(
        "weather_in",
        {"city": "Porto", "units": "imperial"},
        ["Porto", "weather_in", "imperial"],
        id="keywords",
    ),
    pytest.param("context_first", {"args": [1, 2]}, ["context_first", 1, 2], id="context-first"),
    pytest.param("context_first", {"a": 3}, ["context_first", 3, 0], id="context-first-keyword"),
    pytest.param(
        "context_keyword_only",
        {"args": [1, 2, 3]},
        [1, [2, 3], "context_keyword_only"],
        id="keyword-only",
    ),
    pytest.param(
        "context_positional_only",
        {"args": [5, 6]},
        [5, "context_positional_only", 6],
        id="positional-only",
    ),
    pytest.param(
        "context_positional_only",
        {},
        [1, "context_positional_only", 2],
        id="positional-only-with-defaults",
    ),
    pytest.param(
        "context_then_rest",
        {"args": ["a", "b", "c"]},
        ["a", "context_then_rest", ["b", "c"]],
        id="before-var-positional",
    ),
]


@pytest.mark.parametrize(("name", "payload", "result"), INJECTED_CALLS)
def test_the_context_is_bound_by_its_annotation_wherever_it_stands(
    name: str, payload: Any, result: Any
) -> None:
    with both_shells(functions=INJECTED) as shells:
        for shell, request in shells:
            response = execute(request, name, payload)
            assert response.status_code == 200, (shell, response.text)
            assert response.json()["result"] == result


def test_a_payload_never_fills_the_context() -> None:
    with both_shells(functions=INJECTED) as shells:
        for _, request in shells:
            # Too many values, with the context in the middle: one too many.
            response = execute(request, "weather_in", {"args": ["Porto", "imperial", "x"]})
            assert response.status_code == 400
            assert "too many positional arguments" in response.json()["error"]
            # A key naming the context is not a keyword: the whole payload is
            # the first argument, and it is no string.
            response = execute(request, "weather_in", {"city": "Porto", "context": 1})
            assert response.status_code == 400


def test_a_value_left_out_before_a_positional_only_context_is_400_naming_it() -> None:
    with both_shells(functions=INJECTED) as shells:
        for shell, request in shells:
            response = execute(request, "context_after_a_required", {})
            assert response.status_code == 400, (shell, response.text)
            assert response.json()["error"] == (
                "The payload does not fit context_after_a_required: "
                "missing a required argument: 'a'."
            )
            response = execute(request, "context_after_a_required", {"args": [4]})
            assert response.json()["result"] == [4, "context_after_a_required"]


def test_the_hints_after_the_context_are_held_too() -> None:
    with both_shells(functions=INJECTED) as shells:
        for shell, request in shells:
            response = execute(request, "context_first", {"args": ["1", 2]})
            assert response.status_code == 400, (shell, response.text)
            assert response.json()["error"].startswith(
                "The payload does not fit context_first: a must be int (expected an integer"
            )


# -- type hints -------------------------------------------------------------------------

TYPED_CALLS = [
    pytest.param(
        "typed",
        {"city": "Lisbon", "days": 3, "ratio": 2, "tags": ["a"], "units": "imperial"},
        ["Lisbon", 3, 2.0, ["a"], "imperial", "fast", "float"],
        id="converted",
    ),
    pytest.param(
        "typed",
        {"args": ["Lisbon"]},
        ["Lisbon", 1, 1.0, None, "metric", "fast", "float"],
        id="defaults-untouched",
    ),
    pytest.param(
        "visit",
        {"place": {"city": "Porto"}, "span": [1, 2], "nights": 2},
        ["Place", "Porto", "PT", [1, 2], {"nights": 2}],
        id="attrs-class-tuple-and-var-keywords",
    ),
    pytest.param("untyped", {"town": "Lisbon"}, [{"town": "Lisbon"}, 1], id="unannotated"),
    pytest.param("untyped", {"args": [1, "x"]}, [1, "x"], id="unannotated-anything"),
    pytest.param(
        "labelled_visit",
        {"args": ["trip", {"city": "Porto"}]},
        ["trip", "Place", "Porto"],
        id="a-hint-after-an-unannotated-parameter",
    ),
    pytest.param(
        "loose_hint", {"args": ["2026-01-01", {"a": 1}]}, ["2026-01-01", {"a": 1}], id="no-hook"
    ),
    pytest.param(
        "account_spend",
        {"constructorArgs": ["ana", 5], "value": 2},
        ["ana", 5, 2.0],
        id="constructor",
    ),
]


@pytest.mark.parametrize(("name", "payload", "result"), TYPED_CALLS)
def test_arguments_are_converted_to_their_type_hints(name: str, payload: Any, result: Any) -> None:
    with both_shells(functions=TYPED) as shells:
        for shell, request in shells:
            response = execute(request, name, payload)
            assert response.status_code == 200, (shell, response.text)
            assert response.json()["result"] == result


TYPE_MISTAKES = [
    pytest.param(
        "get_weather",
        {"town": "Lisbon"},
        "city must be str (expected a string, got dict @ city)",
        id="whole-payload-for-a-string",
    ),
    pytest.param(
        "add",
        {"args": [1, "2"]},
        "b must be int (expected an integer, got str @ b)",
        id="string-for-an-int",
    ),
    pytest.param(
        "add",
        {"args": [True, 2]},
        "a must be int (expected an integer, got a boolean @ a)",
        id="boolean-for-an-int",
    ),
    pytest.param(
        "typed",
        {"city": "x", "tags": "ab"},
        "tags must be list[str] | None (expected a list, got str @ tags)",
        id="string-for-a-list",
    ),
    pytest.param(
        "typed",
        {"city": "x", "tags": ["a", 1]},
        "tags must be list[str] | None (expected a string, got int @ tags[1])",
        id="in-a-list",
    ),
    pytest.param("typed", {"city": "x", "units": "kelvin"}, "units must be Units (", id="enum"),
    pytest.param(
        "typed",
        {"city": "x", "mode": "warp"},
        "mode must be Literal['fast', 'slow'] ('warp' is not one of ['fast', 'slow'] @ mode)",
        id="literal",
    ),
    pytest.param(
        "visit", {"place": {"country": "PT"}}, "place must be Place (", id="attrs-missing-field"
    ),
    pytest.param(
        "visit",
        {"place": {"city": 1}},
        "place must be Place (expected a string, got int @ place.city)",
        id="attrs-field",
    ),
    pytest.param(
        "visit",
        {"place": {"city": "a"}, "span": [1]},
        "span must be tuple[int, int] (expected a list of 2, got 1 @ span).",
        id="tuple-length",
    ),
    pytest.param(
        "visit", {"place": {"city": "a"}, "nights": "2"}, "more must be int (", id="var-keywords"
    ),
    pytest.param(
        "account_spend",
        {"constructorArgs": [7], "value": 1},
        "owner must be str (expected a string, got int @ owner)",
        id="constructor",
    ),
]


@pytest.mark.parametrize(("name", "payload", "message"), TYPE_MISTAKES)
def test_an_argument_of_the_wrong_type_is_400_naming_the_parameter_and_the_type(
    name: str, payload: Any, message: str
) -> None:
    with both_shells(functions=TYPED) as shells:
        for shell, request in shells:
            response = execute(request, name, payload)
            assert response.status_code == 400, (shell, response.text)
            error = response.json()["error"]
            target = "Account" if name == "account_spend" else name
            assert error.startswith(f"The payload does not fit {target}: {message}"), error


def test_a_hint_that_cannot_be_resolved_is_a_warning_and_checks_nothing() -> None:
    namespace: dict[str, Any] = {}
    exec(  # noqa: S102 - a module whose hint names what only a type checker imports
        "from __future__ import annotations\n"
        "def lookup(city: NotImported, context: FunctionContext) -> list:\n"
        "    return [city, context.function]\n",
        namespace,
    )
    lookup = namespace["lookup"]
    lookup.__module__ = "tools"
    registry = load_navai_functions([lookup])
    assert registry.warnings == (
        "[navai] Type hints of tools#lookup could not be resolved (NameError); "
        "its arguments are not checked against them.",
    )
    with both_shells(functions=registry) as shells:
        for _, request in shells:
            response = execute(request, "lookup", {"args": [{"town": "x"}]})
            assert response.json()["result"] == [{"town": "x"}, "lookup"]


# -- bad calls and failing functions ----------------------------------------------------


def test_a_call_without_a_name_is_400_and_an_unknown_name_is_404() -> None:
    with both_shells() as shells:
        for _, request in shells:
            for body in ({}, {"function_name": ""}, {"function_name": "  "}, {"function_name": 7}):
                response = request("POST", EXECUTE, json=body)
                assert response.status_code == 400
                assert response.json() == {"error": "function_name is required."}
            response = execute(request, "nope")
            assert response.status_code == 404
            body = response.json()
            assert body["error"] == "Unknown or disallowed function."
            assert body["available_functions"][:3] == ["get_weather", "echo", "add"]
            assert "counter_bump" in body["available_functions"]


def test_a_payload_that_does_not_fit_is_400_naming_the_function() -> None:
    with both_shells() as shells:
        for _, request in shells:
            response = execute(request, "add", {"args": [1]})
            assert response.status_code == 400
            message = response.json()["error"]
            assert message.startswith("The payload does not fit add: ")
            assert "'b'" in message
            response = execute(request, "add", {"args": [1, 2, 3]})
            assert response.status_code == 400
            response = execute(request, "greeter_greet", {"constructorArgs": []})
            assert response.status_code == 400
            assert response.json()["error"].startswith("constructorArgs do not fit Greeter: ")
            # No payload: no arguments, and echo needs one.
            response = execute(request, "echo")
            assert response.status_code == 400
            assert "'payload'" in response.json()["error"]


def test_a_navai_function_error_is_shown_to_the_caller() -> None:
    with both_shells() as shells:
        for _, request in shells:
            response = execute(request, "refuse", {"reason": "closed"})
            assert response.status_code == 200
            assert response.json() == {
                "ok": False,
                "error": "Cannot do that: closed",
                "details": "Cannot do that: closed",
            }


def test_any_other_exception_is_a_500_without_its_text(caplog: pytest.LogCaptureFixture) -> None:
    with both_shells() as shells:
        for _, request in shells:
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="navai_mw"):
                response = execute(request, "explode")
            assert response.status_code == 500
            assert response.json() == {"ok": False, "error": "Backend function failed."}
            assert CANARY_KEY not in response.text
            records = [r for r in caplog.records if "explode" in r.getMessage()]
            assert records
            assert records[0].exc_info is not None  # the traceback is logged


def test_an_async_function_that_exits_is_a_500() -> None:
    with both_shells() as shells:
        for _, request in shells:
            response = execute(request, "exits")
            assert response.status_code == 500
            assert response.json() == {"ok": False, "error": "Backend function failed."}


@pytest.mark.parametrize("name", ["unencodable", "not_a_number"])
def test_a_result_json_cannot_carry_is_a_clear_500(name: str) -> None:
    with both_shells() as shells:
        for _, request in shells:
            response = execute(request, name)
            assert response.status_code == 500
            assert response.json() == {
                "ok": False,
                "error": f"Backend function {name} returned a value JSON cannot carry.",
            }


# -- time, workers, concurrency ---------------------------------------------------------


@pytest.mark.parametrize("name", ["sleepy", "async_sleepy"])
def test_a_function_past_its_timeout_is_504(name: str) -> None:
    with both_shells(function_timeout_seconds=0.2) as shells:
        for _, request in shells:
            response = execute(request, name, {"value": 3})
            assert response.status_code == 504
            assert response.json() == {
                "error": f"Backend function {name} did not finish within 0.2 seconds."
            }
            # A quick one still answers.
            assert execute(request, "add", {"args": [1, 1]}).json()["result"] == 2


def test_when_every_worker_is_busy_the_call_is_503_at_once() -> None:
    RELEASE.clear()
    with both_shells(function_workers=1, function_timeout_seconds=0.2) as shells:
        for _, request in shells:
            # The first call overruns and keeps its worker, as a thread must.
            assert execute(request, "blocked").status_code == 504
            response = execute(request, "add", {"args": [1, 1]})
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
            assert response.json() == {
                "error": "Every backend function worker is busy; try again shortly."
            }
            # Async functions need no worker.
            assert execute(request, "double", {"value": 2}).json()["result"] == 4
        RELEASE.set()
        for _, request in shells:
            for _ in range(100):  # the worker frees itself once the function returns
                response = execute(request, "add", {"args": [1, 1]})
                if response.status_code == 200:
                    break
                time.sleep(0.02)
            assert response.json()["result"] == 2


IN_FLIGHT = 50


def test_fifty_sync_calls_run_at_once_on_both_shells() -> None:
    barrier = threading.Barrier(IN_FLIGHT)

    def meet() -> int:
        # Every call must be running at the same time for this to pass.
        return barrier.wait(timeout=10)

    with both_shells(functions=[meet], function_workers=IN_FLIGHT) as shells:
        for _, request in shells:
            barrier.reset()

            def call(_: int, request: Request = request) -> httpx.Response:
                return execute(request, "meet")

            with ThreadPoolExecutor(IN_FLIGHT) as pool:
                responses = list(pool.map(call, range(IN_FLIGHT)))
            assert [r.status_code for r in responses] == [200] * IN_FLIGHT
            assert sorted(r.json()["result"] for r in responses) == list(range(IN_FLIGHT))


def test_fifty_async_calls_run_at_once_under_asgi() -> None:
    arrived = 0
    everyone: asyncio.Event | None = None

    async def meet() -> int:
        nonlocal arrived, everyone
        if everyone is None:
            everyone = asyncio.Event()
        arrived += 1
        if arrived == IN_FLIGHT:
            everyone.set()
        with anyio.fail_after(10):
            await everyone.wait()
        return arrived

    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, openai_base_url=fake.base_url)

    async def main() -> list[httpx.Response]:
        upstream = fake.async_transport()
        app = NavaiASGIMiddleware(hello_asgi, opts, transport=upstream, functions=[meet])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            calls = [client.post(EXECUTE, json={"function_name": "meet"}) for _ in range(IN_FLIGHT)]
            responses = await asyncio.gather(*calls)
        await upstream.aclose()
        return responses

    responses = asyncio.run(main())
    assert [r.json()["result"] for r in responses] == [IN_FLIGHT] * IN_FLIGHT


def test_async_functions_under_wsgi_run_concurrently_on_the_middlewares_loop() -> None:
    arrived: list[int] = []
    lock = threading.Lock()

    async def meet() -> int:
        with lock:
            arrived.append(1)
        with anyio.fail_after(10):
            while len(arrived) < 10:
                await anyio.sleep(0.005)
        return len(arrived)

    with both_shells(functions=[meet]) as shells:
        request = dict(shells)["wsgi"]
        with ThreadPoolExecutor(10) as pool:
            responses = list(pool.map(lambda _: execute(request, "meet"), range(10)))
    assert [r.json()["result"] for r in responses] == [10] * 10


# -- the routes around the functions ----------------------------------------------------


def test_methods_preflights_and_switches() -> None:
    with both_shells(cors_origins=["http://front.test"]) as shells:
        for _, request in shells:
            response = request("POST", LIST, json={})
            assert response.status_code == 405
            assert response.json() == {"error": "Method not allowed. Use GET."}
            assert response.headers["allow"] == "GET, OPTIONS"
            assert request("GET", EXECUTE).status_code == 405
            preflight = request(
                "OPTIONS",
                LIST,
                headers={"origin": "http://front.test", "access-control-request-method": "GET"},
            )
            assert preflight.status_code == 204
            assert preflight.headers["access-control-allow-methods"] == "GET"
    with both_shells(include_functions_routes=False) as shells:
        for _, request in shells:
            assert request("GET", LIST).text == "app"
            assert request("POST", EXECUTE, json={}).text == "app"
    with both_shells(functions_list_path=None, functions_execute_path="/tools/run") as shells:
        for _, request in shells:
            assert request("GET", LIST).text == "app"
            response = request("POST", "/tools/run", json={"function_name": "point"})
            assert response.json()["result"] == {"x": 1, "y": 2}
    with both_shells(path=None) as shells:
        for _, request in shells:
            assert request("POST", "/navai/realtime/client-secret", json={}).text == "app"


def test_two_routes_on_one_path_fail_at_start_up() -> None:
    with pytest.raises(ValueError, match="same path"):
        NavaiWSGIMiddleware(
            hello_wsgi,
            NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY),
            functions=[],
            functions_list_path="/navai/realtime/client-secret",
        )


@pytest.mark.parametrize("value", [0, -1, float("nan"), "3", True, 7200])
def test_bad_function_timeouts_fail_at_start_up(value: object) -> None:
    with pytest.raises(OptionsError, match="function_timeout_seconds"):
        NavaiWSGIMiddleware(
            hello_wsgi,
            NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY),
            functions=[],
            function_timeout_seconds=value,  # type: ignore[arg-type]
        )


def test_the_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAVAI_FUNCTION_TIMEOUT_SECONDS", "0.2")
    with both_shells() as shells:
        for _, request in shells:
            assert execute(request, "sleepy", {"value": 2}).status_code == 504
    monkeypatch.setenv("NAVAI_FUNCTION_TIMEOUT_SECONDS", "soon")
    with pytest.raises(OptionsError, match="NAVAI_FUNCTION_TIMEOUT_SECONDS"):
        NavaiWSGIMiddleware(hello_wsgi, NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY))


def test_the_function_routes_pass_the_guard_and_count_apart() -> None:
    def only_alice(info: Any) -> str | None:
        return "alice" if info.headers.get("x-user") == "alice" else None

    with both_shells(authorize=only_alice, rate_limit={"functions": "2/minute"}) as shells:
        for _, request in shells:
            assert request("GET", LIST).status_code == 401
            alice = {"x-user": "alice"}
            assert request("GET", LIST, headers=alice).status_code == 200
            first = execute(request, "echo", {"value": 1}, headers=alice)
            assert first.status_code == 200
            # The list counted too: one group for both routes.
            assert first.headers["ratelimit"].startswith('"functions";r=0;t=')
            refused = execute(request, "echo", {"value": 1}, headers=alice)
            assert refused.status_code == 429
            assert refused.json() == {"error": "Too many requests; try again later."}
            # Minting is another group, with no limit here.
            mint = request("POST", "/navai/realtime/client-secret", json={}, headers=alice)
            assert mint.status_code == 200


def test_sync_and_async_functions_run_under_trio_too() -> None:
    fake = FakeOpenAIRealtime(api_key=CANARY_KEY)
    opts = NavaiVoiceBackendOptions(openai_api_key=CANARY_KEY, openai_base_url=fake.base_url)

    async def main() -> list[httpx.Response]:
        app = NavaiASGIMiddleware(
            hello_asgi,
            opts,
            transport=fake.async_transport(),
            functions=FUNCTIONS,
            function_timeout_seconds=0.2,
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            responses = [
                await client.post(EXECUTE, json={"function_name": name, "payload": payload})
                for name, payload in (
                    ("add", {"args": [2, 3]}),
                    ("double", {"value": 5}),
                    ("sleepy", {"value": 2}),
                    ("refuse", {"value": "no"}),
                )
            ]
        await app.aclose()
        return responses

    added, doubled, late, refused = anyio.run(main, backend="trio")
    assert added.json()["result"] == 5
    assert doubled.json()["result"] == 10
    assert late.status_code == 504
    assert refused.json()["details"] == "Cannot do that: no"


def test_a_worker_is_free_when_its_caller_hears_the_result() -> None:
    """The caller is told (the future's callbacks, its waiter) only once the
    worker counts as free: a call made the moment the last one answered
    finds the worker, not a spurious 503."""
    from navai_mw.runtime.function_workers import FunctionWorkers

    workers = FunctionWorkers(1)
    for run in (lambda: 2, lambda: 1 / 0):  # a result, and an exception
        next_call: list[object] = []
        first = workers.submit(run)
        assert first is not None
        # Runs as the caller hears: on the worker's thread, inside set_result.
        first.add_done_callback(lambda _, heard=next_call: heard.append(workers.submit(lambda: 3)))
        wait([first], timeout=10)
        deadline = time.monotonic() + 10  # a bound, not a measurement
        while not next_call and time.monotonic() < deadline:
            time.sleep(0.01)
        second = next_call[0]
        assert second is not None  # the worker was free
        assert second.result(timeout=10) == 3  # type: ignore[attr-defined]


def test_back_to_back_calls_on_one_worker_are_never_refused() -> None:
    with both_shells(function_workers=1) as shells:
        for _, request in shells:
            statuses = [execute(request, "add", {"args": [1, 1]}).status_code for _ in range(100)]
            assert statuses == [200] * 100


# -- keyword-only parameters, hints left as text, builtins --------------------------------


class Scale:
    def __init__(self, factor: int = 2) -> None:
        self.factor = factor

    def apply(self, amount: int, *, offset: int = 0) -> int:
        return amount * self.factor + offset

    @staticmethod
    def clamp(amount: int, *, high: int = 10) -> int:
        return min(amount, high)


class Offset(int):
    """A class whose constructor Python gives no signature for (a builtin's)."""

    def plus(self, amount: int) -> int:
        return int(self) + amount


def total(*amounts: int) -> int:
    return sum(amounts)


def where_from(city: str, ctx: typing_only.navai.FunctionContext) -> list[str]:  # noqa: F821
    """The context's hint is a name only a type checker resolves."""
    return [city, ctx.function]


def plain_context(city, context):  # type: ignore[no-untyped-def]
    return [city, context.function]


def pick(n: Literal[1, 2, -3, 1.5]) -> float:
    return n


def ratio_of(r: float) -> float:
    return r


class Tone(enum.Enum):
    WARM = "warm"
    COOL = "cool"


def tone(t: Literal[Tone.WARM, "plain"]) -> str:
    return t.name if isinstance(t, Tone) else t


UserId = NewType("UserId", int)


def tally(
    counts: Sequence[int], labels: tuple[str, ...] = (), owner: UserId = UserId(0)
) -> list[Any]:
    return [sum(counts), type(counts).__name__, type(labels).__name__]


def shelve(
    tags: set[str],
    codes: frozenset[int] = frozenset(),
    loose: set | None = None,  # type: ignore[type-arg]
    single: tuple[int] = (0,),
    pair: tuple[int, str] = (0, ""),
    scores: dict[str, int] | None = None,
) -> list[Any]:
    return [
        [sorted(tags), type(tags).__name__],
        [sorted(codes), type(codes).__name__],
        None if loose is None else [sorted(loose, key=repr), type(loose).__name__],
        [list(single), list(pair), type(pair).__name__],
        scores,
    ]


MORE = [
    Scale,
    Offset,
    total,
    where_from,
    plain_context,
    max,
    echo,
    pick,
    ratio_of,
    tone,
    tally,
    shelve,
]

MORE_CALLS = [
    pytest.param(
        "scale_apply",
        {"constructorArgs": [3], "amount": 2, "offset": 1},
        7,
        id="method-keyword-only",
    ),
    pytest.param("scale_clamp", {"amount": 30, "high": 5}, 5, id="staticmethod-keyword-only"),
    pytest.param(
        "offset_plus",
        {"constructorArgs": [5], "args": [2]},
        7,
        id="method-of-a-class-without-a-constructor-signature",
    ),
    pytest.param("total", {"args": [1, 2, 3]}, 6, id="var-positional-with-a-hint"),
    pytest.param("where_from", {"args": ["Porto"]}, ["Porto", "where_from"], id="hint-as-text"),
    pytest.param("plain_context", {"args": ["Porto"]}, ["Porto", "plain_context"], id="named"),
    pytest.param("max", {"args": [1, 5]}, 5, id="builtin-args"),
    pytest.param("max", {"ab": 1}, "ab", id="builtin-the-payload-as-one-argument"),
    pytest.param(
        "echo", {"methodArgs": [1]}, {"methodArgs": [1]}, id="methodArgs-of-a-function-are-data"
    ),
    pytest.param("pick", {"n": 1.5}, 1.5, id="a-number-of-a-literal"),
    pytest.param("pick", {"n": -3}, -3, id="a-negative-integer-of-a-literal"),
    pytest.param("tone", {"t": "warm"}, "WARM", id="an-enum-member-of-a-literal-by-its-value"),
    pytest.param("tone", {"t": "plain"}, "plain", id="a-string-beside-an-enum-member"),
    pytest.param(
        "tally",
        {"counts": [1, 2], "labels": ["a"]},
        [3, "list", "tuple"],
        id="a-sequence-hint-gets-a-list-and-a-tuple-hint-a-tuple",
    ),
    pytest.param(
        "shelve",
        {
            "tags": ["b", "a", "b"],
            "codes": [2, 1],
            "loose": [1, "x"],
            "single": [5],
            "pair": [1, "a"],
            "scores": {"a": 1},
        },
        [
            [["a", "b"], "set"],
            [[1, 2], "frozenset"],
            [["x", 1], "set"],
            [[5], [1, "a"], "tuple"],
            {"a": 1},
        ],
        id="sets-fixed-tuples-and-a-mapping",
    ),
]


@pytest.mark.parametrize(("name", "payload", "result"), MORE_CALLS)
def test_more_ways_a_payload_reaches_a_function(name: str, payload: Any, result: Any) -> None:
    with both_shells(functions=MORE) as shells:
        for shell, request in shells:
            response = execute(request, name, payload)
            assert response.status_code == 200, (shell, response.text)
            assert response.json()["result"] == result


PICK = "The payload does not fit pick: n must be Literal[1, 2, -3, 1.5]"


@pytest.mark.parametrize(
    ("name", "payload", "error"),
    [
        pytest.param("pick", {"n": 7}, f"{PICK} (7 is not one of [1, 2, -3, 1.5] @ n).", id="7"),
        pytest.param("pick", {"n": -4}, f"{PICK} (-4 is not one of [1, 2, -3, 1.5] @ n).", id="-4"),
        pytest.param(
            "pick", {"n": 2.5}, f"{PICK} (2.5 is not one of [1, 2, -3, 1.5] @ n).", id="2.5"
        ),
        pytest.param(
            "pick", {"n": "abc"}, f"{PICK} ('abc' is not one of [1, 2, -3, 1.5] @ n).", id="text"
        ),
        pytest.param(
            "shelve",
            {"tags": "ab"},
            "The payload does not fit shelve: tags must be set[str] "
            "(expected a list, got str @ tags).",
            id="a-string-for-a-set",
        ),
        pytest.param(
            "shelve",
            {"tags": ["a", 1]},
            "The payload does not fit shelve: tags must be set[str] "
            "(expected a string, got int @ tags).",
            id="in-a-set",
        ),
        pytest.param(
            "shelve",
            {"tags": [], "codes": ["1"]},
            "The payload does not fit shelve: codes must be frozenset[int] "
            "(expected an integer, got str @ codes).",
            id="in-a-frozenset",
        ),
        pytest.param(
            "shelve",
            {"tags": [], "pair": {"a": 1}},
            "The payload does not fit shelve: pair must be tuple[int, str] "
            "(expected a list, got dict @ pair).",
            id="an-object-for-a-fixed-tuple",
        ),
        pytest.param(
            "shelve",
            {"tags": [], "pair": [1, 2, 3]},
            "The payload does not fit shelve: pair must be tuple[int, str] "
            "(expected a list of 2, got 3 @ pair).",
            id="a-fixed-tuple-too-long",
        ),
        pytest.param(
            "shelve",
            {"tags": [], "pair": [1, 2]},
            "The payload does not fit shelve: pair must be tuple[int, str] "
            "(expected a string, got int @ pair).",
            id="in-a-fixed-tuple",
        ),
        pytest.param(
            "shelve",
            {"tags": [], "single": [1, 2]},
            "The payload does not fit shelve: single must be tuple[int] "
            "(expected a list of 1, got 2 @ single).",
            id="a-tuple-of-one-too-long",
        ),
        pytest.param(
            "shelve",
            {"tags": [], "scores": [["a", 1]]},
            "The payload does not fit shelve: scores must be dict[str, int] | None "
            "(expected an object, got list @ scores).",
            id="an-array-for-a-mapping",
        ),
        pytest.param(
            "shelve",
            {"tags": [], "scores": {"a": "1"}},
            "The payload does not fit shelve: scores must be dict[str, int] | None "
            "(expected an integer, got str @ scores['a']).",
            id="in-a-mapping",
        ),
        pytest.param(
            "pick",
            {"n": True},
            f"{PICK} (True is not one of [1, 2, -3, 1.5] @ n).",
            id="true-is-not-1",
        ),
        pytest.param(
            "pick",
            {"n": 2.0},
            f"{PICK} (2.0 is not one of [1, 2, -3, 1.5] @ n).",
            id="a-float-is-not-the-integer-2",
        ),
        pytest.param(
            "pick",
            {"n": "1"},
            f"{PICK} ('1' is not one of [1, 2, -3, 1.5] @ n).",
            id="text-that-reads-as-a-number",
        ),
        pytest.param(
            "pick",
            {"n": "2 not in literal 1"},
            f"{PICK} ('2 not in literal 1' is not one of [1, 2, -3, 1.5] @ n).",
            id="text-that-reads-as-a-refusal",
        ),
        pytest.param(
            "tone",
            {"t": "cool"},
            "The payload does not fit tone: t must be Literal[<Tone.WARM: 'warm'>, 'plain'] "
            "('cool' is not one of ['warm', 'plain'] @ t).",
            id="an-enum-value-not-in-a-literal",
        ),
        pytest.param(
            "tally",
            {"counts": ["a", "b", "c", "d", "e", "f"]},
            "The payload does not fit tally: counts must be Sequence[int] ("
            + "; ".join(f"expected an integer, got str @ counts[{index}]" for index in range(5))
            + ").",
            id="five-problems-of-six",
        ),
        pytest.param(
            "tally",
            {"counts": [], "labels": "ab"},
            "The payload does not fit tally: labels must be tuple[str, ...] "
            "(expected a list, got str @ labels).",
            id="a-tuple-hint-named-as-written",
        ),
        pytest.param(
            "tally",
            {"counts": [], "owner": "ana"},
            "The payload does not fit tally: owner must be UserId "
            "(expected an integer, got str @ owner).",
            id="a-new-type-named-as-written",
        ),
        pytest.param(
            "ratio_of",
            {"r": "x"},
            "The payload does not fit ratio_of: r must be float (expected a number, got str @ r).",
            id="text-for-a-number",
        ),
    ],
)
def test_a_value_outside_its_hint_is_shown_as_sent(name: str, payload: Any, error: str) -> None:
    with both_shells(functions=MORE) as shells:
        for shell, request in shells:
            response = execute(request, name, payload)
            assert response.status_code == 400, (shell, response.text)
            assert response.json()["error"] == error


def test_each_of_var_positional_values_is_held_to_its_hint() -> None:
    with both_shells(functions=MORE) as shells:
        for shell, request in shells:
            response = execute(request, "total", {"args": [1, "2"]})
            assert response.status_code == 400, (shell, response.text)
            assert response.json()["error"].startswith(
                "The payload does not fit total: amounts must be int"
            )


def test_names_are_spelled_as_the_reference_spells_them() -> None:
    def named(name: str) -> Callable[[], int]:
        def function() -> int:
            return 1

        function.__name__ = function.__qualname__ = name
        return function

    registry = load_navai_functions(
        [
            named("get-weather.v2"),
            named("__private__"),
            named("_"),
            named("getWeather"),
            named("GetWeather"),
            named("get_weather"),
            named("XmlReader"),
            named("sendX"),
            named("X"),
        ]
    )
    assert registry.names == [
        "get_weather_v2",
        "private",
        "fn",
        "get_weather",
        "get_weather_2",
        "get_weather_3",
        "xml_reader",
        "send_x",
        "x",
    ]


def test_a_refusal_reads_as_its_message() -> None:
    assert str(NavaiFunctionError("Cannot do that.")) == "Cannot do that."


def test_what_a_function_did_wrong_is_logged_by_name_and_kind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with both_shells() as shells:
        for _, request in shells:
            assert execute(request, "explode").status_code == 500
            assert execute(request, "unencodable").status_code == 500
    messages = [log_message(record) for record in caplog.records]
    assert "navai_mw: backend function explode raised RuntimeError" in messages
    assert (
        "navai_mw: backend function unencodable returned a set, which JSON cannot carry" in messages
    )
