"""`posagent report --note T`: a manual problem report, captured now."""

from __future__ import annotations

import argparse

from agent.bundle.format import BundleError, load_key
from agent.bundle.trigger import Trigger
from agent.capture.capturer import Capturer
from agent.capture.probes import Probe, system_snapshot
from agent.commands.common import load, open_spool, setup_logging
from agent.commands.output import emit_json, err, out
from agent.core.exits import EX_CANTCREAT, EX_CONFIG, EX_IOERR, EX_OK
from agent.core.model import Severity
from agent.core.redact import redactor_for
from agent.spool.maildir import SpoolError


def run(args: argparse.Namespace) -> int:
    """Capture a manual.report bundle into the spool; its id and path on stdout."""
    cfg = load(args)
    setup_logging(cfg)
    try:
        key = load_key(cfg.bundle.hmac_key_file, create=True)
    except (BundleError, OSError) as e:
        err(f"posagent report: not captured: {e}")
        return EX_CONFIG
    try:
        spool = open_spool(cfg)
    except OSError as e:
        err(f"posagent report: not captured: spool unusable: {e.strerror or e}")
        return EX_CANTCREAT
    capt = Capturer(
        cfg,
        spool,
        key,
        redactor_for(cfg),
        probes=[Probe("system", lambda: system_snapshot(cfg.fs_roots(), cfg.system.disk_paths))],
    )
    trigger = Trigger.manual(args.note, args.contact or "", Severity(args.severity))
    try:
        res = capt.capture(trigger, with_screen=False)
    except SpoolError as e:
        err(f"posagent report: {e}")
        return EX_IOERR
    finally:
        capt.close()
    if args.json:
        emit_json({"bundle_id": res.bundle_id, "path": str(res.path)})
    else:
        out(f"captured {res.bundle_id}")
        out(f"path {res.path}")
    return EX_OK
