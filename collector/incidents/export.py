"""The dispute export: one incident as one self-contained zip a merchant can hand to their
bank (``GET /v1/incidents/{id}/export``, scoped like every read).

``incident-<id>/`` in the zip holds:
- ``index.html``: the incident (what, where, when, duration, repeats, status), its notes
  (each contact with the merchant) and its history in words (as on the incident page, a
  bundle linked to its section; ``incident.json`` has each event's raw detail); then, per bundle, its report, its
  screenshot (inline), its timeline chart, the bundle's SHA-256 as recorded at receipt
  and as read now, and the signature check made again now with the device's key on
  file (HMAC or Ed25519: verified, not checkable without a key, or failed with the
  reason). No scripts, no external assets: it opens offline;
- ``incident.json``: the same facts as the API gives them, plus every bundle's check;
- ``bundles/<bundle id>.zip``: the original bundles, byte for byte as stored (sealed ones
  still encrypted); ``bundles/<bundle id>/report.txt``, ``screenshot.png``,
  ``timeline.json``: their readable entries;
- ``SHA256SUMS``: the digest of every other file of the export (``sha256sum -c``).

Bounded: the newest `MAX_BUNDLES` bundles and at most `MAX_BYTES` of originals; what
is left out is listed with its digest. The zip is written to a temporary file (never
held in memory) and streamed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
import time
import zipfile
from dataclasses import dataclass
from typing import IO, Any

from agent.bundle.format import BundleError, BundleReader
from agent.bundle.html import timeline_svg
from agent.bundle.style import CSS, esc
from agent.core.timefmt import rfc3339
from collector import sealed
from collector.access import Principal
from collector.incidents import render
from collector.incidents.as_json import detail_json
from collector.incidents.model import EventKind, GroupedBundle
from collector.incidents.queries import Detail
from collector.incidents.service import Incidents
from collector.pages import shown_time

MAX_BUNDLES = 100
MAX_BYTES = 256 * 1024 * 1024
MAX_INLINE_PNG = 512 * 1024  # a larger screenshot is linked, not inlined
MAX_INLINE_TOTAL = 32 * 1024 * 1024  # past this, screenshots are linked
MAX_READINGS = 2000
MAX_REPORT = 256 * 1024


@dataclass
class Checked:
    """One bundle as the export found it."""

    bundle_id: str
    trigger_kind: str
    at: float
    recorded_sha256: str = ""
    sha256: str = ""  # of the stored bytes, now
    size: int = 0
    signature: str = ""  # the check made now, in words
    signature_ok: bool | None = None  # True verified, False failed, None not checkable
    at_receipt: bool = False  # whether ingest verified its signature
    included: bool = False
    note: str = ""  # why it is not included or not readable
    report: str = ""
    screenshot: bytes = b""
    timeline: bytes = b""
    readings: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle_id": self.bundle_id,
            "trigger_kind": self.trigger_kind,
            "created_at": rfc3339(self.at) if shown_time(self.at) != "-" else None,
            "sha256_recorded": self.recorded_sha256,
            "sha256_now": self.sha256,
            "digest_matches": bool(self.sha256) and self.sha256 == self.recorded_sha256,
            "size_bytes": self.size,
            "signature_verified_at_receipt": self.at_receipt,
            "signature_now": self.signature,
            "signature_ok": self.signature_ok,
            "included": self.included,
            "note": self.note,
        }


def _check(col: Any, b: GroupedBundle, budget: int) -> tuple[Checked, bytes]:
    """The checks of one bundle, and its stored bytes (b"" when not included)."""
    c = Checked(b.bundle_id, b.trigger_kind, b.at)
    r = b.record
    if r is None:
        c.note = "deleted by retention before this export"
        return c, b""
    c.recorded_sha256, c.at_receipt = r.sha256, r.signature_checked
    try:
        data = col.store.read(r)
    except KeyError:
        c.note = "its stored file is missing"
        return c, b""
    c.sha256, c.size = hashlib.sha256(data).hexdigest(), len(data)
    try:
        res = sealed.check_upload(col, r.device, data, col.device_key(r.device))
    except BundleError as e:
        c.signature, c.signature_ok = f"FAILED: {e}", False
    else:
        if res.signature_checked:
            c.signature, c.signature_ok = "verified with the device's key on file", True
        else:
            c.signature = "entries verified; no device key on the collector to check the signature"
    try:
        readable = sealed.readable(col, data)
        with BundleReader(readable) as reader:
            names = reader.names
            if "report.txt" in names:
                c.report = reader.read("report.txt")[:MAX_REPORT].decode("utf-8", "replace")
            if "screenshot.png" in names:
                c.screenshot = reader.read("screenshot.png")
            if "timeline.json" in names:
                c.timeline = reader.read("timeline.json")
                c.readings = _readings(c.timeline)
    except BundleError as e:
        c.note = f"its contents are not readable on this collector: {e}"
    if len(data) > budget:
        c.note = (c.note + "; " if c.note else "") + "original left out: the export is full"
        return c, b""
    c.included = True
    return c, data


def _readings(raw: bytes) -> list[dict[str, Any]]:
    try:
        tl = json.loads(raw)
    except (ValueError, RecursionError):
        return []
    readings = tl.get("readings", []) if isinstance(tl, dict) else []
    if not isinstance(readings, list):
        return []
    return [x for x in readings[:MAX_READINGS] if isinstance(x, dict)]


# --------------------------------------------------------------------------- the page


def _bundle_html(c: Checked, inline: bool) -> str:
    bid = esc(c.bundle_id)
    if c.signature_ok is True:
        sig = f"<span class='ok'>{esc(c.signature)}</span>"
    elif c.signature_ok is False:
        sig = f"<span class='error'>{esc(c.signature)}</span>"
    else:
        sig = esc(c.signature or "not checked")
    digest = (
        "matches the digest recorded at receipt"
        if c.sha256 and c.sha256 == c.recorded_sha256
        else "DIFFERS from the digest recorded at receipt"
        if c.sha256
        else "not available"
    )
    parts = [
        f"<section class='card' id='b-{bid}'><h3>{esc(c.trigger_kind)} bundle "
        f"<span class='mono'>{bid}</span></h3><table class='facts'>"
        f"<tr><th>Created</th><td>{esc(shown_time(c.at))}</td></tr>"
        f"<tr><th>SHA-256 at receipt</th><td class='mono'>{esc(c.recorded_sha256 or '-')}</td></tr>"
        f"<tr><th>SHA-256 now</th><td class='mono'>{esc(c.sha256 or '-')} ({esc(digest)})</td></tr>"
        f"<tr><th>Signature at receipt</th><td>"
        f"{'verified' if c.at_receipt else 'not checked (no key then)'}</td></tr>"
        f"<tr><th>Signature now</th><td>{sig}</td></tr>"
    ]
    if c.included:
        parts.append(
            f"<tr><th>Original</th><td><a href='bundles/{bid}.zip'>bundles/{bid}.zip</a></td></tr>"
        )
    if c.note:
        parts.append(f"<tr><th>Note</th><td>{esc(c.note)}</td></tr>")
    parts.append("</table>")
    if c.report:
        parts.append(f"<h4>Report</h4><pre>{esc(c.report)}</pre>")
    if c.screenshot:
        if inline and len(c.screenshot) <= MAX_INLINE_PNG:
            b64 = base64.b64encode(c.screenshot).decode()
            parts.append(
                f"<h4>Screenshot</h4><img class='shot' alt='screenshot' "
                f"src='data:image/png;base64,{b64}'>"
            )
        else:
            parts.append(
                f"<h4>Screenshot</h4><p><a href='bundles/{bid}/screenshot.png'>screenshot.png</a>"
                "</p>"
            )
    if c.readings is not None:
        parts.append(f"<h4>Timeline</h4><div class='svgwrap'>{timeline_svg(c.readings)}</div>")
    parts.append("</section>")
    return "".join(parts)


def _section(bundle_id: str) -> str:
    """A bundle's section on the export's page (its evidence below)."""
    return f"#b-{bundle_id}"


def page(d: Detail, sections: list[str], now: float, by: str) -> str:
    inc = d.incident
    facts = [
        ("Incident", f"#{inc.id}"),
        ("Fault", f"<span class='mono'>{esc(inc.fault_key)}</span> ({esc(inc.severity)})"),
        ("What happened", esc(inc.summary)),
        ("Terminal", esc(inc.device)),
        ("Site", esc(inc.site or "(none registered)")),
        ("Raised", esc(shown_time(inc.raised_at))),
        (
            "Cleared",
            esc("still raised" if inc.active else shown_time(inc.cleared_at or 0)),
        ),
        ("Raised for", esc(render.fmt_duration(inc.total_duration_s(now)))),
        ("Repeats", str(inc.repeats)),
        ("Status", esc(inc.status.value)),
        ("Bundles", f"{d.bundle_total} (the newest {len(sections)} below)"),
    ]
    notes = "".join(
        f"<tr><td>{esc(shown_time(float(n.detail.get('contact_at') or n.at)))}</td>"
        f"<td>{esc(n.actor)}</td><td>{esc(n.detail.get('channel'))}</td>"
        f"<td>{esc(n.detail.get('contact'))}</td>"
        f"<td style='white-space:pre-wrap'>{esc(n.detail.get('text'))}</td></tr>"
        for n in d.notes
    )
    history = "".join(
        f"<tr><td>{esc(shown_time(e.at))}</td><td>{esc(e.kind.value)}</td><td>{esc(e.actor)}</td>"
        f"<td>{render.event_words(e, _section)}</td></tr>"
        for e in d.events
        if e.kind is not EventKind.NOTE
    )
    body = (
        f"<h1>Incident #{inc.id}: {esc(inc.fault_key)} on terminal {esc(inc.device)}</h1>"
        f"<p>Exported {esc(shown_time(now))} by {esc(by)} from the posagent collector. "
        "Each bundle below is the terminal's own record, sealed on the terminal; its "
        "SHA-256 was recorded when the collector received it, and its signature is checked "
        "again for this export. The originals are in <code>bundles/</code>; "
        "<code>SHA256SUMS</code> lists the digest of every file "
        "(<code>sha256sum -c SHA256SUMS</code>).</p>"
        "<table class='facts'>"
        + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
        + "</table><h2>Contacts with the merchant</h2>"
        "<table class='list'><thead><tr><th>When</th><th>Who</th><th>Channel</th>"
        "<th>With</th><th>What was said and agreed</th></tr></thead><tbody>"
        + (notes or "<tr><td colspan='5'>None recorded.</td></tr>")
        + "</tbody></table><h2>History</h2><table class='list'><thead><tr><th>When</th>"
        "<th>What</th><th>Who</th><th>Detail</th></tr></thead><tbody>"
        + history
        + "</tbody></table><h2>Evidence</h2>"
        + "".join(sections)
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Incident #{inc.id} {esc(inc.fault_key)} {esc(inc.device)}</title>"
        f"<style>{CSS}</style></head><body class='page'>{body}</body></html>\n"
    )


# --------------------------------------------------------------------------- the zip


def build(
    col: Any, incidents: Incidents, incident_id: int, who: Principal
) -> tuple[IO[bytes], str]:
    """The export written to a temporary file (at its start) and its file name.

    NotFound when the incident is out of the principal's reach."""
    d = incidents.detail(incident_id, who, bundles=MAX_BUNDLES, history=5000)
    now = incidents.clock()
    top = f"incident-{d.incident.id}"
    out = tempfile.TemporaryFile()  # noqa: SIM115 (handed to the response, which closes it)
    sums: list[tuple[str, str]] = []
    checked: list[Checked] = []
    sections: list[str] = []
    budget, inline_left = MAX_BYTES, MAX_INLINE_TOTAL
    try:
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:

            def put(name: str, data: bytes, *, stored: bool = False) -> None:
                zf.writestr(
                    f"{top}/{name}",
                    data,
                    compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED,
                )
                sums.append((hashlib.sha256(data).hexdigest(), name))

            for b in d.bundles:
                c, data = _check(col, b, budget)
                checked.append(c)
                if c.included:
                    budget -= len(data)
                    put(f"bundles/{c.bundle_id}.zip", data, stored=True)
                    del data
                for name, blob in (
                    ("report.txt", c.report.encode()),
                    ("screenshot.png", c.screenshot),
                    ("timeline.json", c.timeline),
                ):
                    if blob:
                        put(f"bundles/{c.bundle_id}/{name}", blob)
                inline = len(c.screenshot) <= min(MAX_INLINE_PNG, inline_left)
                if inline:
                    inline_left -= len(c.screenshot)
                sections.append(_bundle_html(c, inline))
                c.report, c.screenshot, c.timeline, c.readings = "", b"", b"", None
            facts = detail_json(d, now)
            facts["exported_at"] = rfc3339(now)
            facts["exported_by"] = who.name
            facts["bundle_checks"] = [c.to_dict() for c in checked]
            put("incident.json", json.dumps(facts, indent=1, ensure_ascii=False).encode())
            put("index.html", page(d, sections, now, who.name).encode())
            zf.writestr(
                f"{top}/SHA256SUMS",
                "".join(f"{h}  {n}\n" for h, n in sorted(sums, key=lambda x: x[1])),
            )
    except BaseException:
        out.close()
        raise
    out.seek(0)
    stamp = time.strftime("%Y%m%d", time.gmtime(now))
    return out, f"{top}-{stamp}.zip"
