"""Upload protocol v1, both ends: the path, the headers and the digest (docs/ARCHITECTURE.md §6).

The agent's uploader builds its requests with `upload_headers`; the collector
parses them with `parse_content_digest`; tests and benchmarks use the same
functions, so the two ends cannot drift apart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from pathlib import Path

PROTOCOL_PATH = "/v1/bundles/"
MEDIA_TYPE = "application/zip"
DEVICE_HEADER = "X-Posagent-Device"

# Reply `status` values that refuse one bundle for what it holds, never the
# device's credentials: the agent fails that bundle and the queue goes on.
BUNDLE_REFUSED_DEVICE = "device_mismatch"  # the manifest names another device (422)
BUNDLE_REFUSALS = frozenset({BUNDLE_REFUSED_DEVICE, "invalid_bundle", "conflict"})
# What collectors before the 422 answered for a manifest of another device (with 403).
_LEGACY_DEVICE_MISMATCH = "manifest device differs from the token's device"

_DIGEST_RE = re.compile(r"(?:^|,)\s*sha-256\s*=\s*:([A-Za-z0-9+/=]+):\s*(?:;[^,]*)?(?:,|$)")


def bundle_url(endpoint: str, bundle_id: str) -> str:
    """`{endpoint}/v1/bundles/{bundle_id}` (a path prefix in the endpoint is kept)."""
    return endpoint.rstrip("/") + PROTOCOL_PATH + bundle_id


def digest_value(sha256: bytes) -> str:
    """The RFC 9530 Content-Digest value for a SHA-256 digest: `sha-256=:<base64>:`."""
    return f"sha-256=:{base64.b64encode(sha256).decode()}:"


def content_digest(data: bytes) -> str:
    """The Content-Digest value of a body held in memory."""
    return digest_value(hashlib.sha256(data).digest())


def file_digest(path: Path) -> tuple[str, int]:
    """(Content-Digest value of the file, its size), read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(256 * 1024):
            h.update(chunk)
            size += len(chunk)
    return digest_value(h.digest()), size


def refuses_bundle_only(body: str) -> bool:
    """True when a reply body (JSON `{"status", "bundle_id", "error"}`) refuses the bundle itself.

    A 401/403 is about the credentials unless its body says otherwise: a
    `status` in BUNDLE_REFUSALS, or the error text older collectors sent with
    403 for a manifest that names another device.
    """
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    if not isinstance(doc, dict):
        return False
    return doc.get("status") in BUNDLE_REFUSALS or doc.get("error") == _LEGACY_DEVICE_MISMATCH


def parse_content_digest(value: str) -> bytes | None:
    """The sha-256 value of an RFC 9530 Content-Digest header, or None."""
    m = _DIGEST_RE.search(value.strip())
    if not m:
        return None
    try:
        raw = base64.b64decode(m.group(1), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def upload_headers(bundle_id: str, digest: str, device_id: str, token: str = "") -> dict[str, str]:
    """Every header of a v1 upload; `digest` is a Content-Digest value."""
    headers = {
        "Content-Type": MEDIA_TYPE,
        "Idempotency-Key": bundle_id,
        "Content-Digest": digest,
        DEVICE_HEADER: device_id,
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


# --------------------------------------------------------------------------- the two-way channel
# docs/CHANNEL.md: enrollment, check-ins and commands, JSON over the same endpoint.

ENROLL_PATH = "/v1/enroll"
CHECKIN_PATH = "/v1/checkins"
TOKEN_PATH = "/v1/devices/self/token"
LONGPOLL_WAIT_S = 25  # ?wait= of a long-poll check-in (the collector holds it at most 55 s)
COMMAND_GRACE_S = 300.0  # a terminal's clock may be this wrong: expiry compared with this grace
# the commands an operator may send (docs/CHANNEL.md); the terminal runs nothing else
COMMAND_KINDS = (
    "capture",
    "selftest",
    "logs",
    "set-level",
    "checkin-interval",
    "rotate-token",
    "rotate-signing-key",
)
CHANNEL_BODY_LIMIT_BYTES = 64 * 1024


def channel_url(endpoint: str, path: str, wait_s: int = 0) -> str:
    """`{endpoint}{path}`, with `?wait=N` for a long-poll check-in."""
    url = endpoint.rstrip("/") + path
    return f"{url}?wait={wait_s}" if wait_s > 0 else url


def channel_headers(device_id: str, token: str = "") -> dict[str, str]:
    """The headers of a channel request: the device, and its bearer token once enrolled."""
    headers = {"Content-Type": "application/json", DEVICE_HEADER: device_id}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def canonical_json(obj: object) -> bytes:
    """The bytes a command envelope is signed over (both ends build them with this)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
