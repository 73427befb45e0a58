"""Sealed bundles on the collector (issue 17, docs/ARCHITECTURE.md §4).

Ingest checks a bundle's origin with the device's Ed25519 public key on file
(`[collector] device_pubkeys_dir/<device_id>.pub`, PEM): the envelope
signature of a sealed bundle (no decryption needed), `manifest.ed25519` of a
plain one that carries it; an HMAC-only bundle (queued before the upgrade) is
still checked with `device_keys_dir`. A sealed bundle is then opened with the
collector's age identity (`[collector] age_identity_file`) to index it. One
that does not open is stored all the same, indexed from its signed envelope
with the summary `undecryptable: <reason>`, and counted in /metrics
(`posagent_collector_undecryptable_bundles_total`); never dropped. Downloads
serve the stored (encrypted) original.
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from agent.bundle.format import (
    ED_SIGNATURE,
    PAYLOAD,
    BundleCorrupt,
    BundleError,
    BundleReader,
    VerifyResult,
)
from agent.bundle.sealed import (
    Undecryptable,
    decrypt_payload,
    load_identities,
    load_public_key,
)
from agent.bundle.style import esc

_lock = threading.Lock()
_identities: dict[tuple[str, int], list[Any]] = {}
_counters: weakref.WeakKeyDictionary[Any, Counter] = weakref.WeakKeyDictionary()


def undecryptable_counter(metrics: Any) -> Counter:
    """The /metrics counter of bundles stored but not decryptable (one per Metrics registry)."""
    with _lock:
        c = _counters.get(metrics)
        if c is None:
            c = Counter(
                "posagent_collector_undecryptable_bundles",
                "Sealed bundles stored but not decryptable with the collector's age identity",
                registry=metrics.registry,
            )
            _counters[metrics] = c
        return c


def identities(cfg: Any) -> list[Any]:
    """The collector's age identities ([] when none configured); re-read when the file changes."""
    path = getattr(cfg, "age_identity_file", "")
    if not path:
        return []
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError as e:
        raise Undecryptable(f"age identity file {path}: {e.strerror or e}") from None
    with _lock:
        found = _identities.get((path, mtime))
    if found is None:
        found = load_identities(path)  # KeyFileError (a BundleError) names the file
        with _lock:
            _identities[(path, mtime)] = found
    return found


def device_pubkey(cfg: Any, device: str) -> Any:
    """The device's Ed25519 public key from device_pubkeys_dir, or None when not on file."""
    d = getattr(cfg, "device_pubkeys_dir", "")
    if not d or not device or "/" in device or device.startswith("."):
        return None
    path = Path(d) / f"{device}.pub"
    if not path.exists():
        return None
    return load_public_key(path)


def _stand_in(env: dict[str, Any], reason: str) -> dict[str, Any]:
    """An index manifest from a signed envelope, for a bundle the collector cannot open."""
    raw = env.get("trigger")
    trig: dict[str, Any] = raw if isinstance(raw, dict) else {}
    return {
        "schema": env.get("schema"),
        "bundle_id": env["bundle_id"],
        "created_at": env.get("created_at"),
        "device": {"id": str(env["device"].get("id", ""))},
        "trigger": {
            "kind": str(trig.get("kind") or "fault"),
            "key": str(trig.get("key") or ""),
            "severity": str(env.get("severity") or "error"),
            "summary": f"undecryptable: {reason}"[:300],
        },
        "files": [],
        "redaction": {"screenshot": "sealed"},
        "sealed": {"undecryptable": reason, "recipients": env.get("recipients", [])},
    }


def check_upload(col: Any, device: str, source: str | Path | bytes, key: bytes | None) -> Any:
    """Verify a bundle as ingest and reindex do; BundleError (422) with a one-line reason.

    Returns a VerifyResult whose manifest is the inner one (plain or decrypted)
    or, for a sealed bundle the collector cannot open, a stand-in from the
    signed envelope (counted in /metrics)."""
    pub = device_pubkey(col.cfg, device)
    with BundleReader(source) as r:
        if not r.sealed:
            return r.verify(key, pub if ED_SIGNATURE in r.names else None)
        res = r.verify(None, pub)
        env = res.manifest
        ciphertext = r.read(PAYLOAD)
    try:
        inner = decrypt_payload(ciphertext, identities(col.cfg) or _no_identity())
    except Undecryptable as e:
        undecryptable_counter(col.metrics).inc()
        return VerifyResult(_stand_in(env, str(e)), res.signature_checked, sealed=True)
    except BundleError as e:  # the identity file itself is unusable: keep the bundle
        undecryptable_counter(col.metrics).inc()
        return VerifyResult(_stand_in(env, str(e)), res.signature_checked, sealed=True)
    with BundleReader(inner) as ir:
        ires = ir.verify(key, pub if ED_SIGNATURE in ir.names else None)
    m = ires.manifest
    if m.get("bundle_id") != env["bundle_id"]:
        raise BundleCorrupt("inner bundle id differs from the signed envelope's")
    if (m.get("device") or {}).get("id") != env["device"].get("id"):
        raise BundleCorrupt("inner bundle device differs from the signed envelope's")
    m = dict(m)
    m["sealed"] = {"recipients": env.get("recipients", []), "signer": env.get("signer", "")}
    return VerifyResult(m, res.signature_checked or ires.signature_checked, sealed=True)


def _no_identity() -> list[Any]:
    raise Undecryptable("no [collector] age_identity_file to open it")


def readable(col: Any, data: bytes) -> bytes:
    """The plaintext bundle to show: data itself, or a sealed bundle's decrypted inside.

    Raises Undecryptable (a BundleError) with the reason when it does not open."""
    with BundleReader(data) as r:
        if not r.sealed:
            return data
        ciphertext = r.read(PAYLOAD)
    return decrypt_payload(ciphertext, identities(col.cfg) or _no_identity())


def readable_or_outer(col: Any, data: bytes) -> bytes:
    """readable(), or the stored bytes when they do not open (no entries to list)."""
    try:
        return readable(col, data)
    except BundleError:
        return data


def manifest_json(col: Any, data: bytes) -> dict[str, Any]:
    """The manifest served by the API: the inner one, with the envelope of a sealed bundle;
    for one that does not open, the envelope and the reason."""
    with BundleReader(data) as r:
        if not r.sealed:
            return r.manifest()
        env = r.verify(None).manifest
    try:
        inner = readable(col, data)
    except BundleError as e:
        return {"sealed": env, "undecryptable": str(e)}
    with BundleReader(inner) as ir:
        m = ir.manifest()
    m["sealed"] = env
    return m


def undecryptable_page(bundle_id: str, data: bytes, reason: str) -> str:
    """The body of a bundle page for a bundle this collector cannot open."""
    with BundleReader(data) as r:
        env = r.verify(None).manifest
    return (
        f"<h1>Bundle {esc(bundle_id)}: sealed, undecryptable</h1>"
        f"<p>This collector cannot decrypt it: {esc(reason)}.</p>"
        f"<p>Device {esc(str(env['device'].get('id', '')))}, severity "
        f"{esc(str(env.get('severity', '')))}, created {esc(str(env.get('created_at', '')))}; "
        f"encrypted to {len(env.get('recipients', []))} recipient(s). The download is the "
        "encrypted original: <code>age -d -i IDENTITY</code> on its payload.age, or "
        "<code>posagent bundle decrypt FILE --identity ID -o OUT.zip</code>.</p>"
    )
