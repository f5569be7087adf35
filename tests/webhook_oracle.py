"""openai-python's ``client.webhooks.unwrap`` as the oracle of a webhook's
signature: what it makes of a delivery, as the status navai_mw answers it
with (200 taken, 400 malformed, 401 unsigned), at a time the test chooses."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any
from unittest import mock

import openai
from openai import InvalidWebhookSignatureError
from openai.lib import _webhooks

# A client is only the holder of unwrap: it never sends a request here.
_CLIENT = openai.OpenAI(api_key="sk-oracle-never-sent", base_url="http://oracle.invalid/v1")


class _Frozen:
    """The ``time`` module as openai-python's check sees it: one instant."""

    def __init__(self, now: float) -> None:
        self._now = now

    def time(self) -> float:
        return self._now


def unwrap_status(body: bytes, headers: Mapping[str, str], secret: str, now: float) -> int:
    """200 when ``unwrap`` takes the delivery at ``now``; 401 when it says
    the signature is wrong (or cannot compare it); 400 for anything else it
    refuses (a header missing, a body that is not UTF-8 or not JSON)."""
    with mock.patch.object(_webhooks, "time", _Frozen(now)):
        try:
            _CLIENT.webhooks.unwrap(body, dict(headers), secret=secret)
        except (InvalidWebhookSignatureError, TypeError):
            return 401
        except ValueError:
            return 400
    return 200


def sign(secret: str, webhook_id: str, timestamp: str, body: bytes) -> str:
    """The ``v1,<base64>`` signature of a delivery (as OpenAI makes it)."""
    key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def event_body(event: Any) -> bytes:
    return json.dumps(event).encode()
