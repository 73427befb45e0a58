"""The one context-manager shape of the simulator's twins: `with Twin(...) as t:` starts and stops it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self


class Service(ABC):
    """A twin with start() (returning itself) and stop(); usable as a context manager."""

    @abstractmethod
    def start(self) -> Self:
        """Bring the twin up; returns it."""

    @abstractmethod
    def stop(self) -> None:
        """Take it down (safe to call twice and after a partial start)."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
