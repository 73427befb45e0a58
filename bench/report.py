"""Write docs/BENCHMARKS.md from bench/out/results.json (the figures of `python -m bench`).

Every row: the figure, its target (from the issues, or marked † when this
benchmark sets it for want of one), the value measured with its N, the peer
measured in the same run on the same input, the ratio, and the verdict.
A module that failed shows as a row that says so. Run: python -m bench.report
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "out" / "results.json"
DOC = HERE.parent / "docs" / "BENCHMARKS.md"


@dataclass
class Row:
    figure: str
    target: str
    measured: str
    peer: str = "—"
    peer_value: str = "—"
    ratio: str = "—"
    verdict: str = "—"


def get(res: dict[str, Any], *path: str) -> Any:
    """res[path...] or None when any step is missing."""
    cur: Any = res
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def verdict(ok: bool | None) -> str:
    if ok is None:
        return "not measured"
    return "meets" if ok else "**misses**"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.3f}×"


def _num(v: Any, unit: str = "", nd: int = 2) -> str:
    if v is None:
        return "not measured"
    if isinstance(v, float):
        return f"{v:.{nd}f}{unit}".rstrip()
    return f"{v}{unit}"


def _error(res: dict[str, Any], *path: str) -> str | None:
    e = get(res, *path, "error")
    return str(e) if e else None


# --------------------------------------------------------------------------- sections


def spool_rows(res: dict[str, Any]) -> list[Row]:
    p = get(res, "peers", "spool") or {}
    if "error" in p or not p:
        return [Row("spool enqueue (peers)", "—", f"FAILED: {p.get('error', 'not run')}")]
    n = f"median of {p['rounds']} rounds × {p['items_per_round']} bundles of {p['bundle_bytes']} B"
    ours = p.get("posagent_spool_per_s")
    rows = []
    for peer, key in (
        ("plain write → fsync → rename → fsync dir loop", "plain_rename_fsync_per_s"),
        ("persist-queue SQLiteAckQueue (WAL, commit per put)", "persist_queue_sqlite_ack_per_s"),
        (
            "plain write → rename loop, no fsync (what durability costs)",
            "plain_rename_no_fsync_per_s",
        ),
    ):
        pv = p.get(key)
        r = (ours / pv) if ours and pv else None
        is_target = key == "plain_rename_fsync_per_s"
        rows.append(
            Row(
                "spool enqueue rate, full fsync discipline",
                "≥ 0.8 × the plain loop with the same fsyncs †"
                if is_target
                else "(comparison only)",
                f"{_num(ours, ' /s', 1)} ({n})",
                peer,
                _num(pv, " /s", 1),
                ratio(ours, pv),
                verdict(r >= 0.8 if r is not None else None) if is_target else "—",
            )
        )
    empty_ms = 1000 / ours if ours else None
    q = p.get("posagent_enqueue_ms_with_10k_queued")
    rows.append(
        Row(
            "one enqueue with 10,000 bundles already queued",
            "≤ 2 × the empty-spool enqueue time †",
            f"{_num(q, ' ms')} (median of 20)",
            "same spool, empty (this run)",
            _num(empty_ms, " ms"),
            ratio(q, empty_ms),
            verdict(q <= 2 * empty_ms if q is not None and empty_ms else None),
        )
    )

    def dur(key: str) -> tuple[str, bool | None]:
        d = p.get(f"{key}_durability") or {}
        if not d:
            return "not measured", None
        order = d.get("renames_fsynced_both_sides")
        text = (
            f"{d['lost']} lost, {d['corrupt']} corrupt of {d['acked']} acknowledged in "
            f"{d['trials']} kill -9; {d.get('syncs_per_item', '?')} fsync/item"
            + (f"; renames fsynced before+after {order}" if order else "")
            + (f"; WAL syncs {d['wal_syncs']}" if "wal_syncs" in d else "")
        )
        ok = d["lost"] == 0 and d["corrupt"] == 0
        if order:
            done, total = (int(x) for x in str(order).split("/"))
            ok = ok and done == total and total > 0
        return text, ok

    ours_text, ours_ok = dur("posagent_spool")
    for i, (peer, key) in enumerate(
        (
            ("persist-queue SQLiteAckQueue", "persist_queue_sqlite_ack"),
            ("plain loop with fsyncs", "plain_rename_fsync"),
            ("plain loop without fsync", "plain_rename_no_fsync"),
        )
    ):
        peer_text, _ = dur(key)
        rows.append(
            Row(
                "spool durability",
                "0 acknowledged bundles lost; file fsynced before its rename, directory after (docs/ARCHITECTURE.md §5)",
                ours_text,
                peer,
                peer_text,
                "—",
                verdict(ours_ok) if i == 0 else "(same as above)",
            )
        )
    return rows


def escpos_rows(res: dict[str, Any]) -> list[Row]:
    p = get(res, "peers", "escpos") or {}
    if "error" in p or not p:
        return [Row("printer status (peers)", "—", f"FAILED: {p.get('error', 'not run')}")]
    rows = []
    h = p.get("healthy") or {}
    ours, peer = h.get("posagent_ms"), h.get("escpos_ms")
    rows.append(
        Row(
            "printer status query latency, healthy printer (pty)",
            "≤ 1000 ms per status poll (docs/ARCHITECTURE.md §8: reply within 1 s)",
            f"{_num(ours, ' ms', 1)} DLE EOT 1-4 (median of {h.get('runs')}); "
            f"{_num(h.get('posagent_n1_n4_ms'), ' ms', 1)} for n=1,4 only",
            "python-escpos Serial: open, is_online(), paper_status(), close",
            f"{_num(peer, ' ms', 1)} (median of {h.get('escpos_runs')})",
            ratio(ours, peer),
            verdict(ours <= 1000 if ours is not None else None),
        )
    )
    for cond in ("healthy", "paper_end", "silent", "garbage", "unplugged"):
        c = p.get(cond) or {}
        rows.append(
            Row(
                f"printer status answer: {cond.replace('_', ' ')}",
                f"the right answer: {c.get('right_answer')}",
                f"{c.get('posagent_answer')} in {_num(c.get('posagent_ms'), ' ms', 1)} "
                f"(N={c.get('runs')})",
                "python-escpos is_online() / paper_status()",
                f"{c.get('escpos_answer')} (returns {str(c.get('escpos_returns')).split(' (')[0]}) in "
                f"{_num(c.get('escpos_ms'), ' ms', 1)}; "
                + ("right" if c.get("escpos_right") else "**wrong**"),
                ratio(c.get("posagent_ms"), c.get("escpos_ms")),
                verdict(c.get("posagent_right")),
            )
        )
    return rows


def redact_rows(res: dict[str, Any]) -> list[Row]:
    p = get(res, "peers", "redact") or {}
    rows = []
    if "error" in p or not p:
        rows.append(Row("redaction (peers)", "—", f"FAILED: {p.get('error', 'not run')}"))
    else:
        ours, peer = p.get("posagent_mb_per_s"), p.get("scrubadub_mb_per_s")
        rows.append(
            Row(
                "redaction throughput, realistic log text (1 MiB, 64 KiB entries, CPU time)",
                "≥ 10 MB/s on one core (issue 2)",
                f"{_num(ours, ' MB/s', 1)} (median of {p.get('runs')})",
                "scrubadub, CreditCardDetector only",
                _num(peer, " MB/s", 1),
                ratio(ours, peer),
                verdict(ours >= 10 if ours is not None else None),
            )
        )
        o, s = p.get("posagent_recall") or {}, p.get("scrubadub_recall") or {}
        rows.append(
            Row(
                "redaction recall, hidden-format PAN corpus "
                f"({o.get('pans_present')} PANs: {o.get('formats')} formats × published test PANs)",
                "100 % (every corpus PAN removed, issue 2)",
                f"{_num(o.get('recall_pct'), ' %')} ({o.get('pans_masked')} masked; "
                f"{o.get('formats_fully_masked')}/{o.get('formats')} formats fully)",
                "scrubadub, CreditCardDetector only",
                f"{_num(s.get('recall_pct'), ' %')} ({s.get('pans_masked')} masked; "
                f"{s.get('formats_fully_masked')}/{s.get('formats')} formats fully; by kind "
                f"{s.get('recall_by_kind_pct')})",
                ratio(o.get("recall_pct"), s.get("recall_pct")),
                verdict(o.get("recall_pct") == 100.0 if o else None),
            )
        )
        o, s = p.get("posagent_lookalikes") or {}, p.get("scrubadub_lookalikes") or {}
        rows.append(
            Row(
                f"redaction false positives, look-alike corpus ({o.get('lookalikes')} lines)",
                "0 lines altered (issue 2)",
                f"{o.get('altered')} altered ({_num(o.get('false_positive_pct'), ' %')})",
                "scrubadub, CreditCardDetector only (no allow-list)",
                f"{s.get('altered')} altered ({_num(s.get('false_positive_pct'), ' %')}; "
                f"{', '.join(s.get('altered_categories') or []) or '-'})",
                "—",
                verdict(o.get("altered") == 0 if o else None),
            )
        )
    r = get(res, "redact") or {}
    if r and "error" not in r:
        v = r.get("entries_mb_per_s")
        rows.append(
            Row(
                "redaction throughput, bench_redact 4 MiB corpus (64 KiB entries, CPU time)",
                "≥ 10 MB/s on one core (issue 2)",
                f"{_num(v, ' MB/s', 1)} (best of 5); wall {_num(r.get('entries_wall_mb_per_s'), ' MB/s', 1)}; "
                f"line by line {_num(r.get('lines_mb_per_s'), ' MB/s', 1)}",
                "—",
                "—",
                "—",
                verdict(v >= 10 if v is not None else None),
            )
        )
    return rows


def screen_rows(res: dict[str, Any]) -> list[Row]:
    p = get(res, "peers", "screen") or {}
    if "error" in p or "skipped" in p or not p:
        why = p.get("error") or p.get("skipped") or "not run"
        return [Row("screenshot (peers)", "—", f"NOT MEASURED: {why}")]
    rows = []
    for size in ("320x240", "1024x768"):
        s = p.get(size) or {}
        ours = s.get("posagent_png_ms")
        mss_v = s.get("mss_png_ms")
        for peer, key, same in (
            ("mss grab + mss.tools.to_png", "mss_png_ms", "mss_same_pixels_pct"),
            (
                "ImageMagick `import -window root png:-`",
                "imagemagick_import_png_ms",
                "imagemagick_same_pixels_pct",
            ),
        ):
            pv = s.get(key)
            is_target = key == "mss_png_ms"
            rows.append(
                Row(
                    f"screenshot of an Xvfb screen {size} to PNG",
                    "≤ 1.25 × mss †" if is_target else "(comparison only)",
                    f"{_num(ours, ' ms')} (median of {s.get('runs')})",
                    peer,
                    f"{_num(pv, ' ms')}; same pixels as ours: {_num(s.get(same), ' %', 1)}"
                    if pv is not None
                    else str(s.get("imagemagick", "not measured")),
                    ratio(ours, pv),
                    verdict(ours <= 1.25 * mss_v if ours is not None and mss_v else None)
                    if is_target
                    else "—",
                )
            )
        rows.append(
            Row(
                f"raw X11 grab {size} (no PNG)",
                "(comparison only)",
                f"{_num(s.get('posagent_raw_ms'), ' ms')} (XGetImage)",
                "mss raw grab (XShm when available)",
                _num(s.get("mss_raw_ms"), " ms"),
                ratio(s.get("posagent_raw_ms"), s.get("mss_raw_ms")),
                "—",
            )
        )
    return rows


def upload_rows(res: dict[str, Any]) -> list[Row]:
    rows = []
    u = get(res, "upload") or {}
    if "error" in u or not u:
        rows.append(Row("upload drain (bench_upload)", "—", f"FAILED: {u.get('error', 'not run')}"))
    else:
        ours, bare = u.get("uploader_bundles_per_s"), u.get("bare_requests_bundles_per_s")
        r = u.get("uploader_vs_bare_ratio")
        rows.append(
            Row(
                f"drain rate of {u.get('bundles')} queued {u.get('bundle_kb')} KB bundles over loopback",
                "≥ 0.8 × a bare requests loop (issue 5)",
                f"{_num(ours, ' bundles/s', 1)} (median of 5 rounds, upload worker running; "
                f"{u.get('uploader_vs_bare_ratio_cold')}× when each round also starts the worker, "
                f"{u.get('worker_start_ms_per_drain')} ms)",
                "bare requests.Session loop PUTting the same files",
                _num(bare, " bundles/s", 1),
                f"{r:.3f}× (median of per-round ratios; min {u.get('uploader_vs_bare_ratio_min')})"
                if r is not None
                else "—",
                verdict(r >= 0.8 if r is not None else None),
            )
        )
        v = u.get("reconnect_first_put_ms_median")
        rows.append(
            Row(
                "first upload after the collector is reachable again",
                "≤ 2000 ms (issue 5)",
                f"{_num(v, ' ms', 1)} (median of 5; max {u.get('reconnect_first_put_ms_max')} ms)",
                verdict=verdict(
                    u.get("reconnect_first_put_ms_max", 1e9) <= 2000 if v is not None else None
                ),
            )
        )
    c = get(res, "collector") or {}
    if "error" in c or not c:
        rows.append(
            Row("collector ingest (bench_collector)", "—", f"FAILED: {c.get('error', 'not run')}")
        )
    else:
        v = c.get("ingest_per_s_1_client")
        rows.append(
            Row(
                "collector ingest over loopback, 1 client (fsync per bundle)",
                "≥ 100 bundles/s (issue 5)",
                f"{_num(v, ' bundles/s', 1)} (300 bundles, median {c.get('bundle_kb_median')} KB); "
                f"4 clients {c.get('ingest_per_s_4_clients')} /s; server CPU "
                f"{c.get('server_cpu_ms_per_bundle')} ms/bundle; load avg {c.get('load_avg_1m')}",
                verdict=verdict(v >= 100 if v is not None else None),
            )
        )
    return rows


def detect_rows(res: dict[str, Any]) -> list[Row]:
    d = get(res, "detect") or {}
    if "error" in d or not d:
        return [
            Row("detection latency (bench_detect)", "—", f"FAILED: {d.get('error', 'not run')}")
        ]
    rows = []
    interval = d.get("interval_s")
    for key, v in (d.get("latency") or {}).items():
        p95 = v.get("p95_s")
        rows.append(
            Row(
                f"detection latency {key} (interval {interval} s, raise after {v.get('raise_after')})",
                f"p95 ≤ {v.get('target_p95_s')} s (interval × raise_after + 0.5 s, issue 3)",
                f"p95 {_num(p95, ' s', 3)}, p50 {_num(v.get('p50_s'), ' s', 3)} (8 runs"
                + (f"; {v.get('missed')} missed" if v.get("missed") else "")
                + ")",
                verdict=verdict(bool(v.get("met"))),
            )
        )
    cpu = d.get("cpu") or {}
    if cpu:
        rows.append(
            Row(
                f"CPU per full poll cycle of all {cpu.get('monitors')} monitors",
                "≤ 50 ms (issue 3)",
                f"{_num(cpu.get('poll_once_cpu_ms_p50'), ' ms')} (median of 40 cycles; max "
                f"{cpu.get('poll_once_cpu_ms_max')} ms)",
                verdict=verdict(bool(cpu.get("met"))),
            )
        )
    return rows


def daemon_rows(res: dict[str, Any]) -> list[Row]:
    d = get(res, "daemon") or {}
    if "error" in d or not d:
        return [Row("daemon (bench_daemon)", "—", f"FAILED: {d.get('error', 'not run')}")]
    s, r = d.get("startup") or {}, d.get("running") or {}
    t = r.get("targets") or {}
    rows = [
        Row(
            f"start to READY=1 (real NOTIFY_SOCKET) with {s.get('queued')} bundles queued",
            "≤ 1.5 s (issue 6)",
            f"{_num(s.get('ready_s_queued'), ' s', 3)} (median of {s.get('runs')}; max {s.get('ready_s_queued_max')} s)",
            "same daemon, empty spool (this run)",
            f"{_num(s.get('ready_s_empty'), ' s', 3)} (median of 3)",
            ratio(s.get("ready_s_queued"), s.get("ready_s_empty")),
            verdict(s.get("ready_s_queued", 1e9) <= 1.5 if s else None),
        )
    ]
    win = r.get("idle_window_s")
    long_run = bool(r.get("long_run"))
    up = r.get("agent_uptime_s")
    rss_target = t.get("rss_mib", 40.0)
    for label, key in (
        ("RSS after start (settled, 8 s)", "rss_after_start_mib"),
        (
            f"RSS after {len(r.get('captures') or [])} fault captures (raise + clear, Xvfb screenshots) and their uploads",
            "rss_after_captures_uploads_mib",
        ),
        (f"RSS at the end of the run ({up} s after start)", "rss_end_mib"),
    ):
        v = r.get(key)
        rows.append(
            Row(
                label,
                f"≤ {rss_target:.0f} MB after 10 minutes (issue 6)"
                + ("" if long_run else "; this run is shorter than 10 minutes"),
                _num(v, " MiB"),
                verdict=verdict(v <= rss_target if v is not None else None),
            )
        )
    if long_run:
        v = r.get("rss_at_10_min_mib")
        rows.append(
            Row(
                "RSS 10 minutes after start",
                "≤ 40 MB (issue 6)",
                _num(v, " MiB"),
                verdict=verdict(v <= 40 if v is not None else None),
            )
        )
    g = r.get("rss_growth_over_window_mib")
    rows.append(
        Row(
            f"RSS growth over an idle window of {win:.0f} s after captures and uploads",
            "≤ 1 MB over 30 minutes (issue 6)",
            _num(g, " MiB"),
            verdict=(verdict(g <= 1.0) if g is not None else "not measured")
            + (
                ""
                if long_run
                else " over the short window only; the 30-minute run was not done (BENCH_LONG=1 runs it)"
            ),
        )
    )
    for label, key in (
        (
            f"CPU of the daemon at default intervals, idle window of {60 if long_run else win:.0f} s after start",
            "cpu_pct_idle",
        ),
        (
            f"CPU of the daemon at default intervals, {win:.0f} s after captures and uploads",
            "cpu_pct_after_captures",
        ),
    ):
        v = r.get(key)
        rows.append(
            Row(
                label,
                "≤ 0.5 % of one core (issue 6)",
                _num(v, " %", 3) + " (psutil cpu_times over the window)",
                verdict=verdict(v <= 0.5 if v is not None else None),
            )
        )
    p95 = r.get("fault_to_bundle_p95_s")
    rows.append(
        Row(
            "fault raised → bundle in the spool, with an Xvfb screenshot and every collector",
            "p95 ≤ 2 s (issue 4)",
            f"p95 {_num(p95, ' s', 3)}, p50 {_num(r.get('fault_to_bundle_p50_s'), ' s', 3)} "
            f"({len(r.get('captures') or [])} faults: {', '.join(c['key'] for c in r.get('captures') or [])}; "
            f"screenshot {', '.join(r.get('screenshots') or [])}; clear → cleared bundle p50 "
            f"{r.get('cleared_to_bundle_p50_s')} s)",
            verdict=verdict(p95 <= 2.0 if p95 is not None else None),
        )
    )
    v = r.get("capture_peak_above_idle_mib")
    rows.append(
        Row(
            "peak RSS during captures, above idle",
            "≤ 30 MB above idle (issue 4)",
            f"{_num(v, ' MiB')} (RSS sampled every 20 ms; peak {r.get('capture_peak_rss_mib')} MiB, VmHWM {r.get('vm_hwm_mib')} MiB)",
            verdict=verdict(v <= 30 if v is not None else None),
        )
    )
    w = r.get("workers_peak_rss_mib")
    if w is not None:
        rows.append(
            Row(
                "peak RSS of the daemon's short-lived children during captures and uploads",
                "— (screenshot worker per capture, sealing worker from a capture to a minute after, upload worker while uploading)",
                f"{_num(w, ' MiB')} (summed, sampled every 20 ms)",
                verdict="reported",
            )
        )
    return rows


def recorder_rows(res: dict[str, Any]) -> list[Row]:
    r = get(res, "recorder") or {}
    ours, old, old4 = (
        r.get(k) or {} for k in ("ours_journal_4s", "peer_rewrite_30s", "peer_rewrite_4s")
    )
    dev = "device_bytes_written_per_h" in ours

    def mib(d: dict[str, Any], k: str) -> str:
        return f"{d[k] / 2**20:.2f} MiB" if k in d else "—"

    key = "device_bytes_written_per_h" if dev else "bytes_written_per_h"
    where = "reaching the block device (ext4 on loop)" if dev else "written (syscalls)"
    rows = [
        Row(
            "readings lost to a power cut (longest gap between durable writes)",
            "≤ 5 s (issue 13)",
            f"{ours.get('max_s_between_durable_writes', '?')} s",
            "old scheme (whole window every 30 s)",
            f"{old.get('max_s_between_durable_writes', '?')} s",
            "—",
            "meets" if ours.get("max_s_between_durable_writes", 99) <= 5 else "misses",
        ),
        Row(
            f"flight recorder bytes per hour {where}, default intervals",
            "† ≤ the old scheme",
            mib(ours, key),
            "old scheme, every 30 s (loses ≤ 30 s)",
            mib(old, key),
            f"{ours[key] / old[key]:.3f}×" if ours.get(key) and old.get(key) else "—",
            "meets" if ours.get(key, 1) <= old.get(key, 0) else "misses",
        ),
        Row(
            f"flight recorder bytes per hour {where}, held to the same ≤ 5 s bound",
            "† ≤ the old scheme at 4 s",
            mib(ours, key),
            "old scheme, every 4 s",
            mib(old4, key),
            f"{ours[key] / old4[key]:.3f}×" if ours.get(key) and old4.get(key) else "—",
            "meets" if ours.get(key, 1) <= old4.get(key, 0) else "misses",
        ),
    ]
    req = "device_write_requests_per_h" if dev else "write_calls_per_h"
    rows.append(
        Row(
            f"flight recorder writes per hour ({'block write requests' if dev else 'write calls'}; fsyncs)",
            "— (reported)",
            f"{ours.get(req, '?')}; {ours.get('fsyncs_per_h', '?')} fsyncs",
            "old scheme, every 30 s / every 4 s",
            f"{old.get(req, '?')}; {old.get('fsyncs_per_h', '?')} fsyncs / "
            f"{old4.get(req, '?')}; {old4.get('fsyncs_per_h', '?')} fsyncs",
            "—",
            "reported",
        )
    )
    return rows


def pages_rows(res: dict[str, Any]) -> list[Row]:
    r = get(res, "pages") or {}
    before = {
        "sources_50000": ("a timeline of 50,000 sources", "16.5 s, every request stalled"),
        "entries_62_x_1mib": ("62 entries of 1 MiB (72 KB upload)", "260 MB page, 825 MB RSS"),
        "readings_100000": ("100,000 readings (12 MB timeline)", "—"),
        "realistic": ("a realistic bundle", "—"),
    }
    rows = []
    for key, (what, old) in before.items():
        f = r.get(key) or {}
        ok = f.get("page_bytes", 1e12) < 2e6 and f.get("render_s", 99) < 2
        rows.append(
            Row(
                f"bundle page, {what}: render (one core), page size, peak memory",
                "† < 2 s, < 2 MB (issue 15 item 9)",
                f"{_num(f.get('render_s'), ' s', 3)}, {f.get('page_bytes', '?')} B, "
                f"{f.get('peak_mib', '?')} MiB (n={f.get('n', '?')})",
                "before the bounds (issue 15)",
                old,
                "—",
                verdict(ok if f else None),
            )
        )
    c = r.get("chart_8mib_one_off_sources") or {}
    rows.append(
        Row(
            "timeline chart, worst input it reads (8 MiB of one-off sources)",
            "† < 2 s",
            f"{_num(c.get('render_s'), ' s', 3)}, {c.get('peak_mib', '?')} MiB peak",
            verdict=verdict(c.get("render_s", 99) < 2 if c else None),
        )
    )
    return rows


INCIDENT_READS = (
    ("incident_list_page", "incident list page /incidents"),
    ("incident_list_page_unresolved", "incident list page /incidents?status=unresolved"),
    ("api_list", "GET /v1/incidents"),
    ("api_list_unresolved", "GET /v1/incidents?status=unresolved"),
    ("api_list_site", "GET /v1/incidents?site=..."),
    ("api_list_fault", "GET /v1/incidents?fault=..."),
    ("api_list_device", "GET /v1/incidents?device=..."),
    ("home_page", "home page / (fault charts kept 30 s)"),
    ("home_service_uncached", "home page figures, fault charts not cached"),
    ("scoped_list_and_home_service", "list + home figures of a support user of 50 sites"),
    ("incident_page", "one incident's page"),
    ("fleet_faults_30d", "GET /v1/fleet/faults?days=30"),
)
ENGINE_NAMES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


def incidents_rows(res: dict[str, Any]) -> list[Row]:
    """Each engine's figure beside the other engine's (same data, same run)."""
    d = get(res, "incidents") or {}
    if "error" in d or not d:
        return [Row("incidents (bench_incidents)", "—", f"FAILED: {d.get('error', 'not run')}")]
    engines = {e: d[e] for e in ENGINE_NAMES if isinstance(d.get(e), dict)}
    if "reads" in d:  # a run from before both engines: SQLite only
        engines = {"sqlite": d}
    scale = (
        f"{d.get('bundles'):,} bundles in {d.get('incidents'):,} incidents over "
        f"{int(d.get('incidents', 0)) // 10:,} terminals"
    )
    rows = []
    for engine, e in engines.items():
        name = ENGINE_NAMES[engine]
        if "error" in e:
            rows.append(Row(f"incidents on {name}", "—", f"FAILED: {e['error']}"))
    ok = {k: v for k, v in engines.items() if "error" not in v}

    def peer_of(engine: str) -> tuple[str, dict[str, Any]] | None:
        other = [k for k in ok if k != engine]
        return (other[0], ok[other[0]]) if other else None

    for key, label in INCIDENT_READS:
        for engine, e in ok.items():
            v = get(e, "reads", key, "p95_ms")
            if v is None and key not in ("incident_list_page", "api_list", "home_page"):
                continue  # a figure this run did not measure
            peer = peer_of(engine)
            pv = get(peer[1], "reads", key, "p95_ms") if peer else None
            rows.append(
                Row(
                    f"{label}, p95, {ENGINE_NAMES[engine]}, {scale}",
                    "≤ 100 ms (issue 15)",
                    f"{_num(v, ' ms', 1)} (p50 {get(e, 'reads', key, 'p50_ms')} ms; "
                    f"{d.get('runs', 60)} runs; load average "
                    f"{e.get('load_avg_1m_before_reads', '?')}-{e.get('load_avg_1m_after_reads', '?')})",
                    f"{ENGINE_NAMES[peer[0]]}, same data (this run)" if peer else "—",
                    _num(pv, " ms", 1) if peer else "—",
                    ratio(v, pv),
                    verdict(v <= 100.0 if v is not None else None),
                )
            )
    for engine, e in ok.items():
        up = get(e, "reads", "uploads_at_scale") or {}
        slower = e.get("grouping_slows_ingest_pct")
        peer = peer_of(engine)
        fresh = (
            f"{_num(e.get('ingest_per_s_grouping_off'), '/s', 1)} vs "
            f"{_num(e.get('ingest_per_s_grouping_on'), '/s', 1)}, "
            f"{_num(e.get('ingest_per_s_grouping_on2'), '/s', 1)}"
        )
        rows.append(
            Row(
                "sustained ingest into that index, grouping on (until the last bundle is "
                f"grouped) vs off, {ENGINE_NAMES[engine]}",
                "≤ 10 % slower (issue 15: ingest within 10 % of the rate without grouping)",
                f"{_num(slower, ' %', 1)} slower ({_num(up.get('ingest_per_s_on'), '/s', 1)} vs "
                f"{_num(up.get('ingest_per_s_off'), '/s', 1)}; median of {up.get('pairs')} "
                f"pairs of rounds off/on, {up.get('n_per_mode')} uploads each way; of the "
                f"totals {_num(up.get('slower_pct_of_totals'), ' %', 1)}; the worker's "
                f"{up.get('batches')} batches of {up.get('batch_mean')} on average, "
                f"{up.get('worker_ms_per_bundle')} ms per bundle); CPU per upload "
                f"{up.get('cpu_ms_per_upload_on')} vs {up.get('cpu_ms_per_upload_off')} ms "
                f"({up.get('cpu_more_pct', 0):+} %, median of the pairs); grouping at scale "
                f"{get(e, 'reads', 'grouping_ms_per_bundle_batches_of_20', 'mean_ms')} ms per "
                f"bundle in batches of 20, "
                f"{get(e, 'reads', 'grouping_ms_per_bundle_one_at_a_time', 'mean_ms')} ms one "
                f"at a time; load average {e.get('load_avg_1m_before_reads')}-"
                f"{e.get('load_avg_1m_after_reads')}",
                f"{ENGINE_NAMES[peer[0]]} (this run); ingest on a fresh collector, grouping "
                "off vs on, on again"
                if peer
                else "ingest on a fresh collector, grouping off vs on, on again",
                (_num(peer[1].get("grouping_slows_ingest_pct"), " %", 1) + "; " if peer else "")
                + fresh,
                ratio(up.get("ingest_per_s_on"), up.get("ingest_per_s_off")),
                verdict(slower <= 10.0 if slower is not None else None),
            )
        )
    return rows


def fleet_rows(res: dict[str, Any]) -> list[Row]:
    f = get(res, "fleet") or {}
    if "error" in f or not f:
        return [Row("fleet (bench_fleet)", "—", f"FAILED: {f.get('error', 'not run')}")]
    run = f"run of {f.get('when')}" + (", QUICK sizes" if f.get("quick") else "")
    rows = []
    i = f.get("ingest") or {}
    if "error" in i or not i:
        rows.append(Row("fleet ingest", "—", f"FAILED: {i.get('error', 'not run')}"))
    else:
        bare = i.get("bare_s3_put_pg_insert_per_s")
        n = (
            f"{i.get('uploads_per_phase')} bundles of {f.get('bundle_kb_median')} KB from "
            f"{i.get('devices')} terminals, {i.get('concurrency')} keep-alive connections; {run}"
        )
        for k, label in ((1, "1 instance"), (2, "2 instances (generator round-robin)")):
            v = i.get(f"fleet_{k}_instance_per_s")
            r = v / bare if v and bare else None
            rows.append(
                Row(
                    f"ingest on PostgreSQL + SeaweedFS, {label}",
                    "≥ 0.7 × the engines' own limit (issue 14)",
                    f"{_num(v, ' bundles/s', 1)} ({n})",
                    "bare loop: boto3 PUT + PostgreSQL INSERT per bundle, same concurrency",
                    _num(bare, " /s", 1),
                    ratio(v, bare),
                    verdict(r >= 0.7 if r is not None else None),
                )
            )
        v = i.get("embedded_1_instance_per_s")
        rows.append(
            Row(
                "ingest on the embedded store (files + SQLite), 1 instance",
                "(reported beside the fleet engines, issue 14)",
                f"{_num(v, ' bundles/s', 1)} ({n})",
                "bare loop of the fleet engines (this run)",
                _num(bare, " /s", 1),
                ratio(v, bare),
                "reported",
            )
        )
    li = f.get("list") or {}
    if "error" in li or not li:
        rows.append(Row("list at 1M bundles", "—", f"FAILED: {li.get('error', 'not run')}"))
    else:
        for engine, name in (("postgres", "PostgreSQL"), ("sqlite", "SQLite")):
            for variant, v in (li.get(engine) or {}).items():
                p95 = v.get("p95_ms")
                rows.append(
                    Row(
                        f"{name}, {li.get('rows'):,} bundles: {variant}",
                        "p95 ≤ 50 ms (issue 14)",
                        f"p95 {_num(p95, ' ms', 1)}, p50 {_num(v.get('p50_ms'), ' ms', 1)} "
                        f"({li.get('samples')} GETs on one connection)",
                        verdict=verdict(p95 <= 50 if p95 is not None else None),
                    )
                )
    rt = f.get("retention") or {}
    if "error" in rt or not rt:
        rows.append(Row("retention beside ingest", "—", f"FAILED: {rt.get('error', 'not run')}"))
    else:
        with_r, without = (
            rt.get("ingest_per_s_with_retention"),
            rt.get("ingest_per_s_without_retention"),
        )
        r = rt.get("ingest_ratio_with_vs_without")
        rows.append(
            Row(
                f"ingest while retention deletes {rt.get('expired_rows'):,} expired bundles "
                "(PostgreSQL + SeaweedFS, the instance's own retention worker)",
                "ingest kept within 20 % (issue 14)",
                f"{_num(with_r, ' bundles/s', 1)} over {rt.get('overlap_s')} s "
                f"({rt.get('uploads_during_retention')} uploads); deletions "
                f"{_num(rt.get('deletions_per_s'), '/s', 1)} ({rt.get('retention_s')} s)",
                "same instance config and data, retention keeping everything",
                _num(without, " bundles/s", 1),
                f"{r:.3f}×" if r is not None else "—",
                verdict(r >= 0.8 if r is not None else None),
            )
        )
    return rows


def seal_rows(res: dict[str, Any]) -> list[Row]:
    r = get(res, "seal") or {}
    if not r or "error" in r:
        return []

    def ms(k: str) -> str:
        return f"{r[k]} ms" if k in r else "—"

    plain, sealed = r.get("plain_ms_per_bundle"), r.get("sealed_ms_per_bundle")
    no_crypto = r.get("daemon_imports_crypto") == 0
    return [
        Row(
            "age encryption throughput, one core (2 recipients, 16 MiB)",
            "— (reported, issue 17)",
            f"{r.get('age_encrypt_mb_per_s_one_core', '?')} MB/s",
        ),
        Row(
            f"a {r.get('bundle_kb', '?')} KB bundle sealed (Ed25519 + age to 2 recipients + "
            "envelope)",
            "— (reported, issue 17: its cost beside the plain path)",
            ms("sealed_ms_per_bundle"),
            "the plain path (HMAC only), same bundle",
            ms("plain_ms_per_bundle"),
            f"{sealed / plain:.3f}×" if plain and sealed else "—",
            "reported",
        ),
        Row(
            "the daemon's sealing worker per bundle, warm (started as the capture began)",
            "— (reported)",
            ms("sealed_worker_warm_ms_per_bundle"),
            "a worker started per bundle (cold)",
            ms("sealed_worker_cold_ms_per_bundle"),
            "—",
            "reported",
        ),
        Row(
            "crypto modules (cryptography, pyrage) in the daemon process",
            "none: daemon RSS unchanged (issue 17)",
            "none" if no_crypto else f"{r.get('daemon_imports_crypto')} loaded",
            "a process that imports them",
            f"+{r.get('rss_mb_cost_of_sealing_imports', '?')} MB RSS",
            "—",
            "meets" if no_crypto else "misses",
        ),
        Row(
            "the sealing worker's RSS (a child, while captures run)",
            "— (reported; the unit's MemoryMax=128M covers the daemon and its children)",
            f"{r.get('sealed_worker_rss_mb', '?')} MB",
        ),
    ]


def channel_rows(res: dict[str, Any]) -> list[Row]:
    """Issue 16: bench_channel (check-ins/s, bytes/day) and bench_channel_live (latencies, RSS)."""
    rows: list[Row] = []
    live = get(res, "channel_live") or {}
    if "error" in live or not live:
        rows.append(
            Row("channel live (bench_channel_live)", "—", f"FAILED: {live.get('error', 'not run')}")
        )
    else:
        lp, poll = live.get("capture_longpoll") or {}, live.get("capture_poll") or {}
        t = live.get("targets") or {}
        for name, mine, other, other_name, target in (
            (
                "with long-poll (default interval 300 s)",
                lp,
                poll,
                "same, long-poll off",
                t.get("capture_longpoll_p95_s"),
            ),
            (
                "without long-poll (interval 30 s)",
                poll,
                lp,
                "same, long-poll on",
                t.get("capture_poll_p95_s"),
            ),
        ):
            p95 = mine.get("p95_s")
            rows.append(
                Row(
                    f"operator queues capture → bundle listed in GET /v1/bundles, {name}",
                    f"p95 ≤ {_num(target, ' s', 0)} (issue 16)",
                    f"p95 {_num(p95, ' s')}, p50 {_num(mine.get('p50_s'), ' s')} (N={mine.get('n')}; "
                    f"screen {live.get('screen')})",
                    other_name,
                    f"p95 {_num(other.get('p95_s'), ' s')}",
                    ratio(p95, other.get("p95_s")),
                    verdict(p95 <= target if p95 is not None and target else None),
                )
            )
        for key, name in (("silent_poll", "long-poll off"), ("silent_longpoll", "long-poll on")):
            s = live.get(key) or {}
            worst = s.get("cut_to_silent_max_s")
            target = t.get("silent_s")
            trials = s.get("trials") or []
            rows.append(
                Row(
                    f"uplink cut → device.silent open ({name}; interval 30 s, silent_after_checkins 1)",
                    f"≤ multiple × interval + 30 s = {_num(target, ' s', 0)} (issue 16)",
                    f"max {_num(worst, ' s')}, p50 {_num(s.get('cut_to_silent_p50_s'), ' s')} "
                    f"(N={len(trials)}; from the last check-in ≤ "
                    f"{_num(max((x['last_checkin_to_silent_s'] for x in trials), default=None), ' s')}"
                    f", its deadline {s.get('deadline_s')} s; uplink restored → cleared in ≤ "
                    f"{_num(s.get('restore_to_cleared_max_s'), ' s')})",
                    verdict=verdict(worst <= target if worst is not None and target else None),
                )
            )
        at, start = live.get("rss_at_run_s_mib") or {}, live.get("rss_after_start_mib") or {}
        own = live.get("private_at_run_s_mib") or {}
        for k, name in (
            ("a", "long-poll on, interval 300 s"),
            ("b", "long-poll off, interval 30 s"),
        ):
            v, peer = at.get(k), at.get("c")
            rows.append(
                Row(
                    f"daemon RSS {live.get('run_s', 600) / 60:.0f} minutes after start, channel on ({name}; "
                    "captures and check-ins meanwhile; installed as on a terminal)",
                    f"≤ {_num(t.get('rss_10min_mib'), ' MiB', 0)} (issue 16)",
                    f"{_num(v, ' MiB')} (after start {_num(start.get(k), ' MiB')}"
                    + (f"; its own pages {_num(own[k], ' MiB')}" if k in own else "")
                    + ")",
                    "same daemon and twins, no endpoint (no channel, no uploads), same run",
                    f"{_num(peer, ' MiB')} (after start {_num(start.get('c'), ' MiB')})",
                    ratio(v, peer),
                    verdict(
                        v <= t["rss_10min_mib"]
                        if v is not None and t.get("rss_10min_mib")
                        else None
                    ),
                )
            )
        if live.get("errors"):
            rows.append(Row("channel live errors", "—", "; ".join(live["errors"])))
    ch = get(res, "channel") or {}
    if "error" in ch or not ch:
        rows.append(Row("channel (bench_channel)", "—", f"FAILED: {ch.get('error', 'not run')}"))
        return rows
    for key, name in (
        ("sqlite_1", "SQLite, 1 instance"),
        ("postgres_1", "PostgreSQL, 1 instance"),
        ("postgres_2", "PostgreSQL, 2 instances"),
    ):
        v, whole = ch.get(key), ch.get(f"{key}_whole")
        if not isinstance(v, dict):
            rows.append(
                Row(f"check-ins handled per second, {name}", "≥ 1,667/s (issue 16)", str(v))
            )
            continue
        rate = v.get("checkins_per_s")
        other = whole.get("checkins_per_s") if isinstance(whole, dict) else None
        pg = v.get("postgres_cpu_ms_per_checkin")
        runs = v.get("checkins_per_s_runs") or []
        few = ch.get(f"{key}_few")
        rows.append(
            Row(
                f"check-ins handled per second, {name} (wrk, {v.get('clients', 8)} keep-alive "
                "connections, on the same 2 cores; the agent's check-ins: only what changed)",
                "≥ 1,667/s (issue 16: 100,000 terminals at one a minute)",
                f"{_num(rate, '/s', 1)} ("
                + (f"median of {', '.join(f'{x:,.1f}' for x in runs)}/s; " if runs else "")
                + f"collector CPU {v.get('server_cpu_ms_per_checkin')} ms per check-in"
                + (f", PostgreSQL's {pg} ms" if pg is not None else "")
                + f"; p50 {v.get('p50_ms')} ms, p99 {v.get('p99_ms')} ms; "
                + f"load avg {v.get('load_avg_1m')}"
                + (
                    f"; over only {few.get('clients')} connections, bound by latency: "
                    f"{_num(few.get('checkins_per_s'), '/s', 1)}, p50 {few.get('p50_ms')} ms, "
                    f"p99 {few.get('p99_ms')} ms"
                    if isinstance(few, dict)
                    else ""
                )
                + ")",
                "whole check-ins every time (the first cut's body), same servers" if other else "—",
                f"{_num(other, '/s', 1)} (collector CPU {whole.get('server_cpu_ms_per_checkin')} ms)"
                if isinstance(whole, dict)
                else "—",
                ratio(rate, other),
                verdict(rate >= 100_000 / 60 if rate is not None else None),
            )
        )
    if isinstance(ch.get("wire"), str):  # no network namespace here
        rows.append(
            Row("check-in bytes per terminal per day", "≤ 200 KB/day (issue 16)", ch["wire"])
        )
        return rows
    for tag, name in (("tls", "TLS 1.3"), ("http", "plain HTTP")):
        kept, new = ch.get(f"{tag}_kept_kb_per_day"), ch.get(f"{tag}_new_kb_per_day")
        idle = next(
            (
                f"{v} packets in {k.split('_')[2]} idle"
                for k, v in ch.items()
                if k.startswith(f"{tag}_idle_")
            ),
            "",
        )
        rows.append(
            Row(
                f"check-in bytes per terminal per day at 300 s, {name}, the connection kept "
                "between check-ins (the default; IP bytes counted by the kernel on a veth, "
                "287 check-ins on it and one on a new connection a day)",
                "≤ 200 KB/day incl. HTTP and TLS (issue 16)",
                f"{_num(kept, ' KB/day', 1)} ({ch.get(f'{tag}_kept_up_bytes')} B up + "
                f"{ch.get(f'{tag}_kept_down_bytes')} B down, "
                f"{ch.get(f'{tag}_kept_packets')} packets per check-in; {idle})",
                "a new connection per check-in (as before), same run",
                f"{_num(new, ' KB/day', 1)} ({ch.get(f'{tag}_new_bytes')} B, "
                f"{ch.get(f'{tag}_new_packets')} packets per check-in)",
                ratio(kept, new),
                verdict(kept <= 200 if kept is not None else None),
            )
        )
    if ch.get("collector_kib_per_idle_tls") is not None:
        rows.append(
            Row(
                "the collector's RSS per idle kept connection (`collector serve`, 2,000 "
                "connections that each made one request)",
                "(reported: a terminal holds one between check-ins)",
                f"{ch.get('collector_kib_per_idle_tls')} KiB over TLS, "
                f"{ch.get('collector_kib_per_idle_http')} KiB plain",
                verdict="reported",
            )
        )
    if ch.get("tls_child_rss_mib") is not None:
        rows.append(
            Row(
                "the channel's upload child between check-ins (it lives with the channel and "
                "holds the connection)",
                "(reported; the daemon's own RSS is the row above)",
                f"RSS {ch.get('tls_child_rss_mib')} MiB (USS {ch.get('tls_child_uss_mib')} MiB) "
                f"over TLS, RSS {ch.get('http_child_rss_mib')} MiB (USS "
                f"{ch.get('http_child_uss_mib')} MiB) plain",
                verdict="reported",
            )
        )
    return rows


SECTIONS: list[tuple[str, Callable[[dict[str, Any]], list[Row]]]] = [
    ("Spool (bench/peers_spool.py)", spool_rows),
    ("Printer status (bench/peers_escpos.py)", escpos_rows),
    ("Redaction (bench/peers_redact.py, bench/bench_redact.py)", redact_rows),
    ("Screenshots (bench/peers_screen.py)", screen_rows),
    ("Upload and collector (bench/bench_upload.py, bench/bench_collector.py)", upload_rows),
    ("Collector at fleet scale (bench/bench_fleet.py)", fleet_rows),
    ("Two-way channel (bench/bench_channel.py, bench/bench_channel_live.py)", channel_rows),
    ("Detection (bench/bench_detect.py)", detect_rows),
    ("Daemon (bench/bench_daemon.py)", daemon_rows),
    ("Flight recorder (bench/bench_recorder.py)", recorder_rows),
    ("Bundle page (bench/bench_pages.py)", pages_rows),
    ("Incidents (bench/bench_incidents.py)", incidents_rows),
    ("Sealed bundles (bench/bench_seal.py)", seal_rows),
]


# What a section's rows need said once, under its heading.
SECTION_TEXT = {
    "Two-way channel (bench/bench_channel.py, bench/bench_channel_live.py)": (
        "The daemons of bench_channel_live and bench_daemon run as a terminal runs them "
        "(bench/installed.py): from a venv made as systemd/install.sh makes it (`pip install` "
        "of the source, runtime dependencies only) under the unit's environment. Where its "
        "memory goes (RSS read from /proc after each import of the daemon's import graph in "
        "order, and on live daemons with the channel on and ten captures, 2026-12-06): the "
        "interpreter alone 8.5 MiB; the daemon's modules at start 27.9 MiB; libcrypto, which "
        "hashlib loads, 3.6 MiB of it (2.9 MiB of them clean pages shared with every process "
        "that maps it; its own 0.4 MiB): kept, as Python's built-in sha256 hashes some 20 "
        "times slower. Cut: rich and pygments, which structlog imports when installed (the dev "
        "venv has them; a terminal does not): some 5 MiB; asyncio and with it ssl, imported by "
        "structlog.stdlib for async methods the agent never calls and by drivers.network for "
        "the TLS probe: 2.5 MiB (agent/core/log.py imports structlog with a stand-in that "
        "loads asyncio on first use; ssl is imported by the TLS probe); email.utils (a "
        "Retry-After date): 0.3 MiB; the flight recorder's 10-minute window, kept as the "
        "readings' JSON lines instead of dicts: 0.4 MiB instead of 1.9 at 10 minutes; glibc's "
        "mmap threshold kept at 128 KiB (by default it rises after a large free and a "
        "capture's buffers then fragment the heap): 34.10 against 35.45 MiB at 10 minutes, one "
        "run each. Tried and not kept: MALLOC_ARENA_MAX=2 in the environment (the daemon "
        "already caps its arenas at 2 with mallopt: 37.23 against 36.42 MiB, noise); one "
        "arena (34.71 against 35.45). Between runs of the same code the 10-minute figure "
        "moves by about 1 MiB."
    ),
    "Incidents (bench/bench_incidents.py)": (
        "Both index engines hold the same generated rows (SQLite: executemany; PostgreSQL: "
        "COPY, then VACUUM ANALYZE as autovacuum would) and are read by the same collector "
        "code in one process with its client (uvicorn in a thread), as an admin with an API "
        "token; each engine's figure stands beside the other's. The home page keeps the "
        "fleet's faults over 7 and 30 days for 30 s (its second row reads them every time: "
        "both engines read the window from the covering index incidents_window, an "
        "index-only scan in EXPLAIN ANALYZE; the time is the aggregation itself, distinct "
        "terminals and sites per fault key over the 16,927 incidents of 30 days, about 32 "
        "ms at p50 on PostgreSQL at load 4.5, then the unresolved incidents summed in "
        "Python, about 13 ms). "
        "Grouping follows the upload's answer: ingest stores the bundle (its row durable), "
        "answers, and hands the record to the process's incident worker, which groups what "
        "it was handed in batches (up to 64 signals a transaction: their advisory locks in "
        "name order in one statement, then in one query which incident groups each bundle "
        "already and the newest incident of each (device, fault key), kept up to date by "
        "the batch's own changes; each changed incident written by one UPDATE at the end; "
        "links, events and outbox rows as multi-row INSERTs of up to 50 values, a text "
        "psycopg converts once and PostgreSQL prepares; on PostgreSQL the commit does not "
        "wait for the WAL flush, a notification is sent only after the outbox's durable "
        "claim). A batch thus waits for PostgreSQL twice plus once per new incident (its "
        "id). A batch waits for more while bundles keep coming, about 2.5 of their usual "
        "gaps (5-50 ms), at most 250 ms: 10 to 36 bundles a batch in these runs. A bundle a "
        "crash or a failure left ungrouped is grouped by the catch-up pass at the next "
        "start (and every interval_s). The figure is therefore a sustained rate: rounds of "
        "200 uploads, grouping off and on in turns, "
        'an "on" round timed until the worker has grouped its last bundle, the median of '
        "6 pairs (the pairs' spread on a shared machine is wide; the totals' ratio is shown "
        "beside it), and each round's CPU time (the bench process: client, collector and "
        "worker; the PostgreSQL server's from /proc). History: grouping inside the upload "
        "(one transaction per bundle), scale 0.1, load 0.8-2.8: grouping's time was 9.3 % "
        "of the rest of the same uploads on SQLite and 15.7 % on PostgreSQL (full scale "
        "11.4 % and 22.0 %). Grouping after the answer in batches, but each signal still "
        "locking, reading its state and writing its incident on its own (full scale, "
        "15:56Z, load about 1): 8.2 % on SQLite, 15.5 % on PostgreSQL, whose CPU per upload "
        "grew 19.1 % (the worker 1.136 ms per bundle in batches of 32). With the batch's "
        "locks, state and writes as above (full scale, 18:19Z, load 1.1-3.8): PostgreSQL "
        "0.4 % (every pair within 8 %; CPU -0.2 %; the worker 0.43 ms per bundle); a batch "
        "of 32 of these uploads (two keys of one terminal raised and cleared in turn), "
        "profiled: 68 statements and 48 replies awaited before, 14 and 1 after; grouping's "
        "CPU per bundle 0.53 ms in the collector and 0.36 in the server before, 0.21 and "
        "0.13 after (load about 6). SQLite missed in that run (18.1 %: one pair at +104 %; "
        "CPU +8.1 %), and a SQLite-only run of the code before the batch change, back to "
        "back at load 1.4-1.8, gave 18.2 % (CPU +18.5 %): an upload that found the file "
        "locked by the worker's batch slept in SQLite's busy handler (1, 2, 5, 10 ms and "
        "more) while the batch took well under that. Since, the collector's own writers "
        "take turns on a lock in the process before SQLite's (`SqliteIndex._writer`), and "
        "this run (18:39Z, full scale, load 2-3 with another engineer's tests beside it) "
        "gives SQLite -2.9 % (CPU per upload -4.8 %) and PostgreSQL -2.5 % (CPU -0.9 %): "
        "at the median of the pairs grouping costs the uploads nothing measurable; the "
        "pairs' spread (-19 % to +21 % on SQLite, -21 % to +23 % on PostgreSQL) is the "
        "shared machine's."
    ),
}


# --------------------------------------------------------------------------- the document


def machine() -> list[str]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:
        mem = "?"
    return [
        f"- cores: {os.cpu_count()}; CPU: {model or platform.processor() or '?'}; memory: {mem}",
        f"- Python {platform.python_version()} ({sys.implementation.name}), {platform.platform()}",
        f"- load average when the report was written: {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ]


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def peer_versions() -> str:
    from importlib import metadata

    out = []
    for name in ("persist-queue", "python-escpos", "scrubadub", "mss"):
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name}: NOT INSTALLED")
    try:
        v = subprocess.run(["import", "-version"], capture_output=True, text=True, timeout=10)
        out.append(
            v.stdout.splitlines()[0].replace("Version: ", "") if v.stdout else "ImageMagick ?"
        )
    except (OSError, subprocess.SubprocessError):
        out.append("ImageMagick `import`: NOT INSTALLED")
    return "; ".join(out)


def render(res: dict[str, Any]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m bench` then `python -m bench.report`) from "
        "bench/out/results.json; do not edit by hand.",
        "",
        f"Run of {res.get('when', '?')} on:",
        "",
        *machine(),
        f"- peers: {peer_versions()}",
        "",
        "Every peer ran in the same run, on the same input, alternating with posagent where "
        "the figure is a time. Targets come from the issues; † marks a target this benchmark "
        "sets where the issues give none (a figure compared with its peer). Ratios are "
        "posagent ÷ peer (for rates higher is better, for times lower is better). The "
        "machine is shared with other work while the benchmarks run: wall-clock figures "
        "carry that noise (the load average is above).",
        "",
    ]
    tally = {"meets": 0, "misses": 0}
    for title, fn in SECTIONS:
        try:
            rows = fn(res)
        except Exception as e:  # a figure missing from the results must not hide the rest
            rows = [Row(title, "—", f"REPORT ERROR: {type(e).__name__}: {e}")]
        for r in rows:
            if r.verdict.startswith("meets"):
                tally["meets"] += 1
            elif "misses" in r.verdict:
                tally["misses"] += 1
        lines += [f"## {title}", ""]
        if title in SECTION_TEXT:
            lines += [SECTION_TEXT[title], ""]
        lines += _table(rows)
        lines.append("")
    summary = f"**{tally['meets']} rows meet their target, {tally['misses']} miss.**"
    lines.insert(2, summary + "\n")
    lines += notes(res)
    return "\n".join(lines) + "\n"


def notes(res: dict[str, Any]) -> list[str]:
    s = get(res, "spool") or {}
    out = [
        "## Other figures (no target in the issues)",
        "",
    ]
    for k in (
        "startup_open_ms_10k",
        "queued_order_ms_10k",
        "spool_list_cli_s_10k",
        "enqueue_per_s_fsync",
    ):
        if k in s:
            out.append(f"- bench_spool `{k}`: {s[k]}")
    e = get(res, "escpos") or {}
    for k in ("pty_poll", "tcp_poll", "pty_poll_settle_0", "pty_silent_poll_s"):
        if k in e:
            out.append(f"- bench_escpos `{k}`: {e[k]}")
    sc = get(res, "screen") or {}
    for k, v in sc.items():
        if k.startswith(("fbdev", "pipeline")):
            out.append(f"- bench_screen `{k}`: {v}")
    out += [
        "",
        "## How to read the peer rows",
        "",
        "- Spool durability: a power cut cannot be staged here (no LazyFS, no dm-flakey), so "
        "durability is shown two ways: the fsync discipline observed under strace, and kill -9 "
        "of an enqueuing child at random moments (acknowledged items missing or unreadable "
        "afterwards). kill -9 keeps the page cache, so every queue passes it, even the one "
        "that never fsyncs; the fsync columns are what separates them across a power cut. "
        "persist-queue fsyncs its SQLite WAL once per committed put (WAL mode, "
        "synchronous=FULL): one fsync per item against the spool's two (file and directory).",
        "- python-escpos reads up to 16 bytes with a 1 s timeout, so every query waits out "
        "the timeout even on a healthy printer; on no reply `paper_status()` returns 2 "
        '("paper adequate") and `is_online()` False; on a garbage byte it decodes the byte '
        "as a status.",
        "- scrubadub's CreditCardDetector needs whitespace before the number and knows no "
        "separators, track data or EMV TLV; it has no Luhn check on a longer digit run (it "
        "masked the first 16 digits of a 20-digit number in the look-alike corpus) and no "
        "allow-list. It was the only card-number redaction library evaluated here.",
        "- Fleet ingest (bench_fleet): the load generator, the collector instance(s), "
        "PostgreSQL and SeaweedFS share the machine's 2 cores (with other work), so the "
        "figure is CPU-bound: the bare loop is one Python process doing boto3 PUT + INSERT; "
        "an instance also parses the HTTP upload (uvicorn, httptools), verifies the bundle, takes a "
        "rate-limit token and looks the id up in PostgreSQL, so one instance (one process, "
        "one GIL) stays under 0.7 x and two instances reach it. Two instances are fed "
        "round-robin by the generator (no balancer process). Retention's expired rows have "
        "no blobs (S3 deletes of absent keys still run). Counts over a time window are "
        "counted on the window's rows: a window of all time costs what the whole index does.",
        "- Two-way channel (bench_channel, bench_channel_live): check-in bytes are counted "
        "by the kernel (bench/channel_wire.py: the agent's upload child in a network "
        "namespace, the IP byte counters of its veth), every packet included. A check-in "
        "on the kept connection is 3 packets (the request; the answer, which acknowledges "
        "it; the terminal's acknowledgement of the answer: 156 B of TCP/IP headers, 45 "
        "KB/day); with a connection per check-in it was 10 packets plain and 14 over TLS "
        "(the TLS 1.3 handshake alone some 1.9 KB), which no trimming of headers or body "
        "brings under 200 KB/day: the collector now keeps an idle connection keepalive_s "
        "(360 s, above the 300 s interval) and the channel's child, which lives as long as "
        "the channel, reuses it. The kept rows allow one new connection a day (a NAT that "
        "forgot it, a restart); a real certificate chain adds some 1-2 KB to that one "
        "handshake. Each terminal then holds an idle connection on whatever terminates its "
        "TLS: some 60 KiB of a collector's RSS over TLS (asyncio's read buffer, 256 KiB a "
        "connection by default, is cut to 32 KiB: it was some 280 KiB), 8 KiB plain; a fleet "
        "of 100,000 terminals puts a balancer in front (docs/haproxy.cfg). What is left per "
        "check-in: the request's HTTP some 270 B (Host, "
        "Content-Type, X-Posagent-Device, a 43-character bearer token, Content-Length; a "
        "body of only what changed, some 65 B), the answer's some 185 B (status line, Date, "
        "Content-Length, Content-Type; a 77-byte body), TLS 22 B a record each way. A "
        "terminal with TCP timestamps on (Linux's default) pays 12 B of them a packet, "
        "some 10 KB/day of the figure. Before the connection was kept (2026-12-06 12:16Z) "
        "the rows gave 318.8 KB/day plain and 717.7 KB/day over TLS, their TCP/IP "
        "estimated at 180 KB/day; measured, that peer is the rows' peer value. "
        "Check-ins per second come from "
        "wrk (C, some 0.07 ms of CPU a check-in) since 2026-12-06 15:00Z; before, 8 Python "
        "threads with requests shared the 2 cores and the collector before the changes "
        "below gave 624/s "
        "(SQLite), 358/s and 423/s (PostgreSQL, 1 and 2 instances). A check-in is now one "
        "transaction with its token lookup and one SELECT (the device's state, its count of "
        "deliverable commands and the remote config joined), pipelined on PostgreSQL, whose "
        "pooled connections are checked without a query: 2 round trips where there were "
        "about 13 (side by side under the same wrk, load 5-9: the collector's CPU on "
        "PostgreSQL 2.7-2.8 -> 1.8-2.0 ms a check-in, 300 -> 390/s; on SQLite no change "
        "beyond the noise). Then, on 2026-12-06 from 18:00Z: check-ins written in groups "
        "(collector.channel.writer: one thread a process takes every check-in queued, up to "
        "64, into one transaction and answers each after its commit; about 4 a group under "
        "these 8 connections; no per-request hop to a worker thread, no fight for SQLite's "
        "write lock), a group's devices read in one statement and stored in one UPDATE (on "
        "PostgreSQL 2 round trips a group), and HTTP on httptools instead of h11 (the "
        "connection guards ported: collector.server). Before them, the same bench (15:00Z) "
        "gave 899.5/s on SQLite at 1.06 ms of collector CPU a check-in, 644.6/s and 728.3/s "
        "on PostgreSQL (1.41 ms + the database's 0.48 ms). Two full runs after them, 8 "
        "minutes apart on the quiet machine (load 0.3-3): 18:50Z SQLite 1,525.9/s (0.675 ms), "
        "PostgreSQL 1,065.1/s (0.757 + 0.255 ms) and 1,421.5/s with 2 instances; 18:59Z (the "
        "rows) SQLite 2,114.9/s (0.495 ms), PostgreSQL 1,218.8/s and 1,382.9/s: the same code "
        "moves by a third between runs here, so the SQLite row meets in one and misses in "
        "the other. One instance is one process and one GIL (at most a core): at 0.5-0.7 ms "
        "a check-in it answers 1,400-2,000 a second; PostgreSQL's instances pay psycopg "
        "(some 0.2 ms a check-in more) and share the 2 cores with the database (0.2-0.3 ms) "
        "and wrk. Left: Starlette's routing and exception wrappers, asyncio (uvloop would "
        "save some 13 % but holds more memory per idle TLS connection after large uploads: "
        "left out). "
        "The daemons run as a terminal runs them "
        "(bench/installed.py: a venv made as install.sh makes it, runtime dependencies only, "
        "the unit's environment); from the dev venv, which has rich and pygments (structlog "
        "imports them when installed), the same daemon holds some 5 MiB more. Its own pages "
        "(USS) leave out the shared libraries' clean pages (libc, libcrypto, the interpreter's) "
        "that RSS counts and other processes share.",
        "- mss grabs with XShm (shared memory), which is why its raw grab is faster than "
        "XGetImage; PNG encoding dominates the whole screenshot.",
        "",
    ]
    return out


def _table(rows: list[Row]) -> list[str]:
    lines = [
        "| figure | target | measured (N) | peer | peer value | ratio | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = (r.figure, r.target, r.measured, r.peer, r.peer_value, r.ratio, r.verdict)
        lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    return lines


def tally_line(doc: str) -> str:
    """The summary line of a document's tables: rows that meet, rows that miss."""
    meets = misses = 0
    for line in doc.splitlines():
        if line.startswith("| ") and line.rstrip().endswith("|"):
            last = line.rstrip()[:-1].rsplit("|", 1)[-1].strip()
            meets += last.startswith("meets")
            misses += "misses" in last
    return f"**{meets} rows meet their target, {misses} miss.**"


