"""`posagent run`: the daemon that wires monitors, fault engine, capture and upload (docs/ARCHITECTURE.md §3).

One process, threads:
- the scheduler runs the monitors (agent/monitors/scheduler.py) and puts readings on a queue;
- the engine loop feeds the flight recorder and the fault engine, and queues fault events;
- the capture worker applies the capture policy and seals bundles into the spool;
- the uploader drains the spool (agent/upload/uploader.py);
- watched directories (crash/ANR dirs, log tails, the trigger dir);
- the control socket (agent/daemon/control.py) takes `posagent report`'s requests;
- the main thread handles signals, writes the status file, and pings the
  systemd watchdog only while every loop above has made progress recently.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from agent import __version__
from agent.bundle.finish import check_keys, encryption_warning, finisher
from agent.bundle.format import Entry, load_key
from agent.bundle.trigger import Trigger
from agent.capture.capturer import Capturer, CaptureResult, ScreenShot
from agent.capture.privacy import capture_screen, check_sensitive
from agent.capture.probes import build_probes
from agent.capture.screen_worker import capture_in_child
from agent.channel.client import Channel
from agent.channel.commands import Command
from agent.channel.summary import build_summary
from agent.core import log as logmod
from agent.core.config import Config, ConfigError, load_config
from agent.core.files import atomic_write, read_regular
from agent.core.model import FaultEvent, Reading
from agent.core.redact import redactor_for
from agent.core.secret_files import require_safe_secret_files
from agent.daemon import textfile
from agent.daemon.control import ControlServer, Peer, Reply, ReportRequest, socket_path
from agent.daemon.lifecycle import RunMarker
from agent.daemon.sdnotify import Notifier, watchdog_interval_s
from agent.faults.engine import FaultEngine
from agent.faults.policy import CapturePolicy
from agent.faults.recorder import FlightRecorder
from agent.monitors import MonitorContext, build_monitors, load_all
from agent.monitors.network import subscribe_connectivity
from agent.monitors.scheduler import Scheduler
from agent.monitors.watch import crash_watcher, log_tailer, trigger_watcher
from agent.spool.maildir import Spool, SpoolError, limits_from_config
from agent.upload.uploader import Uploader

log = structlog.get_logger(__name__)

STUCK_AFTER_S = 45.0  # a loop without progress this long is stuck: stop pinging WATCHDOG
STATUS_EVERY_S = 5.0
TRIM_EVERY_S = 60.0  # malloc_trim: freed heap back to the OS
MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # glibc mallopt parameter
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, kept (see fix_mmap_threshold)
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
PART_BACKOFF_MAX_S = 60.0
SELFTEST_TIMEOUT_S = 120.0  # the `selftest` command's child
COMMAND_LOG_MAX_BYTES = 16 * 1024 * 1024  # the `logs` command reads at most this much


def status_path(cfg: Config) -> Path:
    """Where the running daemon publishes its state (read by `posagent status`)."""
    return Path(cfg.roots.run) / "status.json"


@dataclass
class Part:
    """A supervised loop: restarted with backoff when it raises, progress tracked."""

    name: str
    body: Callable[[Part], None]
    stop: threading.Event
    progress: float = field(default_factory=time.monotonic)
    failures: int = 0
    last_error: str = ""
    thread: threading.Thread | None = None

    def beat(self) -> None:
        """Record progress (called by the loop at least every few seconds)."""
        self.progress = time.monotonic()

    def start(self, on_failure: Callable[[Part, Exception], None]) -> None:
        def runner() -> None:
            delay = 1.0
            while not self.stop.is_set():
                try:
                    self.body(self)
                    return
                except Exception as e:  # supervise: one failing part never takes the daemon down
                    self.failures += 1
                    self.last_error = f"{type(e).__name__}: {e}"
                    log.error(
                        "part_failed", part=self.name, error=self.last_error, failures=self.failures
                    )
                    on_failure(self, e)
                    if self.stop.wait(delay):
                        return
                    delay = min(PART_BACKOFF_MAX_S, delay * 2)
                    self.beat()

        self.thread = threading.Thread(target=runner, name=self.name, daemon=True)
        self.thread.start()


def _log_event(ev: FaultEvent) -> None:
    """The log line of a raised or cleared fault (what operators and the scenarios read)."""
    log.warning(
        "fault_" + ev.state.value,
        key=ev.key,
        subject=ev.subject,
        severity=ev.severity.value,
        summary=ev.summary,
    )


class Agent:
    """Everything that runs for one config; rebuilt on SIGHUP."""

    def __init__(self, cfg: Config, request_reload: Callable[[], None] | None = None):

        self.cfg = cfg
        state = Path(cfg.agent.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        Path(cfg.roots.run).mkdir(parents=True, exist_ok=True)
        self.stop_event = threading.Event()
        self.spool = Spool(state, limits_from_config(cfg.spool), cfg.fs_roots()).open()
        self.key = load_key(cfg.bundle.hmac_key_file, create=True)
        self.finish = finisher(cfg)  # signs and seals in a child: no crypto in the daemon
        self.redactor = redactor_for(cfg)
        self.engine = FaultEngine(cfg)
        self._restore_engine(state / "faults.json")
        self.policy = CapturePolicy(cfg.capture, state / "policy.json")
        self.recorder = FlightRecorder(
            state / "recorder.json",
            cfg.capture.timeline_minutes * 60,
            journal_interval_s=cfg.capture.journal_interval_s,
        )
        self.recorder.load()
        if self.recorder.loaded_journal_rows:
            self.recorder.compact()  # one file again, a torn journal tail healed
        self.readings: queue.Queue[Reading] = queue.Queue(maxsize=10_000)
        self.events: queue.Queue[FaultEvent] = queue.Queue(maxsize=1_000)
        self.last: dict[str, Reading] = {}
        self.marker = RunMarker(state, cfg.fs_roots().proc)
        load_all()
        self.ctx = MonitorContext.from_config(cfg)
        self.monitors = build_monitors(cfg, self.ctx)
        self.scheduler = Scheduler(self.monitors, self._put_reading)
        self.uploader = Uploader(cfg, self.spool, on_condition=self._condition)
        screen_fn = self._screen_fn(ScreenShot)
        self.capturer = Capturer(
            cfg,
            self.spool,
            self.key,
            self.redactor,
            probes=build_probes(cfg, self.ctx, lambda: dict(self.last)),
            screen=screen_fn,
            timeline=self.recorder.snapshot,
            clock_synced=self._clock_synced,
            finish=self.finish,
        )
        self.parts: list[Part] = []
        self.watchers: list[Any] = []
        self.control: ControlServer | None = None
        self._capture_lock = threading.Lock()  # the capture worker and the control socket
        self._unsubscribe: Callable[[], None] = lambda: None
        self.started_at = time.time()
        self.captures = 0
        self.suppressed = 0  # events the policy did not capture, since start
        self.capture_failures = 0
        self.last_capture: dict[str, Any] = {}
        # the two-way channel (docs/CHANNEL.md): only with an endpoint to speak to
        self.channel: Channel | None = None
        if cfg.upload.endpoint:
            self.channel = Channel(
                cfg,
                summary=self._channel_summary,
                run_command=self.run_command,
                on_layers_changed=request_reload or (lambda: os.kill(os.getpid(), signal.SIGHUP)),
            )

    # ------------------------------------------------------------------ wiring helpers

    def _screen_fn(self, shot_type: Any) -> Callable[[], Any] | None:
        """The capture stage's screen step: in a child process when the config is a file."""
        if self.cfg.screen.backend == "none":
            return None

        def shoot() -> Any:
            if Path(self.cfg.source).is_file():
                res = capture_in_child(self.cfg)  # keeps Pillow out of the daemon
            else:
                res = capture_screen(
                    self.cfg.screen, self.cfg.agent.target, self.ctx.shell, self.ctx.roots
                )
            return shot_type(res.png, res.status)

        return shoot

    def _clock_synced(self) -> bool | None:
        r = self.last.get("system")
        v = r.values.get("clock_synced") if r else None
        return v if isinstance(v, bool) else None

    def _put_reading(self, r: Reading) -> None:
        try:
            self.readings.put_nowait(r)
        except queue.Full:
            log.warning("reading_dropped", source=r.source, reason="queue full")

    def _emit(self, events: list[FaultEvent]) -> None:
        for ev in events:
            _log_event(ev)
            try:
                self.events.put_nowait(ev)
            except queue.Full:
                log.error("fault_event_dropped", key=ev.key, reason="queue full")

    def _condition(self, key: str, bad: bool, summary: str = "") -> None:
        self._emit(self.engine.set_condition(key, "", bad, summary))

    def _restore_engine(self, path: Path) -> None:
        try:
            self.engine.restore(json.loads(path.read_text()))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            log.warning("fault_state_unreadable", path=str(path), error=str(e))

    # ------------------------------------------------------------------ loops

    def _engine_loop(self, part: Part) -> None:
        persist_every = self.cfg.capture.persist_interval_s
        next_persist = time.monotonic() + persist_every
        next_housekeep = time.monotonic() + 60.0
        while not self.stop_event.is_set():
            part.beat()
            try:
                r = self.readings.get(timeout=min(1.0, self.recorder.due_in()))
            except queue.Empty:
                r = None
            if r is not None:
                self.last[r.source] = r
                if r.ok:
                    self.recorder.add(r)
                self._emit(self.engine.feed(r))
            self._emit(self.engine.tick())
            self.recorder.tick()  # journal every journal_interval_s, compaction once a window
            if time.monotonic() >= next_persist:
                self.persist()
                next_persist = time.monotonic() + persist_every
            if time.monotonic() >= next_housekeep:
                self.spool.housekeep()  # ages and retention: hourly, it lists every bundle
                next_housekeep = time.monotonic() + 3600.0

    def persist(self) -> None:
        """Flight recorder journal, fault state, policy state, run marker: every persist
        interval and at stop."""
        self.recorder.flush()
        state = Path(self.cfg.agent.state_dir)
        try:
            atomic_write(
                state / "faults.json", json.dumps(self.engine.snapshot()).encode(), durable=False
            )
            self.marker.touch()
        except OSError as e:
            log.error("state_persist_failed", error=str(e))
        self.policy.save()

    def _capture_loop(self, part: Part) -> None:
        while not self.stop_event.is_set():
            part.beat()
            try:
                ev = self.events.get(timeout=1.0)
            except queue.Empty:
                continue
            self.capture_event(ev)

    def capture_event(
        self,
        ev: FaultEvent,
        trigger: Trigger | None = None,
        extra_entries: tuple[Entry, ...] = (),
    ) -> CaptureResult | str:
        """Policy, then capture; a failure to capture is logged and counted, never raised.

        Returns the captured bundle, or why there is none. `trigger` replaces the one
        built from the event (a report from the control socket: `Trigger.manual`)."""

        d = self.policy.decide(ev)  # manual reports have their own bucket there
        if not d.capture:
            self.suppressed += 1
            log.info("capture_suppressed", key=ev.key, subject=ev.subject, reason=d.reason)
            return f"suppressed: {d.reason}"
        if trigger is None:
            trigger = Trigger.of_event(ev, d.suppressed)
        # the unclean-shutdown bundle: the window before the cut, however long the outage
        unclean = ev.key == "power.unclean_shutdown"
        timeline = self.recorder.previous() if unclean else None
        try:
            with self._capture_lock:
                res = self.capturer.capture(
                    trigger,
                    keep=d.keep,
                    with_screen=d.with_screen,
                    timeline=timeline,
                    extra_entries=extra_entries,
                )
        except (SpoolError, OSError) as e:
            self.capture_failures += 1
            log.error("capture_failed", key=ev.key, error=str(e), captured=False)
            return f"not captured: {e}"
        if unclean:
            self.recorder.forget_previous()
        self.captures += 1
        self.last_capture = {"bundle_id": res.bundle_id, "key": ev.key, "at": time.time()}
        self.uploader.wake()
        trim_heap()
        return res

    def _on_control_report(self, req: ReportRequest, peer: Peer) -> Reply:
        """`posagent report` through the control socket: a manual.report bundle captured
        like a fault bundle (screenshot, timeline, every probe), the policy's limits applied."""
        summary = "manual report (posagent report)"
        ev = self.engine.event(
            "manual.report",
            severity=req.severity,
            summary=summary,
            values=self.redactor.obj({"note": req.note, "contact": req.contact, "uid": peer.uid}),
        )
        if ev is None:
            return Reply(False, error="manual.report is disabled in the config")
        _log_event(ev)
        trigger = Trigger.manual(req.note, req.contact, ev.severity, summary)
        res = self.capture_event(ev, trigger)
        if isinstance(res, str):
            return Reply(False, error=res)
        return Reply(True, bundle_id=res.bundle_id, path=str(res.path))

    # ------------------------------------------------------------------ the channel

    def _channel_summary(self) -> dict[str, Any]:
        """The check-in's health summary from this daemon's own state."""
        return build_summary(
            dict(self.last), self.engine.active(), self.spool.stats(), self.cfg.digest()
        )

    def run_command(self, cmd: Command) -> tuple[str, str]:
        """A collector command that needs the daemon: capture, selftest, logs (already
        checked by agent/channel/commands.py). Returns (done | refused | failed, detail)."""
        if cmd.kind == "capture":
            sc = self.cfg.screen
            verdict = check_sensitive(sc, self.cfg.agent.target, self.ctx.shell, self.ctx.roots)
            if verdict.sensitive:  # the privacy rules: no bundle of a PIN screen on command
                log.info("command_capture_refused", reason=verdict.reason, command_id=cmd.id)
                return "refused", "sensitive window"
            return self._command_bundle(cmd, str(cmd.args.get("note", "")), ())
        if cmd.kind == "selftest":
            return self._command_selftest(cmd)
        if cmd.kind == "logs":
            name = str(cmd.args["name"])
            path = self.cfg.upload.command_logs[name]
            try:
                data = read_regular(path, COMMAND_LOG_MAX_BYTES)
            except OSError as e:
                return "failed", f"cannot read {path}: {e.strerror or e}"
            entry = Entry(f"diagnostics/log-{name}.txt", data, "text/plain")
            return self._command_bundle(cmd, f"log {name} ({path})", (entry,))
        return "refused", f"kind {cmd.kind} is not run by the daemon"

    def _command_bundle(
        self, cmd: Command, note: str, entries: tuple[Entry, ...], verdict: str = ""
    ) -> tuple[str, str]:
        summary = f"{cmd.kind} requested by the collector"
        ev = self.engine.event(
            "manual.report",
            summary=summary,
            values=self.redactor.obj({"note": note, "command_id": cmd.id}),
        )
        if ev is None:
            return "refused", "manual.report is disabled in the config"
        _log_event(ev)
        trigger = Trigger.manual(note, f"collector command {cmd.id}", ev.severity, summary)
        res = self.capture_event(ev, trigger, entries)
        if isinstance(res, str):
            return ("refused" if res.startswith("suppressed") else "failed"), res
        return "done", (f"{verdict}; " if verdict else "") + f"bundle {res.bundle_id}"

    def _command_selftest(self, cmd: Command) -> tuple[str, str]:
        """`posagent selftest --json` in a child (the commands are not the daemon's to import)."""
        argv = [sys.executable, "-m", "agent.commands.main", "selftest", "--json"]
        argv += ["--config", self.cfg.source]
        try:
            p = subprocess.run(argv, capture_output=True, timeout=SELFTEST_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return "failed", f"selftest did not finish: {e}"
        out = p.stdout.decode("utf-8", "replace")
        try:
            doc = json.loads(out)
            bad = [f"{d['device']} {d['state']}" for d in doc["devices"] if d["state"] != "ok"]
            verdict = "selftest ok" if doc["ok"] else "selftest: " + ", ".join(bad)
        except (ValueError, KeyError, TypeError):
            err = p.stderr.decode("utf-8", "replace").strip().splitlines()
            verdict = f"selftest exited {p.returncode}" + (f": {err[-1]}" if err else "")
        report = out + ("\n--- stderr ---\n" + p.stderr.decode("utf-8", "replace"))
        entry = Entry("diagnostics/selftest.txt", report.encode(), "text/plain")
        status, detail = self._command_bundle(cmd, verdict, (entry,), verdict)
        return status, detail

    # ------------------------------------------------------------------ lifecycle

    def start(self, previous_unclean: Any = None) -> None:
        """Start every part; fast: nothing here scans the spool."""

        self.marker.start()
        # connectivity back (the network monitor's tracker) resets backoff and drains at once
        self._unsubscribe = subscribe_connectivity(self.uploader.connectivity_changed)
        self.scheduler.start()
        self.uploader.start()
        for name, body in (("engine", self._engine_loop), ("capture", self._capture_loop)):
            p = Part(name, body, self.stop_event)
            p.start(self._part_failed)
            self.parts.append(p)
        self._start_watchers()
        self._start_control()
        if self.channel is not None:
            self.channel.start()
        if previous_unclean is None:
            self.recorder.forget_previous()
        else:
            what = (
                "power loss or reboot" if previous_unclean.rebooted else "agent killed or crashed"
            )
            ev = self.engine.event(
                "power.unclean_shutdown",
                summary=f"previous run ended without a clean stop ({what})",
                values={
                    "rebooted": previous_unclean.rebooted,
                    "previous_pid": previous_unclean.pid,
                    "last_alive_at": previous_unclean.last_alive_at,
                },
            )
            if ev is not None:
                self._emit([ev])

    def _start_control(self) -> None:
        try:
            self.control = ControlServer(
                socket_path(self.cfg.roots.run), self._on_control_report
            ).open()
        except OSError as e:  # `posagent report` then captures standalone
            log.error(
                "control_socket_failed", path=str(socket_path(self.cfg.roots.run)), error=str(e)
            )
            return
        server = self.control
        p = Part("control", lambda part: server.serve(part.beat), self.stop_event)
        p.start(self._part_failed)
        self.parts.append(p)

    def _start_watchers(self) -> None:

        candidates = [
            crash_watcher(self.cfg, self._on_crash_file),
            log_tailer(self.cfg, self._on_log_match),
            trigger_watcher(self.cfg, self._on_trigger),
        ]
        for w in candidates:
            if w is None:
                continue
            try:
                w.start()
            except Exception as e:  # a missing dir must not stop the daemon
                log.error("watcher_start_failed", watcher=type(w).__name__, error=str(e))
                continue
            self.watchers.append(w)

    def _one_shot(self, key: str, subject: str, summary: str, values: dict[str, Any]) -> None:
        ev = self.engine.event(
            key,
            subject=subject,
            summary=self.redactor.text(summary),
            values=self.redactor.obj(values),
        )
        if ev is not None:
            self._emit([ev])

    def _on_crash_file(self, key: str, path: Path) -> None:
        self._one_shot(key, path.name, f"{key.split('.')[1]} file {path}", {"path": str(path)})

    def _on_log_match(self, path: Path, line: str) -> None:
        self._one_shot(
            "app.log_error", path.name, f"log error in {path.name}: {line[:200]}", {"line": line}
        )

    def _on_trigger(self, report: Any) -> None:
        """A trigger file: captured here, before the watcher removes the file, so a power cut
        between the two loses nothing (the file is read again at the next start). A capture
        that fails raises: the watcher keeps the file (renamed .failed)."""
        summary = "manual report (trigger file)"
        ev = self.engine.event(
            "manual.report",
            summary=summary,
            values=self.redactor.obj(
                {"note": report.note, "contact": report.contact, "file": report.file_name}
            ),
        )
        if ev is None:
            return  # manual.report disabled in the config
        _log_event(ev)
        trigger = Trigger.manual(report.note, report.contact, ev.severity, summary)
        res = self.capture_event(ev, trigger)
        if isinstance(res, str) and res.startswith("not captured"):
            raise OSError(res)

    def _part_failed(self, part: Part, error: Exception) -> None:
        log.error("agent_part_restarting", part=part.name, failures=part.failures)
        if part.failures == 3:  # keeps failing: a fault of the agent itself, with a bundle
            ev = self.engine.event(
                "agent.monitor_failed",
                subject=part.name,
                summary=f"agent part {part.name} keeps failing: {part.last_error}",
                values={"part": part.name, "failures": part.failures, "error": part.last_error},
            )
            if ev is not None:
                self._emit([ev])

    def stop(self, timeout_s: float = 8.0) -> None:
        """Stop monitors first, finish the bundle being written, persist state."""
        deadline = time.monotonic() + timeout_s
        self._unsubscribe()
        self.scheduler.stop(timeout_s=1.0)
        if self.control is not None:
            self.control.close()
        for w in self.watchers:
            try:
                w.stop()
            except Exception as e:
                log.warning("watcher_stop_failed", error=str(e))
        self.stop_event.set()
        for p in self.parts:
            if p.thread is not None:
                p.thread.join(max(0.1, deadline - time.monotonic() - 2.0))
        if self.channel is not None:
            self.channel.stop(max(0.1, min(3.0, deadline - time.monotonic() - 0.5)))
        self.uploader.stop(max(0.1, min(3.0, deadline - time.monotonic() - 0.5)))
        self.persist()
        self.recorder.close()
        self.capturer.close()

    def progress(self) -> dict[str, float]:
        """Last progress (monotonic) of every loop, for the watchdog."""
        out = {p.name: p.progress for p in self.parts}
        sched = self.scheduler.last_progress()
        if "scheduler" in sched:
            out["scheduler"] = sched["scheduler"]
        out["uploader"] = self.uploader.last_progress()
        if self.channel is not None:
            out["channel"] = self.channel.last_progress()
        return out

    def status(self) -> dict[str, Any]:
        """The status document `posagent status` shows."""
        monitors = []
        for st in self.scheduler.stats():
            monitors.append(
                {
                    "name": st.name,
                    "interval_s": st.interval_s,
                    "polls": st.polls,
                    "failures": st.failures,
                    "timeouts": st.timeouts,
                }
            )
        readings = {
            src: {
                "ok": r.ok,
                "ts": round(r.ts, 1),
                "values": r.values,
                **({"error": r.error} if r.error else {}),
            }
            for src, r in sorted(self.last.items())
        }
        return {
            "version": __version__,
            "pid": os.getpid(),
            "device_id": self.cfg.agent.device_id,
            "started_at": self.started_at,
            "updated_at": time.time(),
            "monitors": monitors,
            "readings": self.redactor.obj(readings),
            "active_faults": [
                {
                    "key": f.key,
                    "subject": f.subject,
                    "severity": f.severity.value,
                    "summary": f.summary,
                    "raised_at": f.raised_at,
                }
                for f in self.engine.active()
            ],
            "captures": {
                "count": self.captures,
                "failures": self.capture_failures,
                "suppressed": self.suppressed,
                "last": self.last_capture,
            },
            "queue": self.spool.stats(),
            "evictions": dict(self.spool.evicted_total),
            "upload": self.uploader.status(),
            "channel": self.channel.status() if self.channel is not None else None,
            "parts": {
                p.name: {"failures": p.failures, "last_error": p.last_error} for p in self.parts
            },
        }


def _glibc() -> Any:
    """glibc through ctypes, or None (musl, bionic, macOS: the heap calls become no-ops)."""
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL("libc.so.6")
            _libc = lib if hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt") else False
        except OSError:
            _libc = False
    return _libc or None


def limit_arenas(count: int = MALLOC_ARENAS) -> None:
    """Cap glibc's malloc arenas (mallopt M_ARENA_MAX).

    glibc gives threads their own arenas (up to 8 per core) and seldom hands
    their free pages back; the daemon's short-lived threads (DNS lookups,
    probes, collectors) then creep RSS up over hours. Two arenas are plenty
    for a daemon that is idle most of the time.
    """
    lib = _glibc()
    if lib is not None:
        lib.mallopt(M_ARENA_MAX, count)


def fix_mmap_threshold(size: int = MMAP_THRESHOLD) -> None:
    """Keep glibc's mmap threshold at `size` (mallopt M_MMAP_THRESHOLD).

    By default glibc raises the threshold to the size of every mmapped block freed (up to
    32 MiB), so after a capture's first large buffers (a screenshot, a bundle) the next
    ones come from the heap, where they leave holes that neither free nor malloc_trim give
    back whole. Fixed, a block of 128 KiB or more is always its own mapping, returned to
    the OS when freed: an mmap and a munmap per large buffer, a few per capture. Measured
    on bench_channel_live's terminal with ten captures: 34.10 MiB at 10 minutes against
    35.45 for the same code with the default (docs/BENCHMARKS.md, "Two-way channel").
    """
    lib = _glibc()
    if lib is not None:
        lib.mallopt(M_MMAP_THRESHOLD, size)


def trim_heap() -> None:
    """Give freed heap back to the OS (glibc malloc_trim; no-op elsewhere).

    Called after every capture (a few MB of short-lived buffers) and every
    TRIM_EVERY_S; without it glibc keeps freed pages mapped and RSS ratchets up.
    """
    lib = _glibc()
    if lib is not None:
        lib.malloc_trim(0)


_libc: Any = None


class Daemon:
    """The process: signals, reloads, status file and systemd notifications."""

    def __init__(self, config_path: str | None, notifier: Notifier | None = None):
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.stuck_after_s = STUCK_AFTER_S
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals.put(signum)

    def request_reload(self) -> None:
        """Reload the config as on SIGHUP (the channel changed a layer of it)."""
        self._signals.put(signal.SIGHUP)

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code."""
        limit_arenas()  # before any thread starts
        fix_mmap_threshold()
        cfg = load_config(self.config_path)
        logmod.configure(cfg.agent.log_level, cfg.agent.log_format, redactor_for(cfg))
        for problem in require_safe_secret_files(cfg):  # ConfigError (78): others can change one
            log.warning("secret_file_readable_by_others", problem=str(problem))
        check_keys(cfg)  # ConfigError (78): a corrupt key, no recipient (in a child)
        if encryption_warning(cfg):
            log.warning("bundles_not_encrypted", detail=encryption_warning(cfg))
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, self._on_signal)
        for w in cfg.layer_warnings:
            log.warning("config_layer_not_applied", detail=w)
        marker = RunMarker(Path(cfg.agent.state_dir), cfg.fs_roots().proc)
        previous = marker.check_previous()
        agent = Agent(cfg, self.request_reload)
        agent.start(previous)
        self.notifier.ready(f"monitoring {len(agent.monitors)} devices")
        log.info(
            "agent_started",
            version=__version__,
            device_id=cfg.agent.device_id,
            monitors=len(agent.monitors),
        )
        wd = watchdog_interval_s()
        next_wd = 0.0
        next_status = 0.0
        next_trim = time.monotonic() + TRIM_EVERY_S
        while True:
            # asleep until a signal, a reload request or the next of its own deadlines
            due = min(next_status, next_trim, next_wd if wd is not None else next_trim)
            try:
                signum: int | None = self._signals.get(timeout=max(0.0, due - time.monotonic()))
            except queue.Empty:
                signum = None
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info("agent_stopping", signal=signal.Signals(signum).name)
                self.notifier.stopping()
                agent.stop()
                agent.marker.clean_stop()
                self._write_status(agent, stopping=True)
                log.info("agent_stopped", clean=True)
                return 0
            if signum == signal.SIGHUP:
                agent = self._reload(agent)
            now = time.monotonic()
            if now >= next_status:
                self._write_status(agent)
                next_status = now + STATUS_EVERY_S
            if now >= next_trim:
                trim_heap()
                next_trim = now + TRIM_EVERY_S
            if wd is not None and now >= next_wd:
                self.watchdog_tick(agent, now)
                next_wd = now + min(wd, 5.0)

    def watchdog_tick(self, agent: Agent, now: float) -> bool:
        """Ping WATCHDOG=1 only if every loop made progress within stuck_after_s."""
        stuck = [n for n, t in agent.progress().items() if now - t > self.stuck_after_s]
        if stuck:
            log.error("watchdog_withheld", stuck=stuck)
            return False
        return self.notifier.watchdog()

    def _reload(self, agent: Agent) -> Agent:
        self.notifier.reloading()
        try:
            cfg = load_config(self.config_path)
        except ConfigError as e:
            log.error("config_reload_rejected", error=str(e), kept="previous config")
            self.notifier.ready("config reload rejected; running with the previous config")
            return agent
        try:
            check_keys(cfg)
        except ConfigError as e:
            log.error("config_reload_rejected", error=str(e), kept="previous config")
            self.notifier.ready("config reload rejected; running with the previous config")
            return agent
        log.info("config_reloading", source=cfg.source)
        for w in cfg.layer_warnings:
            log.warning("config_layer_not_applied", detail=w)
        agent.stop()
        new = Agent(cfg, self.request_reload)
        new.start()
        self.notifier.ready(f"reloaded; monitoring {len(new.monitors)} devices")
        log.info("config_reloaded", monitors=len(new.monitors))
        return new

    def _write_status(self, agent: Agent, stopping: bool = False) -> None:
        try:
            doc = agent.status()
            doc["state"] = "stopped" if stopping else "running"
            atomic_write(
                status_path(agent.cfg), json.dumps(doc, default=str).encode(), durable=False
            )
            summary = (
                f"{len(doc['active_faults'])} active faults, "
                f"{doc['queue']['new']['count']} queued, {doc['captures']['count']} captured"
            )
            self.notifier.status(summary)
            if agent.cfg.agent.metrics_textfile:
                textfile.write(agent.cfg.agent.metrics_textfile, doc, up=not stopping)
        except Exception as e:  # status is best effort: it must never stop the daemon
            log.warning("status_write_failed", error=f"{type(e).__name__}: {e}")
