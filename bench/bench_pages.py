"""The bundle page (issue 15 items 7 and 9): render time, size and memory of the collector's
page (`collector.pages.render_bundle`, in-process, one core) for a realistic bundle and for
the hostile ones of tests/collector/test_pages_bounded.py, and the chart alone on the worst
timeline it reads (8 MiB of one-off sources). Before the bounds (issue 15): 16.5 s for the
50,000-source bundle, a 260 MB page for the 62 x 1 MiB one. Run: python -m bench pages
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
from typing import Any

from agent.bundle.format import BundleReader, SealedBundle
from agent.bundle.html import TIMELINE_READ_BYTES, TimelineReadings, timeline_svg
from collector.app import record_from_manifest
from collector.pages import render_bundle
from tests.bundle.kit import big_entries, long_timeline, make_bundle, many_sources


def _render(b: SealedBundle) -> str:
    record = record_from_manifest(
        b.manifest,
        size_bytes=len(b.data),
        sha256="0" * 64,
        signature_checked=True,
        received_at=time.time(),
        site="Store 12",
    )
    with BundleReader(b.data) as r:
        return render_bundle(record, r)


def _measure(b: SealedBundle, runs: int) -> dict[str, Any]:
    times = []
    for _ in range(runs):
        t0 = time.process_time()
        page = _render(b)
        times.append(time.process_time() - t0)
    tracemalloc.start()
    _render(b)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "render_s": round(statistics.median(times), 4),
        "page_bytes": len(page.encode()),
        "peak_mib": round(peak / 2**20, 1),
        "bundle_bytes": len(b.data),
        "n": runs,
    }


def _worst_timeline() -> bytes:
    parts: list[str] = []
    n = size = 0
    while size < TIMELINE_READ_BYTES:
        s = f'{{"ts":{n},"source":"s{n}","k{n}":1}},'
        parts.append(s)
        size += len(s)
        n += 1
    return ('{"readings":[' + "".join(parts)).encode()[:TIMELINE_READ_BYTES]


def main() -> dict[str, Any]:
    """Measure and print the page figures."""
    figures: dict[str, Any] = {
        "realistic": _measure(make_bundle(), 20),
        "sources_50000": _measure(many_sources(), 3),
        "entries_62_x_1mib": _measure(big_entries(), 3),
        "readings_100000": _measure(long_timeline(), 3),
    }
    data = _worst_timeline()
    t0 = time.process_time()
    timeline_svg(TimelineReadings(data))
    cpu = time.process_time() - t0
    tracemalloc.start()
    timeline_svg(TimelineReadings(data))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    figures["chart_8mib_one_off_sources"] = {
        "render_s": round(cpu, 3),
        "peak_mib": round(peak / 2**20, 1),
    }
    for k, v in figures.items():
        print(f"   {k:28} {v}")
    return figures


if __name__ == "__main__":
    main()
