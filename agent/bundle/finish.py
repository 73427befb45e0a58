"""The last step of a capture, kept out of the daemon's memory (issue 17).

Signing (Ed25519) and encryption (age) need `cryptography` and `pyrage`, about
10 MB of RSS once imported. The daemon never imports them: when its config is a
file, bundles are finished by a sealing worker, `python -m agent.bundle.sealed
--serve --key FILE --to RECIPIENT...`, a child that takes plaintext zips on
its stdin and answers with the signed or sealed bytes (`SealWorker`;
`agent.bundle.framing`). A capture starts it (`prewarm`) as it begins, so
its interpreter start and imports (about 0.25 s, more on a busy terminal) run
while the probes and the screenshot do, not after them; it then serves the
captures that follow and exits after WORKER_IDLE_S without one (or with the
daemon: its stdin closes), so an idle terminal holds no crypto in any process.
A worker that died or hung is replaced once per bundle; a bundle it cannot
finish raises FinishError (never enqueued in plaintext instead).

The key file and recipients are those of the config the daemon loaded: a new
`[bundle] encrypt_to` (a fleet key rotation) takes effect at the daemon's
reload (SIGHUP, `systemctl reload posagent`: the Agent is rebuilt with a new
worker) like every other setting, and a config edited but not reloaded never
changes how bundles are sealed. The worker checks the key file before each
bundle: `posagent key rotate` takes effect at the next one. The start-up check
of the signing key and recipients runs in a short-lived child
(`--config CFG --check`, exit 78 with the file named). A config that is not a
file (tests, benchmarks) is finished in-process.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from agent.bundle.framing import REPLY, REPLY_MAGIC, REQUEST, REQUEST_MAGIC
from agent.bundle.policy import encryption_warning, require_recipient
from agent.core.config import Config, ConfigError
from drivers.shell import ShellError, run_argv

__all__ = ["encryption_warning", "require_recipient"]

FINISH_TIMEOUT_S = 30.0
WORKER_IDLE_S = 60.0


class FinishError(Exception):
    """The bundle could not be signed or sealed; it is not enqueued in plaintext instead."""


class Finisher(Protocol):
    """The capture's last step: (plaintext zip, manifest, rank) → what the spool stores."""

    def __call__(self, data: bytes, manifest: dict[str, Any], rank: int) -> bytes: ...

    def prewarm(self) -> None:
        """Get ready for a bundle about to come (a capture has begun)."""

    def close(self) -> None:
        """Release what it holds (the worker process)."""


