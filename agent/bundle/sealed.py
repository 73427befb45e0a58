"""Device signing keys (Ed25519) and the sealed form `posagent.sealed/1` (docs/ARCHITECTURE.md §4).

The terminal signs with its own Ed25519 key (`[bundle] signing_key_file`, PEM
PKCS#8, 0600, made on the terminal, never leaving it); anyone holding the
public key (PEM SubjectPublicKeyInfo, `posagent key show-public`) can check a
bundle offline. With `[bundle] encrypt_to` set, the plaintext bundle zip is
encrypted with age to every recipient and wrapped, encrypt-then-sign, in an
outer zip (stored, not compressed):

- `envelope.json`: schema, bundle_id, created_at, device id, severity and rank,
  trigger kind and key, the recipients' fingerprints, the signer's key id and
  the payload's size and sha256;
- `envelope.ed25519`: base64 Ed25519 signature over the exact envelope bytes;
- `payload.age`: the age ciphertext of the inner plaintext bundle zip.

Spool, uploader and collector check integrity and origin from the envelope
without decrypting. `cryptography` and `pyrage` are imported here only.

Keys rotate: a public key file may hold several PEM blocks (`parse_public_keys`,
`#` comment lines between them) and a `KeyRing` of a device's keys checks a
signature against any current one, refusing a revoked one (`KeyRevoked`);
`rotate_signing_key` replaces the terminal's key and records the old public
key in `<key>.retired.pub` (agent.bundle.keyfiles: where the key lives and the
two steps of a rotation; `begin_rotation` stages a new key and signs the
`rotation_statement` with the old one for the collector); an age identity file may hold several
identities (`load_identities`). `python -m agent.bundle.sealed --serve` is the
sealing worker (`serve`, driven by agent.bundle.finish.SealWorker).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import select
import stat
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyrage
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pyrage import x25519

from agent.bundle.format import (
    ED_SIGNATURE,
    ENVELOPE,
    ENVELOPE_SIG,
    PAYLOAD,
    SEALED_SCHEMA,
    BundleCorrupt,
    BundleError,
    BundleReader,
    BundleSignatureError,
    KeyRevoked,
    decode_ed25519,
    ed25519_verifies,
    key_id,
    sign_ed25519,
    verify_ed25519,
)
from agent.bundle.framing import REPLY, REPLY_MAGIC, REQUEST, REQUEST_MAGIC
from agent.bundle.keyfiles import (
    Pending,
    RotationError,
    hand_to_dir_owner,
    make_home_dir,
    promote,
    retired_keys_path,
    staging_path,
    write_pending,
)
from agent.bundle.policy import encryption_warning, require_recipient
from agent.core.config import Config, ConfigError, load_config, resolve_signing_key
from agent.core.timefmt import rfc3339

__all__ = [
    "encryption_warning",
    "key_id",
    "retired_keys_path",
    "sign_ed25519",
    "verify_ed25519",
]  # re-exported for callers


class KeyFileError(BundleError):
    """A key file that is missing, unreadable or not a key; str() names the file."""


# --------------------------------------------------------------------------- Ed25519


def public_pem(pub: Ed25519PublicKey) -> str:
    """The public key as PEM (what `posagent key show-public` prints)."""

    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def generate_signing_key(path: str | Path) -> Ed25519PrivateKey:
    """A new Ed25519 key written to path with mode 0600 (O_EXCL: never overwrites)."""

    p = Path(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        make_home_dir(p)  # 0700, handed to the state dir's owner when root makes it
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise
    except OSError as e:  # a read-only /etc under the unit's sandbox: posagent keygen at install
        raise KeyFileError(
            f"cannot create signing key {p}: {e.strerror or e} (run posagent keygen as root)"
        ) from None
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def load_signing_key(path: str | Path, *, create: bool = False) -> Ed25519PrivateKey:
    """The device's Ed25519 private key; KeyFileError naming the file when unusable.

    Refused: a link, not a regular file, readable by others, or writable by
    group or others (checked here too, whatever the caller checked before)."""

    p = Path(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        if not create:
            raise KeyFileError(f"signing key not found: {p} (posagent keygen)") from None
        return generate_signing_key(p)
    except OSError as e:
        raise KeyFileError(f"cannot read signing key {p}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"signing key {p} is not a regular file (or is a link)")
    if stat.S_IMODE(st.st_mode) & 0o026:  # 0640 root:posagent is how install.sh shares it
        raise KeyFileError(
            f"signing key {p} is readable by others or writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 0600"
        )
    try:
        data = p.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read signing key {p}: {e.strerror or e}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"signing key {p} is corrupt: {str(e).splitlines()[0][:120]}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"signing key {p} is not an Ed25519 key")
    return key


PEM_BEGIN = "-----BEGIN PUBLIC KEY-----"
PEM_END = "-----END PUBLIC KEY-----"


@dataclass(frozen=True)
class PemBlock:
    """One public key of a key file, with the `#` comment lines just before it."""

    line: int  # where its BEGIN line is (1-based)
    comments: tuple[str, ...]
    pem: str
    pub: Ed25519PublicKey

    @property
    def key_id(self) -> str:
        return key_id(self.pub)


def _read_text(source: str | Path | bytes, what: str) -> tuple[str, str]:
    if isinstance(source, bytes):
        return source.decode("utf-8", "replace"), "<bytes>"
    try:
        return Path(source).read_text("utf-8"), str(source)
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(
            f"cannot read {what} {source}: {getattr(e, 'strerror', 0) or e}"
        ) from None


def parse_public_keys(source: str | Path | bytes) -> list[PemBlock]:
    """Every Ed25519 public key of a key file: PEM blocks (SubjectPublicKeyInfo), each
    optionally after `#` comment lines; blank lines anywhere. KeyFileError naming the
    file and line when anything else is there, or a block is not an Ed25519 key."""

    text, name = _read_text(source, "public key")
    blocks: list[PemBlock] = []
    comments: list[str] = []
    body: list[str] | None = None
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if body is not None:
            body.append(line)
            if line == PEM_END:
                pem = "\n".join(body) + "\n"
                try:
                    pub = serialization.load_pem_public_key(pem.encode())
                except (ValueError, TypeError) as e:
                    raise KeyFileError(
                        f"public key {name}:{start} is corrupt: {str(e).splitlines()[0][:80]}"
                    ) from None
                if not isinstance(pub, Ed25519PublicKey):
                    raise KeyFileError(f"public key {name}:{start} is not an Ed25519 key")
                blocks.append(PemBlock(start, tuple(comments), pem, pub))
                comments, body = [], None
            continue
        if not line:
            continue
        if line.startswith("#"):
            comments.append(line)
        elif line == PEM_BEGIN:
            body, start = [line], n
        else:
            raise KeyFileError(
                f"public key {name}:{n} is neither a PEM public key block nor a # comment"
            )
    if body is not None:
        raise KeyFileError(f"public key {name}:{start} is corrupt: no {PEM_END} line")
    return blocks


def load_public_key(source: str | Path | bytes) -> Ed25519PublicKey:
    """The one Ed25519 public key of a PEM file (or PEM bytes); KeyFileError when not one."""

    blocks = parse_public_keys(source)
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    if len(blocks) != 1:
        raise KeyFileError(f"public key {name} holds {len(blocks)} keys, not one")
    return blocks[0].pub


@dataclass
class KeyRing:
    """The Ed25519 public keys a device signs with (a `agent.bundle.format.SignatureCheck`).

    current: the keys accepted (several during a rotation: the old one signed the
    bundles still queued on the terminal); revoked: key id → (key, when revoked,
    epoch s). A signature by a revoked key is refused (KeyRevoked) unless
    `valid_at`, when set, is before its revocation (a bundle stored before it,
    indexed again)."""

    device: str
    current: list[Ed25519PublicKey]
    revoked: dict[str, tuple[Ed25519PublicKey, float]] = field(default_factory=dict)
    valid_at: float | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> KeyRing:
        """Every key of one PEM file, none revoked (`posagent bundle verify --public-key`)."""
        return cls(str(path), [b.pub for b in parse_public_keys(path)])

    def ids(self) -> list[str]:
        """The current keys' ids, those revoked left out."""
        return [k for k in (key_id(p) for p in self.current) if k not in self.revoked]

    def check(self, data: bytes, sig_entry: bytes, what: str) -> None:
        sig = decode_ed25519(sig_entry, what)
        for pub in self.current:
            if key_id(pub) not in self.revoked and ed25519_verifies(pub, data, sig):
                return
        for kid, (pub, when) in self.revoked.items():
            if ed25519_verifies(pub, data, sig):
                if self.valid_at is not None and self.valid_at < when:
                    return
                raise KeyRevoked(
                    f"{what} signed by revoked key {kid} of device {self.device} "
                    f"(revoked {rfc3339(when)})"
                )
        ids = self.ids()
        if not ids:
            raise BundleSignatureError(
                f"device {self.device} has no public key on file that is not revoked"
            )
        raise BundleSignatureError(
            f"{what} Ed25519 signature does not verify with public key {', '.join(ids)} "
            f"of device {self.device} (signed by another key, or edited)"
        )


