"""Sealed bundles on the collector (issue 17, docs/ARCHITECTURE.md §4).

Ingest checks a bundle's origin with the device's Ed25519 public keys on file
in `[collector] device_pubkeys_dir`: the envelope signature of a sealed bundle
(no decryption needed), `manifest.ed25519` of a plain one that carries it; an
HMAC-only bundle (queued before the upgrade) is still checked with
`device_keys_dir`. A sealed bundle is then opened with the collector's age
identities (`[collector] age_identity_file`) to index it. One that does not
open is stored all the same, indexed from its signed envelope with the
summary `undecryptable: <reason>`, and counted in /metrics
(`posagent_collector_undecryptable_bundles_total`); never dropped.
`posagent collector reindex --undecryptable` opens them again once the right
identity is in the file. Downloads serve the stored (encrypted) original.

Keys and their rotation (a device enrolled through the channel, issue 16, also has the
keys it enrolled with in the ``devices`` table: `device_keyring` takes them with those on
file, `check_upload` asks `col.enrolled_pem(device)` for them):

- `age_identity_file` holds one or more identities, one `AGE-SECRET-KEY-1...`
  line each (what `age -d -i` reads; `#` lines are comments): a fleet key
  rotation adds the new identity beside the old one, and bundles sealed to
  either open (those queued on terminals before the rotation too). Re-read
  when the file changes; `collector serve` refuses to start (78) when it is
  unreadable or holds anything else.
- `<device_id>.pub` holds one or more PEM public keys (`posagent key
  show-public --all`), `#` comment lines between them: a bundle signed by any
  of them is accepted (during a rotation, the old key signed what was queued).
- `<device_id>.revoked` holds the keys revoked by `posagent collector
  revoke-key DEVICE KEY_ID` (moved there from the `.pub` file, after a
  `# key <id> revoked <time>` line): a bundle they signed that arrives
  afterwards is refused (422, `signed by revoked key ...`); a bundle stored
  before the revocation still indexes again. A device with a revoked key has
  its bundles without an Ed25519 signature refused too (its HMAC key may have
  gone with the terminal).
- A key file that does not parse is the collector's problem, told in one line
  (422 `device T-1's public key file on the collector is unusable: ...`, and
  the log event `device_pubkey_unusable` with the file); the terminal keeps
  the bundle in failed/ (`posagent spool retry` once fixed).
"""

from __future__ import annotations

import os
import re
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import Counter

from agent.bundle.format import (
    ED_SIGNATURE,
    PAYLOAD,
    BundleCorrupt,
    BundleError,
    BundleReader,
    BundleSignatureError,
    VerifyResult,
    key_id,
)
from agent.bundle.sealed import (
    KeyFileError,
    KeyRing,
    PemBlock,
    Undecryptable,
    decrypt_payload,
    load_identities,
    parse_public_keys,
)
from agent.bundle.style import esc
from agent.core.files import atomic_write, fsync_dir
from agent.core.timefmt import rfc3339
from collector.auth import valid_device_id
from collector.i18n import gettext as _
from collector.storage import BundleRecord, BundleStore

log = structlog.get_logger(__name__)

UNDECRYPTABLE = "undecryptable:"

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


class DeviceKeyError(BundleError):
    """A device's public key file on the collector does not parse (the operator fixes it)."""


def _key_files(cfg: Any, device: str) -> tuple[Path, Path] | None:
    d = getattr(cfg, "device_pubkeys_dir", "")
    if not d or not valid_device_id(device):
        return None
    return Path(d) / f"{device}.pub", Path(d) / f"{device}.revoked"


def _revoked_at(block: PemBlock) -> float:
    """When a key was revoked, from its `# key <id> revoked <RFC 3339>` line (0: always)."""
    for line in block.comments:
        m = re.search(r"\brevoked\s+(\d{4}-\d\d-\d\dT\S+)", line)
        if m:
            try:
                return datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
            except ValueError:
                pass
    return 0.0