def update_section(doc: str, res: dict[str, Any], name: str) -> str:
    """doc with one section (SECTIONS' title containing ``bench_<name>.py``) written
    again from res (after the others when it was not there), a line saying which run
    its figures are of, and the summary line recounted: a partial run
    (`python -m bench NAME`) updates its own figures and keeps the rest."""
    found = [(t, fn) for t, fn in SECTIONS if f"bench_{name}.py" in t]
    if not found:
        raise SystemExit(f"no section of bench_{name}.py in the report")
    title, fn = found[0]
    when = get(res, name, "when") or res.get("when", "?")
    body = [
        f"## {title}",
        "",
        f"Measured by `python -m bench {name}` on {when}; the rest of this document is of "
        "the run named above.",
        "",
        *([SECTION_TEXT[title], ""] if title in SECTION_TEXT else []),
        *_table(fn(res)),
        "",
    ]
    lines = doc.splitlines()
    head = f"## {title}"
    if head in lines:
        i = lines.index(head)
        j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
        lines[i:j] = body
    else:  # before the notes at the end
        j = next((k for k, x in enumerate(lines) if x.startswith("## Other figures")), len(lines))
        lines[j:j] = body
    out = "\n".join(lines) + "\n"
    old = next((x for x in lines if x.startswith("**") and "rows meet their target" in x), None)
    return out.replace(old, tally_line(out), 1) if old else out


def main(argv: list[str] | None = None) -> int:
    """Read the results, write the document (or, with --section NAME, only that
    benchmark's section of the existing document), print where."""
    args = sys.argv[1:] if argv is None else argv
    if not RESULTS.exists():
        sys.stderr.write(f"no {RESULTS}: run `python -m bench` first\n")
        return 1
    res = json.loads(RESULTS.read_text())
    DOC.parent.mkdir(parents=True, exist_ok=True)
    if args[:1] == ["--section"] and len(args) == 2:
        DOC.write_text(update_section(DOC.read_text(), res, args[1]))
    elif args:
        sys.stderr.write("usage: python -m bench.report [--section NAME]\n")
        return 2
    else:
        DOC.write_text(render(res))
    sys.stdout.write(f"wrote {DOC} ({time.strftime('%H:%M:%S')})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
