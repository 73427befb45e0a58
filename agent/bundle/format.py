"""The bundle format `posagent.bundle/1`: writer, safe reader and verifier (docs/ARCHITECTURE.md §4).

A bundle is a zip: `manifest.json` first, `manifest.sig` (HMAC-SHA256 of the
exact manifest bytes), then `report.txt`, `screenshot.png`, `timeline.json`
and `diagnostics/*`. The reader treats every zip as hostile: names, links,
duplicates, sizes and compression ratios are checked before anything is read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import secrets
import stat
import threading
import time
import typing
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from agent.bundle.schema import MAX_MANIFEST_BYTES, ManifestError, check_manifest
from agent.core.redact import RULESET_VERSION, Redactor
from agent.core.timefmt import rfc3339
from drivers.roots import Roots
from drivers.system import read_boot_id, read_uptime_s

if typing.TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

SCHEMA = "posagent.bundle/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
ED_SIGNATURE = "manifest.ed25519"  # base64 Ed25519 signature of the manifest bytes
# the sealed form (agent.bundle.sealed): an outer zip around the age ciphertext
SEALED_SCHEMA = "posagent.sealed/1"
ENVELOPE = "envelope.json"
ENVELOPE_SIG = "envelope.ed25519"
PAYLOAD = "payload.age"
SEALED_NAMES = [ENVELOPE, ENVELOPE_SIG, PAYLOAD]
RESERVED = (MANIFEST, SIGNATURE, ED_SIGNATURE)

# Reader limits: a bundle is a few MB at most; anything far larger is hostile.
MAX_ENTRIES = 512
MAX_TOTAL_BYTES = 64 * 1024 * 1024
MAX_ENTRY_BYTES = 32 * 1024 * 1024
MAX_RATIO = 200.0

TEXT_TYPES = {
    ".txt": "text/plain; charset=utf-8",
    ".json": "application/json",
    ".log": "text/plain; charset=utf-8",
}
BINARY_TYPES = {".png": "image/png"}


class BundleError(Exception):
    """A bundle that is not intact or not safe to read; str() is a one-line reason."""


class BundleUnsafe(BundleError):
    """A hostile zip: traversal, absolute or duplicate names, links, bombs."""


class BundleCorrupt(BundleError):
    """Not a readable zip, or an entry whose bytes do not match the manifest."""


class BundleSignatureError(BundleError):
    """The manifest's HMAC does not verify with the given key."""


class KeyRevoked(BundleSignatureError):
    """Signed by a device public key the collector's operator revoked."""


class BundleSchemaError(BundleError):
    """The manifest is missing, not JSON, or of an unknown schema."""


# --------------------------------------------------------------------------- ids and keys

_uuid_lock = threading.Lock()
_uuid_last = (0, 0)


def new_bundle_id(now_ms: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): time-ordered, monotonic within this process."""
    global _uuid_last
    with _uuid_lock:
        ms = int(time.time() * 1000) if now_ms is None else now_ms
        last_ms, last_seq = _uuid_last
        if ms <= last_ms:
            ms, seq = last_ms, last_seq + 1
            if seq > 0xFFF:
                ms, seq = ms + 1, secrets.randbits(8)
        else:
            seq = secrets.randbits(8)
        _uuid_last = (ms, seq)
    value = (ms & 0xFFFFFFFFFFFF) << 80
    value |= 0x7 << 76
    value |= (seq & 0xFFF) << 64
    value |= 0b10 << 62
    value |= secrets.randbits(62)
    return str(uuid.UUID(int=value))


def bundle_id_time(bundle_id: str) -> float:
    """The creation time (epoch seconds) encoded in a UUIDv7 bundle id; 0 if not one."""
    try:
        u = uuid.UUID(bundle_id)
    except ValueError:
        return 0.0
    if u.version != 7:
        return 0.0
    return (u.int >> 80) / 1000.0


def is_bundle_id(text: str) -> bool:
    """True for a canonical UUID string (the only names the spool and collector accept)."""
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def load_key(path: str | Path, *, create: bool = False) -> bytes:
    """Read the device HMAC key; with create=True, make a new 0600 key file if absent."""
    p = Path(path)
    try:
        key = p.read_bytes().strip()
    except FileNotFoundError:
        if not create:
            raise BundleError(f"device key not found: {p}") from None
        p.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(32).encode()
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        return key
    except OSError as e:
        raise BundleError(f"cannot read device key {p}: {e.strerror}") from None
    if not key:
        raise BundleError(f"device key file is empty: {p}")
    return key


def sign(manifest_bytes: bytes, key: bytes) -> str:
    """Hex HMAC-SHA256 of the exact manifest bytes."""
    return hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest()


def key_id(pub: Ed25519PublicKey) -> str:
    """A short fingerprint of an Ed25519 public key: sha256 of its 32 raw bytes, 16 hex."""
    # lazy: cryptography (about 10 MB RSS) only where a signature is made or checked
    from cryptography.hazmat.primitives import serialization

    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_ed25519(key: Ed25519PrivateKey, data: bytes) -> bytes:
    """A signature entry's bytes (manifest.ed25519, envelope.ed25519): base64, newline."""
    return base64.b64encode(key.sign(data)) + b"\n"