def stage_signing_key(home: str | Path) -> Ed25519PrivateKey:
    """A new key at `<home>.new` (a leftover staged key is replaced): with the owner,
    group and mode of the key at home when there is one (0640 root:posagent as
    install.sh left a key), else 0600 owned like its directory when made by root
    (`posagent key rotate`), so the daemon can read it."""
    staged = staging_path(home)
    try:
        make_home_dir(home)
        staged.unlink(missing_ok=True)  # left by a rotation that never finished
    except OSError as e:
        raise KeyFileError(f"cannot stage a new signing key {staged}: {e.strerror or e}") from None
    key = generate_signing_key(staged)
    try:
        st = os.stat(home) if Path(home).is_file() else None
        if st is None:
            hand_to_dir_owner(staged)
        else:
            if os.geteuid() == 0:
                os.chown(staged, st.st_uid, st.st_gid)
            os.chmod(staged, stat.S_IMODE(st.st_mode) & 0o640)
    except OSError as e:
        raise KeyFileError(f"cannot hand {staged} to its directory's owner: {e}") from None
    return key


def rotation_statement(command_id: str, device: str, public_key_pem: str, previous: str) -> bytes:
    """What the old key signs to vouch for the new one (docs/CHANNEL.md §3
    `rotate-signing-key`): canonical JSON of the command, the device, the new public
    key (PEM) and the old key's id. The collector rebuilds it from the result."""
    doc = {
        "v": 1,
        "kind": "rotate-signing-key",
        "command_id": command_id,
        "device": device,
        "public_key": public_key_pem,
        "previous": previous,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def begin_rotation(
    current: str | Path, home: str | Path, *, command_id: str = "", device: str = ""
) -> tuple[Pending, str, str]:
    """Stage a new key at home and record the pending rotation: (pending, the new
    public PEM, the statement's signature by the current key, base64)."""
    old = load_signing_key(current)
    new = stage_signing_key(home)
    old_pub, new_pub = old.public_key(), new.public_key()
    pem = public_pem(new_pub)
    pending = Pending(
        command_id=command_id,
        key_id=key_id(new_pub),
        previous=key_id(old_pub),
        previous_pem=public_pem(old_pub),
        current=str(current),
        at=time.time(),
    )
    try:
        write_pending(home, pending)
    except OSError as e:
        raise KeyFileError(f"cannot record the rotation beside {home}: {e.strerror or e}") from None
    statement = rotation_statement(command_id, device, pem, pending.previous)
    return pending, pem, sign_ed25519(old, statement).decode()


def rotate_signing_key(
    path: str | Path, home: str | Path | None = None
) -> tuple[Ed25519PublicKey, Ed25519PrivateKey]:
    """Replace the signing key read from path with a new one at home (default: path)
    at once (`posagent key rotate`): staged beside it, the old public key recorded in
    retired_keys_path(home), the old key kept (keyfiles.promote). (old public key, new key).

    A crash leaves either key whole (the old one possibly recorded as retired twice)."""
    target = Path(home or path)
    pending, _, _ = begin_rotation(path, target)
    try:
        promote(target, pending)
    except RotationError as e:
        staging_path(target).unlink(missing_ok=True)
        raise KeyFileError(str(e)) from None
    return load_public_key(pending.previous_pem.encode()), load_signing_key(target)


# --------------------------------------------------------------------------- age


def recipient_fingerprint(recipient: str) -> str:
    """A short fingerprint of an age recipient: sha256 of its text, 16 hex digits."""
    return hashlib.sha256(recipient.strip().encode()).hexdigest()[:16]


def parse_recipients(recipients: list[str]) -> list[Any]:
    """pyrage recipients from `age1...` strings; ValueError naming the bad one."""

    out = []
    for r in recipients:
        try:
            out.append(x25519.Recipient.from_str(r.strip()))
        except Exception:
            raise ValueError(f"not an age X25519 recipient: {r[:70]!r}") from None
    return out


def load_identities(path: str | Path) -> list[Any]:
    """age X25519 identities from an identity file (`age-keygen` output); KeyFileError."""

    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"cannot read age identity file {p}: {e}") from None
    ids = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            ids.append(x25519.Identity.from_str(line))
        except Exception:
            raise KeyFileError(f"age identity file {p}:{n} is not an AGE-SECRET-KEY line") from None
    if not ids:
        raise KeyFileError(f"age identity file {p} holds no identity")
    return ids


