"""One page for a bundle, for people: `posagent bundle html` (a self-contained file) and the
collector's bundle page (`collector.pages.render_bundle`) are this module's `render_body`.

The page leads with what happened (the fault in words, its severity and summary), where
(terminal and site), when (created, received, a note when the terminal's clock looks off),
the remedy (a slot the caller fills: `PageContext.remedy_html`) and the screenshot at a
readable size; then the timeline chart; then, folded, the fault record with its readings,
the report, the diagnostics, the other entries, the bundle's facts and the manifest. Every
value from the bundle passes `esc`.

Bounded whatever the bundle holds (issue 15 item 9): time and memory are linear in what is
read, and what is read and shown is capped.

- The chart reads the first `TIMELINE_READ_BYTES` of timeline.json one reading at a time
  (`TimelineReadings`: never the whole document as objects), in two passes; it draws at
  most `CHART_SOURCES` rows (the sources with failed readings first, then the busiest) of
  at most `CHART_MARKS` marks (readings falling on one mark are merged, a failed one shows)
  and says what it left out ("and 49,980 more sources").
- A text entry shows its first `ENTRY_PREVIEW_BYTES` (only those are decompressed), the
  entries together at most `ENTRIES_TEXT_BYTES`; the rest is cut with a link to the whole
  entry (the collector) or a note (a file). At most `MAX_ENTRIES_LISTED` entries are listed.
- JSON shown to people (the fault's readings, a mark's values) is printed by `bounded_json`:
  at most so many characters and levels.
- The self-contained file inlines a screenshot of at most `INLINE_SCREENSHOT_BYTES`.

With these caps a page is at most about 2 MB whatever the bundle (every character of the
shown text may escape to 6).

Words: the page's own texts are English and marked `_` for the collector's gettext
catalogs (collector/locale, `make i18n`); `PageContext.gettext` translates them for one
render (`render_body` holds it in a ContextVar while it runs); the agent's own file
(`render_html`) is English. Fault keys, entry names, units and numbers are never
translated.
"""

from __future__ import annotations

import base64
import contextlib
import heapq
import json
import json.scanner
import math
import re
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from agent.bundle.format import MANIFEST, SIGNATURE, BundleReader
from agent.bundle.remedies import CLEARED_NOTE, N_, remedy
from agent.bundle.schema import EARLIEST, ManifestError, parse_created_at, plausible_time
from agent.bundle.style import CSS, esc
from agent.core.timefmt import MAX_EPOCH_S, short_utc

SEVERITIES = (N_("critical"), N_("error"), N_("warning"))  # N_: the badge's words
# A trigger's kinds (agent.bundle.trigger.TriggerKind) in words
TRIGGER_KINDS = {
    "fault": N_("fault"),
    "cleared": N_("cleared"),
    "manual": N_("manual"),
    "startup": N_("startup"),
}

TIMELINE_READ_BYTES = 8 * 1024 * 1024  # the agent's 20,000-reading window is about 4 MB
WHOLE_PARSE_BYTES = 1024 * 1024  # a timeline not of the usual form is parsed whole up to this
CHART_SOURCES = 20
CHART_MARKS = 100  # per row: a mark every 8 px of a 1000 px chart
MARK_TITLE_CHARS = 48
ENTRY_PREVIEW_BYTES = 24 * 1024
ENTRIES_TEXT_BYTES = 128 * 1024
MANIFEST_PREVIEW_BYTES = 24 * 1024
JSON_PREVIEW_CHARS = 16 * 1024
JSON_DEPTH = 8
MAX_ENTRIES_LISTED = 50
INLINE_SCREENSHOT_BYTES = 8 * 1024 * 1024
SHOWN_ELSEWHERE = (MANIFEST, SIGNATURE, "report.txt", "screenshot.png", "timeline.json")

BAD_WHEN_TRUE = frozenset(
    {
        "cover_open",
        "paper_end",
        "paper_near_end",
        "cutter_error",
        "unrecoverable",
        "auto_recoverable",
        "identity_changed",
        "updates_stopped",
    }
)
BAD_WHEN_FALSE = frozenset(
    {
        "online",
        "running",
        "carrier",
        "connect_ok",
        "dns_ok",
        "tls_ok",
        "ac_online",
        "default_route",
        "clock_synced",
    }
)


# --------------------------------------------------------------------------- small helpers

_TRANSLATE: ContextVar[Callable[[str], str]] = ContextVar("bundle_page_gettext", default=str)