def decode_ed25519(sig_entry: bytes, what: str) -> bytes:
    """The 64 raw bytes of a signature entry; BundleSignatureError (one line) when malformed."""
    try:
        sig = base64.b64decode(sig_entry.strip(), validate=True)
    except ValueError:
        raise BundleSignatureError(f"{what} signature is not base64") from None
    if len(sig) != 64:
        raise BundleSignatureError(f"{what} signature has {len(sig)} bytes, not 64")
    return sig


def ed25519_verifies(pub: Ed25519PublicKey, data: bytes, sig: bytes) -> bool:
    """True when the raw signature sig signs data with pub."""
    # lazy: cryptography (about 10 MB RSS) only where a signature is checked
    from cryptography.exceptions import InvalidSignature

    try:
        pub.verify(sig, data)
    except InvalidSignature:
        return False
    return True


def verify_ed25519(pub: Ed25519PublicKey, data: bytes, sig_entry: bytes, what: str) -> None:
    """Raise BundleSignatureError (one line) unless sig_entry signs data with pub."""
    if not ed25519_verifies(pub, data, decode_ed25519(sig_entry, what)):
        raise BundleSignatureError(
            f"{what} Ed25519 signature does not verify with public key {key_id(pub)} "
            "(signed by another key, or edited)"
        )


@typing.runtime_checkable
class SignatureCheck(typing.Protocol):
    """Several public keys of one device (agent.bundle.sealed.KeyRing): check() raises
    BundleSignatureError (one line) unless sig_entry signs data with one it accepts."""

    def check(self, data: bytes, sig_entry: bytes, what: str) -> None: ...


PublicKeys = typing.Union["Ed25519PublicKey", SignatureCheck]


def _check_signature(pub: PublicKeys, data: bytes, sig_entry: bytes, what: str) -> None:
    if isinstance(pub, SignatureCheck):
        pub.check(data, sig_entry, what)
    else:
        verify_ed25519(pub, data, sig_entry, what)


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class Entry:
    """One file of a bundle before sealing. Text entries are redacted by the writer."""

    name: str
    data: bytes
    media_type: str = ""


def media_type_for(name: str) -> str:
    """The media type recorded for an entry name."""
    suffix = PurePosixPath(name).suffix.lower()
    return TEXT_TYPES.get(suffix) or BINARY_TYPES.get(suffix) or "application/octet-stream"


def is_text_entry(name: str) -> bool:
    """Text and JSON entries pass the redaction engine; images do not."""
    return PurePosixPath(name).suffix.lower() in TEXT_TYPES


def text_entry(name: str, text: str) -> Entry:
    """A UTF-8 text entry."""
    return Entry(name, text.encode("utf-8"), media_type_for(name))


def json_entry(name: str, obj: Any) -> Entry:
    """A JSON entry, pretty-printed for people reading the bundle."""
    data = json.dumps(obj, indent=1, sort_keys=False, ensure_ascii=False, default=str)
    return Entry(name, data.encode("utf-8"), "application/json")


@dataclass
class DeviceInfo:
    """Who made the bundle (manifest `device`)."""

    id: str
    site: str = ""
    model: str = ""
    serial: str = ""
    platform: str = "linux"
    target: str = "local"


@dataclass
class SealedBundle:
    """A sealed bundle ready for the spool."""

    bundle_id: str
    data: bytes
    manifest: dict[str, Any]
    redaction_counts: dict[str, int] = field(default_factory=dict)


def _host_facts(roots: Roots) -> dict[str, Any]:
    uptime_s = read_uptime_s(roots)
    return {
        "boot_id": read_boot_id(roots) or "",
        "uptime_s": round(uptime_s if uptime_s is not None else time.monotonic(), 1),
    }