def seal_envelope(
    inner: bytes,
    manifest: dict[str, Any],
    *,
    recipients: list[str],
    signing_key: Ed25519PrivateKey,
    rank: int,
) -> bytes:
    """The sealed form of a plaintext bundle zip: age to every recipient, then signed."""

    ciphertext = pyrage.encrypt(inner, parse_recipients(recipients))
    trig = manifest.get("trigger") or {}
    envelope = {
        "schema": SEALED_SCHEMA,
        "bundle_id": manifest["bundle_id"],
        "created_at": manifest.get("created_at") or rfc3339(0),
        "device": {"id": (manifest.get("device") or {}).get("id", "")},
        "severity": trig.get("severity", ""),
        "rank": rank,
        "trigger": {"kind": trig.get("kind", ""), "key": trig.get("key", "")},
        "recipients": [recipient_fingerprint(r) for r in recipients],
        "signer": key_id(signing_key.public_key()),
        "payload": {
            "name": PAYLOAD,
            "size": len(ciphertext),
            "sha256": hashlib.sha256(ciphertext).hexdigest(),
            "encryption": "age-x25519",
        },
    }
    ebytes = json.dumps(envelope, indent=1, ensure_ascii=False).encode("utf-8")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in (
            (ENVELOPE, ebytes),
            (ENVELOPE_SIG, sign_ed25519(signing_key, ebytes)),
            (PAYLOAD, ciphertext),
        ):
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_STORED
            zf.writestr(info, data)
    return buf.getvalue()