@contextlib.contextmanager
def in_language(gettext: Callable[[str], str]) -> Iterator[None]:
    """The pages' texts (`_`) made inside the block in gettext's language: `render_body`'s,
    and a caller's of `timeline_svg` (the collector's dispute export)."""
    token = _TRANSLATE.set(gettext)
    try:
        yield
    finally:
        _TRANSLATE.reset(token)


def _(message: str) -> str:
    """A text of the page in the reader's language (`PageContext.gettext` while
    `render_body` runs; English otherwise)."""
    return _TRANSLATE.get()(message)


def fmt_size(n: int) -> str:
    """Bytes for people."""
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.0f} KiB"
    return f"{n} B"


def sev_badge(sev: str, gettext: Callable[[str], str] | None = None) -> str:
    """A coloured severity label; a known severity in words of gettext (default: the
    page's, `_`), another value as it is."""
    if sev in SEVERITIES:
        return f'<span class="sev sev-{sev}">{esc((gettext or _)(sev))}</span>'
    return f'<span class="sev sev-info">{esc(sev or "-")}</span>'


def fault_words(key: str, kind: str = "") -> str:
    """A fault key in words: "printer.paper_end" is "Printer: paper end"."""
    if key == "manual.report" or (not key and kind == "manual"):
        return _("Manual report from the terminal")
    if not key:
        return (kind or "bundle").capitalize()
    area, _sep, rest = key.partition(".")
    words = rest.replace("_", " ").replace(".", ", ").strip()
    text = f"{area.replace('_', ' ').capitalize()}: {words}" if words else area.capitalize()
    return text + (" " + _("(cleared)") if kind == "cleared" else "")


def site_html(registered: str, claimed: object) -> str:
    """The registered site; the manifest's own claim beside it, marked unverified."""
    none = _("none registered")
    shown = esc(registered) if registered else f"<span class='muted'>{esc(none)}</span>"
    if isinstance(claimed, str) and claimed and claimed != registered:
        claim = _("(the device claims {site}: unverified)").format(site=claimed)
        shown += f" <span class='muted' id='claimed-site'>{esc(claim)}</span>"
    return shown


def span_words(seconds: float) -> str:
    """A duration for people: "45 s", "12 min", "3 h 5 min", "4 days"."""
    s = abs(seconds)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 2 * 86400:
        return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"
    return f"{s / 86400:.4g} days"


