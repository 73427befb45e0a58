"""Passwords: Argon2id hashes (argon2-cffi, RFC 9106's low-memory profile), strength rule.

A password is at least `MIN_CHARS` characters (and at most `MAX_CHARS`: hashing is the
costly step, a megabyte of "password" must not be); anything shorter is `WeakSecret`.
`verify` is constant-time in the hash's check; `verify_nobody` spends the same work when
the account does not exist, so the answer's timing does not tell which names exist.
"""

from __future__ import annotations

import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from collector.accounts.errors import WeakSecret

MIN_CHARS = 12
MAX_CHARS = 1024

_HASHER = PasswordHasher()  # Argon2id, t=3, m=64 MiB, p=4 (argon2-cffi's RFC 9106 profile)
_NOBODY = _HASHER.hash(secrets.token_urlsafe(16))


def check_strength(password: str) -> None:
    """WeakSecret unless MIN_CHARS <= len(password) <= MAX_CHARS."""
    if len(password) < MIN_CHARS:
        raise WeakSecret(f"password too short: at least {MIN_CHARS} characters")
    if len(password) > MAX_CHARS:
        raise WeakSecret(f"password too long: at most {MAX_CHARS} characters")


def generate() -> str:
    """A one-time password: 120 random bits, 20 URL-safe characters."""
    return secrets.token_urlsafe(15)


def hash_password(password: str) -> str:
    """The stored form (check_strength first)."""
    check_strength(password)
    return _HASHER.hash(password)


def verify(stored: str, password: str) -> bool:
    """True when password matches the stored hash (False for a malformed hash)."""
    if len(password) > MAX_CHARS:
        return False
    try:
        return _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def verify_nobody(password: str) -> bool:
    """The work of one verify, for a name that has no account; always False."""
    verify(_NOBODY, password[:MAX_CHARS])
    return False


def needs_rehash(stored: str) -> bool:
    """True when the hash was made with weaker parameters than today's."""
    try:
        return _HASHER.check_needs_rehash(stored)
    except InvalidHashError:
        return True
