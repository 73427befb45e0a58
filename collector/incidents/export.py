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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from agent.bundle.format import BundleError, BundleReader
from agent.bundle.html import in_language, timeline_svg
from agent.bundle.style import CSS, esc
from agent.core.timefmt import rfc3339
from collector import sealed
from collector.access import Principal
from collector.i18n import N_, current_language
from collector.i18n import gettext as _
from collector.incidents import render
from collector.incidents.as_json import detail_json
from collector.incidents.model import EventKind, GroupedBundle
from collector.incidents.queries import Detail
from collector.incidents.service import Incidents
from collector.pages import heads, sev_badge, shown_time, word

MAX_BUNDLES = 100
MAX_BYTES = 256 * 1024 * 1024
MAX_INLINE_PNG = 512 * 1024  # a larger screenshot is linked, not inlined
MAX_INLINE_TOTAL = 32 * 1024 * 1024  # past this, screenshots are linked
MAX_READINGS = 2000
MAX_REPORT = 256 * 1024

# The checks in words: English in incident.json (facts, as the API gives them), the
# reader's language on the page.
VERIFIED = N_("verified with the device's key on file")
NO_KEY = N_("entries verified; no device key on the collector to check the signature")
FAILED = N_("FAILED: {reason}")
DELETED = N_("deleted by retention before this export")
MISSING = N_("its stored file is missing")
UNREADABLE = N_("its contents are not readable on this collector: {reason}")
FULL = N_("original left out: the export is full")


@dataclass
class Checked:
    """One bundle as the export found it."""

    bundle_id: str
    trigger_kind: str
    at: float
    recorded_sha256: str = ""
    sha256: str = ""  # of the stored bytes, now
    size: int = 0
    signature: str = ""  # the check made now: VERIFIED, NO_KEY, FAILED or ""
    signature_error: str = ""  # FAILED's reason
    signature_ok: bool | None = None  # True verified, False failed, None not checkable
    at_receipt: bool = False  # whether ingest verified its signature
    included: bool = False
    notes: list[tuple[str, str]] = field(default_factory=list)  # (message, its {reason})
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
            "signature_now": self.words(self.signature, self.signature_error, str),
            "signature_ok": self.signature_ok,
            "included": self.included,
            "note": self.note(str),
        }

    @staticmethod
    def words(message: str, reason: str, translate: Callable[[str], str]) -> str:
        return translate(message).format(reason=reason) if message else ""

    def note(self, translate: Callable[[str], str]) -> str:
        """Why the bundle is not included or not readable, "" when it is."""
        return "; ".join(self.words(m, r, translate) for m, r in self.notes)


def _check(col: Any, b: GroupedBundle, budget: int) -> tuple[Checked, bytes]:
    """The checks of one bundle, and its stored bytes (b"" when not included)."""
    c = Checked(b.bundle_id, b.trigger_kind, b.at)
    r = b.record
    if r is None:
        c.notes.append((DELETED, ""))
        return c, b""
    c.recorded_sha256, c.at_receipt = r.sha256, r.signature_checked
    try:
        data = col.store.read(r)
    except KeyError:
        c.notes.append((MISSING, ""))
        return c, b""
    c.sha256, c.size = hashlib.sha256(data).hexdigest(), len(data)
    try:
        res = sealed.check_upload(col, r.device, data, col.device_key(r.device))
    except BundleError as e:
        c.signature, c.signature_error, c.signature_ok = FAILED, str(e), False
    else:
        if res.signature_checked:
            c.signature, c.signature_ok = VERIFIED, True
        else:
            c.signature = NO_KEY
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
        c.notes.append((UNREADABLE, str(e)))
    if len(data) > budget:
        c.notes.append((FULL, ""))
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
    said = esc(c.words(c.signature, c.signature_error, _) or _("not checked"))
    if c.signature_ok is not None:
        said = f"<span class='{'ok' if c.signature_ok else 'error'}'>{said}</span>"
    if c.sha256 and c.sha256 == c.recorded_sha256:
        digest = _("matches the digest recorded at receipt")
    elif c.sha256:
        digest = _("DIFFERS from the digest recorded at receipt")
    else:
        digest = _("not available")
    at_receipt = _("verified") if c.at_receipt else _("not checked (no key then)")
    facts = [
        (N_("Created"), esc(shown_time(c.at))),
        (N_("SHA-256 at receipt"), f"<span class='mono'>{esc(c.recorded_sha256 or '-')}</span>"),
        (N_("SHA-256 now"), f"<span class='mono'>{esc(c.sha256 or '-')}</span> ({esc(digest)})"),
        (N_("Signature at receipt"), esc(at_receipt)),
        (N_("Signature now"), said),
    ]
    if c.included:
        facts.append((N_("Original"), f"<a href='bundles/{bid}.zip'>bundles/{bid}.zip</a>"))
    if c.notes:
        facts.append((N_("Note"), esc(c.note(_))))
    title = esc(_("{kind} bundle").format(kind=word(c.trigger_kind)))
    parts = [
        f"<section class='card' id='b-{bid}'><h3>{title} <span class='mono'>{bid}</span></h3>",
        render.facts_table(facts, f"facts-{bid}"),
    ]
    if c.report:
        parts.append("<h4>" + esc(_("Report")) + f"</h4><pre>{esc(c.report)}</pre>")
    shot = esc(_("Screenshot"))
    if c.screenshot:
        if inline and len(c.screenshot) <= MAX_INLINE_PNG:
            b64 = base64.b64encode(c.screenshot).decode()
            parts.append(
                f"<h4>{shot}</h4><img class='shot' alt='{shot}' src='data:image/png;base64,{b64}'>"
            )
        else:
            parts.append(
                f"<h4>{shot}</h4><p><a href='bundles/{bid}/screenshot.png'>screenshot.png</a></p>"
            )
    if c.readings is not None:
        with in_language(_):
            svg = timeline_svg(c.readings)
        parts.append("<h4>" + esc(_("Timeline")) + f"</h4><div class='svgwrap'>{svg}</div>")
    parts.append("</section>")
    return "".join(parts)


