"""`posagent`: the one command-line entry point (DESIGN §8).

Commands that read the config take --config (default: $POSAGENT_CONFIG, then
/etc/posagent/agent.toml). Exit codes follow sysexits.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EX_OK = 0
EX_FAIL = 1
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_CONFIG = 78

Handler = Callable[[argparse.Namespace], int]


def out(text: str = "") -> None:
    """Write a line of command output (the CLI's only output path)."""
    sys.stdout.write(text + "\n")


def err(text: str) -> None:
    """Write a line to stderr."""
    sys.stderr.write(text + "\n")


def emit_json(obj: Any) -> None:
    """Machine-readable output for --json."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------- helpers


def _load(args: argparse.Namespace) -> Any:
    from agent.config import load_config

    return load_config(getattr(args, "config", None))


def _setup_logging(cfg: Any, stream: Any = None) -> None:
    from agent import log

    log.configure(cfg.agent.log_level, cfg.agent.log_format, _redactor(cfg), stream or sys.stderr)


def _redactor(cfg: Any) -> Any:
    from agent.redact import Redactor

    allow = [*cfg.redaction.allow, cfg.agent.serial, cfg.agent.device_id]
    return Redactor(
        pan_mask=cfg.redaction.pan_mask, secrets=cfg.secrets(), allow=[a for a in allow if a]
    )


def _spool(cfg: Any) -> Any:
    from agent.spool import Spool, limits_from_config

    return Spool(cfg.agent.state_dir, limits_from_config(cfg.spool)).open()


def _key_for_reading(args: argparse.Namespace) -> bytes | None:
    """The device key for verify/show: --key-file, else the config's hmac_key_file."""
    from agent.bundle import load_key
    from agent.config import ConfigError, config_path, load_config

    if getattr(args, "key_file", None):
        return load_key(args.key_file)
    if getattr(args, "no_key", False):
        return None
    path = config_path(getattr(args, "config", None))
    if not path.exists():
        return None
    try:
        cfg = load_config(path)
    except ConfigError:
        return None
    try:
        return load_key(cfg.bundle.hmac_key_file)
    except Exception:
        return None


# --------------------------------------------------------------------------- commands


def cmd_check_config(args: argparse.Namespace) -> int:
    from agent.config import dump_toml, to_dict

    cfg = _load(args)
    data = to_dict(cfg, hide_secrets=True)
    if args.json:
        emit_json(data)
    else:
        out(f"# effective config from {cfg.source} (secrets hidden)")
        out(dump_toml(data))
    return EX_OK


def cmd_report(args: argparse.Namespace) -> int:
    from agent.bundle import BundleError, load_key
    from agent.capture import Capturer
    from agent.diagnostics import Collector, system_snapshot
    from agent.spool import SpoolError

    cfg = _load(args)
    _setup_logging(cfg)
    try:
        key = load_key(cfg.bundle.hmac_key_file, create=True)
    except (BundleError, OSError) as e:
        err(f"posagent report: not captured: {e}")
        return EX_CONFIG
    try:
        spool = _spool(cfg)
    except OSError as e:
        err(f"posagent report: not captured: spool unusable: {e.strerror or e}")
        return EX_CANTCREAT
    capt = Capturer(
        cfg,
        spool,
        key,
        _redactor(cfg),
        collectors=[Collector("system", lambda: system_snapshot(cfg.system.disk_paths))],
    )
    trigger = {
        "kind": "manual",
        "key": "manual.report",
        "severity": args.severity,
        "summary": "manual report from the terminal",
        "note": args.note,
        "contact": args.contact or "",
    }
    try:
        res = capt.capture(trigger, args.severity, with_screen=False)
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


def _fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def cmd_spool(args: argparse.Namespace) -> int:
    import time

    from agent.bundle import BundleError, BundleReader
    from agent.spool import NotFound, RetryState

    cfg = _load(args)
    spool = _spool(cfg)
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
                f"{_fmt_age(r['age_s']):>6}  {r['attempts']:>5}  {r['last_error'][:60]}"
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
                m = reader.manifest()
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


def summarize_manifest(m: dict[str, Any]) -> str:
    """A short human summary of a manifest (bundle show, spool show)."""
    trig = m.get("trigger") or {}
    dev = m.get("device") or {}
    red = m.get("redaction") or {}
    lines = [
        f"bundle     {m.get('bundle_id')}",
        f"created    {m.get('created_at')}  (clock synced: {m.get('clock_synced')})",
        f"device     {dev.get('id')}  site {dev.get('site') or '-'}  "
        f"{dev.get('platform')}/{dev.get('target')}",
        f"trigger    {trig.get('kind')}  {trig.get('key', '')}  {trig.get('severity', '')}",
    ]
    if trig.get("summary"):
        lines.append(f"summary    {trig['summary']}")
    if trig.get("note"):
        lines.append(f"note       {trig['note']}")
    if trig.get("contact"):
        lines.append(f"contact    {trig['contact']}")
    if trig.get("suppressed"):
        lines.append(f"suppressed {trig['suppressed']}")
    lines.append(f"screenshot {red.get('screenshot')}")
    counts = red.get("counts") or {}
    lines.append(
        "redacted   " + (", ".join(f"{k} {v}" for k, v in counts.items()) if counts else "nothing")
    )
    lines.append("files")
    for f in m.get("files") or []:
        lines.append(f"  {f.get('name'):40} {f.get('size'):>9}  {f.get('media_type')}")
    return "\n".join(lines)


def cmd_bundle(args: argparse.Namespace) -> int:
    from agent.bundle import BundleError, BundleReader

    try:
        key = _key_for_reading(args)
    except BundleError as e:
        err(f"{args.file}: {e}")
        return EX_NOINPUT
    try:
        with BundleReader(args.file) as r:
            if args.bundle_cmd == "verify":
                if key is None:
                    err(f"{args.file}: no device key (--key-file or --config): cannot check HMAC")
                    return EX_CONFIG
                res = r.verify(key)
                out(
                    f"{args.file}: OK {res.manifest['bundle_id']} ({len(res.manifest['files'])} files, HMAC verified)"
                )
                return EX_OK
            if args.bundle_cmd == "show":
                res = r.verify(key)
                m = res.manifest
                if args.json:
                    emit_json(
                        {
                            "verified": True,
                            "signature_checked": res.signature_checked,
                            "manifest": m,
                        }
                    )
                else:
                    out(summarize_manifest(m))
                    out(
                        f"integrity  OK{' (HMAC verified)' if res.signature_checked else ' (no key: HMAC not checked)'}"
                    )
                return EX_OK
            if args.bundle_cmd == "extract":
                r.verify(key)
                written = r.extract(args.target)
                out(f"extracted {len(written)} files to {args.target}")
                return EX_OK
            if args.bundle_cmd == "html":
                from agent.bundle_html import render_html

                res = r.verify(key)
                page = render_html(r, res.signature_checked)
                target = Path(args.output or Path(args.file).with_suffix(".html").name)
                target.write_text(page, encoding="utf-8")
                out(f"wrote {target}")
                return EX_OK
    except BundleError as e:
        err(f"{args.file}: FAILED: {e}")
        return EX_DATAERR
    return EX_USAGE


def cmd_run(args: argparse.Namespace) -> int:
    from agent.daemon import Daemon

    return Daemon(args.config).run()


def cmd_status(args: argparse.Namespace) -> int:
    import time

    from agent.daemon import status_path

    cfg = _load(args)
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
        doc = {"state": "not running", "queue": _spool(cfg).stats()}
    elif not running:
        doc["state"] = "not running"
        doc["queue"] = _spool(cfg).stats()
    if args.json:
        emit_json(doc)
        return EX_OK if running else EX_UNAVAILABLE
    out(f"posagent {doc.get('version', '')}  device {cfg.agent.device_id}  state {doc['state']}")
    q = doc.get("queue") or {}
    new = q.get("new", {})
    out(
        f"queue      {new.get('count', 0)} queued ({new.get('bytes', 0)} bytes), "
        f"oldest {_fmt_age(q.get('oldest_queued_age_s'))}, "
        f"failed {q.get('failed', {}).get('count', 0)}, sent {q.get('sent', {}).get('count', 0)}"
    )
    up = doc.get("upload") or {}
    if up:
        ok_at, fail_at = up.get("last_success_at"), up.get("last_failure_at")
        out(f"upload     {up.get('state', '-')} to {up.get('endpoint') or '(no endpoint)'}")
        out(
            f"           last success {_when(ok_at)} {up.get('last_success_bundle') or ''}".rstrip()
        )
        out(
            f"           last failure {_when(fail_at)} {up.get('last_failure_reason') or ''}".rstrip()
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


def _when(ts: Any) -> str:
    """An epoch time as RFC 3339, or '-'."""
    from agent.bundle import rfc3339

    return rfc3339(float(ts)) if isinstance(ts, int | float) and ts > 0 else "-"


def _pid_alive(pid: int) -> bool:
    import os

    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmd_collector(args: argparse.Namespace) -> int:
    from collector.cli import run

    return run(args)


# --------------------------------------------------------------------------- parser


def cmd_flush(args: argparse.Namespace) -> int:
    from agent.flush import run_flush

    return run_flush(args)


def cmd_selftest(args: argparse.Namespace) -> int:
    from agent.selftest import main as selftest_main

    return selftest_main(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import main as demo_main

    return demo_main(args)


COMMANDS: dict[str, Handler] = {
    "demo": cmd_demo,
    "selftest": cmd_selftest,
    "flush": cmd_flush,
    "run": cmd_run,
    "status": cmd_status,
    "check-config": cmd_check_config,
    "report": cmd_report,
    "spool": cmd_spool,
    "bundle": cmd_bundle,
    "collector": cmd_collector,
}


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $POSAGENT_CONFIG, then /etc/posagent/agent.toml)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree for every command (also used to check the README)."""
    from agent import __version__

    parser = argparse.ArgumentParser(
        prog="posagent",
        description="Monitoring agent for point-of-sale terminals.",
    )
    parser.add_argument("--version", action="version", version=f"posagent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run", help="the daemon, in the foreground (systemd Type=notify)")
    _config_arg(p)

    p = sub.add_parser("status", help="monitors, active faults, queue, last upload")
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="print the status document as JSON")

    p = sub.add_parser("check-config", help="validate and print the effective config")
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="print as JSON")

    p = sub.add_parser("selftest", help="poll every configured device once; a table")
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="states and raw readings as JSON")

    p = sub.add_parser("report", help="manual problem report, captured now")
    _config_arg(p)
    p.add_argument("--note", required=True, help="what happened, in the merchant's words")
    p.add_argument("--contact", default="", help="who to call back")
    p.add_argument(
        "--severity",
        default="error",
        choices=("warning", "error", "critical"),
        help="default: error",
    )
    p.add_argument("--json", action="store_true", help='print {"bundle_id": ..., "path": ...}')

    p = sub.add_parser("spool", help="the on-disk queue: list|show|retry|purge")
    ss = p.add_subparsers(dest="spool_cmd", metavar="ACTION")
    ss.required = True
    q = ss.add_parser("list", help="bundles in the queue")
    _config_arg(q)
    q.add_argument("--json", action="store_true")
    q.add_argument("--state", action="append", choices=("new", "cur", "failed", "sent"))
    q = ss.add_parser("show", help="one bundle's manifest summary")
    _config_arg(q)
    q.add_argument("bundle_id", help="id or unique prefix (8+ chars)")
    q.add_argument("--json", action="store_true")
    q = ss.add_parser("retry", help="re-queue a failed bundle for upload now")
    _config_arg(q)
    q.add_argument("bundle_id")
    q = ss.add_parser("purge", help="delete bundles")
    _config_arg(q)
    q.add_argument("--failed", action="store_true", help="failed/ bundles")
    q.add_argument("--sent", action="store_true", help="sent/ bundles")
    q.add_argument("--all", action="store_true", help="queued, failed and sent bundles")

    p = sub.add_parser("flush", help="upload the queue now, with a progress bar")
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    p = sub.add_parser("bundle", help="read a bundle file: verify|show|extract|html")
    bs = p.add_subparsers(dest="bundle_cmd", metavar="ACTION")
    bs.required = True
    for name, helptext in (
        ("verify", "check integrity and HMAC; exit 0 when intact"),
        ("show", "print the summary"),
        ("extract", "unpack into a directory"),
        ("html", "write one self-contained HTML page"),
    ):
        q = bs.add_parser(name, help=helptext)
        q.add_argument("file", help="bundle .zip")
        _config_arg(q)
        q.add_argument("--key-file", metavar="PATH", help="device HMAC key (instead of --config)")
        if name == "show":
            q.add_argument("--json", action="store_true")
        if name == "extract":
            q.add_argument("target", help="directory to create")
        if name == "html":
            q.add_argument("-o", "--output", help="output .html (default: <bundle>.html here)")

    p = sub.add_parser("collector", help="reference ingest server and web viewer: serve|add-device")
    cs = p.add_subparsers(dest="collector_cmd", metavar="ACTION")
    cs.required = True
    q = cs.add_parser("serve", help="run the ingest server and web page in the foreground")
    _config_arg(q)
    q.add_argument("--listen", metavar="HOST:PORT", help="override [collector] listen")
    q = cs.add_parser("add-device", help="register a device and print its new token once")
    q.add_argument("device_id", help="the terminal's [agent] device_id")
    _config_arg(q)
    q.add_argument("--rotate", action="store_true", help="replace an existing device's token")

    p = sub.add_parser(
        "demo", help="simulated terminal + collector + agent: five faults end to end"
    )
    p.add_argument("--keep", action="store_true", help="leave the collector running to browse")
    p.add_argument(
        "--workdir", metavar="DIR", help="where to put everything (default: a new temp dir)"
    )
    p.add_argument(
        "--screen",
        default="auto",
        choices=("auto", "x11", "fbdev"),
        help="POS screen: Xvfb + Tk (x11), framebuffer file (fbdev), or x11 when Xvfb exists",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `posagent` console script."""
    from agent.config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    handler = COMMANDS[args.command]
    try:
        return int(handler(args))
    except ConfigError as e:
        err(f"posagent {args.command}: config error: {e}")
        return EX_CONFIG
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EX_OK


if __name__ == "__main__":
    sys.exit(main())
