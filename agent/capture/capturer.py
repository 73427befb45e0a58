"""Capture: screenshot, diagnostics and timeline in parallel, sealed into the spool.

One entry point, `Capturer.capture(trigger)`, used by the daemon's capture
worker, `posagent report` and the trigger directory alike.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from agent import __version__
from agent.bundle.finish import Finisher, FinishError
from agent.bundle.format import DeviceInfo, Entry, json_entry, seal, text_entry
from agent.bundle.remedies import remedy_lines
from agent.bundle.trigger import Trigger, TriggerKind
from agent.capture.probes import Probe
from agent.core.config import Config
from agent.core.redact import Redactor
from agent.core.timefmt import rfc3339
from agent.spool.maildir import Spool, SpoolError

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ScreenShot:
    """What the screen stage produced: PNG bytes or None, and the manifest status."""

    png: bytes | None
    status: str  # captured | masked | skipped:<reason>


@dataclass
class CaptureResult:
    """A captured bundle: durable in spool/new when this exists."""

    bundle_id: str
    path: Path
    size_bytes: int
    manifest: dict[str, Any]
    duration_s: float
    probe_errors: dict[str, str] = field(default_factory=dict)


def device_info(cfg: Config) -> DeviceInfo:
    """The manifest `device` block from config."""
    return DeviceInfo(
        id=cfg.agent.device_id,
        site=cfg.agent.site,
        model=cfg.agent.model or platform.machine(),
        serial=cfg.agent.serial,
        platform="android" if cfg.agent.target in ("android", "adb") else "linux",
        target="adb" if cfg.agent.target == "adb" else "local",
    )


_KIND_WORDS = {
    TriggerKind.FAULT: "raised",
    TriggerKind.CLEARED: "cleared",
    TriggerKind.MANUAL: "reported from the terminal",
    TriggerKind.STARTUP: "found at start-up",
}


def render_report(
    cfg: Config,
    trigger: Trigger,
    screenshot: str,
    diagnostics: dict[str, Any],
    errors: dict[str, str],
    now: float,
) -> str:
    """report.txt: the page a person reads first. It opens with what happened, when,
    where and what to do (agent.bundle.remedies); the raw readings come after."""
    kind = trigger.kind
    lines = [
        "posagent report",
        "===============",
        "What happened",
        f"  {trigger.summary or trigger.key or kind.value}",
    ]
    if trigger.key:
        lines.append(
            f"  fault {trigger.key}, {trigger.severity.value}, {_KIND_WORDS.get(kind, kind.value)}"
        )
    if trigger.note:
        note = trigger.note.splitlines() or [""]
        lines += [f"  note:     {note[0]}", *(f"            {ln}" for ln in note[1:])]
    if trigger.contact:
        lines.append(f"  contact:  {trigger.contact}")
    lines.append("When")
    if trigger.raised_at:
        lines.append(f"  raised    {trigger.raised_at}")
    if trigger.cleared_at:
        lines.append(f"  cleared   {trigger.cleared_at}")
    if trigger.duration_s is not None:
        lines.append(f"  lasted    {trigger.duration_s} s")
    lines += [
        f"  reported  {rfc3339(now)}",
        "Where",
        f"  site {cfg.agent.site or '-'}, terminal {cfg.agent.device_id}",
        "What to do",
        *remedy_lines(trigger.key, cleared=kind == TriggerKind.CLEARED),
    ]
    lines += ["", "Details", "-------"]
    if trigger.suppressed:
        lines.append(f"Repeats suppressed since the last bundle: {trigger.suppressed}")
    lines.append(f"Screenshot: {screenshot}")
    sysd = diagnostics.get("system")
    if isinstance(sysd, dict):
        mem = sysd.get("memory", {})
        lines.append(
            f"System:     cpu {sysd.get('cpu_pct')} %, memory available "
            f"{mem.get('available_pct')} %, uptime {sysd.get('uptime_s')} s"
        )
    if trigger.readings:
        lines += ["", "What the agent saw (raw readings, newest last):"]
        for r in trigger.readings[-5:]:
            vals = ", ".join(f"{k}={v}" for k, v in (r.get("values") or {}).items())
            lines.append(f"  {r.get('source')}: {vals}")
    if trigger.tried:
        lines += ["", "What was tried:"] + [f"  - {t}" for t in trigger.tried]
    if errors:
        lines += ["", "Diagnostics not collected:"] + [f"  {k}: {v}" for k, v in errors.items()]
    lines.append("")
    return "\n".join(lines)


class Capturer:
    """Builds and spools bundles. Thread-safe: one capture at a time."""

    def __init__(
        self,
        cfg: Config,
        spool: Spool,
        key: bytes,
        redactor: Redactor,
        probes: Sequence[Probe] = (),
        screen: Callable[[], ScreenShot] | None = None,
        timeline: Callable[[], list[dict[str, Any]]] | None = None,
        clock_synced: Callable[[], bool | None] | None = None,
        finish: Finisher | None = None,
    ):
        self.cfg = cfg
        self.spool = spool
        self.key = key
        self.redactor = redactor
        self.probes = list(probes)
        self.screen = screen
        self.timeline = timeline
        self.clock_synced = clock_synced
        # agent.bundle.finish: Ed25519-signed, then sealed to [bundle] encrypt_to (in a child
        # started as a capture begins); closed with the capturer
        self.finish = finish
        self._pool = cf.ThreadPoolExecutor(max_workers=4, thread_name_prefix="collect")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.finish is not None:
            self.finish.close()

    def _run_probes(self, with_screen: bool) -> tuple[dict[str, Any], dict[str, str], ScreenShot]:
        budget = self.cfg.capture.total_budget_s
        start = time.monotonic()
        futures: dict[str, cf.Future[Any]] = {c.name: self._pool.submit(c.fn) for c in self.probes}
        shot_future = self._pool.submit(self.screen) if (with_screen and self.screen) else None
        results: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for c in self.probes:
            left = max(0.0, budget - (time.monotonic() - start))
            try:
                results[c.name] = futures[c.name].result(timeout=min(c.timeout_s, left))
            except cf.TimeoutError:
                errors[c.name] = f"timeout after {min(c.timeout_s, left):.1f} s"
                futures[c.name].cancel()
            except Exception as e:  # a probe must never hold the bundle back
                errors[c.name] = f"{type(e).__name__}: {e}"
        shot = ScreenShot(None, "skipped:disabled" if not with_screen else "skipped:no backend")
        if shot_future is not None:
            left = max(0.5, budget - (time.monotonic() - start))
            try:
                shot = shot_future.result(timeout=left)
            except cf.TimeoutError:
                shot = ScreenShot(None, "skipped:timeout")
            except Exception as e:
                shot = ScreenShot(None, f"skipped:{type(e).__name__}: {e}")
        return results, errors, shot

    def capture(
        self,
        trigger: Trigger,
        *,
        keep: bool = False,
        with_screen: bool = True,
        timeline: list[dict[str, Any]] | None = None,
        extra_entries: Sequence[Entry] = (),
    ) -> CaptureResult:
        """Collect, redact, seal and enqueue; raises SpoolError when not captured.

        `timeline` replaces the configured timeline source for this bundle (the
        unclean-shutdown bundle carries the window before the cut); `extra_entries`
        join the diagnostics (a collector command's selftest output or log file),
        each capped like a probe's output and redacted like every entry."""
        t0 = time.monotonic()
        now = time.time()
        if self.finish is not None:
            try:
                self.finish.prewarm()  # the sealing worker starts while the probes run
            except FinishError as e:  # told again, with its reason, when the bundle is due
                log.warning("seal_worker_not_started", error=str(e))
        results, errors, shot = self._run_probes(with_screen)
        entries: list[Entry] = []
        if shot.png is not None:
            entries.append(Entry("screenshot.png", shot.png, "image/png"))
        for name, value in results.items():
            if isinstance(value, str | bytes):
                text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
                entries.append(text_entry(f"diagnostics/{name}.txt", self._cap(text)))
            else:
                entries.append(self._cap_json(f"diagnostics/{name}.json", value))
        for added in extra_entries:
            text = added.data.decode("utf-8", "replace")
            entries.append(text_entry(added.name, self._cap(text)))
        if errors:
            entries.append(json_entry("diagnostics/errors.json", errors))
        if timeline is None and self.timeline is not None:
            timeline = self.timeline()
        if timeline is not None:
            entries.append(json_entry("timeline.json", {"readings": timeline}))
        report = render_report(self.cfg, trigger, shot.status, results, errors, now)
        entries.insert(0, text_entry("report.txt", report))
        evictions = self.spool.pending_evictions()
        extra: dict[str, Any] = {"spool": {"evicted": evictions}}
        sealed = seal(
            device=device_info(self.cfg),
            trigger=trigger.to_json(),
            entries=entries,
            key=self.key,
            redactor=self.redactor,
            screenshot=shot.status,
            agent_version=__version__,
            config_digest=self.cfg.digest(),
            clock_synced=self.clock_synced() if self.clock_synced else None,
            extra=extra,
            created_at=now,
            roots=self.cfg.fs_roots(),
        )
        data = sealed.data
        if self.finish is not None:
            try:
                data = self.finish(data, sealed.manifest, trigger.severity.rank)
            except FinishError as e:  # never enqueued in plaintext instead
                raise SpoolError(f"not signed or sealed: {e}") from None
        path = self.spool.enqueue(sealed.bundle_id, data, trigger.severity.rank, keep=keep)
        if evictions:
            self.spool.ack_evictions(evictions)
        dur = time.monotonic() - t0
        log.info(
            "capture_done",
            bundle_id=sealed.bundle_id,
            trigger=trigger.kind.value,
            key=trigger.key,
            screenshot=shot.status,
            duration_s=round(dur, 3),
        )
        return CaptureResult(sealed.bundle_id, path, len(data), sealed.manifest, dur, errors)

    def _cap(self, text: str) -> str:
        limit = self.cfg.bundle.max_entry_kib * 1024
        data = text.encode("utf-8")
        if len(data) <= limit:
            return text
        return data[-limit:].decode("utf-8", "ignore") + "\n[truncated: kept the last part]\n"

    def _cap_json(self, name: str, value: Any) -> Entry:
        entry = json_entry(name, value)
        limit = self.cfg.bundle.max_entry_kib * 1024
        if len(entry.data) <= limit:
            return entry
        text = json.dumps(value, default=str)[: limit - 100]
        return json_entry(name, {"truncated": True, "size_bytes": len(entry.data), "head": text})
