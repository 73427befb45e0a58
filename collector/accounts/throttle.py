"""Login throttling, counted in the database so every instance counts together.

Each failed attempt is a row of ``login_failures`` (when, the account name tried, the
client's address); a wrong Bearer token counts against its address with an empty
account. An attempt is refused (429, Retry-After) while the account has
``login_failures_per_account`` failures within ``login_window_s``, or the address has
``login_failures_per_address``. A login reserves its failure row before the password is
checked, under a lock on the account (`Tx.lock`), so parallel guesses at one account
cannot exceed the limit; a success deletes the account's rows (its address's stay).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from collector.storage.sql import Tx


@dataclass(frozen=True)
class Throttle:
    per_account: int
    per_address: int
    window_s: float

    def _wait(self, tx: Tx, column: str, value: str, limit: int, now: float) -> float:
        rows = tx.all(
            f"SELECT at FROM login_failures WHERE {column} = ? AND at > ? ORDER BY at DESC LIMIT ?",
            (value, now - self.window_s, limit),
        )
        if len(rows) < limit:
            return 0.0
        return max(1.0, float(rows[-1][0]) + self.window_s - now)

    def wait(self, tx: Tx, account: str, address: str) -> float:
        """Seconds until an attempt for account from address may be made (0: now)."""
        now = time.time()
        waits = [self._wait(tx, "address", address, self.per_address, now)]
        if account:
            waits.append(self._wait(tx, "account", account, self.per_account, now))
        return max(waits)

    def reserve(self, tx: Tx, account: str, address: str) -> tuple[float, int | None]:
        """(wait, None) when throttled, else (0, the id of a failure row counted now)."""
        tx.lock(f"login:{account}")
        wait = self.wait(tx, account, address)
        if wait > 0:
            return wait, None
        return 0.0, self.fail(tx, account, address)

    def fail(self, tx: Tx, account: str, address: str) -> int:
        """Count one failure; the row's id. Rows older than the window are pruned."""
        now = time.time()
        tx.execute("DELETE FROM login_failures WHERE at < ?", (now - self.window_s,))
        row = tx.one(
            "INSERT INTO login_failures (at, account, address) VALUES (?, ?, ?) RETURNING id",
            (now, account[:100], address[:100]),
        )
        assert row is not None
        return int(row[0])

    @staticmethod
    def succeeded(tx: Tx, account: str) -> None:
        """A right password: the account's failures are forgotten."""
        tx.execute("DELETE FROM login_failures WHERE account = ?", (account,))
