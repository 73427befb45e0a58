"""A simulated terminal for the monitor tests: every twin under one tmp dir, and its config.

`MonitorRig` starts the whole terminal of the simulator (simulator.terminal:
power tree, link/route tree, loopback payment host, pty printer at dev/ttyS0,
pty PIN pad at dev/ttyUSB0 with its USB identity in the fake sysfs) and
renders a short-interval agent.toml pointing the monitors at it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from agent.core.config import Config, parse_config
from agent.monitors import MonitorContext
from drivers.roots import Roots
from drivers.shell import Shell
from simulator import terminal
from simulator.peripherals import SimPeripheral
from simulator.printer import SimPrinter
from simulator.terminal import DEFAULT_ROUTE, render_toml

__all__ = ["DEFAULT_ROUTE", "MonitorRig", "render_toml"]


class MonitorRig:
    """The twins of one terminal under `tmp`, started; `config()` points an agent at them."""

    def __init__(self, tmp: Path, *, printer: bool = True, peripheral: bool = True) -> None:
        self.tmp = tmp
        # app_files=False: the monitor tests make their own crash/, anr/, trigger/
        # dirs and logs under tmp (and expect them not to exist beforehand).
        self.sim = terminal.SimTerminal(
            tmp, printer=printer, pinpad=peripheral, app_files=False
        ).start()
        self.sys, self.proc, self.dev = self.sim.sys, self.sim.proc, self.sim.dev
        self.state = self.sim.state
        self.power, self.net, self.host = self.sim.power, self.sim.net, self.sim.host
        self.printer: SimPrinter | None = self.sim.printer
        self.pinpad: SimPeripheral | None = self.sim.pinpad
        self._extra: list[Any] = []

    def add(self, device: Any) -> Any:
        """Start another twin and stop it with the terminal."""
        self._extra.append(device)
        return device.start()

    def close(self) -> None:
        """Stop every twin."""
        for d in self._extra:
            with contextlib.suppress(Exception):
                d.stop()
        self.sim.close()

    @property
    def roots(self) -> Roots:
        return Roots(self.sys, self.proc, self.dev, self.sim.run, self.state)

    def sections(self) -> dict[str, Any]:
        """The config as sections (tests change entries before rendering).

        Not `agent_sections()` of the simulator: the monitor tests want 0.2 s
        polls and no app/capture/screen/faults sections of the demo terminal.
        """
        return {
            "agent": {"device_id": "T-SIM", "state_dir": str(self.state), "log_format": "json"},
            "roots": self.sim.roots_section(),
            "bundle": {"hmac_key_file": str(self.tmp / "device.key")},
            "upload": {"token_file": str(self.tmp / "token")},
            "power": {"interval_s": 0.2},
            "network": {
                "interval_s": 0.2,
                "interfaces": ["eth0"],
                "payment_hosts": [self.host.address],
                "dns_timeout_s": 0.5,
                "connect_timeout_s": 0.5,
            },
            "peripherals": {"interval_s": 0.2, "extra_globs": []},
            "system": {"interval_s": 0.2, "disk_paths": [str(self.tmp)]},
            **self.sim.device_sections(interval_s=0.2, timeout_s=0.2),
        }

    def write_config(self, sections: dict[str, Any] | None = None) -> Path:
        """Write agent.toml for these sections (default: `sections()`); returns its path."""
        path = self.tmp / "agent.toml"
        path.write_text(render_toml(sections or self.sections()))
        return path

    def config(self, sections: dict[str, Any] | None = None) -> Config:
        """The parsed config for these sections."""
        return parse_config(render_toml(sections or self.sections()), "sim.toml")

    def context(self, shell: Shell | None = None) -> MonitorContext:
        """Roots of the twins, a local shell (or the given one), the tmp state dir."""
        return MonitorContext(self.roots, shell or Shell(), self.state)


# --------------------------------------------------------------------------- hostile local user

RENAME_EXCHANGE = 2
AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries atomically (renameat2 RENAME_EXCHANGE); False if one is missing.

    Falls back to two renames where libc has no renameat2 (still a swap, not atomic).
    """
    import ctypes
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        rc = fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
        return bool(rc == 0)
    tmp = a.with_name(a.name + ".swap")
    try:
        os.rename(a, tmp)
        os.rename(b, a)
        os.rename(tmp, b)
    except OSError:
        return False
    return True


class SymlinkSwapper:
    """A thread that keeps swapping `target` (a regular trigger file) with a symlink to `secret`.

    Between swaps `target` is alternately the note file and the link; when the
    watcher consumed the note file a new one is written (dot-file + rename, as
    a writer should). Runs `iterations` swaps, then stops; `swaps` counts the
    ones that happened. `settled` back-dates each note so a watcher with a settle
    time (the daemon's) handles it on its next scan instead of waiting for quiet.
    """

    def __init__(
        self, target: Path, secret: Path, note: bytes, iterations: int, *, settled: bool = False
    ) -> None:
        import threading

        self.target = target
        self.link = target.with_name(".link")  # dot-files are ignored by the watcher
        self.secret = secret
        self.note = note
        self.iterations = iterations
        self.settled = settled  # back-date each note (a watcher handles it on its next scan)
        self.swaps = 0
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="symlink-swapper", daemon=True)

    def start(self) -> SymlinkSwapper:
        self._thread.start()
        return self

    def join(self, timeout_s: float = 60.0) -> None:
        self._thread.join(timeout_s)

    def _run(self) -> None:
        import os

        try:
            for _ in range(self.iterations):
                if not os.path.lexists(self.link):
                    os.symlink(self.secret, self.link)
                if not os.path.lexists(self.target):
                    tmp = self.target.with_name(".note")
                    tmp.write_bytes(self.note)
                    if self.settled:
                        import time

                        old = time.time() - 60
                        os.utime(tmp, (old, old))
                    os.rename(tmp, self.target)
                if exchange(self.target, self.link):
                    self.swaps += 1
        finally:
            self.done.set()
