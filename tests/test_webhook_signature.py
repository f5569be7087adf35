"""A webhook's signature, sans-IO: ``verify_delivery`` takes exactly the
deliveries openai-python's ``webhooks.unwrap`` takes, and refuses the rest
with the status that names why (400 malformed, 401 unsigned), on a table of
named cases and on deliveries Hypothesis draws and then bends."""

from __future__ import annotations

import base64
import json
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from navai_mw import OptionsError, RequestError
from navai_mw.upstreams.openai_webhooks import (
    Blocked,
    blocked_identifier,
    signing_key,
    verify_delivery,
)

from .webhook_oracle import event_body, sign, unwrap_status

NOW = 1_760_000_000
SECRET = "whsec_" + base64.b64encode(b"a webhook signing key, 32 bytes!").decode()
PLAIN_SECRET = "a secret without the whsec_ prefix"
BODY = event_body({"id": "evt_1", "type": "batch.completed", "created_at": NOW, "data": {}})


def delivery(
    *,
    body: bytes = BODY,
    secret: str = SECRET,
    webhook_id: str = "wh_1",
    timestamp: str = str(NOW),
    signature: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    sig = signature if signature is not None else sign(secret, webhook_id, timestamp, body)
    return body, {
        "webhook-id": webhook_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": sig,
    }


def navai_status(body: bytes, headers: dict[str, str], secret: str, now: float) -> int:
    try:
        verify_delivery(body, headers, key=signing_key(secret), now=now)
    except RequestError as exc:
        return exc.status
    return 200


GOOD = sign(SECRET, "wh_1", str(NOW), BODY)
CASES = {
    "good": delivery(),
    "tampered body": (BODY.replace(b"evt_1", b"evt_2"), delivery()[1]),
    "wrong secret": delivery(secret="whsec_" + base64.b64encode(b"another key").decode()),
    "two signatures, the second good": delivery(signature=f"v1,AAAA {GOOD}"),
    "two signatures, none good": delivery(signature="v1,AAAA v1,BBBB"),
    "a signature without v1,": delivery(signature=GOOD.removeprefix("v1,")),
    "a v2 signature": delivery(signature="v2," + GOOD.removeprefix("v1,")),
    "an empty signature": delivery(signature=""),
    "a non-ASCII signature before the good one": delivery(signature=f"v1,é {GOOD}"),
    "the good one before a non-ASCII one": delivery(signature=f"{GOOD} v1,é"),
    "stale by 301 s": delivery(timestamp=str(NOW - 301)),
    "old by 300 s": delivery(timestamp=str(NOW - 300)),
    "future by 301 s": delivery(timestamp=str(NOW + 301)),
    "ahead by 300 s": delivery(timestamp=str(NOW + 300)),
    "a fractional timestamp": delivery(timestamp=f"{NOW}.5"),
    "a timestamp with spaces": delivery(timestamp=f" {NOW} "),
    "a timestamp with an underscore": delivery(timestamp=f"{NOW}"[:4] + "_" + f"{NOW}"[4:]),
    "an empty id": delivery(webhook_id=""),
    "a body that is not UTF-8": delivery(body=b'{"id": "\xff"}'),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_delivery_passes_as_unwrap_says(case: str) -> None:
    body, headers = CASES[case]
    assert navai_status(body, headers, SECRET, NOW) == unwrap_status(body, headers, SECRET, NOW)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_malformed(missing: str) -> None:
    body, headers = delivery()
    del headers[missing]
    assert unwrap_status(body, headers, SECRET, NOW) == 400
    with pytest.raises(RequestError, match=missing) as refused:
        verify_delivery(body, headers, key=signing_key(SECRET), now=NOW)
    assert refused.value.status == 400


def _without(*names: str) -> tuple[bytes, dict[str, str]]:
    body, headers = delivery()
    for name in names:
        del headers[name]
    return body, headers


REFUSALS = {
    "two headers missing": (
        _without("webhook-id", "webhook-timestamp"),
        "The webhook has no webhook-timestamp and no webhook-id header: "
        "OpenAI signs every delivery.",
    ),
    "a fractional timestamp": (
        delivery(timestamp=f"{NOW}.5"),
        "The webhook's timestamp is not a whole number of seconds.",
    ),
    "stale by 301 s": (delivery(timestamp=str(NOW - 301)), "The webhook's timestamp is too old."),
    "future by 301 s": (delivery(timestamp=str(NOW + 301)), "The webhook's timestamp is too new."),
    "a body that is not UTF-8": (
        delivery(body=b'{"id": "\xff"}'),
        "The webhook's body is not UTF-8 text.",
    ),
    "tampered body": (
        (BODY.replace(b"evt_1", b"evt_2"), delivery()[1]),
        "The webhook's signature does not match.",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_refused_delivery_says_why(case: str) -> None:
    (body, headers), message = REFUSALS[case]
    with pytest.raises(RequestError) as refused:
        verify_delivery(body, headers, key=signing_key(SECRET), now=NOW)
    assert refused.value.message == message


def test_a_secret_without_whsec_is_its_own_bytes() -> None:
    body, headers = delivery(secret=PLAIN_SECRET)
    assert navai_status(body, headers, PLAIN_SECRET, NOW) == 200
    assert unwrap_status(body, headers, PLAIN_SECRET, NOW) == 200


@pytest.mark.parametrize("secret", ["whsec_", "whsec_!!!", "whsec_abc", ""])
def test_a_secret_that_cannot_sign_is_refused_at_start_up(secret: str) -> None:
    with pytest.raises(OptionsError, match="openai_webhook_secret") as refused:
        signing_key(secret)
    assert secret == "" or secret not in refused.value.message


def test_a_secret_that_cannot_sign_says_how_to_fix_it() -> None:
    with pytest.raises(OptionsError) as not_base64:
        signing_key("whsec_abc")
    assert not_base64.value.message == (
        "openai_webhook_secret starts with whsec_ but the rest is not base64: "
        "copy the secret from OpenAI's dashboard whole."
    )
    with pytest.raises(OptionsError) as empty:
        signing_key("whsec_")
    assert empty.value.message == "openai_webhook_secret is empty once decoded."


def test_no_message_quotes_the_secret() -> None:
    body, headers = delivery(signature="v1," + SECRET)
    with pytest.raises(RequestError) as refused:
        verify_delivery(body, headers, key=signing_key(SECRET), now=NOW)
    assert SECRET not in refused.value.message


# -- drawn deliveries, bent ------------------------------------------------------------------

_PRINTABLE = st.text(alphabet=string.printable, max_size=24)
_BENDS = st.sampled_from(
    ["none", "body", "timestamp", "id", "signature", "secret", "drop", "prefix", "junk"]
)


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=64) | st.text(max_size=32).map(str.encode),
    webhook_id=_PRINTABLE,
    skew=st.integers(min_value=-400, max_value=400),
    bend=_BENDS,
    junk=_PRINTABLE,
    secret=st.sampled_from([SECRET, PLAIN_SECRET]),
)
def test_drawn_deliveries_pass_exactly_when_unwrap_takes_them(
    body: bytes, webhook_id: str, skew: int, bend: str, junk: str, secret: str
) -> None:
    timestamp = str(NOW + skew)
    signature = sign(secret, webhook_id, timestamp, body)
    headers = {"webhook-id": webhook_id, "webhook-timestamp": timestamp}
    if bend == "body":
        body += b" "
    elif bend == "timestamp":
        headers["webhook-timestamp"] = junk
    elif bend == "id":
        headers["webhook-id"] = webhook_id + "x"
    elif bend == "signature":
        signature = f"{junk} {signature}"
    elif bend == "secret":
        signature = sign(PLAIN_SECRET if secret == SECRET else SECRET, webhook_id, timestamp, body)
    elif bend == "prefix":
        signature = signature.removeprefix("v1,")
    elif bend == "junk":
        signature = junk
    if bend != "drop":
        headers["webhook-signature"] = signature
    # unwrap parses the body after the check; navai_mw's route does too.
    verdict = navai_status(body, headers, secret, NOW)
    oracle = unwrap_status(body, headers, secret, NOW)
    if verdict == 200 and oracle == 400:
        # Signed, but not JSON: unwrap's parse refuses it, as the route will.
        with pytest.raises((json.JSONDecodeError, UnicodeDecodeError)):
            json.loads(body)
        return
    assert verdict == oracle


def _blocked(data: object, kind: str = "safety_identifier.blocked") -> Blocked | None:
    return blocked_identifier({"type": kind, "data": data})


@pytest.mark.parametrize(
    ("data", "blocked"),
    [
        ({"safety_identifier": "ab" * 32, "safety_category": "csam"}, Blocked("ab" * 32, "csam")),
        ({"safety_identifier": "a", "safety_category": "x"}, Blocked("a", "x")),
        ({"safety_identifier": "a" * 256}, Blocked("a" * 256, "unknown")),
        ({"safety_identifier": "a", "safety_category": "c" * 64}, Blocked("a", "c" * 64)),
        ({"safety_identifier": "a", "safety_category": "c" * 65}, Blocked("a", "unknown")),
        ({"safety_identifier": "a", "safety_category": ""}, Blocked("a", "unknown")),
        ({"safety_identifier": "a", "safety_category": 7}, Blocked("a", "unknown")),
        ({"safety_identifier": "a" * 257}, None),
        ({"safety_identifier": ""}, None),
        ({"safety_identifier": 42}, None),
        ({}, None),
        ("ab" * 32, None),
    ],
    ids=[
        "named",
        "one-character",
        "longest-identifier",
        "longest-category",
        "category-too-long",
        "empty-category",
        "category-not-text",
        "identifier-too-long",
        "empty-identifier",
        "identifier-not-text",
        "no-identifier",
        "data-not-an-object",
    ],
)
def test_a_blocked_identifier_is_read_within_its_bounds(
    data: object, blocked: Blocked | None
) -> None:
    assert _blocked(data) == blocked


def test_only_a_blocked_event_names_a_blocked_identifier() -> None:
    assert _blocked({"safety_identifier": "a"}, kind="safety_identifier.warning") is None
