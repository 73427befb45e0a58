"""A refusal on the channel: HTTP code, status word, one line (docs/CHANNEL.md)."""

from __future__ import annotations


class ChannelError(Exception):
    """A request refused: ``{"status": status, "error": str(self)}`` with HTTP ``code``."""

    def __init__(self, code: int, status: str, message: str, retry_after_s: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status
        self.retry_after_s = retry_after_s  # a 429's Retry-After


class BadRequest(ChannelError):
    """A malformed body or argument (400)."""

    def __init__(self, message: str):
        super().__init__(400, "bad_request", message)


class NotFound(ChannelError):
    """No such device or command, or one out of the caller's reach (404)."""

    def __init__(self, message: str):
        super().__init__(404, "not_found", message)
