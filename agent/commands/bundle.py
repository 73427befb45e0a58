"""`posagent bundle verify|show|extract|html|decrypt FILE`: read a bundle file (operators).

A sealed bundle (`posagent.sealed/1`) is checked from its envelope with
`--public-key`; `--identity` (an age identity file) opens it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from agent.bundle.format import BundleError, BundleReader
from agent.bundle.html import render_html
from agent.bundle.remedies import remedy_lines
from agent.bundle.sealed import KeyFileError, KeyRing, load_identities, open_sealed
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
    if trig.get("key") or trig.get("kind"):
        key = str(trig.get("key") or "")
        lines.append("what to do")
        lines += remedy_lines(key, cleared=trig.get("kind") == "cleared")
    lines.append(f"screenshot {red.get('screenshot')}")
    counts = red.get("counts") or {}
    lines.append(
        "redacted   " + (", ".join(f"{k} {v}" for k, v in counts.items()) if counts else "nothing")
    )
    lines.append("files")
    for f in m.get("files") or []:
        lines.append(f"  {f.get('name'):40} {f.get('size'):>9}  {f.get('media_type')}")
    return "\n".join(lines)


def _checked(res: Any) -> str:
    parts = []
    if res.ed25519_checked:
        parts.append("Ed25519 verified")
    if res.signature_checked and not res.ed25519_checked:
        parts.append("HMAC verified")
    return ", ".join(parts) or "no key: signature not checked"


def _public_keys(path: str) -> Any:
    """The key of a PEM file, or every key of one that holds several (a collector's
    `<device_id>.pub` during a rotation): a bundle signed by any of them verifies."""
    ring = KeyRing.from_file(path)
    if not ring.current:
        raise KeyFileError(f"public key {path} holds no PEM public key block")
    ring.device = Path(path).name
    return ring.current[0] if len(ring.current) == 1 else ring


def run(args: argparse.Namespace) -> int:
    """Run one bundle action on a file."""
    try:
        key = key_for_reading(args)
        pub = _public_keys(args.public_key) if getattr(args, "public_key", None) else None
        ids = load_identities(args.identity) if getattr(args, "identity", None) else None
    except BundleError as e:
        err(f"{args.file}: {e}")
        return EX_NOINPUT
    try:
        source: str | bytes = args.file
        envelope_note = ""
        with BundleReader(args.file) as outer:
            sealed = outer.sealed
            if sealed:
                env = outer.verify(None, pub)
                envelope_note = f"sealed, envelope {_checked(env)}"
                if env.ed25519_checked:  # which of the device's keys: its id, signed
                    envelope_note += f" (key {env.manifest.get('signer', '?')})"
        if sealed:
            if args.bundle_cmd == "verify" and pub is None:
                err(f"{args.file}: sealed bundle: its origin is checked with --public-key PUB")
                return EX_CONFIG
            if ids is None:
                if args.bundle_cmd == "verify":
                    m = env.manifest
                    out(f"{args.file}: OK {m['bundle_id']} ({envelope_note}; payload not opened)")
                    return EX_OK
                err(f"{args.file}: sealed bundle: --identity ID (an age identity file) opens it")
                return EX_CONFIG
            source = open_sealed(Path(args.file).read_bytes(), ids)
            if args.bundle_cmd == "decrypt":
                with BundleReader(source) as inner:
                    res = inner.verify(key, pub)
                fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(source)
                out(
                    f"{args.file}: decrypted {res.manifest['bundle_id']} to {args.output} "
                    f"({envelope_note}; inner {_checked(res)})"
                )
                return EX_OK
        elif args.bundle_cmd == "decrypt":
            err(f"{args.file}: not a sealed bundle (nothing to decrypt)")
            return EX_DATAERR
        with BundleReader(source) as r:
            if args.bundle_cmd == "verify":
                if key is None and pub is None:
                    err(
                        f"{args.file}: no device key (--public-key, --key-file or --config): "
                        "cannot check the signature"
                    )
                    return EX_CONFIG
                res = r.verify(key, pub)
                note = f"{envelope_note}; inner " if envelope_note else ""
                out(
                    f"{args.file}: OK {res.manifest['bundle_id']} "
                    f"({len(res.manifest['files'])} files, {note}{_checked(res)})"
                )
                return EX_OK
            if args.bundle_cmd == "show":
                res = r.verify(key, pub)
                m = res.manifest
                if args.json:
                    emit_json(
                        {
                            "verified": True,
                            "signature_checked": res.signature_checked,
                            "ed25519_checked": res.ed25519_checked,
                            "sealed": sealed,
                            "manifest": m,
                        }
                    )
                else:
                    out(summarize_manifest(m))
                    out(
                        f"integrity  OK ({envelope_note + '; ' if envelope_note else ''}{_checked(res)})"
                    )
                return EX_OK
            if args.bundle_cmd == "extract":
                r.verify(key, pub)
                written = r.extract(args.target)
                out(f"extracted {len(written)} files to {args.target}")
                return EX_OK
            if args.bundle_cmd == "html":
                res = r.verify(key, pub)
                page = render_html(r, res.signature_checked)
                target = Path(args.output or Path(args.file).with_suffix(".html").name)
                target.write_text(page, encoding="utf-8")
                out(f"wrote {target}")
                return EX_OK
    except BundleError as e:
        err(f"{args.file}: FAILED: {e}")
        return EX_DATAERR
    except OSError as e:
        err(f"{args.file}: FAILED: {e.strerror or e}")
        return EX_DATAERR
    return EX_USAGE
