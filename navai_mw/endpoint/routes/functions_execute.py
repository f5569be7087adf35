"""``POST /navai/functions/execute``: one backend function called with the
payload, its outcome answered as the reference does."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from ...backend_functions.calling import bind_call, function_reply
from ...backend_functions.registry import FunctionContext
from ...core.effects import CallFunction, FunctionOutcome
from ...core.errors import RequestError
from ..route import Call, Reply, Settings


def handle(settings: Settings, call: Call) -> Generator[Any, Any, Reply]:
    raw_name = call.body.get("function_name")
    function = settings.functions.get(raw_name) if isinstance(raw_name, str) else None
    if function is None:
        if not isinstance(raw_name, str) or not raw_name.strip():
            raise RequestError("function_name is required.")
        return Reply(
            404,
            {
                "error": "Unknown or disallowed function.",
                "available_functions": settings.functions.names,
            },
        )
    payload = call.body.get("payload")
    context = FunctionContext(
        function=function.name,
        identity=call.identity,
        client=call.info.client,
        headers=call.info.headers,
        request=call.info,
    )
    run = bind_call(function, payload if isinstance(payload, dict) else {}, context)
    outcome: FunctionOutcome = yield CallFunction(
        run, is_async=function.is_async, timeout=settings.function_timeout, name=function.name
    )
    return Reply(*function_reply(function, outcome, settings.function_timeout))
