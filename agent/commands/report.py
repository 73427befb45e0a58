"""`posagent report --note T`: a manual problem report, captured now.

With a daemon running, the request goes to it over its control socket
(`agent/daemon/control.py`, which says why a socket): the daemon captures the
manual.report bundle like a fault bundle — screenshot through the privacy
pipeline, the flight recorder's timeline, every diagnostics probe — under its
own capture limits, and the file belongs to the daemon's user.

With no daemon (no socket, or a stale one), the CLI captures standalone, as
close to the daemon as it can: the screenshot in the screenshot child
(`agent.capture.screen_worker`, through `agent.capture.privacy`), the persisted
flight recorder (the window before the daemon stopped), every probe. When run
as root it writes the spool files as the spool's owner (the daemon's user), so
the daemon can read, upload and evict them; otherwise it gives the bundle the
spool's group. Either way it says which happened.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.bundle.finish import check_keys, finisher
from agent.bundle.format import BundleError, load_key
from agent.bundle.trigger import Trigger
from agent.capture.capturer import Capturer, CaptureResult, ScreenShot
from agent.capture.privacy import capture_screen
from agent.capture.probes import build_probes
from agent.capture.screen_worker import capture_in_child
from agent.commands.common import load, setup_logging
from agent.commands.output import emit_json, err, out
from agent.core.config import Config, ConfigError
from agent.core.exits import EX_CANTCREAT, EX_CONFIG, EX_IOERR, EX_OK, EX_TEMPFAIL
from agent.core.model import Reading, Severity
from agent.core.redact import redactor_for
from agent.daemon.control import NoAnswer, NoDaemon, ReportRequest, send_report, socket_path
from agent.faults.recorder import FlightRecorder
from agent.monitors import MonitorContext
from agent.spool.maildir import Spool, SpoolError, limits_from_config

SUMMARY = "manual report (posagent report)"


def answer_timeout_s(cfg: Config) -> float:
    """How long to wait for the daemon: a capture in progress, then ours, with margin."""
    return 2 * cfg.capture.total_budget_s + 20.0


def run(args: argparse.Namespace) -> int:
    """Hand the report to the running daemon, or capture it standalone; say which."""
    cfg = load(args)
    setup_logging(cfg)
    req = ReportRequest(args.note, args.contact or "", Severity(args.severity))
    sock = socket_path(cfg.roots.run)
    try:
        reply = send_report(sock, req, answer_timeout_s(cfg))
    except NoDaemon as e:
        why = "no daemon running"
        if e.errno in (1, 13):  # EPERM, EACCES: a daemon may run, but not for us to ask
            why = f"daemon socket not usable ({e.strerror})"
        return standalone(cfg, args, req, why)
    except NoAnswer as e:  # better a duplicate than a lost report
        return standalone(cfg, args, req, f"the running daemon did not answer ({e})")
    if not reply.ok:
        err(f"posagent report: the running daemon did not capture it: {reply.error}")
        return EX_TEMPFAIL
    if args.json:
        emit_json({"bundle_id": reply.bundle_id, "path": reply.path, "via": "daemon"})
    else:
        out(f"handed to the running daemon: bundle {reply.bundle_id}")
        out(f"path {reply.path}")
    return EX_OK


# --------------------------------------------------------------------------- standalone


def spool_owner(state_dir: Path) -> tuple[int, int]:
    """Owner and group of the spool dir (or of the nearest existing parent)."""
    p = state_dir / "spool"
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.stat(p)
    return st.st_uid, st.st_gid


@contextlib.contextmanager
def acting_as(owner: tuple[int, int] | None) -> Iterator[None]:
    """Root only: files created inside belong to owner (effective uid/gid switched back after)."""
    if owner is None:
        yield
        return
    os.setegid(owner[1])
    try:
        os.seteuid(owner[0])
        try:
            yield
        finally:
            os.seteuid(0)
    finally:
        os.setegid(0)


class OwnedSpool(Spool):
    """A spool whose files are written as `owner` (root running a report for the daemon)."""

    def __init__(self, *a: Any, owner: tuple[int, int] | None = None, **kw: Any):
        super().__init__(*a, **kw)
        self.owner = owner

    def enqueue(self, bundle_id: str, data: bytes, rank: int, *, keep: bool = False) -> Path:
        with acting_as(self.owner):
            return super().enqueue(bundle_id, data, rank, keep=keep)

    def ack_evictions(self, reported: dict[str, int]) -> None:
        with acting_as(self.owner):
            super().ack_evictions(reported)


def _last_readings(rows: list[dict[str, Any]]) -> dict[str, Reading]:
    """The newest persisted reading per source (the probes' view of 'what the monitors saw')."""
    out: dict[str, Reading] = {}
    for r in rows:
        try:
            out[str(r["source"])] = Reading(
                str(r["source"]),
                dict(r.get("values") or {}),
                bool(r.get("ok", True)),
                str(r.get("error", "")),
                ts=float(r["ts"]),
            )
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _screen(cfg: Config, ctx: MonitorContext) -> ScreenShot:
    """The daemon's screen step: the privacy pipeline in the screenshot child."""
    if Path(cfg.source).is_file():
        res = capture_in_child(cfg)
    else:
        res = capture_screen(cfg.screen, cfg.agent.target, ctx.shell, ctx.roots)
    return ScreenShot(res.png, res.status)


def standalone(cfg: Config, args: argparse.Namespace, req: ReportRequest, why: str) -> int:
    """Capture the report in this process: screenshot, persisted timeline, every probe."""
    state = Path(cfg.agent.state_dir)
    owner: tuple[int, int] | None = None
    group = -1
    try:
        uid, gid = spool_owner(state)
    except OSError as e:
        err(f"posagent report: not captured: state dir unusable: {e.strerror or e}")
        return EX_CANTCREAT
    if os.geteuid() == 0 and (uid, gid) != (0, 0):
        owner = (uid, gid)
    elif gid != os.getegid():
        group = gid  # a member of the spool's group hands the bundle to it (the daemon's)
    key_path = Path(cfg.bundle.hmac_key_file)
    try:
        created = not key_path.exists()
        key = load_key(key_path, create=True)
        if created and owner is not None:
            os.chown(key_path, *owner)  # the daemon signs with it too
    except (BundleError, OSError) as e:
        err(f"posagent report: not captured: {e}")
        return EX_CONFIG
    try:
        signing_path = Path(cfg.bundle.signing_key_path(cfg.agent.state_dir))
        created = not signing_path.exists()
        check_keys(cfg)  # makes the signing key if absent; 78 when corrupt
        finish = finisher(cfg)
        if created and owner is not None:
            os.chown(signing_path, *owner)  # the daemon signs with it too
            if str(signing_path) == cfg.bundle.signing_key_home(cfg.agent.state_dir):
                os.chown(signing_path.parent, *owner)  # its home, <state_dir>/keys (0700)
    except (ConfigError, OSError) as e:
        err(f"posagent report: not captured: {e}")
        return EX_CONFIG
    try:
        spool = OwnedSpool(state, limits_from_config(cfg.spool), cfg.fs_roots(), owner=owner)
        if not (spool.root / "new").is_dir():
            with acting_as(owner):
                spool.open()  # a fresh layout; an existing one is the daemon's to recover
    except OSError as e:
        err(f"posagent report: not captured: spool unusable: {e.strerror or e}")
        return EX_CANTCREAT
    recorder = FlightRecorder(state / "recorder.json", cfg.capture.timeline_minutes * 60)
    recorder.load()  # read-only: the window before the daemon stopped
    timeline = recorder.previous()
    ctx = MonitorContext.from_config(cfg)
    last = _last_readings(timeline)
    capt = Capturer(
        cfg,
        spool,
        key,
        redactor_for(cfg),
        probes=build_probes(cfg, ctx, lambda: last),
        screen=(lambda: _screen(cfg, ctx)) if cfg.screen.backend != "none" else None,
        timeline=lambda: timeline,
        finish=finish,
    )
    trigger = Trigger.manual(req.note, req.contact, req.severity, SUMMARY)
    try:
        res: CaptureResult = capt.capture(trigger, keep=True)
    except (SpoolError, OSError) as e:
        err(f"posagent report: {e}")
        return EX_IOERR
    finally:
        capt.close()
    if group >= 0:
        with contextlib.suppress(OSError):  # not a member: the daemon's user owns the dir anyway
            os.chown(res.path, -1, group)
    if args.json:
        emit_json({"bundle_id": res.bundle_id, "path": str(res.path), "via": "standalone"})
    else:
        out(f"{why}: captured standalone: bundle {res.bundle_id}")
        out(f"path {res.path}")
    return EX_OK