def seal(
    *,
    device: DeviceInfo,
    trigger: Mapping[str, Any],
    entries: Iterable[Entry],
    key: bytes,
    redactor: Redactor,
    screenshot: str = "skipped:none",
    agent_version: str = "",
    config_digest: str = "",
    clock_synced: bool | None = None,
    extra: Mapping[str, Any] | None = None,
    bundle_id: str | None = None,
    created_at: float | None = None,
    roots: Roots | None = None,
    signing_key: Ed25519PrivateKey | None = None,
) -> SealedBundle:
    """Redact every text entry and the trigger, write the manifest, sign, and zip.

    With a signing key, the manifest names its key id (`signer`) and
    `manifest.ed25519` carries the Ed25519 signature beside the HMAC."""
    bid = bundle_id or new_bundle_id()
    counts: Counter[str] = Counter()
    red_trigger = redactor.obj(dict(trigger), counts)
    files: list[dict[str, Any]] = []
    payload: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    for e in entries:
        _check_name(e.name)
        if e.name in seen or e.name in RESERVED:
            raise BundleError(f"duplicate or reserved entry name: {e.name}")
        seen.add(e.name)
        data = e.data
        if is_text_entry(e.name):
            text = data.decode("utf-8", "replace")
            if PurePosixPath(e.name).suffix.lower() == ".json":
                try:
                    obj = json.loads(text)
                except ValueError:
                    text = redactor.text(text, counts)
                else:
                    obj = redactor.obj(obj, counts)
                    text = json.dumps(obj, indent=1, ensure_ascii=False)
            else:
                text = redactor.text(text, counts)
            data = text.encode("utf-8")
        files.append(
            {
                "name": e.name,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "media_type": e.media_type or media_type_for(e.name),
            }
        )
        payload.append((e.name, data))
    ts = time.time() if created_at is None else created_at
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "bundle_id": bid,
        "created_at": rfc3339(ts),
        **_host_facts(roots or Roots()),
        "clock_synced": clock_synced,
        "device": {
            "id": device.id,
            "model": device.model,
            "serial": device.serial,
            "site": device.site,
            "platform": device.platform,
            "target": device.target,
        },
        "agent": {"version": agent_version, "config_digest": config_digest},
        "trigger": red_trigger,
        "files": files,
        "redaction": {
            "ruleset": RULESET_VERSION,
            "counts": dict(sorted(counts.items())),
            "screenshot": screenshot,
        },
    }
    if extra:
        manifest.update(extra)
    if signing_key is not None:
        manifest["signer"] = key_id(signing_key.public_key())
    mbytes = json.dumps(manifest, indent=1, ensure_ascii=False).encode("utf-8")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        _add(zf, MANIFEST, mbytes)
        _add(zf, SIGNATURE, (sign(mbytes, key) + "\n").encode())
        if signing_key is not None:
            _add(zf, ED_SIGNATURE, sign_ed25519(signing_key, mbytes))
        for name, data in payload:
            _add(zf, name, data)
    return SealedBundle(bid, buf.getvalue(), manifest, dict(counts))


