"""Device tokens (ingest). People on the read side are `collector.accounts`.

tokens_file holds one line per device, ``<device_id> <sha256 hex of the token> [site]``;
``#`` starts a comment. The site (the rest of the line, `add-device --site`) is the
device's registered store: the collector files the device's bundles under it,
never under the site a manifest claims. Only hashes are stored: `add_device` prints the token
once. A presented token is hashed, looked up by that hash (an attacker cannot
steer SHA-256 prefixes) and confirmed with `hmac.compare_digest`. The file is
re-read when it changes, so `add-device` works while the collector runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent.core.files import atomic_write, fsync_dir

DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
SITE_RE = re.compile(r"^[^\x00-\x1f\x7f#]{1,200}$")


class TokenFileError(Exception):
    """The tokens file cannot be read or has a malformed line."""


def valid_device_id(device_id: str) -> bool:
    """Same charset as [agent] device_id; never '.' or '..' (ids name key files)."""
    return bool(DEVICE_ID_RE.match(device_id)) and device_id not in (".", "..")


def hash_token(token: str) -> str:
    """The stored form of a token: SHA-256 hex of its UTF-8 bytes."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh device token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def valid_site(site: str) -> bool:
    """A registered site: 1-200 characters, no control characters, no '#'."""
    return bool(SITE_RE.match(site)) and site == site.strip()


def parse_tokens(text: str, source: str = "<tokens>") -> dict[str, str]:
    """device_id -> token hash from the tokens file's text; TokenFileError on a bad line."""
    return {d: h for d, (h, _) in parse_registry(text, source).items()}


def parse_registry(text: str, source: str = "<tokens>") -> dict[str, tuple[str, str]]:
    """device_id -> (token hash, registered site or '') from the tokens file's text."""
    out: dict[str, tuple[str, str]] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 2)
        site = parts[2].strip() if len(parts) == 3 else ""
        if (
            len(parts) < 2
            or not valid_device_id(parts[0])
            or not _HEX64.match(parts[1])
            or (site and not valid_site(site))
        ):
            raise TokenFileError(f"{source}:{n}: expected '<device_id> <sha256 hex> [site]'")
        if parts[0] in out:
            raise TokenFileError(f"{source}:{n}: device {parts[0]} listed twice")
        out[parts[0]] = (parts[1], site)
    return out


class TokenStore:
    """Resolves a bearer token to its device; reloads the file when it changes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._by_hash: dict[str, str] = {}
        self._by_device: dict[str, str] = {}
        self._sites: dict[str, str] = {}
        self._checked_at = time.monotonic()
        self.reload()

    def reload(self) -> None:
        """Re-read the file if its inode, size or mtime changed; a missing file means no devices."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            with self._lock:
                self._stamp, self._by_hash, self._by_device, self._sites = None, {}, {}, {}
            return
        except OSError as e:
            raise TokenFileError(f"{self.path}: {e.strerror or e}") from e
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TokenFileError(f"{self.path}: {e}") from e
        registry = parse_registry(text, str(self.path))
        with self._lock:
            self._by_hash = {h: dev for dev, (h, _) in registry.items()}
            self._by_device = {dev: h for dev, (h, _) in registry.items()}
            self._sites = {dev: site for dev, (_, site) in registry.items() if site}
            self._stamp = stamp

    def site_for(self, device: str) -> str:
        """The device's registered site ('' when registered without one)."""
        with self._lock:
            return self._sites.get(device, "")

    def registered_site(self, device: str) -> str | None:
        """The device's site in the file ('' when registered without one), None when the
        file does not name it."""
        with self._lock:
            if device not in self._by_device:
                return None
            return self._sites.get(device, "")

    def resolve(
        self, token: str, *, recheck_s: float = 1.0, reread_on_miss: bool = True
    ) -> str | None:
        """device_for with the file re-checked at most every recheck_s, and on every miss
        (reread_on_miss=False: not on a miss, for a caller that looks elsewhere first and
        re-reads only when that fails too: `DeviceTokens.in_file`).

        A device added while the collector runs works on its first upload; a
        rotated or removed token stops working within recheck_s.
        """
        now = time.monotonic()
        if now - self._checked_at >= recheck_s:
            self._checked_at = now
            self.reload()
            return self.device_for(token)
        device = self.device_for(token)
        if device is None and reread_on_miss:
            self.reload()
            device = self.device_for(token)
        return device

    def devices(self) -> list[str]:
        """Registered device ids."""
        with self._lock:
            return sorted(self._by_device)

    def device_for(self, token: str) -> str | None:
        """The device a token belongs to, or None."""
        if not token:
            return None
        digest = hash_token(token)
        with self._lock:
            device = self._by_hash.get(digest)
            stored = self._by_device.get(device, "") if device is not None else ""
        if device is None or not hmac.compare_digest(stored, digest):
            return None
        return device