class Undecryptable(BundleError):
    """The payload does not open with the identities given."""


def decrypt_payload(ciphertext: bytes, identities: list[Any]) -> bytes:
    """The inner plaintext zip; Undecryptable (one line) when no identity opens it."""

    try:
        return bytes(pyrage.decrypt(ciphertext, identities))
    except Exception as e:
        raise Undecryptable(f"payload does not decrypt: {str(e).splitlines()[0][:160]}") from None


def open_sealed(data: bytes, identities: list[Any]) -> bytes:
    """Check a sealed bundle's envelope and payload digest, decrypt, and check the inner
    bundle's id and device match the envelope. Returns the inner zip bytes."""

    with BundleReader(data) as r:
        if not r.sealed:
            raise BundleError("not a sealed bundle")
        env = r.verify(None).manifest
        ciphertext = r.read(PAYLOAD)
    inner = decrypt_payload(ciphertext, identities)
    with BundleReader(inner) as ir:
        m = ir.manifest()
    if m.get("bundle_id") != env.get("bundle_id"):
        raise BundleCorrupt("inner bundle id differs from the envelope's")
    if (m.get("device") or {}).get("id") != (env.get("device") or {}).get("id"):
        raise BundleCorrupt("inner bundle device differs from the envelope's")
    return inner


# --------------------------------------------------------------------------- config


def crypto_from_config(cfg: Config, *, create: bool) -> tuple[Ed25519PrivateKey, list[str]]:
    """The signing key and the checked recipients; ConfigError (exit 78) naming the key or file.

    Refused: require_encryption without a recipient, a recipient that is not
    an age X25519 public key, a signing key file that is corrupt or others can
    read or write."""

    b = cfg.bundle
    require_recipient(cfg)
    try:
        parse_recipients(b.encrypt_to)
    except ValueError as e:
        raise ConfigError(str(e), file=cfg.source, key="bundle.encrypt_to") from None
    try:
        key = load_signing_key(b.signing_key_path(cfg.agent.state_dir), create=create)
    except KeyFileError as e:
        raise ConfigError(str(e), file=cfg.source, key="bundle.signing_key_file") from None
    return key, list(b.encrypt_to)


def add_ed25519(data: bytes, key: Ed25519PrivateKey) -> bytes:
    """A plain bundle with `manifest.ed25519` appended (the other entries untouched)."""
    with BundleReader(data) as r:
        if ED_SIGNATURE in r.names:
            return data
        mbytes = r.manifest_bytes()
    buf = io.BytesIO(data)
    with zipfile.ZipFile(buf, "a") as zf:
        info = zipfile.ZipInfo(ED_SIGNATURE, date_time=(2020, 1, 1, 0, 0, 0))
        info.external_attr = (stat.S_IFREG | 0o644) << 16
        zf.writestr(info, sign_ed25519(key, mbytes))
    return buf.getvalue()


