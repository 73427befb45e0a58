"""A device's signing keys on the collector: their validity, and their rotation on command.

docs/CHANNEL.md §3 ``rotate-signing-key``. The device's public keys are PEM blocks in
``devices.pubkeys``, each key's life told by comment lines naming its 16-hex id:
``# key <id> enrolled <time>`` (learnt at enrollment), ``# key <id> from <time>
(rotate-signing-key <command>)`` (learnt from a rotation) and ``# key <id> until <time>
(rotate-signing-key <command>)`` (retired by one). Keys of ``device_pubkeys_dir`` join
them (`collector.sealed.device_keyring`), revoked keys stay refused.

A rotation's result carries the new public key and a signature by the key it replaces
over `agent.bundle.sealed.rotation_statement` (the command id, the device, the new key,
the old key's id). `accept_rotation` trusts the new key only when that old key is a
current key of the device (not revoked) and its signature verifies; the old key stays
(bundles it signed, still queued on the terminal or stored, verify), marked ``until``.
A bundle verifies with any of the device's keys that is not revoked; a sealed bundle
names its signer's id in its envelope.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from agent.bundle.format import BundleError, decode_ed25519, ed25519_verifies, key_id
from agent.bundle.sealed import KeyFileError, parse_public_keys, rotation_statement
from agent.core.timefmt import parse_rfc3339, rfc3339
from collector.sealed import device_keyring

KIND = "rotate-signing-key"
MAX_PEM = 4096
_LINE = re.compile(r"^#\s*key\s+([0-9a-f]{16})\s+(enrolled|from|until)\s+(\S+)")


class RotationRefused(Exception):
    """A rotation result the collector does not trust; str() is the one-line reason."""


@dataclass(frozen=True)
class KeyLife:
    """One public key of a device and when it was in use (epoch seconds, None: unknown
    or still)."""

    key_id: str
    since: float | None
    until: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "from": None if self.since is None else rfc3339(self.since),
            "until": None if self.until is None else rfc3339(self.until),
        }


def _time(text: str) -> float | None:
    try:
        return parse_rfc3339(text)
    except ValueError:
        return None


def lives(pubkeys: str) -> list[KeyLife]:
    """Every key of a device's ``pubkeys`` text with its validity, oldest first ([] when
    the text does not parse)."""
    try:
        blocks = parse_public_keys(pubkeys.encode()) if pubkeys.strip() else []
    except KeyFileError:
        return []
    since: dict[str, float | None] = {}
    until: dict[str, float | None] = {}
    for line in pubkeys.splitlines():
        m = _LINE.match(line.strip())
        if m:
            kid, what, when = m.groups()
            (until if what == "until" else since).setdefault(kid, _time(when))
    return [KeyLife(b.key_id, since.get(b.key_id), until.get(b.key_id)) for b in blocks]


def parse_proof(raw: Any, i: int) -> dict[str, str] | None:
    """A result's ``key`` field (the proof of a rotation), checked for shape only;
    ValueError naming the field."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError(f"results[{i}].key must be an object")
    out: dict[str, str] = {}
    for name, limit in (("public_key", MAX_PEM), ("previous", 16), ("signature", 200)):
        v = raw.get(name)
        if not isinstance(v, str) or not v or len(v) > limit:
            raise ValueError(f"results[{i}].key.{name} must be a string of at most {limit}")
        out[name] = v
    return out


def accept_rotation(
    cfg: Any, device: str, pubkeys: str, command_id: str, proof: dict[str, str] | None, now: float
) -> tuple[str, str]:
    """(the device's new ``pubkeys`` text, the result's detail) for a rotation result
    whose proof holds; RotationRefused (one line) otherwise."""
    if proof is None:
        raise RotationRefused("the result carries no new public key")
    try:
        (block,) = parse_public_keys(proof["public_key"].encode())
    except (KeyFileError, ValueError):
        raise RotationRefused("the new public key is not one Ed25519 PEM public key") from None
    prev = proof["previous"]
    try:
        ring = device_keyring(cfg, device, enrolled=pubkeys)
    except BundleError as e:
        raise RotationRefused(str(e)) from None
    if ring is None:
        raise RotationRefused(f"device {device} has no public key on file to vouch for a new one")
    if prev in ring.revoked:
        raise RotationRefused(f"signed by revoked key {prev} of device {device}")
    old = [k for k in ring.current if key_id(k) == prev]
    if not old:
        raise RotationRefused(f"key {prev} is not a current key of device {device}")
    statement = rotation_statement(command_id, device, proof["public_key"], prev)
    try:
        sig = decode_ed25519(proof["signature"].encode(), "key rotation")
    except BundleError as e:
        raise RotationRefused(str(e)) from None
    if not ed25519_verifies(old[0], statement, sig):
        raise RotationRefused(
            f"the new key {block.key_id} is not signed by the device's current key {prev}"
        )
    detail = f"signing key {prev} -> {block.key_id}"
    if block.key_id in ring.ids():
        return pubkeys, detail  # already known (a result sent again)
    why = f"({KIND} {command_id})"
    at = rfc3339(now)
    text = (pubkeys.rstrip("\n") + "\n") if pubkeys.strip() else ""
    text += f"# key {prev} until {at} {why}\n# key {block.key_id} from {at} {why}\n{block.pem}"
    return text, detail
