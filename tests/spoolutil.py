"""Helpers for spool tests: small valid bundles."""

from __future__ import annotations

import secrets

from agent.bundle import DeviceInfo, SealedBundle, seal, text_entry
from agent.redact import Redactor

KEY = b"spool-test-key-0123456789"
_REDACTOR = Redactor()


def small_bundle(note: str = "x", pad: int = 0) -> SealedBundle:
    """A valid sealed bundle; pad adds bytes of incompressible-ish text."""
    body = note + (secrets.token_hex(pad // 2) if pad else "")
    return seal(
        device=DeviceInfo(id="T-S"),
        trigger={"kind": "manual", "note": note},
        entries=[text_entry("report.txt", body)],
        key=KEY,
        redactor=_REDACTOR,
    )