def _section(bundle_id: str) -> str:
    """A bundle's section on the export's page (its evidence below)."""
    return f"#b-{bundle_id}"


def page(d: Detail, sections: list[str], now: float, by: str) -> str:
    """The export's index.html, in the language of the one who asked for it (`_`)."""
    inc = d.incident
    shown = _("the newest {shown} of {total} bundle(s), below").format(
        shown=len(sections), total=d.bundle_total
    )
    facts = [
        (N_("Status"), render.status_badge(inc.status.value)),
        (N_("Severity"), sev_badge(inc.severity)),
        *render.incident_facts(d, now, esc),
        (N_("In this export"), esc(shown)),
    ]
    notes = "".join(
        f"<tr><td>{esc(shown_time(float(n.detail.get('contact_at') or n.at)))}</td>"
        f"<td>{esc(n.actor)}</td><td>{esc(word(str(n.detail.get('channel'))))}</td>"
        f"<td>{esc(n.detail.get('contact'))}</td>"
        f"<td style='white-space:pre-wrap'>{esc(n.detail.get('text'))}</td></tr>"
        for n in d.notes
    )
    history = "".join(
        f"<tr><td>{esc(shown_time(e.at))}</td><td>{esc(word(e.kind.value))}</td>"
        f"<td>{esc(e.actor)}</td><td>{render.event_words(e, _section)}</td></tr>"
        for e in d.events
        if e.kind is not EventKind.NOTE
    )
    title = _("Incident #{id}: {fault} on terminal {terminal}").format(
        id=inc.id, fault=inc.fault_key, terminal=inc.device
    )
    intro = _(
        "Exported {time} by {who} from the posagent collector. Each bundle below is the "
        "terminal's own record, sealed on the terminal; its SHA-256 was recorded when the "
        "collector received it, and its signature is checked again for this export. The "
        "originals are in bundles/; SHA256SUMS lists the digest of every file (check them "
        "with: sha256sum -c SHA256SUMS)."
    ).format(time=shown_time(now), who=by)
    body = (
        f"<h1>{esc(title)}</h1><p>{esc(intro)}</p>"
        + render.facts_table(facts)
        + "<h2>"
        + esc(_("Contacts with the merchant"))
        + "</h2><table class='list'><thead><tr>"
        + heads(N_("When"), N_("Who"), N_("Channel"), N_("With"), N_("What was said and agreed"))
        + "</tr></thead><tbody>"
        + (notes or "<tr><td colspan='5'>" + esc(_("None recorded.")) + "</td></tr>")
        + "</tbody></table><h2>"
        + esc(_("History"))
        + "</h2><table class='list'><thead><tr>"
        + heads(N_("When"), N_("What"), N_("Who"), N_("Detail"))
        + f"</tr></thead><tbody>{history}</tbody></table>"
        + "<h2>"
        + esc(_("Evidence"))
        + "</h2>"
        + "".join(sections)
    )
    return (
        f"<!doctype html><html lang='{current_language()}'><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><style>{CSS}</style>{render.EXTRA_CSS}</head>"
        f"<body class='page'>{body}</body></html>\n"
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
