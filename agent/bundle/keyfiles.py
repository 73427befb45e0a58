"""The signing key's files and its rotation in two steps (docs/CHANNEL.md §3, README "Keys").

No cryptography here: the daemon imports this module, the key itself is made and
used in a child (agent.bundle.sealed, agent.upload.worker).

Where the key lives (`BundleConfig.signing_key_candidates`): `[bundle]
signing_key_file` when set, else `<state_dir>/keys/device.ed25519`, the "home"
the daemon may write under its unit (ProtectSystem=strict leaves it only its
state dir), else a key made before at `device.ed25519` beside `hmac_key_file`
(/etc/posagent): read where it is, so no terminal loses its identity on upgrade;
its first rotation writes the new key to the home and leaves the old one in place.

Beside the home, in the same directory:
- `<home>.new`: the staged new key (0600), made by `stage_signing_key`;
- `<home>.rotation.json`: the pending rotation (`Pending`: the command, the
  new key id, the old key's id and public PEM), written once the new key is
  staged;
- `<home>.retired.pub`: the public keys retired, each after a `# key <id>
  retired <time>` line (`posagent key show-public --all` prints them);
- `<home>.<key id>.old`: a retired private key kept (a hard link made before
  the new key is renamed over the home: the rename stays atomic).

`promote` finishes a rotation: old public key recorded, old private key kept,
the staged key renamed over the home, the pending record removed. A crash at
any point leaves either key whole; running `promote` again completes it. The
rotation on command is promoted only once the collector has acknowledged the
result that carried the new public key (signed by the old key): until then
bundles are signed with the key the collector already trusts; a rotation the
collector refused (its reply's `key_rotations`) is `discard`ed, the old key kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.core.files import atomic_write, fsync_dir
from agent.core.timefmt import rfc3339

KEYS_DIR_MODE = 0o700


class RotationError(Exception):
    """A rotation step that could not be done; str() names the file."""


def staging_path(home: str | Path) -> Path:
    p = Path(home)
    return p.with_name(p.name + ".new")


def pending_path(home: str | Path) -> Path:
    p = Path(home)
    return p.with_name(p.name + ".rotation.json")


def retired_keys_path(home: str | Path) -> Path:
    """Where the public keys a rotation retired are recorded (PEM blocks)."""
    p = Path(home)
    return p.with_name(p.name + ".retired.pub")


def kept_key_path(home: str | Path, kid: str) -> Path:
    p = Path(home)
    return p.with_name(f"{p.name}.{kid}.old")


@dataclass(frozen=True)
class Pending:
    """A staged key waiting to replace the current one."""

    command_id: str  # "" for `posagent key rotate`
    key_id: str  # the new key's id
    previous: str  # the old key's id
    previous_pem: str  # the old public key, recorded as retired at the promotion
    current: str  # the file the old key was read from
    at: float

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()


def read_pending(home: str | Path) -> Pending | None:
    """The pending rotation, or None (none, or a record that does not parse: logged by
    the caller through the None and the file left for a new rotation to replace)."""
    try:
        doc = json.loads(pending_path(home).read_bytes())
        return Pending(**{k: doc[k] for k in Pending.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_pending(home: str | Path, pending: Pending) -> None:
    atomic_write(pending_path(home), pending.to_json(), mode=0o600)


def make_home_dir(home: str | Path) -> None:
    """The key's directory: made 0700 when absent and, when root makes it (`posagent
    keygen` at install, `key rotate`), handed to the owner of the directory above (the
    state dir's, the daemon's user)."""
    d = Path(home).parent
    if d.is_dir():
        return
    d.mkdir(mode=KEYS_DIR_MODE, parents=True, exist_ok=True)
    if os.geteuid() == 0:
        st = os.stat(d.parent)
        os.chown(d, st.st_uid, st.st_gid)


def hand_to_dir_owner(path: str | Path) -> None:
    """A key file root made, given to its directory's owner (no-op unless root)."""
    if os.geteuid() == 0:
        st = os.stat(Path(path).parent)
        os.chown(path, st.st_uid, st.st_gid)


def promote(home: str | Path, pending: Pending) -> None:
    """Replace the key at home with the staged one (see the module docstring);
    RotationError naming the file when a step fails. Idempotent."""
    p = Path(home)
    staged = staging_path(p)
    try:
        if not staged.exists():  # renamed by an earlier promote that died before cleaning up
            with contextlib.suppress(FileNotFoundError):
                pending_path(p).unlink()
            return
        record = retired_keys_path(p)
        entry = f"# key {pending.previous} retired {rfc3339(time.time())}\n{pending.previous_pem}"
        if pending.previous not in _recorded(record):
            fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
            try:
                os.write(fd, entry.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        if os.path.lexists(p) and Path(pending.current) == p:
            kept = kept_key_path(p, pending.previous)
            if not os.path.lexists(kept):
                os.link(p, kept, follow_symlinks=False)
        os.replace(staged, p)
        fsync_dir(p.parent)
        with contextlib.suppress(FileNotFoundError):
            pending_path(p).unlink()
    except OSError as e:
        raise RotationError(
            f"cannot put the new signing key in place at {p}: {e.strerror or e}"
        ) from None


def discard(home: str | Path) -> None:
    """Drop a staged key and its pending record (the collector did not trust it): the
    current key stays in force."""
    for p in (staging_path(home), pending_path(home)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    fsync_dir(Path(home).parent)


def _recorded(record: Path) -> str:
    try:
        return record.read_text("utf-8", "replace")
    except FileNotFoundError:
        return ""