def _add(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    compress = zipfile.ZIP_STORED if name.endswith(".png") else zipfile.ZIP_DEFLATED
    info.compress_type = compress
    zf.writestr(info, data, compress_type=compress, compresslevel=6)


# --------------------------------------------------------------------------- reading


def _check_name(name: str) -> None:
    if not name or "\x00" in name or "\\" in name:
        raise BundleUnsafe(f"unsafe entry name {name!r}")
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise BundleUnsafe(f"absolute entry name {name!r}")
    if any(part in ("..", ".", "") for part in name.split("/")):
        raise BundleUnsafe(f"path traversal in entry name {name!r}")


@dataclass
class VerifyResult:
    """What `verify` found: the manifest, and whether the signature was checked."""

    manifest: dict[str, Any]  # the envelope for a sealed bundle
    signature_checked: bool
    sealed: bool = False
    ed25519_checked: bool = False


class BundleReader:
    """Reads a bundle defensively. Use as a context manager."""

    def __init__(self, source: str | Path | bytes | io.BufferedIOBase):
        self.name = str(source) if isinstance(source, str | Path) else "<bytes>"
        try:
            if isinstance(source, bytes):
                self._zf = zipfile.ZipFile(io.BytesIO(source))
            else:
                self._zf = zipfile.ZipFile(source)
        except FileNotFoundError:
            raise BundleError(f"no such file: {self.name}") from None
        except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as e:
            raise BundleCorrupt(f"not a zip or truncated: {e}") from None
        except OSError as e:
            raise BundleError(f"cannot open bundle: {e.strerror or e}") from None
        self._check_structure()

    def __enter__(self) -> BundleReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._zf.close()

    def _check_structure(self) -> None:
        infos = self._zf.infolist()
        if len(infos) > MAX_ENTRIES:
            raise BundleUnsafe(f"too many entries ({len(infos)} > {MAX_ENTRIES})")
        names: set[str] = set()
        total = 0
        for info in infos:
            _check_name(info.filename)
            if info.filename in names:
                raise BundleUnsafe(f"duplicate entry name {info.filename!r}")
            names.add(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise BundleUnsafe(f"symbolic link entry {info.filename!r}")
            if info.is_dir():
                raise BundleUnsafe(f"directory entry {info.filename!r}")
            if info.flag_bits & 0x1:
                raise BundleUnsafe(f"encrypted entry {info.filename!r}")
            if info.file_size > MAX_ENTRY_BYTES:
                raise BundleUnsafe(f"entry {info.filename!r} too large ({info.file_size} bytes)")
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > 1 << 20 and ratio > MAX_RATIO:
                raise BundleUnsafe(f"entry {info.filename!r} compression ratio {ratio:.0f} (bomb)")
            total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise BundleUnsafe(f"total uncompressed size {total} exceeds {MAX_TOTAL_BYTES}")
        self._names = [i.filename for i in infos]
        self.sealed = bool(self._names) and self._names[0] == ENVELOPE
        if self.sealed and self._names != SEALED_NAMES:
            raise BundleSchemaError(f"sealed bundle entries must be {', '.join(SEALED_NAMES)}")

    @property
    def names(self) -> list[str]:
        """Entry names in zip order."""
        return list(self._names)

    def read(self, name: str) -> bytes:
        """An entry's bytes, read with a hard size limit (declared sizes can lie)."""
        if name not in self._names:
            raise BundleCorrupt(f"missing entry {name!r}")
        info = self._zf.getinfo(name)
        limit = min(info.file_size, MAX_ENTRY_BYTES)
        try:
            with self._zf.open(info) as f:
                data = f.read(limit + 1)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            raise BundleCorrupt(f"entry {name!r} unreadable: {e}") from None
        except Exception as e:  # zlib.error and friends from damaged data
            raise BundleCorrupt(f"entry {name!r} unreadable: {e}") from None
        if len(data) > limit:
            raise BundleUnsafe(f"entry {name!r} larger than declared (bomb)")
        return data

    def size(self, name: str) -> int:
        """An entry's declared (uncompressed) size; `read` checks it is not a lie."""
        if name not in self._names:
            raise BundleCorrupt(f"missing entry {name!r}")
        return int(self._zf.getinfo(name).file_size)

    def read_head(self, name: str, limit: int) -> bytes:
        """At most the first `limit` bytes of an entry: only those are decompressed (a page
        showing the start of a large entry never holds the whole of it)."""
        if name not in self._names:
            raise BundleCorrupt(f"missing entry {name!r}")
        info = self._zf.getinfo(name)
        try:
            with self._zf.open(info) as f:
                return f.read(max(0, min(limit, info.file_size, MAX_ENTRY_BYTES)))
        except Exception as e:  # BadZipFile, EOFError, zlib.error and friends from damaged data
            raise BundleCorrupt(f"entry {name!r} unreadable: {e}") from None

    def manifest_bytes(self) -> bytes:
        """The exact manifest bytes (what the HMAC covers)."""
        if not self._names or self._names[0] != MANIFEST:
            raise BundleSchemaError("manifest.json is not the first entry")
        return self.read(MANIFEST)

    def manifest(self) -> dict[str, Any]:
        """The parsed manifest, with its schema checked (`agent.bundle.schema`: every
        field's type, size and range; nesting bounded; no non-finite number)."""
        raw = self.manifest_bytes()
        if len(raw) > MAX_MANIFEST_BYTES:
            raise BundleSchemaError(f"manifest.json larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            m = json.loads(raw)
        except RecursionError:
            raise BundleSchemaError("manifest.json nested too deep") from None
        except ValueError as e:
            raise BundleSchemaError(f"manifest.json is not JSON: {e}") from None
        if not isinstance(m, dict):
            raise BundleSchemaError("manifest.json is not an object")
        if m.get("schema") != SCHEMA:
            raise BundleSchemaError(f"unknown schema {str(m.get('schema'))[:40]!r}")
        if not isinstance(m.get("files"), list) or not is_bundle_id(str(m.get("bundle_id", ""))):
            raise BundleSchemaError("manifest lacks files or a valid bundle_id")
        try:
            check_manifest(m)
        except ManifestError as e:
            raise BundleSchemaError(f"manifest {e}") from None
        return m

    def verify(self, key: bytes | None, public_key: PublicKeys | None = None) -> VerifyResult:
        """Check schema, signatures (those whose key is given), and every entry's digest.

        key: the device HMAC key (manifest.sig); public_key: the device's
        Ed25519 public key, or a SignatureCheck of several (manifest.ed25519, or
        envelope.ed25519 of a sealed bundle, whose origin only the public key can
        check). A sealed bundle's
        `manifest` in the result is its envelope."""
        if self.sealed:
            return self._verify_sealed(public_key)
        raw = self.manifest_bytes()
        m = self.manifest()
        if public_key is not None:
            if ED_SIGNATURE not in self._names:
                raise BundleSignatureError("manifest.ed25519 missing (an HMAC-only bundle)")
            _check_signature(public_key, raw, self.read(ED_SIGNATURE), "manifest")
        if key is not None:
            if SIGNATURE not in self._names:
                raise BundleSignatureError("manifest.sig missing")
            sig_raw = self.read(SIGNATURE)
            sig_raw = sig_raw[:-1] if sig_raw.endswith(b"\n") else sig_raw
            if not hmac.compare_digest(sig_raw, sign(raw, key).encode()):
                raise BundleSignatureError("manifest HMAC does not match (wrong key or edited)")
        listed: dict[str, dict[str, Any]] = {}
        for f in m["files"]:
            if not isinstance(f, dict) or not isinstance(f.get("name"), str):
                raise BundleSchemaError("malformed files entry in manifest")
            listed[f["name"]] = f
        present = set(self._names) - set(RESERVED)
        extra = sorted(present - set(listed))
        missing = sorted(set(listed) - present)
        if missing:
            raise BundleCorrupt(f"entry missing: {missing[0]}")
        if extra:
            raise BundleCorrupt(f"entry not in manifest: {extra[0]}")
        for name, f in listed.items():
            data = self.read(name)
            if len(data) != f.get("size") or hashlib.sha256(data).hexdigest() != f.get("sha256"):
                raise BundleCorrupt(f"entry changed: {name}")
        checked = key is not None or public_key is not None
        return VerifyResult(m, checked, ed25519_checked=public_key is not None)

    def envelope(self) -> dict[str, Any]:
        """A sealed bundle's parsed envelope, with its schema checked."""
        raw = self.read(ENVELOPE)
        if len(raw) > 64 * 1024:
            raise BundleSchemaError("envelope.json larger than 64 KiB")
        try:
            e = json.loads(raw)
        except (ValueError, RecursionError) as err:
            raise BundleSchemaError(f"envelope.json is not JSON: {str(err)[:100]}") from None
        if not isinstance(e, dict) or e.get("schema") != SEALED_SCHEMA:
            raise BundleSchemaError("envelope.json is not a posagent.sealed/1 object")
        if not is_bundle_id(str(e.get("bundle_id", ""))) or not isinstance(e.get("payload"), dict):
            raise BundleSchemaError("envelope lacks a payload or a valid bundle_id")
        if not isinstance(e.get("device"), dict):
            raise BundleSchemaError("envelope lacks the device")
        return e

    def _verify_sealed(self, public_key: PublicKeys | None) -> VerifyResult:
        e = self.envelope()
        if public_key is not None:
            _check_signature(public_key, self.read(ENVELOPE), self.read(ENVELOPE_SIG), "envelope")
        p = e["payload"]
        data = self.read(PAYLOAD)
        if len(data) != p.get("size") or hashlib.sha256(data).hexdigest() != p.get("sha256"):
            raise BundleCorrupt("payload.age changed (size or sha256 differs from the envelope)")
        checked = public_key is not None
        return VerifyResult(e, checked, sealed=True, ed25519_checked=checked)

    def extract(self, target: str | Path) -> list[Path]:
        """Write every entry below target (created); never outside it; never through links."""
        root = Path(target)
        root.mkdir(parents=True, exist_ok=True)
        root_real = root.resolve()
        written: list[Path] = []
        for name in self._names:
            dest = (root / name).resolve()
            if root_real not in dest.parents:
                raise BundleUnsafe(f"entry {name!r} would be written outside {root}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            data = self.read(name)
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            written.append(dest)
        return written


def verify_file(path: str | Path, key: bytes | None) -> VerifyResult:
    """Open and verify a bundle file in one call."""
    with BundleReader(path) as r:
        return r.verify(key)