def device_keyring(
    cfg: Any, device: str, *, valid_at: float | None = None, enrolled: str | None = None
) -> KeyRing | None:
    """The device's public keys (current and revoked), or None when it has none on file.

    enrolled: the PEM keys the device enrolled with (issue 16, table ``devices``), which
    join those of device_pubkeys_dir (a key revoked there stays revoked).
    DeviceKeyError (one line, naming the device and the file without its directory,
    and logged as `device_pubkey_unusable`) when a file does not parse."""
    from_enrollment = _enrolled_keys(device, enrolled)
    files = _key_files(cfg, device)
    if files is None or (not files[0].exists() and not files[1].exists()):
        return KeyRing(device, from_enrollment, {}, valid_at) if from_enrollment else None
    pub, rev = files
    try:
        current = [b.pub for b in parse_public_keys(pub)] if pub.exists() else []
        revoked = (
            {b.key_id: (b.pub, _revoked_at(b)) for b in parse_public_keys(rev)}
            if rev.exists()
            else {}
        )
    except KeyFileError as e:
        log.error("device_pubkey_unusable", device=device, error=str(e))
        reason = str(e).replace(str(pub.parent) + os.sep, "")
        raise DeviceKeyError(
            f"device {device}'s public key file on the collector is unusable: {reason}"
        ) from None
    ids = {key_id(k) for k in current}
    current += [k for k in from_enrollment if key_id(k) not in ids]
    return KeyRing(device, current, revoked, valid_at)


def _enrolled_keys(device: str, pem: str | None) -> list[Any]:
    if not pem or not pem.strip():
        return []
    try:
        return [b.pub for b in parse_public_keys(pem.encode())]
    except KeyFileError as e:
        log.error("device_pubkey_unusable", device=device, error=str(e), where="devices table")
        raise DeviceKeyError(
            f"device {device}'s enrolled public key on the collector is unusable"
        ) from None


