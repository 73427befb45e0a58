"""The POS application twin: a real child process named `posapp` with a pid file and a heartbeat.

`SimPosApp(root).start()` copies /bin/sh to <root>/bin/posapp and runs it as
a loop that truncates the heartbeat file (a fresh mtime) every `beat_s`,
the way a POS app touches its heartbeat while its main loop turns; start()
returns once the first beat is written. The pid of the loop goes to
<root>/run/posapp.pid; its process name is `posapp`.

- `stop()`: SIGKILL the app (and its `sleep` child) and reap it: not running;
- `start()` again: a new process (new pid): what a supervisor's restart does;
- `restart()`: both, as in a crash loop;
- `hang(True)` / `hang(False)`: SIGSTOP / SIGCONT the app's process: it is still there
  but its main loop no longer turns, so the heartbeat ages. Its `sleep` child is left to
  finish: dash starts it with vfork, and a child stopped between vfork and exec holds its
  parent in uninterruptible sleep, never stopped (seen in CI: "disk-sleep" for 60 s).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from simulator.state import write_atomic

APP_NAME = "posapp"


class SimPosApp:
    """One POS application process under `root` (bin/posapp, run/posapp.pid, run/posapp.heartbeat)."""

    def __init__(self, root: Path, *, beat_s: float = 0.2) -> None:
        self.root = Path(root)
        self.exe = self.root / "bin" / APP_NAME
        self.pid_file = self.root / "run" / f"{APP_NAME}.pid"
        self.heartbeat_file = self.root / "run" / f"{APP_NAME}.heartbeat"
        self.beat_s = beat_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.hung = False

    @property
    def running(self) -> bool:
        """The process exists (a hung one too)."""
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> SimPosApp:
        """Start the app (a no-op when it runs); writes the pid file."""
        if self.running:
            return self
        self.exe.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        if not self.exe.exists():
            shutil.copy2("/bin/sh", self.exe)
        before = self._mtime()
        loop = f'while :; do : > "$1"; sleep {self.beat_s}; done'
        self.proc = subprocess.Popen(
            [APP_NAME, "-c", loop, APP_NAME, str(self.heartbeat_file)],
            executable=str(self.exe),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.starts += 1
        self.hung = False
        write_atomic(self.pid_file, f"{self.proc.pid}\n")
        self._await_beat(before)
        return self

    def _mtime(self) -> float:
        try:
            return self.heartbeat_file.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def _await_beat(self, before: float, timeout_s: float = 2.0) -> None:
        """Return once the new process has touched its heartbeat (it is up), or after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while self._mtime() == before and time.monotonic() < deadline and self.running:
            time.sleep(0.01)

    def stop(self) -> None:
        """Kill the app (SIGKILL to its group) and reap it; the pid file stays, stale."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.proc = None
        self.hung = False

    def restart(self) -> None:
        """Die and come back as a new process (one restart)."""
        self.stop()
        self.start()

    def hang(self, hung: bool = True) -> None:
        """SIGSTOP (hung) or SIGCONT (resumed) the app's process (not its group: see above)."""
        if not self.running:
            raise RuntimeError("the POS app is not running")
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP if hung else signal.SIGCONT)
        self.hung = hung
        # signal delivery is asynchronous: return once the kernel shows the new state
        want_stopped = hung
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return
            if (state in ("T", "t")) == want_stopped:
                return
            time.sleep(0.01)
