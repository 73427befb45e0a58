"""structlog set-up: JSON lines to stdout (journald keeps them), a console renderer on a TTY.

Every event passes the redaction processor before it is rendered.

`import structlog` imports `structlog.stdlib` (and `structlog._native`), which import asyncio
for their async logging methods, never called here; asyncio imports ssl, and with it
libssl: 2.5 MiB of the daemon's RSS (docs/BENCHMARKS.md, "Two-way channel"). So structlog is
imported with a stand-in for asyncio (`_AsyncioOnUse`) that imports the real one on its
first attribute access; the stand-in is only in those two modules' globals: it leaves
sys.modules right after, and any other `import asyncio` (the collector's uvicorn) gets the
real module.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from typing import Any

from agent.core.redact import Redactor  # imports no structlog (tests/daemon/test_footprint.py)


class _AsyncioOnUse(types.ModuleType):
    """Stands in for asyncio in structlog's modules: imports it when an attribute is read."""

    def __getattr__(self, name: str) -> Any:
        if sys.modules.get("asyncio") is self:  # read while structlog is being imported
            del sys.modules["asyncio"]  # (a structlog that uses asyncio at import): the real one
        return getattr(importlib.import_module("asyncio"), name)


if "asyncio" in sys.modules:
    import structlog
else:
    _stand_in = sys.modules["asyncio"] = _AsyncioOnUse("asyncio")
    try:
        import structlog
    finally:
        if sys.modules.get("asyncio") is _stand_in:
            del sys.modules["asyncio"]

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
