"""`posagent status`: monitors, active faults, queue and last upload, from the running daemon."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from agent.bundle.finish import encryption_warning
from agent.commands.common import load, open_spool
from agent.commands.output import emit_json, err, fmt_age, out, when
from agent.core.exits import EX_OK, EX_UNAVAILABLE
from agent.daemon.runner import status_path


def run(args: argparse.Namespace) -> int:
    """Print the daemon's status; exit 69 when it is not running."""
    cfg = load(args)
    if encryption_warning(cfg):
        err(f"warning: {encryption_warning(cfg)}")
    path = status_path(cfg)
    doc: dict[str, Any] | None = None
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        doc = None
    except (OSError, ValueError) as e:
        err(f"status file unreadable: {path}: {e}")
    running = False
    if doc is not None:
        age = time.time() - float(doc.get("updated_at", 0))
        running = doc.get("state") == "running" and age < 30 and _pid_alive(int(doc.get("pid", 0)))
    if doc is None:
        doc = {"state": "not running", "queue": open_spool(cfg).stats()}
    elif not running:
        doc["state"] = "not running"
        doc["queue"] = open_spool(cfg).stats()
    if args.json:
        emit_json(doc)
        return EX_OK if running else EX_UNAVAILABLE
    out(f"posagent {doc.get('version', '')}  device {cfg.agent.device_id}  state {doc['state']}")
    q = doc.get("queue") or {}
    new = q.get("new", {})
    out(
        f"queue      {new.get('count', 0)} queued ({new.get('bytes', 0)} bytes), "
        f"oldest {fmt_age(q.get('oldest_queued_age_s'))}, "
        f"failed {q.get('failed', {}).get('count', 0)}, sent {q.get('sent', {}).get('count', 0)}"
    )
    up = doc.get("upload") or {}
    if up:
        ok_at, fail_at = up.get("last_success_at"), up.get("last_failure_at")
        out(f"upload     {up.get('state', '-')} to {up.get('endpoint') or '(no endpoint)'}")
        out(f"           last success {when(ok_at)} {up.get('last_success_bundle') or ''}".rstrip())
        out(
            f"           last failure {when(fail_at)} {up.get('last_failure_reason') or ''}".rstrip()
        )
    faults = doc.get("active_faults") or []
    out(f"faults     {len(faults)} active")
    for f in faults:
        subj = f"@{f['subject']}" if f.get("subject") else ""
        out(f"  {f['severity']:8} {f['key']}{subj}  {f.get('summary', '')}")
    mons = doc.get("monitors") or []
    if mons:
        out("monitors")
        for m in mons:
            out(
                f"  {m['name']:28} polls {m['polls']:>6}  failures {m['failures']:>4}  timeouts {m['timeouts']:>4}"
            )
    return EX_OK if running else EX_UNAVAILABLE


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
