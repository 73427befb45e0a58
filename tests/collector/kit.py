"""Test doubles for the collector's tests and benchmark: v1 upload headers for a body.

Bundles come from tests/bundle/kit.py.
"""

from __future__ import annotations

from agent.upload import protocol
from agent.upload.protocol import content_digest


def upload_headers(bundle_id: str, data: bytes, token: str, device: str) -> dict[str, str]:
    """Every header of a v1 upload of `data` (the protocol module's, with the body's digest)."""
    return protocol.upload_headers(bundle_id, content_digest(data), device, token)
