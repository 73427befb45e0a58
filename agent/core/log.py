"""structlog set-up: JSON lines to stdout (journald keeps them), a console renderer on a TTY.

Every event passes the redaction processor before it is rendered.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from agent.core.redact import Redactor

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure(
    level: str = "info",
    fmt: str = "auto",
    redactor: Redactor | None = None,
    stream: Any = None,
) -> None:
    """Configure structlog for the process; safe to call again (SIGHUP reload)."""
    out = stream if stream is not None else sys.stdout
    console = fmt == "console" or (fmt == "auto" and hasattr(out, "isatty") and out.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    processors.append((redactor or Redactor()).processor())
    if console:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    else:
        processors.append(structlog.processors.JSONRenderer())
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
