"""`posagent bundle verify|show|extract|html FILE`: read a bundle file (operators)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.bundle.format import BundleError, BundleReader
from agent.bundle.html import render_html
from agent.commands.common import key_for_reading
from agent.commands.output import emit_json, err, out
from agent.core.exits import EX_CONFIG, EX_DATAERR, EX_NOINPUT, EX_OK, EX_USAGE


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


def run(args: argparse.Namespace) -> int:
    """Run one bundle action on a file."""
    try:
        key = key_for_reading(args)
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