class DeviceTokens:
    """Every device token: the tokens file's (`add-device`, checked first) and the enrolled
    devices' (issue 16, `collector.channel.devices`, through the two lookups given).

    The same interface as `TokenStore` for ingest and the channel: `resolve` a bearer
    token to its device, `site_for` a device. A device both in the file and enrolled is
    filed under the file's site (enrollment refuses another one)."""

    def __init__(
        self,
        file: TokenStore,
        enrolled: Callable[[str], tuple[str, str] | None],
        enrolled_site: Callable[[str], str | None],
    ):
        self.file = file
        self._enrolled = enrolled
        self._enrolled_site = enrolled_site

    def resolve(self, token: str) -> str | None:
        """The token's device, or None (TokenFileError, StorageError: cannot tell now)."""
        device = self.file.resolve(token)
        if device is not None:
            return device
        found = self._enrolled(token) if token else None
        return None if found is None else found[0]

    def resolve_with_site(self, token: str) -> tuple[str, str] | None:
        """(device, site) of a token in one lookup, or None."""
        return self.in_file(token) or (self._enrolled(token) if token else None)

    def in_file(self, token: str, *, reread_on_miss: bool = True) -> tuple[str, str] | None:
        """(device, site) of a token of the tokens file, or None (TokenFileError). The
        check-in looks with reread_on_miss=False, then in the index (in its transaction),
        then here again when both missed: a check-in of an enrolled device costs no stat()."""
        device = self.file.resolve(token, reread_on_miss=reread_on_miss)
        if device is None:
            return None
        return device, self.file.registered_site(device) or ""

    def site_for(self, device: str) -> str:
        """The device's site: the file's when it names the device, else its enrollment's."""
        site = self.file.registered_site(device)
        if site is not None:
            return site
        return self._enrolled_site(device) or ""

    def registered_site(self, device: str) -> str | None:
        """The device's site in the tokens file, None when the file does not name it."""
        return self.file.registered_site(device)

    def devices(self) -> list[str]:
        """The devices of the tokens file."""
        return self.file.devices()

    def reload(self) -> None:
        """Read the tokens file again now (the enrolled devices are read per lookup)."""
        self.file.reload()


def add_device(
    path: str | Path, device_id: str, *, rotate: bool = False, site: str | None = None
) -> str:
    """Register device_id with a new token; return the token (store only its hash).

    site: the device's store (None keeps the registered one on --rotate).
    Raises ValueError for a bad id or site, FileExistsError when the device is already
    registered and rotate is False. The file is rewritten atomically (0600)
    under an exclusive lock.
    """
    if not valid_device_id(device_id):
        raise ValueError(f"invalid device id {device_id!r} (letters, digits, . _ : -, 1-64)")
    if site is not None and site != "" and not valid_site(site):
        raise ValueError(f"invalid site {site[:60]!r} (1-200 characters, no '#', no controls)")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lock_path = p.with_name(p.name + ".lock")
    lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        table = parse_registry(text, str(p))
        if device_id in table and not rotate:
            raise FileExistsError(f"device {device_id} already has a token (use --rotate)")
        token = new_token()
        keep = table[device_id][1] if device_id in table else ""
        table[device_id] = (hash_token(token), keep if site is None else site)
        body = "# posagent collector device tokens: <device_id> <sha256 hex of token> [site]\n"
        body += "".join(f"{d} {h} {s}".rstrip() + "\n" for d, (h, s) in sorted(table.items()))
        _replace_keeping_group(p, body.encode("utf-8"))
        return token
    finally:
        os.close(lock_fd)


def _replace_keeping_group(path: Path, data: bytes) -> None:
    """atomic_write, keeping an existing file's group and its group-read bit (0640 made by
    posagent-collector.tmpfiles.conf stays readable by the collector's user); else 0600."""
    try:
        st = path.stat()
    except FileNotFoundError:
        atomic_write(path, data, mode=0o600)
        return
    mode = 0o640 if st.st_mode & stat.S_IRGRP else 0o600
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            if st.st_gid != os.getegid():
                os.fchown(fd, -1, st.st_gid)
            os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
