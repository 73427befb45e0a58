"""Run an in-process grab with a deadline (a thread we can stop waiting for)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from drivers.screen.errors import ScreenError, ScreenTimeout, ScreenUnavailable

T = TypeVar("T")

_busy: set[str] = set()
_busy_lock = threading.Lock()


def run_with_deadline(label: str, fn: Callable[[], T], timeout_s: float) -> T:
    """Call fn in a daemon thread and wait at most timeout_s.

    A call that overruns keeps its thread (Python cannot kill it); while it is
    still stuck, further calls with the same label fail at once instead of
    piling up threads.
    """
    with _busy_lock:
        if label in _busy:
            raise ScreenUnavailable(f"{label}: previous grab still blocked")
        _busy.add(label)
    values: list[T] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            values.append(fn())
        except BaseException as e:  # handed to the caller below
            errors.append(e)
        finally:
            with _busy_lock:
                _busy.discard(label)

    t = threading.Thread(target=work, name=f"screen-{label}", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise ScreenTimeout(f"{label}: no image within {timeout_s:g} s")
    if errors:
        err = errors[0]
        if isinstance(err, ScreenError):
            raise err
        raise ScreenUnavailable(f"{label}: {err}") from err
    return values[0]
