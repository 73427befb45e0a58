"""Typed errors of the screenshot backends; each carries a short reason for `skipped:<reason>`."""

from __future__ import annotations


class ScreenError(Exception):
    """A screenshot could not be produced; str(e) is a short reason such as "x11: ..."."""


class ScreenUnavailable(ScreenError):
    """The backend cannot work here: no display, no node, tool missing, command failed."""


class ScreenTimeout(ScreenError):
    """The backend did not deliver within its timeout."""


class ScreenInvalid(ScreenError):
    """The backend delivered something that is not a usable PNG image."""
