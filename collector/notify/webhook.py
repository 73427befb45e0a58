"""One webhook attempt: POST the outbox row's body, signed, and what came back.

The request: ``POST <url>`` with the body (JSON, UTF-8) and the headers

- ``X-Posagent-Signature: sha256=<hex>``: HMAC-SHA256 of the raw body bytes with the
  hook's secret (`signature`; a receiver checks it with `verify` or its own HMAC, on the
  bytes as received, before parsing them);
- ``X-Posagent-Delivery: <uuid>``: the delivery id, the same on every retry of one
  (event, hook): a receiver that has seen it answers 2xx and does nothing;
- ``X-Posagent-Event: incident.opened`` (reopened, escalated, resolved).

Success is a 2xx answer within ``timeout_s`` (connecting, then each read). Anything else
(a redirect, which is not followed, a 4xx or 5xx, a refused connection, a timeout) is a
failed attempt, retried by the worker. At most `MAX_REPLY` bytes of the answer are read,
for the error line.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import requests

from collector.notify.channels import Hook
from collector.notify.outbox import Outcome

SIGNATURE_HEADER = "X-Posagent-Signature"
DELIVERY_HEADER = "X-Posagent-Delivery"
EVENT_HEADER = "X-Posagent-Event"
USER_AGENT = "posagent-collector-webhook/1"
MAX_REPLY = 300


def signature(secret: bytes, body: bytes) -> str:
    """The signature header's value for body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str) -> bool:
    """True when header is body's signature with secret (constant-time comparison)."""
    return hmac.compare_digest(signature(secret, body).encode(), header.strip().encode())


def one_line(text: str, limit: int = MAX_REPLY) -> str:
    """Text as one printable line of at most limit characters (for the delivery log)."""
    flat = "".join(c if c.isprintable() else " " for c in text)
    return " ".join(flat.split())[:limit]


def post(hook: Hook, delivery_id: str, event: str, body: str) -> Outcome:
    """One signed POST of body to hook."""
    data = body.encode("utf-8")
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: signature(hook.secret, data),
        DELIVERY_HEADER: delivery_id,
        EVENT_HEADER: event,
    }
    t0 = time.perf_counter()

    def took() -> int:
        return int((time.perf_counter() - t0) * 1000)

    try:
        with requests.post(
            hook.url,
            data=data,
            headers=headers,
            timeout=(hook.timeout_s, hook.timeout_s),
            allow_redirects=False,
            stream=True,
        ) as r:
            code = r.status_code
            if 200 <= code < 300:
                return Outcome(True, code, "", took())
            reply = r.raw.read(MAX_REPLY, decode_content=True) or b""
            text = one_line(reply.decode("utf-8", "replace"))
            return Outcome(False, code, f"HTTP {code} {r.reason or ''}: {text}".strip(), took())
    except requests.RequestException as e:
        return Outcome(False, None, one_line(f"{type(e).__name__}: {e}"), took())