def looks_bad(values: Mapping[str, Any]) -> bool:
    """Whether a reading's values show a device problem (the red marks of the chart)."""
    for k, v in values.items():
        if (k in BAD_WHEN_TRUE and v is True) or (k in BAD_WHEN_FALSE and v is False):
            return True
        if k in ("link", "state") and isinstance(v, str) and v not in ("ok", "up"):
            return True
    return bool(values.get("unexpected"))


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _obj(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


class _Full(Exception):
    pass


def bounded_json(
    value: Any,
    max_chars: int = JSON_PREVIEW_CHARS,
    max_depth: int = JSON_DEPTH,
    *,
    indent: int | None = 1,
) -> str:
    """JSON text of value cut at max_chars (marked "…") with containers deeper than
    max_depth shown as "[…]"/"{…}": the work is bounded by max_chars, not by the value."""
    out: list[str] = []
    used = 0
    nl = "\n" if indent is not None else ""
    sep = ": " if indent is not None else ":"

    def put(s: str) -> None:
        nonlocal used
        out.append(s)
        used += len(s)
        if used > max_chars:
            raise _Full

    def pad(level: int) -> str:
        return nl + " " * ((indent or 0) * level)

    def walk(v: Any, level: int) -> None:
        if isinstance(v, Mapping | list | tuple):
            opening, closing = ("{", "}") if isinstance(v, Mapping) else ("[", "]")
            if not v:
                put(opening + closing)
                return
            if level >= max_depth:
                put(opening + "…" + closing)
                return
            put(opening)
            items = v.items() if isinstance(v, Mapping) else enumerate(v)
            for i, (k, x) in enumerate(items):
                put(("," if i else "") + pad(level + 1))
                if isinstance(v, Mapping):
                    put(json.dumps(str(k)[:max_chars], ensure_ascii=False) + sep)
                walk(x, level + 1)
            put(pad(level) + closing)
        elif isinstance(v, str):
            put(json.dumps(v[:max_chars], ensure_ascii=False))
        elif v is None or isinstance(v, bool | int | float):
            put(json.dumps(v))
        else:
            put(json.dumps(str(v)[:max_chars], ensure_ascii=False))

    try:
        walk(value, 0)
    except _Full:
        return "".join(out)[:max_chars] + "…"
    return "".join(out)


# --------------------------------------------------------------------------- the timeline

_HEAD = re.compile(r'\s*\{\s*"readings"\s*:\s*\[')
_WS = re.compile(r"[ \t\n\r]*")


class TimelineReadings:
    """The readings of a timeline.json text, decoded one at a time.

    The agent writes ``{"readings": [...]}``: each reading is decoded from the text and let
    go, so memory is the text, one reading and its position, whatever the number of
    readings; `at(k)` decodes the k-th reading again. Another form is parsed whole when it
    is at most WHOLE_PARSE_BYTES. `problem` says why reading stopped early."""

    def __init__(self, data: bytes):
        self._text = data.decode("utf-8", "replace")
        self.problem = ""
        head = _HEAD.match(self._text)
        self._start = head.end() if head else -1
        self._whole: list[Mapping[str, Any]] = [] if head else self._parse_whole(len(data))
        self._offsets = array("q")  # where each reading yielded by the last iteration starts
        # the C scanner itself (raw_decode is a Python wrapper around it); typeshed types it oddly
        self._scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]

    def _parse_whole(self, size: int) -> list[Mapping[str, Any]]:
        if size > WHOLE_PARSE_BYTES:
            self.problem = _('timeline.json is not of the form {"readings": [...]}: not charted')
            return []
        try:
            tl = json.loads(self._text)
        except RecursionError:
            self.problem = _("timeline.json is nested too deep: not charted")
            return []
        except ValueError:
            self.problem = _("timeline.json is not JSON: not charted")
            return []
        readings = tl.get("readings") if isinstance(tl, dict) else None
        if not isinstance(readings, list):
            self.problem = _("timeline.json holds no list of readings")
            return []
        return [r for r in readings if isinstance(r, Mapping)]

    def at(self, k: int) -> Mapping[str, Any]:
        """The k-th reading of the last iteration, decoded again."""
        if self._start < 0:
            return self._whole[k]
        obj: Mapping[str, Any] = self._scan(self._text, self._offsets[k])[0]
        return obj

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        if self._start < 0:
            yield from self._whole
            return
        text, scan, ws, offsets = self._text, self._scan, _WS.match, array("q")
        self._offsets = offsets
        i = ws(text, self._start).end()  # type: ignore[union-attr]
        if text.startswith("]", i):
            return
        n = 0
        while True:
            try:
                obj, end = scan(text, i)
            except RecursionError:
                self.problem = _(
                    "timeline.json: reading {n} is nested too deep; charted up to it"
                ).format(n=n + 1)
                return
            except (StopIteration, ValueError):
                self.problem = _("timeline.json: reading {n} is not JSON; charted up to it").format(
                    n=n + 1
                )
                return
            n += 1
            if isinstance(obj, Mapping):
                offsets.append(i)
                yield obj
            i = end
            if text[i : i + 1] not in (",", "]"):
                i = ws(text, i).end()  # type: ignore[union-attr]
            if text.startswith(",", i):
                i += 1
                if text[i : i + 1] in (" ", "\n", "\r", "\t"):
                    i = ws(text, i).end()  # type: ignore[union-attr]
            elif text.startswith("]", i):
                return
            else:
                self.problem = _(
                    "timeline.json: no ',' or ']' after reading {n}; charted up to it"
                ).format(n=n)
                return


def _source(v: Any) -> str:
    if isinstance(v, str):
        return v[:200]
    if v is None or isinstance(v, bool | int | float):
        return str(v)
    return "(not a name)"


def _bad(r: Mapping[str, Any]) -> bool:
    values = r.get("values")
    return (not r.get("ok", True)) or looks_bad(values if isinstance(values, Mapping) else {})


def _mark_title(r: Mapping[str, Any], n: int) -> str:
    text = bounded_json(r.get("values"), MARK_TITLE_CHARS, 3, indent=None)
    return (_("{n} readings; ").format(n=n) if n > 1 else "") + text


def _fetch(readings: Iterable[Mapping[str, Any]], wanted: set[int]) -> dict[int, Mapping[str, Any]]:
    """The readings at these positions of an iteration: again by position when the source
    can (`TimelineReadings.at`, a list), else by iterating once more."""
    if isinstance(readings, TimelineReadings):
        return {k: readings.at(k) for k in wanted}
    if isinstance(readings, Sequence):
        return {k: readings[k] for k in wanted}
    return {k: r for k, r in enumerate(readings) if k in wanted}


