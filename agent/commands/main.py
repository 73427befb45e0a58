"""`posagent`: the one command-line entry point (docs/ARCHITECTURE.md §2).

One module per command under agent/commands/, each with `run(args) -> int`.
The parser for every command is built here; a command's module is imported
only when that command runs (`importlib`), so `posagent run` holds only the
daemon's modules and never the collector's web stack or the simulator.
Commands that read the config take --config (default: $POSAGENT_CONFIG, then
/etc/posagent/agent.toml). Exit codes follow sysexits (agent/core/exits.py).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from agent import __version__
from agent.commands.output import err
from agent.core import log
from agent.core.config import ConfigError
from agent.core.exits import EX_CONFIG, EX_OK
from agent.core.redact import Redactor

# command name → module under agent.commands that has `run(args) -> int`
COMMANDS: dict[str, str] = {
    "run": "run",
    "status": "status",
    "check-config": "check_config",
    "selftest": "selftest",
    "discover": "discover",
    "report": "report",
    "spool": "spool",
    "flush": "flush",
    "bundle": "bundle",
    "keygen": "keys",
    "key": "keys",
    "collector": "collector",
    "demo": "demo",
}


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $POSAGENT_CONFIG, then /etc/posagent/agent.toml)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree for every command (also used to check the README)."""
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

    p = sub.add_parser(
        "discover",
        help="list the terminal's ports, printers, network, screen and POS processes",
        description=(
            "List what this terminal has: serial ports with their USB identity and who holds"
            " them, USB printers (/dev/usb/lp*), network interfaces with carrier, the default"
            " route and resolvers, the screen backend that works, and the processes that look"
            " like the POS application. Nothing is sent to any device unless --probe names it."
        ),
        epilog=(
            "examples: posagent discover; posagent discover --probe /dev/ttyS0 /dev/usb/lp0;"
            " posagent discover --probe /dev/ttyS0 --write discovered.toml"
            " (then merge its tables into /etc/posagent/agent.toml)"
        ),
    )
    p.add_argument(
        "--config",
        metavar="PATH",
        help="read roots and [screen]/[peripherals] from this config (default: built-in defaults)",
    )
    p.add_argument(
        "--probe",
        nargs="+",
        metavar="PORT",
        help="send ESC/POS DLE EOT to these ports only (a /dev path, /dev/usb/lpN or host:port)"
        " and report which answered as a receipt printer",
    )
    p.add_argument(
        "--baudrate", type=int, default=9600, help="serial speed for --probe (default: 9600)"
    )
    p.add_argument(
        "--timeout", type=float, default=1.0, help="seconds to wait for each reply (default: 1)"
    )
    p.add_argument("--json", action="store_true", help="print what was found as JSON")
    p.add_argument(
        "--write",
        metavar="FILE",
        help="write a TOML config fragment declaring only what was found",
    )
    p.add_argument("--force", action="store_true", help="let --write replace an existing FILE")

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

    p = sub.add_parser("keygen", help="make the Ed25519 device signing key (0600) if absent")
    _config_arg(p)
    p = sub.add_parser("key", help="the device signing key: show-public|rotate")
    ks = p.add_subparsers(dest="key_cmd", metavar="ACTION")
    ks.required = True
    q = ks.add_parser("show-public", help="print the device's Ed25519 public key (PEM)")
    _config_arg(q)
    q.add_argument(
        "--all", action="store_true", help="then the keys `key rotate` retired (a collector .pub)"
    )
    q = ks.add_parser(
        "rotate", help="a new signing key; the old public key is kept on record (.retired.pub)"
    )
    _config_arg(q)

    p = sub.add_parser("flush", help="upload the queue now, with a progress bar")
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    p = sub.add_parser("bundle", help="read a bundle file: verify|show|extract|html|decrypt")
    bs = p.add_subparsers(dest="bundle_cmd", metavar="ACTION")
    bs.required = True
    for name, helptext in (
        ("verify", "check integrity and HMAC; exit 0 when intact"),
        ("show", "print the summary"),
        ("extract", "unpack into a directory"),
        ("html", "write one self-contained HTML page"),
        ("decrypt", "open a sealed bundle with an age identity: -o the inner plaintext .zip"),
    ):
        q = bs.add_parser(name, help=helptext)
        q.add_argument("file", help="bundle .zip")
        _config_arg(q)
        q.add_argument("--key-file", metavar="PATH", help="device HMAC key (instead of --config)")
        q.add_argument(
            "--public-key", metavar="PUB", help="device Ed25519 public key (PEM): checks origin"
        )
        q.add_argument("--identity", metavar="ID", help="age identity file: opens a sealed bundle")
        if name == "decrypt":
            q.add_argument("-o", "--output", required=True, help="the inner plaintext .zip")
        if name == "show":
            q.add_argument("--json", action="store_true")
        if name == "extract":
            q.add_argument("target", help="directory to create")
        if name == "html":
            q.add_argument("-o", "--output", help="output .html (default: <bundle>.html here)")

    p = sub.add_parser(
        "collector",
        help="reference ingest server and web viewer: "
        "serve|add-device|user|token|migrate|hold|retention|migrate-store|revoke-key|reindex|"
        "keygen|enroll-token|remote-config",
    )
    cs = p.add_subparsers(dest="collector_cmd", metavar="ACTION")
    cs.required = True
    q = cs.add_parser("serve", help="run the ingest server and web page in the foreground")
    _config_arg(q)
    q.add_argument("--listen", metavar="HOST:PORT", help="override [collector] listen")
    q = cs.add_parser("add-device", help="register a device and print its new token once")
    q.add_argument("device_id", help="the terminal's [agent] device_id")
    _config_arg(q)
    q.add_argument("--rotate", action="store_true", help="replace an existing device's token")
    q.add_argument(
        "--site",
        help="the device's store: its bundles are filed under it, not under the manifest's claim",
    )
    q.add_argument("--tenant", metavar="T", help="the merchant owning --site (created if new)")
    q = cs.add_parser("user", help="people on the read side: add|list|disable|enable|passwd")
    us = q.add_subparsers(dest="user_cmd", metavar="add|list|disable|enable|passwd")
    us.required = True
    u = us.add_parser("add", help="a new user; prints a one-time password")
    u.add_argument("name")
    u.add_argument("--role", required=True, choices=["admin", "support", "merchant"])
    u.add_argument("--tenant", action="append", metavar="T", help="a tenant served (repeatable)")
    u.add_argument("--all-tenants", action="store_true", help="support: every tenant")
    u.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin instead"
    )
    _config_arg(u)
    u = us.add_parser("list", help="every user with role, tenants and state")
    u.add_argument("--json", action="store_true")
    _config_arg(u)
    for name, text in (
        ("disable", "refuse the user's logins and tokens, end their sessions"),
        ("enable", "let a disabled user in again"),
        ("passwd", "a new one-time password (or --password-stdin); ends their sessions"),
    ):
        u = us.add_parser(name, help=text)
        u.add_argument("name")
        if name == "passwd":
            u.add_argument("--password-stdin", action="store_true")
        _config_arg(u)
    q = cs.add_parser("token", help="personal API tokens for scripts: create|list|revoke")
    ts = q.add_subparsers(dest="token_cmd", metavar="create|list|revoke")
    ts.required = True
    t = ts.add_parser("create", help="a new token for USER, printed once")
    t.add_argument("user")
    t.add_argument("--name", default="api", help="what it is for (default: api)")
    _config_arg(t)
    t = ts.add_parser("list", help="tokens (of USER) with their state")
    t.add_argument("user", nargs="?", default="")
    t.add_argument("--json", action="store_true")
    _config_arg(t)
    t = ts.add_parser("revoke", help="stop a token working (every instance, at once)")
    t.add_argument("id", type=int, help="the token's id (token list)")
    _config_arg(t)
    q = cs.add_parser("migrate", help="bring the index's schema to this collector's version")
    _config_arg(q)
    q = cs.add_parser("hold", help="legal holds: keep a bundle, device or site from retention")
    hs = q.add_subparsers(dest="hold_cmd", metavar="add|remove|list")
    hs.required = True
    for name in ("add", "remove", "list"):
        h = hs.add_parser(name, help=f"{name} a legal hold" if name != "list" else "list holds")
        _config_arg(h)
        if name == "list":
            h.add_argument("--json", action="store_true")
            continue
        target = h.add_mutually_exclusive_group(required=True)
        target.add_argument("--bundle", metavar="ID", help="one bundle")
        target.add_argument("--device", metavar="ID", help="every bundle of a device")
        target.add_argument("--site", metavar="S", help="every bundle of a site")
        if name == "add":
            h.add_argument(
                "--reason", required=True, metavar="TEXT", help="why (a case, a dispute)"
            )
    q = cs.add_parser("retention", help="delete expired bundles now: retention run")
    rs = q.add_subparsers(dest="retention_cmd", metavar="run")
    rs.required = True
    r = rs.add_parser("run", help="one retention run ([collector.retention]; holds respected)")
    _config_arg(r)
    q = cs.add_parser(
        "migrate-store",
        help="copy the store (embedded, or PostgreSQL + S3) into another, either way",
        description=(
            "Copy the store the config names (files + SQLite in data_dir by default, or"
            " index_url/blob_url) into the target the options name: PostgreSQL + S3"
            " (--to-index, --to-blob) or files + SQLite in --to-data-dir. The target's schema"
            " is migrated first, then checked: a target holding rows the source does not"
            " agree with is refused before anything is written, and no target row is ever"
            " overwritten. Copied, ids kept (sequences advanced): tenants, sites, users"
            " (same passwords), their tenants, API tokens, the audit log (append-only),"
            " legal holds, incidents with their bundles, events, notes and catch-up"
            " position, the notification outbox and delivery attempts, enrollment tokens,"
            " enrolled devices (their credentials), commands, remote config, outages; then"
            " every bundle, its blob's sha256 checked before and after the write. Not"
            " copied: login sessions (on purpose: everyone signs in again), login_failures"
            " and rate_buckets (minutes of throttling), bundle_counts (recounted by the"
            " target), retention_pending (the source's own blobs awaiting deletion),"
            " schema_version. Files outside the index stay where they are: tokens_file,"
            " signing_key_file, age_identity_file. The source is only read. Stop its collector"
            " first: a row it changes after a run (a check-in, an incident's status) is a"
            " conflict for the next; copy the bulk with --bundles-only while it serves."
            " Resumable: a re-run skips what is there."
        ),
        epilog=(
            "exit: 0 every row and bundle in the target, verified; 1 some are not"
            " (conflicts and failures named, run again after fixing); 64 bad options;"
            " 66 no source index; 69 a store unreachable; 78 a schema"
        ),
    )
    _config_arg(q)
    q.add_argument(
        "--to-index", default="", metavar="postgresql://...", help="target index (PostgreSQL)"
    )
    q.add_argument("--to-blob", default="", metavar="s3://bucket/prefix", help="target blobs (S3)")
    q.add_argument(
        "--to-data-dir",
        default="",
        metavar="DIR",
        help="the target's data_dir: an embedded target (files + SQLite) without --to-index/--to-blob",
    )
    q.add_argument("--s3-endpoint-url", default="", metavar="URL", help="S3-compatible server")
    q.add_argument("--s3-region", default="us-east-1", metavar="REGION")
    q.add_argument("--workers", type=int, default=8, metavar="N", help="parallel copies (8)")
    q.add_argument(
        "--bundles-only",
        action="store_true",
        help="the bundles alone, while the source still serves (then stop it and run again)",
    )
    q = cs.add_parser("revoke-key", help="refuse from now on the bundles a device public key signs")
    q.add_argument("device_id", help="the device whose <device_id>.pub holds the key")
    q.add_argument("key_id", help="the key's id (16 hex: posagent key rotate, bundle verify)")
    _config_arg(q)
    q = cs.add_parser(
        "reindex", help="index again: --undecryptable bundles, once their identity is on file"
    )
    _config_arg(q)
    q.add_argument(
        "--undecryptable",
        action="store_true",
        help="sealed bundles indexed as undecryptable: open them with age_identity_file now",
    )

    q = cs.add_parser("keygen", help="make the command signing key ([collector] signing_key_file)")
    _config_arg(q)
    q = cs.add_parser("enroll-token", help="enrollment tokens for terminals: create|list|revoke")
    es = q.add_subparsers(dest="token_cmd", metavar="create|list|revoke")
    es.required = True
    e = es.add_parser("create", help="a new enrollment token for a site, printed once")
    _config_arg(e)
    e.add_argument("--site", required=True, help="the site enrolled terminals are filed under")
    e.add_argument("--tenant", default="", help="the tenant (default: none)")
    e.add_argument(
        "--uses", type=int, default=1, metavar="N", help="terminals it enrolls (1; 0: no limit)"
    )
    e.add_argument(
        "--expires", default="7d", metavar="DURATION", help="lifetime: 7d, 12h, 30m (7d)"
    )
    e = es.add_parser("list", help="enrollment tokens (never the tokens themselves)")
    _config_arg(e)
    e.add_argument("--json", action="store_true")
    e = es.add_parser("revoke", help="refuse an enrollment token from now on")
    _config_arg(e)
    e.add_argument("token_id", help="its id (enroll-token list) or the token itself")
    q = cs.add_parser(
        "remote-config", help="fleet-wide and per-site config for terminals: set|unset|show"
    )
    rcs = q.add_subparsers(dest="rc_cmd", metavar="set|unset|show")
    rcs.required = True
    for name in ("set", "unset", "show"):
        e = rcs.add_parser(name, help=f"{name} remote config values")
        _config_arg(e)
        e.add_argument("--site", default=None, help="one site (default: the whole fleet)")
        if name in ("set", "unset"):
            e.add_argument("key", help="a safe key, e.g. capture.cooldown_s")
        if name == "set":
            e.add_argument("value", help="the value (JSON, or plain text for a string)")
        if name == "show":
            e.add_argument("--json", action="store_true")

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
    parser = build_parser()
    args = parser.parse_args(argv)
    # until a command sets up its own logging, log lines go to stderr: stdout is the
    # command's output (--json), never a log line from a module on the way
    log.configure("warning", "auto", Redactor(), sys.stderr)
    module = importlib.import_module(f"agent.commands.{COMMANDS[args.command]}")
    try:
        return int(module.run(args))
    except ConfigError as e:
        err(f"posagent {args.command}: config error: {e}")
        return EX_CONFIG
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EX_OK


if __name__ == "__main__":
    sys.exit(main())
