"""`posagent spool list|show|retry|purge`: the on-disk queue."""

from __future__ import annotations

import argparse
import time

from agent.bundle.format import BundleError, BundleReader
from agent.commands.bundle import summarize_manifest
from agent.commands.common import load, open_spool
from agent.commands.output import emit_json, err, fmt_age, out
from agent.core.exits import EX_DATAERR, EX_NOINPUT, EX_OK, EX_USAGE
from agent.spool.maildir import NotFound, RetryState


def run(args: argparse.Namespace) -> int:
    """Run one spool action."""
    cfg = load(args)
    spool = open_spool(cfg)
    if args.spool_cmd == "list":
        states = tuple(args.state) if args.state else ("new", "cur", "failed", "sent")
        rows = []
        now = time.time()
        waiting = spool.retry_ids()
        for s in states:
            for it in spool.items(s):
                rs = spool.retry_state(it.bundle_id) if it.bundle_id in waiting else RetryState()
                rows.append(
                    {
                        "bundle_id": it.bundle_id,
                        "state": s,
                        "severity": it.severity,
                        "size_bytes": it.size,
                        "age_s": round(now - it.created, 1) if it.created else None,
                        "attempts": rs.attempts,
                        "last_error": rs.last_error or spool.failure_reason(it)
                        if s != "sent"
                        else "",
                    }
                )
        rows.sort(key=lambda r: (r["state"], r["bundle_id"]))
        if args.json:
            emit_json(rows)
            return EX_OK
        out(f"{'BUNDLE':36}  {'STATE':6}  {'SEVERITY':8}  {'SIZE':>8}  {'AGE':>6}  TRIES  ERROR")
        for r in rows:
            out(
                f"{r['bundle_id']:36}  {r['state']:6}  {r['severity']:8}  {r['size_bytes']:>8}  "
                f"{fmt_age(r['age_s']):>6}  {r['attempts']:>5}  {r['last_error'][:60]}"
            )
        out(f"{len(rows)} bundle(s)")
        return EX_OK
    if args.spool_cmd == "show":
        try:
            it = spool.find(args.bundle_id)
        except NotFound as e:
            err(str(e))
            return EX_NOINPUT
        try:
            with BundleReader(it.path) as reader:
                m = reader.envelope() if reader.sealed else reader.manifest()
        except BundleError as e:
            err(f"{it.path}: {e}")
            return EX_DATAERR
        info = {
            "state": it.state,
            "path": str(it.path),
            "retry": spool.retry_state(it.bundle_id).__dict__,
        }
        if args.json:
            emit_json({**info, "manifest": m})
        else:
            out(f"state {it.state}  path {it.path}")
            out(summarize_manifest(m))
        return EX_OK
    if args.spool_cmd == "retry":
        try:
            it = spool.retry(args.bundle_id)
        except NotFound as e:
            err(str(e))
            return EX_NOINPUT
        out(f"queued {it.bundle_id} for upload now")
        return EX_OK
    if args.spool_cmd == "purge":
        targets: tuple[str, ...] = ()
        if args.all:
            targets = ("new", "failed", "sent")
        else:
            if args.failed:
                targets += ("failed",)
            if args.sent:
                targets += ("sent",)
        if not targets:
            err("purge: say what to purge: --failed, --sent or --all")
            return EX_USAGE
        n = spool.purge(targets)
        out(f"purged {n} bundle(s) from {', '.join(targets)}")
        return EX_OK
    return EX_USAGE