def _worker(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent.bundle.sealed", *args]


def _sign_args(cfg: Config) -> list[str]:
    """The key file and recipients of the config the caller loaded (not the file's
    current text: an edited config takes effect at the daemon's reload)."""
    args: list[str] = []
    for path in cfg.bundle.signing_key_candidates(cfg.agent.state_dir):
        args += ["--key", path]
    for r in cfg.bundle.encrypt_to:
        args += ["--to", r]
    return args


def in_child(cfg: Config) -> bool:
    """True when the config is a file a child can read (the daemon, `posagent run`)."""
    return bool(cfg.source) and Path(cfg.source).is_file()


def check_keys(cfg: Config) -> None:
    """Load (or make) the signing key and parse the recipients, in a child when possible;
    ConfigError (exit 78) naming the key or file when either is unusable."""
    require_recipient(cfg)
    if not in_child(cfg):
        # lazy: cryptography and pyrage stay out of a daemon (in_child) process
        from agent.bundle.sealed import crypto_from_config

        crypto_from_config(cfg, create=True)
        return
    try:
        r = run_argv(_worker("--config", cfg.source, "--check"), FINISH_TIMEOUT_S)
    except ShellError as e:
        raise ConfigError(f"signing key check failed: {e}", file=cfg.source) from None
    if r.returncode != 0:
        lines = r.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ConfigError(lines[-1] if lines else f"signing key check: exit {r.returncode}")


class _Gone(Exception):
    """The worker exited (or its pipes broke) before answering: start another."""


class SealWorker:
    """A sealing worker process, started on demand, shared by the captures (thread-safe)."""

    def __init__(self, argv: list[str], timeout_s: float = FINISH_TIMEOUT_S):
        self.argv = argv
        self.timeout_s = timeout_s
        self.started = 0  # processes started (the benchmark and tests read it)
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def prewarm(self) -> None:
        with self._lock:
            self._ensure()

    def close(self) -> None:
        with self._lock:
            self._kill()

    def __call__(self, data: bytes, manifest: dict[str, Any], rank: int) -> bytes:
        frame = REQUEST.pack(REQUEST_MAGIC, rank, len(data)) + data
        with self._lock:
            why = ""
            for _ in range(2):  # an idle worker may exit as the request goes in
                proc = self._ensure()
                try:
                    ok, body = self._exchange(proc, frame, time.monotonic() + self.timeout_s)
                except _Gone as e:
                    why = self._reason(str(e))
                    continue
                except subprocess.TimeoutExpired:
                    self._kill()
                    raise FinishError(
                        f"bundle signing worker: no answer within {self.timeout_s:g} s"
                    ) from None
                if not ok:
                    raise FinishError(body.decode("utf-8", "replace")[:300])
                return body
            raise FinishError(f"bundle signing worker: {why}")

    def _ensure(self) -> subprocess.Popen[bytes]:
        p = self._proc
        if p is not None and p.poll() is None:
            return p
        if p is not None:
            self._kill()
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as e:
            raise FinishError(f"bundle signing worker: {e.strerror or e}") from None
        self.started += 1
        return self._proc

    def _reason(self, what: str) -> str:
        """Why the worker went: its last stderr line (it exits 78 naming a bad key file)."""
        p = self._proc
        text = ""
        if p is not None and p.stderr is not None:
            self._kill(keep_stderr=True)
            try:
                text = p.stderr.read().decode("utf-8", "replace")
            except (OSError, ValueError):
                text = ""
            p.stderr.close()
        lines = text.strip().splitlines()
        return lines[-1][:300] if lines else what

    def _kill(self, keep_stderr: bool = False) -> None:
        p, self._proc = self._proc, None
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for f in (p.stdin, p.stdout) if keep_stderr else (p.stdin, p.stdout, p.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        p.wait()  # reaped: after SIGKILL this does not block

    @staticmethod
    def _exchange(
        proc: subprocess.Popen[bytes], frame: bytes, deadline: float
    ) -> tuple[bool, bytes]:
        """Write the request and read the reply, every wait a select() timeout (never
        time.sleep, which fails under libfaketime: drivers/shell.py)."""
        assert proc.stdin is not None and proc.stdout is not None
        wfd, rfd = proc.stdin.fileno(), proc.stdout.fileno()
        os.set_blocking(wfd, False)
        os.set_blocking(rfd, False)
        pending = memoryview(frame)
        got = bytearray()
        need = REPLY.size
        header: tuple[bytes, int, int] | None = None
        with selectors.DefaultSelector() as sel:
            sel.register(wfd, selectors.EVENT_WRITE)
            sel.register(rfd, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise subprocess.TimeoutExpired(proc.args, 0)
                for key, _ in sel.select(min(left, 1.0)):
                    if key.fd == wfd:
                        try:
                            n = os.write(wfd, pending[:65536])
                        except BlockingIOError:
                            continue
                        except (BrokenPipeError, ConnectionResetError):
                            raise _Gone("it exited before taking the bundle") from None
                        pending = pending[n:]
                        if not pending:
                            sel.unregister(wfd)
                        continue
                    try:
                        chunk = os.read(rfd, 1 << 20)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        raise _Gone("it exited before answering")
                    got += chunk
                    if header is None and len(got) >= REPLY.size:
                        header = REPLY.unpack_from(got)
                        if header[0] != REPLY_MAGIC:
                            raise _Gone("it answered garbage")
                        need = REPLY.size + header[2]
                    if header is not None and len(got) >= need:
                        return header[1] == 1, bytes(got[REPLY.size : need])


class InProcess:
    """Finishing in this process (a config that is not a file: tests, benchmarks)."""

    def __init__(self, cfg: Config):
        # lazy: cryptography and pyrage stay out of a daemon (in_child) process
        from agent.bundle.sealed import crypto_from_config

        self.key, self.recipients = crypto_from_config(cfg, create=True)

    def __call__(self, data: bytes, manifest: dict[str, Any], rank: int) -> bytes:
        # lazy: as above
        from agent.bundle.sealed import finish

        return finish(data, manifest, self.key, self.recipients, rank)

    def prewarm(self) -> None:
        return None

    def close(self) -> None:
        return None


def finisher(cfg: Config) -> Finisher:
    """The capture's last step for cfg: the sealing worker, or in-process (not a file)."""
    if in_child(cfg):
        return SealWorker(_worker("--serve", "--idle-s", str(WORKER_IDLE_S), *_sign_args(cfg)))
    return InProcess(cfg)