def timeline_svg(readings: Iterable[Mapping[str, Any]], width: int = 1000, row_h: int = 22) -> str:
    """An SVG swim-lane chart: one row per source, a mark per reading (red when not ok),
    followed by notes on what it left out.

    One pass over the readings keeps a source number, time and verdict per reading
    (arrays: a few bytes each); the marks are made from those, and only the readings
    shown as marks are fetched again (`_fetch`) for their values. Time and memory are
    linear in the readings, the output at most CHART_SOURCES x CHART_MARKS marks. A
    reading whose ``ts`` is not a finite number is left out and counted: a timeline is
    the device's word and must never break the page."""
    ids: dict[str, int] = {}
    counts: list[int] = []  # per source id
    fails: list[int] = []
    src, times, bad, pos = array("i"), array("d"), bytearray(), array("q")
    skipped = 0
    for k, r in enumerate(readings):
        ts = r.get("ts", 0)
        if not _finite(ts):
            skipped += 1
            continue
        sid = ids.setdefault(_source(r.get("source")), len(ids))
        if sid == len(counts):
            counts.append(0)
            fails.append(0)
        failed = _bad(r)
        counts[sid] += 1
        fails[sid] += failed
        src.append(sid)
        times.append(float(ts))
        bad.append(failed)
        pos.append(k)
    notes = []
    if skipped:
        notes.append(_("{n} reading(s) without a valid time left out.").format(n=f"{skipped:,}"))
    total = len(times)
    if not total:
        none = _("No readings in the timeline.")
        return f"<p>{esc(none)}</p>" + "".join(f"<p>{esc(n)}</p>" for n in notes)
    t0, t1 = min(times), max(times)
    half = max(t1 / 2 - t0 / 2, 0.5)  # halves: 1e308 - -1e308 would overflow
    names = list(ids)
    chosen = heapq.nsmallest(
        CHART_SOURCES, range(len(names)), key=lambda i: (-min(fails[i], 1), -counts[i], names[i])
    )
    rows = sorted(chosen, key=lambda i: names[i])
    row_of = {sid: row for row, sid in enumerate(rows)}
    marks: dict[tuple[int, int], list[int]] = {}  # (row, bucket) -> [readings, bad, j]
    for j in range(total):
        row = row_of.get(src[j])
        if row is None:
            continue
        key = (row, min(CHART_MARKS - 1, int((times[j] / 2 - t0 / 2) / half * CHART_MARKS)))
        m = marks.get(key)
        if m is None:
            marks[key] = [1, bad[j], j]
        else:
            m[0] += 1
            if bad[j] and not m[1]:
                m[1], m[2] = 1, j
    shown = _fetch(readings, {pos[m[2]] for m in marks.values()})
    left = 160
    h = row_h * len(rows) + 30
    axis = span_words(t1 - t0) if math.isfinite(t1 - t0) else f"{half / 43200:.4g} days"
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img">']
    for i, sid in enumerate(rows):
        y, s = 20 + i * row_h, names[sid]
        label = s if len(s) <= 24 else s[:23] + "…"
        parts.append(f'<text x="0" y="{y + 4}">{esc(label)}<title>{esc(s)}</title></text>')
        parts.append(f'<line x1="{left}" y1="{y}" x2="{width - 10}" y2="{y}" stroke="#eee"/>')
    for (row, _bucket), (n, red, j) in marks.items():
        y = 20 + row * row_h
        x = left + (times[j] / 2 - t0 / 2) / half * (width - left - 20)
        color = "#d33" if red else "#3a3"
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y}" r="4" fill="{color}">'
            f"<title>{esc(_mark_title(shown[pos[j]], n))}</title></circle>"
        )
    parts.append(
        f'<text x="{left}" y="{h - 4}">-{esc(axis)}</text>'
        f'<text x="{width - 60}" y="{h - 4}">' + esc(_("trigger")) + "</text></svg>"
    )
    notes.insert(
        0,
        _("{n} reading(s) from {sources} source(s); red marks failed or faulty readings.").format(
            n=f"{total:,}", sources=f"{len(names):,}"
        ),
    )
    if len(names) > len(rows):
        hidden = len(names) - len(rows)
        hidden_n = total - sum(counts[sid] for sid in rows)
        notes.append(
            _(
                "And {hidden} more sources ({n} readings) not drawn: the chart shows "
                "{rows} sources, those with failed readings first, then the busiest."
            ).format(hidden=f"{hidden:,}", n=f"{hidden_n:,}", rows=len(rows))
        )
    drawn = sum(m[0] for m in marks.values())
    if drawn > len(marks):
        notes.append(
            _(
                "{n} readings drawn as {marks} marks: readings falling on one mark "
                "are merged (a failed one shows)."
            ).format(n=f"{drawn:,}", marks=f"{len(marks):,}")
        )
    return "".join(parts) + "".join(f"<p class='muted'>{esc(n)}</p>" for n in notes)