def revoke_key(cfg: Any, device: str, kid: str, enrolled: str | None = None) -> PemBlock:
    """Move key `kid` (its 16-hex id) of device from `<device>.pub` to `<device>.revoked`,
    after a `# key <id> revoked <time>` line; a key the device enrolled with or rotated
    to (enrolled: its PEM keys in the ``devices`` table) is written to `.revoked` alone
    (revoked wins over the table). KeyFileError when a file does not parse, OSError
    when one cannot be written, LookupError (naming the ids on file) when the key is
    not there.

    The revocation is written (fsynced) before the key leaves the `.pub` file: a crash
    between the two leaves it in both, and revoked wins."""
    files = _key_files(cfg, device)
    if files is None:
        raise LookupError(f"no device_pubkeys_dir, or {device!r} is not a device id")
    pub, rev = files
    blocks = parse_public_keys(pub) if pub.exists() else []
    found = [b for b in blocks if b.key_id == kid.strip().lower()]
    from_table = parse_public_keys(enrolled.encode()) if enrolled and enrolled.strip() else []
    if not found:  # a key of the table only: nothing to take out of the .pub file
        found = [b for b in from_table if b.key_id == kid.strip().lower()]
    if not found:
        ids = ", ".join(dict.fromkeys(b.key_id for b in [*blocks, *from_table])) or "none"
        raise LookupError(f"no key {kid} of {device} on file (keys: {ids})")
    block = found[0]
    entry = f"# key {block.key_id} revoked {rfc3339(time.time())}\n{block.pem}"
    fd = os.open(rev, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, entry.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(rev.parent)
    if any(b is block for b in blocks):
        kept = "".join(
            "".join(c + "\n" for c in b.comments) + b.pem for b in blocks if b is not block
        )
        atomic_write(pub, kept.encode(), mode=0o644)
    return block


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


def check_upload(
    col: Any,
    device: str,
    source: str | Path | bytes,
    key: bytes | None,
    *,
    valid_at: float | None = None,
) -> Any:
    """Verify a bundle as ingest and reindex do; BundleError (422) with a one-line reason.

    Returns a VerifyResult whose manifest is the inner one (plain or decrypted)
    or, for a sealed bundle the collector cannot open, a stand-in from the
    signed envelope (counted in /metrics). valid_at: when the bundle was first
    received (re-indexing a stored one): keys revoked after it still verify it."""
    lookup = getattr(col, "enrolled_pem", None)
    enrolled = lookup(device) if callable(lookup) else None
    pub = device_keyring(col.cfg, device, valid_at=valid_at, enrolled=enrolled)
    with BundleReader(source) as r:
        if not r.sealed:
            if ED_SIGNATURE in r.names:
                return r.verify(key, pub)
            if pub is not None and pub.revoked:
                raise BundleSignatureError(
                    f"device {device} has a revoked key: a bundle without an Ed25519 "
                    "signature is refused"
                )
            return r.verify(key, None)
        res = r.verify(None, pub)
        env = res.manifest
        ciphertext = r.read(PAYLOAD)
    try:
        inner = decrypt_payload(ciphertext, identities(col.cfg) or _no_identity())
    except Undecryptable as e:
        undecryptable_counter(col.metrics).inc()
        return VerifyResult(_stand_in(env, str(e)), res.signature_checked, sealed=True)
    except BundleError as e:  # the identity file itself is unusable: keep the bundle
        log.error("age_identity_unusable", bundle_id=env["bundle_id"], error=str(e))
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
    heading = _("Bundle {id}: sealed, undecryptable").format(id=bundle_id)
    cannot = _("This collector cannot decrypt it: {reason}.").format(reason=reason)
    facts = _(
        "Device {device}, severity {severity}, created {created}; encrypted to {n} recipient(s)."
    ).format(
        device=str(env["device"].get("id", "")),
        severity=str(env.get("severity", "")),
        created=str(env.get("created_at", "")),
        n=len(env.get("recipients", [])),
    )
    how = esc(
        _("The download is the encrypted original: {age} on its payload.age, or {decrypt}.")
    ).format(
        age="<code>age -d -i IDENTITY</code>",
        decrypt="<code>posagent bundle decrypt FILE --identity ID -o OUT.zip</code>",
    )
    return f"<h1>{esc(heading)}</h1><p>{esc(cannot)}</p><p>{esc(facts)} {how}</p>"


@dataclass
class Reindexed:
    """What `reindex_undecryptable` did."""

    opened: int = 0  # decrypted now: the index row has the bundle's own fields
    still: int = 0  # still undecryptable with the identities on file
    failed: int = 0  # blob missing or no longer verifying (logged)


def reindex_undecryptable(
    store: BundleStore,
    make_record: Callable[[str, bytes, float], BundleRecord | None],
    *,
    batch: int = 500,
) -> Reindexed:
    """Index again every bundle indexed as undecryptable: make_record(id, bytes,
    received_at) verifies and opens it (None: skip); a row that now opens is updated
    in place (its site and receipt time kept). Idempotent; any instance may run it."""
    index: Any = store.index
    done = Reindexed()
    after = ""
    while True:
        rows: list[BundleRecord] = index.scan(after, batch)
        if not rows:
            return done
        after = rows[-1].bundle_id
        for rec in rows:
            if not rec.summary.startswith(UNDECRYPTABLE):
                continue
            try:
                data = store.read(rec)
            except KeyError:
                log.error("reindex_blob_missing", bundle_id=rec.bundle_id)
                done.failed += 1
                continue
            new = make_record(rec.bundle_id, data, rec.received_at)
            if new is None:
                done.failed += 1
            elif new.summary.startswith(UNDECRYPTABLE):
                done.still += 1
            elif index.update(replace(new, site=rec.site, received_at=rec.received_at)):
                log.info("bundle_reindexed", bundle_id=rec.bundle_id, was="undecryptable")
                done.opened += 1