def finish(
    data: bytes,
    manifest: dict[str, Any],
    key: Ed25519PrivateKey,
    recipients: list[str],
    rank: int,
) -> bytes:
    """Sign a plaintext bundle (manifest.ed25519); seal it when there are recipients."""
    signed = add_ed25519(data, key)
    if not recipients:
        return signed
    return seal_envelope(signed, manifest, recipients=recipients, signing_key=key, rank=rank)


def _read_exact(fd: int, n: int) -> bytes | None:
    """n bytes from fd (blocking), or None at end of file before the first byte."""
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, min(n - len(buf), 1 << 20))
        if not chunk:
            if buf:
                raise EOFError(f"request cut after {len(buf)} of {n} bytes")
            return None
        buf += chunk
    return bytes(buf)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _key_stamp(path: str) -> tuple[int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, 0)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def serve(
    key_path: str | list[str], recipients: list[str], idle_s: float, rfd: int = 0, wfd: int = 1
) -> int:
    """The sealing worker's loop (`agent.bundle.finish.SealWorker` is the other end).

    Each request, `REQUEST` (magic, rank, length) then the plaintext zip, gets a
    `REPLY` (magic, 1 and the finished bytes, or 0 and a one-line reason). The key
    file is loaded again when it changed (`posagent key rotate`, a rotation on
    command): key_path may be the candidates of `BundleConfig.signing_key_candidates`,
    the first that exists used (checked per bundle). Returns at end of
    input (the daemon went) or after idle_s without a request; 78 when the key or
    a recipient is unusable at start (the reason on stderr), 65 on a bad frame."""
    candidates = [key_path] if isinstance(key_path, str) else list(key_path)
    try:
        parse_recipients(recipients)
        path = resolve_signing_key(candidates)
        stamp = (path, _key_stamp(path))
        key = load_signing_key(path, create=True)
    except (ValueError, KeyFileError) as e:
        sys.stderr.write(f"{e}\n")
        return 78
    while True:
        ready, _, _ = select.select([rfd], [], [], idle_s)
        if not ready:
            return 0
        try:
            head = _read_exact(rfd, REQUEST.size)
            if head is None:
                return 0
            magic, rank, n = REQUEST.unpack(head)
            if magic != REQUEST_MAGIC:
                sys.stderr.write("sealing worker: not a request (bad magic)\n")
                return 65
            data = _read_exact(rfd, n) or b""
        except EOFError as e:
            sys.stderr.write(f"sealing worker: {e}\n")
            return 65
        try:
            path = resolve_signing_key(candidates)
            now = (path, _key_stamp(path))
            if now != stamp:
                key, stamp = load_signing_key(path), now
            out = finish(data, BundleReader(data).manifest(), key, recipients, rank)
            reply = REPLY.pack(REPLY_MAGIC, 1, len(out)) + out
        except BundleError as e:  # KeyFileError too: the daemon logs the bundle not captured
            why = f"not sealed: {e}".encode()
            reply = REPLY.pack(REPLY_MAGIC, 0, len(why)) + why
        _write_all(wfd, reply)


def main(argv: list[str] | None = None) -> int:
    """The child that keeps cryptography and pyrage out of the daemon:

    - `--config CFG --check`: load (or make) the signing key and parse the
      recipients of CFG; exit 78 with the file named when either is unusable;
    - `--serve --key FILE... [--to RECIPIENT]... [--idle-s S]`: the sealing worker
      (`serve`): bundles in on stdin, signed (and sealed to the recipients) out
      on stdout. The daemon passes the key file and recipients of the config it
      runs with, so an edited config takes effect at its reload (SIGHUP), as
      every other setting; `posagent key rotate` at the next bundle."""
    import argparse  # lazy: only the worker parses arguments

    p = argparse.ArgumentParser(prog="agent.bundle.sealed")
    p.add_argument("--config")
    p.add_argument("--check", action="store_true")
    p.add_argument("--serve", action="store_true")
    p.add_argument("--idle-s", type=float, default=60.0)
    p.add_argument("--key", action="append", default=[])
    p.add_argument("--to", action="append", default=[])
    a = p.parse_args(argv)
    if a.check:
        try:
            key, recipients = crypto_from_config(load_config(a.config), create=True)
        except ConfigError as e:
            sys.stderr.write(f"{e}\n")
            return 78
        sys.stdout.write(f"{key_id(key.public_key())} {len(recipients)} recipient(s)\n")
        return 0
    if not (a.serve and a.key):
        p.error("--serve --key FILE... [--to RECIPIENT]..., or --config CFG --check")
    return serve(a.key, a.to, a.idle_s)


if __name__ == "__main__":
    sys.exit(main())
