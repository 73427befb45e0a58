"""The read side's time parameters (since/until): epoch seconds, RFC 3339, or a naive ISO
time taken as UTC; '' is None. One parser for the bundle, audit and incident queries.

`BadQuery` (a ValueError) is a read's parameter that does not read: English in `str(e)`
(the API's 400), the reader's language in `e.words()` (a list page's error line)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from collector.i18n import N_, Phrased


class BadQuery(Phrased, ValueError):
    pass


def parse_time(text: str) -> float | None:
    """since/until: epoch seconds, RFC 3339, or a naive ISO time (taken as UTC); '' is None."""
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise BadQuery(N_("not a time: {text}"), text=repr(text[:40]))
        return value
    iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        dt = datetime.fromisoformat(iso)
    except ValueError:
        raise BadQuery(
            N_("not a time (RFC 3339 or epoch seconds): {text}"), text=repr(text[:40])
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
