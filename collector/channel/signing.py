"""The collector's command key (docs/CHANNEL.md §3): Ed25519, `[collector] signing_key_file`,
made by `posagent collector keygen` (PEM PKCS#8, 0600, never overwritten). Its public key
is given to every terminal at enrollment; the terminal runs a command only when the
envelope's signature verifies with it.

The envelope is canonical JSON (`canonical`) and the signature is over exactly those
bytes; both travel base64 (`signed`). A command is signed once, when it is queued, and
the same bytes are delivered until the terminal acknowledges it.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle.sealed import KeyFileError, generate_signing_key, load_signing_key, public_pem


class NoSigningKey(Exception):
    """No usable command key: the one-line reason (commands cannot be queued)."""


def canonical(obj: Any) -> bytes:
    """The canonical JSON bytes of §3 (sorted keys, no spaces, UTF-8)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def keygen(path: str | Path) -> str:
    """Make the command key at path (0600; FileExistsError when one is there); its public PEM."""
    return public_pem(generate_signing_key(path).public_key())


class Signer:
    """The command key of `[collector] signing_key_file`, read again when the file changes."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._key: Ed25519PrivateKey | None = None

    def key(self) -> Ed25519PrivateKey:
        """The private key; NoSigningKey (one line) when not configured or unusable."""
        if not self.path:
            raise NoSigningKey(
                "no command signing key: set [collector] signing_key_file "
                "and run posagent collector keygen"
            )
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise NoSigningKey(
                f"command signing key {self.path} not found: run posagent collector keygen"
            ) from None
        except OSError as e:
            raise NoSigningKey(f"command signing key {self.path}: {e.strerror or e}") from None
        stamp = (st.st_ino, st.st_mtime_ns)
        with self._lock:
            if self._key is not None and stamp == self._stamp:
                return self._key
        try:
            key = load_signing_key(self.path)
        except KeyFileError as e:
            raise NoSigningKey(str(e).replace("(posagent keygen)", "")) from None
        with self._lock:
            self._key, self._stamp = key, stamp
        return key

    def public_pem(self) -> str:
        """The public key as PEM (given to terminals at enrollment)."""
        return public_pem(self.key().public_key())

    def sign(self, envelope: dict[str, Any]) -> tuple[str, str]:
        """(base64 of the canonical envelope, base64 of its Ed25519 signature)."""
        data = canonical(envelope)
        sig = self.key().sign(data)
        return base64.b64encode(data).decode(), base64.b64encode(sig).decode()