# --------------------------------------------------------------------------- the page


@dataclass(frozen=True)
class PageContext:
    """What the page knows besides the bundle: the collector's view of it, or a file's.

    entry_url: an entry's URL (the collector), or None for a self-contained file (the
    screenshot inlined, a cut entry pointing at `posagent bundle extract`).
    registered_site: the site the collector registered the device at; None when no
    registration is known (a file: the manifest's site is shown as the terminal's word).
    facts: more rows of "About this bundle", already HTML.
    remedy_html: the remedy block, HTML made by the caller, shown beside what happened.
    gettext: the page's own texts in the reader's language (English: as they are).
    """

    signature_checked: bool
    entry_url: Callable[[str], str] | None = None
    download_url: str = ""
    manifest_url: str = ""
    received_at: float | None = None
    registered_site: str | None = None
    facts: tuple[tuple[str, str], ...] = ()
    remedy_html: str = ""
    gettext: Callable[[str], str] = str


class _Budget:
    """Bytes of entry text the page may still show."""

    def __init__(self, n: int):
        self.left = n


def _text_entry(
    reader: BundleReader, name: str, ctx: PageContext, budget: _Budget, eid: str = ""
) -> str:
    """An entry's first bytes as text (within the budget), cut with a link or a note."""
    size = reader.size(name)
    take = min(ENTRY_PREVIEW_BYTES, budget.left, size)
    head = reader.read_head(name, take) if take > 0 else b""
    budget.left -= len(head)
    idattr = f" id='{esc(eid)}'" if eid else ""
    html = f"<pre{idattr}>{esc(head.decode('utf-8', 'replace'))}</pre>" if head or not size else ""
    if len(head) < size:
        what = (
            _("truncated — showing the first {shown} of {size}").format(
                shown=fmt_size(len(head)), size=fmt_size(size)
            )
            if head
            else _("not shown ({size}): the page shows at most {most} of entries").format(
                size=fmt_size(size), most=fmt_size(ENTRIES_TEXT_BYTES)
            )
        )
        if ctx.entry_url is not None:
            full = esc(_("download the full entry"))
            where = f"<a href='{esc(ctx.entry_url(name))}'>{full}</a>"
        else:
            where = esc(_("the full entry is in the bundle (posagent bundle extract)"))
        html += f"<p class='cut'>{esc(what)}: {where}.</p>"
    return html


def _text(trig: Mapping[str, Any], name: str, limit: int) -> str:
    """A trigger field as text, cut at the format's limit (a file's trigger is not checked
    field by field as ingest checks it: `agent.bundle.trigger`)."""
    v = trig.get(name)
    return "" if v is None else str(v)[:limit]


def _headline(trig: Mapping[str, Any]) -> str:
    key, kind = _text(trig, "key", 100), _text(trig, "kind", 40)
    sev = _text(trig, "severity", 40)
    kind_words = _(TRIGGER_KINDS[kind]) if kind in TRIGGER_KINDS else kind or "-"
    parts = [
        f"<h1 id='what'>{esc(fault_words(key, kind))} {sev_badge(sev)}</h1>",
        f"<p class='muted'><span class='mono' id='fault-key'>{esc(key or '-')}</span>"
        f" · {esc(kind_words)}</p>",
    ]
    if summary := _text(trig, "summary", 2000):
        parts.append(f"<p class='summary' id='summary'>{esc(summary)}</p>")
    if note := _text(trig, "note", 10_000):
        label = esc(_("The terminal's note:"))
        parts.append(f"<p id='note'><b>{label}</b> {esc(note)}</p>")
    if contact := _text(trig, "contact", 500):
        parts.append("<p id='contact'><b>" + esc(_("Contact:")) + f"</b> {esc(contact)}</p>")
    return "".join(parts)


