"""The accounts' errors: each is one line for the operator (the CLI's exit code by type)."""

from __future__ import annotations


class AccountError(Exception):
    """An account operation refused (the message says why, on one line)."""


class WeakSecret(AccountError):
    """A password or token too short (or a secret file others can read)."""


class InvalidAccount(AccountError):
    """A bad name, role or tenant combination."""


class NoSuchAccount(AccountError):
    """The named user, token, tenant or site does not exist."""


class AccountExists(AccountError):
    """The user (or site under another tenant) already exists."""