def _rows(rows: Iterable[tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)


def clock_notes(m: Mapping[str, Any], received_at: float | None) -> list[str]:
    """What people should know about the times of a bundle (plain text, to escape)."""
    notes = []
    try:
        created: float | None = parse_created_at(m.get("created_at"))
    except ManifestError:
        created = None
        notes.append(_("The terminal wrote no valid creation time."))
    if m.get("clock_synced") is False:
        notes.append(
            _(
                "The terminal's clock was not synchronised when it made this bundle: "
                "its times may be off."
            )
        )
    if created is None:
        return notes
    if received_at is None:
        if created < EARLIEST:
            notes.append(_("The terminal's clock was wrong (a time before 2000)."))
    elif not plausible_time(created, received_at):
        notes.append(
            _(
                "The terminal's clock was wrong (a time before 2000 or in the future): "
                "the bundle is listed at the time it arrived."
            )
        )
    elif created - received_at > 300:
        notes.append(
            _(
                "The terminal's clock is about {span} ahead: it dated the bundle after it arrived."
            ).format(span=span_words(created - received_at))
        )
    elif received_at - created > 3600:
        notes.append(
            _(
                "It arrived {span} after it was made "
                "(queued while the terminal was offline, or its clock is behind)."
            ).format(span=span_words(received_at - created))
        )
    return notes


def _when(m: Mapping[str, Any], trig: Mapping[str, Any], ctx: PageContext) -> str:
    raw = str(m.get("created_at"))[:40]
    try:
        created = parse_created_at(m.get("created_at"))
        shown = short_utc(created) if 0 <= created <= MAX_EPOCH_S else raw
    except ManifestError:
        shown = raw
    title = _("as the terminal wrote it: {raw}").format(raw=raw)
    rows = [(_("Created"), f"<span title='{esc(title)}'>{esc(shown)}</span>")]
    if ctx.received_at is not None:
        rows.append((_("Received"), esc(short_utc(ctx.received_at))))
    for k, label in (("raised_at", _("Raised")), ("cleared_at", _("Cleared"))):
        if trig.get(k):
            rows.append((label, esc(_text(trig, k, 40))))
    if _finite(trig.get("duration_s")):
        rows.append((_("Lasted"), esc(span_words(float(trig["duration_s"])))))
    notes = clock_notes(m, ctx.received_at)
    if notes:
        rows.append(("", "<span id='clock-note'>" + " ".join(esc(n) for n in notes) + "</span>"))
    heading = esc(_("When"))
    return f"<h2>{heading}</h2><table class='facts' id='when'>" + _rows(rows) + "</table>"


def _where(dev: Mapping[str, Any], ctx: PageContext) -> str:
    terminal = (
        f"{esc(dev.get('id'))} <span class='muted'>({esc(dev.get('model') or '-')}, "
        + esc(_("serial"))
        + f" {esc(dev.get('serial') or '-')})</span>"
    )
    if ctx.registered_site is None:
        says = esc(_("(as the terminal says)"))
        site = esc(dev.get("site") or "-") + f" <span class='muted'>{says}</span>"
    else:
        site = site_html(ctx.registered_site, dev.get("site"))
    rows = [(_("Terminal"), terminal), (_("Site"), site)]
    heading = esc(_("Where"))
    return f"<h2>{heading}</h2><table class='facts' id='where'>" + _rows(rows) + "</table>"


def _screenshot(reader: BundleReader, m: Mapping[str, Any], ctx: PageContext) -> str:
    status = str(_obj(m.get("redaction")).get("screenshot") or "")
    if "screenshot.png" not in reader.names:
        why = status or _("not captured")
        return "<p class='muted'>" + esc(_("No screenshot: {why}").format(why=why)) + "</p>"
    note = f"<p class='muted'>{esc(status)}</p>" if status and status != "captured" else ""
    alt = esc(_("the terminal's screen when the bundle was made"))
    if ctx.entry_url is not None:
        url = esc(ctx.entry_url("screenshot.png"))
        full, click = esc(_("open at full size")), esc(_("Click the screenshot for full size."))
        return (
            f"<a href='{url}' id='screenshot-link' title='{full}'>"
            f"<img class='shot' id='screenshot' alt='{alt}' src='{url}'></a>"
            f"<p class='muted'>{click}</p>{note}"
        )
    size = reader.size("screenshot.png")
    if size > INLINE_SCREENSHOT_BYTES:
        big = _(
            "The screenshot ({size}) is too large to inline: "
            "it is in the bundle (posagent bundle extract)."
        ).format(size=fmt_size(size))
        return f"<p class='muted'>{esc(big)}</p>" + note
    b64 = base64.b64encode(reader.read("screenshot.png")).decode()
    return f"<img class='shot' id='screenshot' alt='{alt}' src='data:image/png;base64,{b64}'>{note}"


def _timeline(reader: BundleReader, ctx: PageContext) -> str:
    if "timeline.json" not in reader.names:
        return ""
    size = reader.size("timeline.json")
    head = reader.read_head("timeline.json", TIMELINE_READ_BYTES)
    readings = TimelineReadings(head)
    chart = timeline_svg(readings)
    notes = []
    if size > len(head):
        notes.append(
            _("timeline.json is {size}: the chart reads its first {read}.").format(
                size=fmt_size(size), read=fmt_size(len(head))
            )
        )
    elif readings.problem:
        notes.append(readings.problem)
    link = ""
    if ctx.entry_url is not None:
        link = f" <a href='{esc(ctx.entry_url('timeline.json'))}'>timeline.json</a>"
    notes_html = "".join(f"<p class='cut'>{esc(n)}</p>" for n in notes)
    heading = esc(_("Timeline"))
    recorded = esc(_("The readings the terminal recorded before the bundle."))
    return (
        f"<h2>{heading}</h2><div class='card svgwrap' id='timeline'>{chart}{notes_html}"
        f"<p class='muted'>{recorded}{link}</p></div>"
    )


def _fault_record(trig: Mapping[str, Any]) -> str:
    rows = []
    for k in (
        "kind",
        "key",
        "subject",
        "severity",
        "summary",
        "raised_at",
        "cleared_at",
        "duration_s",
        "suppressed",
        "note",
        "contact",
    ):
        if trig.get(k) not in (None, ""):
            text = _text(trig, k, 10_000)
            val = sev_badge(text) if k == "severity" else esc(text)
            rows.append(f"<tr><th>{esc(k)}</th><td>{val}</td></tr>")
    readings = trig.get("readings")
    if isinstance(readings, list) and readings:
        rows.append(
            "<tr><th>readings</th><td><pre id='fault-readings'>"
            + esc(bounded_json(readings))
            + "</pre></td></tr>"
        )
    summary = esc(_("Fault record: the readings that raised it"))
    return (
        f"<details id='fault-details'><summary>{summary}</summary>"
        "<table class='facts' id='fault'>" + "".join(rows) + "</table></details>"
    )


def _entries(reader: BundleReader, ctx: PageContext, budget: _Budget) -> str:
    names = reader.names
    diag = [n for n in names if n.startswith("diagnostics/")]
    others = [n for n in names if n not in SHOWN_ELSEWHERE and not n.startswith("diagnostics/")]
    listed = 0
    parts = []
    if diag:
        parts.append("<div id='diagnostics'><h3>" + esc(_("Diagnostics")) + "</h3>")
        for n in diag[:MAX_ENTRIES_LISTED]:
            listed += 1
            parts.append(
                f"<details><summary>{esc(n)} <span class='muted'>"
                f"{fmt_size(reader.size(n))}</span></summary>"
                f"{_text_entry(reader, n, ctx, budget)}</details>"
            )
        parts.append("</div>")
    room = max(0, MAX_ENTRIES_LISTED - listed)
    if others and room:
        items = []
        for n in others[:room]:
            listed += 1
            label = f"{esc(n)} <span class='muted'>{fmt_size(reader.size(n))}</span>"
            if ctx.entry_url is not None:
                label = f"<a href='{esc(ctx.entry_url(n))}'>{label}</a>"
            items.append(f"<li>{label}</li>")
        other = esc(_("Other entries"))
        parts.append(f"<h3>{other}</h3><ul id='other-entries'>" + "".join(items) + "</ul>")
    left = len(diag) + len(others) - listed
    if left > 0:
        where = _("download the bundle") if ctx.download_url else "posagent bundle extract"
        more = _("And {n} more entries not listed: {where}.").format(n=f"{left:,}", where=where)
        parts.append(f"<p class='cut'>{esc(more)}</p>")
    return "".join(parts)


def _about(m: Mapping[str, Any], ctx: PageContext) -> str:
    dev = _obj(m.get("device"))
    integrity = (
        _("entries verified, signature verified")
        if ctx.signature_checked
        else _("entries verified; signature not checked (no device key)")
    )
    rows = [
        (_("Bundle"), f"<span class='mono'>{esc(m.get('bundle_id'))}</span>"),
        (_("Platform"), f"{esc(dev.get('platform'))} / {esc(dev.get('target'))}"),
        (_("Agent"), esc(_obj(m.get("agent")).get("version") or "-")),
        (_("Integrity"), esc(integrity)),
        *ctx.facts,
    ]
    heading, about = esc(_("The bundle")), esc(_("About this bundle"))
    return (
        f"<h3>{heading}</h3><details id='about'><summary>{about}</summary>"
        "<table class='facts'>" + _rows(rows) + "</table></details>"
    )


def render_body(reader: BundleReader, ctx: PageContext) -> str:
    """The page's body: the lead (what, where, when, remedy, screenshot), the timeline,
    then the details folded, in ctx.gettext's language. Raises BundleError for a bundle it
    cannot read."""
    with in_language(ctx.gettext):
        return _body(reader, ctx)


def _body(reader: BundleReader, ctx: PageContext) -> str:
    m = reader.manifest()
    trig, dev = _obj(m.get("trigger")), _obj(m.get("device"))
    budget = _Budget(ENTRIES_TEXT_BYTES)
    actions = []
    if ctx.download_url:
        actions.append(
            f"<a class='button' id='download' href='{esc(ctx.download_url)}'>"
            + esc(_("Download bundle (.zip)"))
            + "</a>"
        )
    if ctx.manifest_url:
        actions.append(
            f"<a class='button light' href='{esc(ctx.manifest_url)}'>"
            + esc(_("Manifest (JSON)"))
            + "</a>"
        )
    remedy = f"<div id='remedy'>{ctx.remedy_html}</div>" if ctx.remedy_html else ""
    parts = [
        "<div class='lead'><div class='lead-text'>",
        _headline(trig),
        _where(dev, ctx),
        _when(m, trig, ctx),
        remedy,  # the remedy block (issue 15 item 5), HTML made by the caller
        f"<p class='actions'>{' '.join(actions)}</p>" if actions else "",
        "</div><div class='lead-shot card'>",
        _screenshot(reader, m, ctx),
        "</div></div>",
        _timeline(reader, ctx),
        "<h2>" + esc(_("Details")) + "</h2><div class='card' id='details'>",
        _fault_record(trig),
    ]
    if "report.txt" in reader.names:
        parts.append(
            "<details id='report-details'><summary>" + esc(_("Report (report.txt)")) + "</summary>"
            f"{_text_entry(reader, 'report.txt', ctx, budget, 'report')}</details>"
        )
    parts.append(_entries(reader, ctx, budget))
    parts.append(_about(m, ctx))
    manifest = _Budget(MANIFEST_PREVIEW_BYTES)
    parts.append(
        "<details id='manifest'><summary>" + esc(_("Manifest (manifest.json)")) + "</summary>"
        f"{_text_entry(reader, MANIFEST, ctx, manifest)}</details></div>"
    )
    return "".join(parts)


def remedy_section(key: str, *, cleared: bool = False) -> str:
    """The "What to do" section: the remedy of the fault key for the merchant and for support."""
    r = remedy(key)
    note = f"<p>{esc(CLEARED_NOTE)}</p>" if cleared else ""
    return (
        f"<h2>What to do</h2>{note}<table class='remedy'>"
        f"<tr><th>Merchant</th><td>{esc(r.merchant)}</td></tr>"
        f"<tr><th>Support</th><td>{esc(r.support)}</td></tr></table>"
    )


def render_html(
    reader: BundleReader, signature_checked: bool, remedy_html: str | None = None
) -> str:
    """The self-contained page of `posagent bundle html` (the screenshot a data: URI); the
    remedy is the built-in one of the bundle's fault key unless the caller gives its own."""
    m = reader.manifest()
    if remedy_html is None:
        trig = _obj(m.get("trigger"))
        remedy_html = remedy_section(
            str(trig.get("key") or ""), cleared=trig.get("kind") == "cleared"
        )
    ctx = PageContext(signature_checked=signature_checked, remedy_html=remedy_html)
    body = render_body(reader, ctx)
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>posagent bundle {esc(m.get('bundle_id'))}</title><style>{CSS}</style></head>"
        f"<body class='page'>{body}</body></html>\n"
    )
