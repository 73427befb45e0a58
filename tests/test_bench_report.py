"""bench/report.py: one benchmark's section written again into an existing
docs/BENCHMARKS.md (`python -m bench.report --section NAME`), the rest kept and the
summary line recounted; the incidents section with each engine beside the other."""

from __future__ import annotations

from typing import Any

from bench.report import incidents_rows, tally_line, update_section

DOC = """# Benchmarks

**2 rows meet their target, 1 miss.**

Run of 2026-11-24T02:11:12Z on:

## Spool (bench/peers_spool.py)

| figure | target | measured (N) | peer | peer value | ratio | verdict |
|---|---|---|---|---|---|---|
| spool a | t | 1 | — | — | — | meets |
| spool b | t | 2 | — | — | — | **misses** |

## Incidents (bench/bench_incidents.py)

| figure | target | measured (N) | peer | peer value | ratio | verdict |
|---|---|---|---|---|---|---|
| old row | t | 3 | — | — | — | meets |

## Other figures (no target in the issues)

- kept
"""


def _engine(p95: float, share: float) -> dict[str, Any]:
    reads = {
        k: {"p50_ms": p95 / 2, "p95_ms": p95}
        for k in ("incident_list_page", "api_list", "home_page", "incident_page")
    }
    reads["grouping_ms_per_bundle_batches_of_20"] = {"mean_ms": 0.3, "p95_ms": 0.5}
    reads["grouping_ms_per_bundle_one_at_a_time"] = {"mean_ms": 0.6, "p95_ms": 0.9}
    reads["uploads_at_scale"] = {
        "n_per_mode": 600,
        "pairs": 8,
        "slower_pct_of_totals": share + 0.5,
        "ingest_per_s_off": 100.0,
        "ingest_per_s_on": round(100.0 / (1 + share / 100), 1),
        "slower_pct": share,
        "batches": 40,
        "batch_mean": 15.0,
        "worker_ms_per_bundle": 0.3,
        "cpu_ms_per_upload_off": 8.0,
        "cpu_ms_per_upload_on": 8.4,
        "cpu_more_pct": 5.0,
    }
    return {
        "reads": reads,
        "ingest_per_s_grouping_on": 50.0,
        "ingest_per_s_grouping_off": 52.0,
        "ingest_per_s_grouping_on2": 51.0,
        "grouping_share_of_ingest_pct": share + 1,
        "grouping_slows_ingest_pct": share,
        "load_avg_1m_before_reads": 1.5,
        "load_avg_1m_after_reads": 2.5,
    }


RES = {
    "incidents": {
        "when": "2026-12-06T12:00:00Z",
        "bundles": 1_000_000,
        "incidents": 50_000,
        "sqlite": _engine(40.0, 6.0),
        "postgres": _engine(120.0, 12.0),
    }
}


def test_each_engine_beside_the_other() -> None:
    rows = incidents_rows(RES)
    pg = [r for r in rows if "PostgreSQL" in r.figure and r.figure.startswith("GET /v1/incidents")]
    assert len(pg) == 1
    assert pg[0].measured.startswith("120.0 ms")
    assert pg[0].peer == "SQLite, same data (this run)"
    assert pg[0].peer_value == "40.0 ms"
    assert pg[0].ratio == "3.000×"
    assert pg[0].verdict == "**misses**"
    assert "load average 1.5-2.5" in pg[0].measured
    grouping = [r for r in rows if r.figure.startswith("sustained ingest")]
    assert [r.verdict for r in grouping] == ["meets", "**misses**"]
    assert grouping[1].measured.startswith("12.0 % slower (89.3/s vs 100.0/s; median of 8 pairs")
    assert "CPU per upload 8.4 vs 8.0 ms (+5.0 %, median of the pairs)" in grouping[1].measured
    assert grouping[1].peer_value == "6.0 %; 52.0/s vs 50.0/s, 51.0/s"
    assert grouping[1].ratio == "0.893×"
    assert "1,000,000 bundles in 50,000 incidents over 5,000 terminals" in rows[0].figure


def test_one_engine_failed_is_a_row_that_says_so() -> None:
    res = {"incidents": {**RES["incidents"], "postgres": {"error": "Unavailable: no server"}}}
    rows = incidents_rows(res)
    assert any("FAILED: Unavailable: no server" in r.measured for r in rows)
    assert all(r.peer == "—" for r in rows if "SQLite" in r.figure and "p95" in r.figure)


def test_section_replaced_the_rest_kept_and_the_tally_recounted() -> None:
    out = update_section(DOC, RES, "incidents")
    assert "old row" not in out
    assert "| spool b | t | 2 | — | — | — | **misses** |" in out
    assert "Measured by `python -m bench incidents` on 2026-12-06T12:00:00Z" in out
    assert out.index("## Incidents") < out.index("## Other figures") < out.index("- kept")
    assert tally_line(out) in out.splitlines()
    # spool: 1 meets, 1 misses; incidents: 4 reads x 2 engines (PostgreSQL misses) + 2 grouping
    assert tally_line(out) == "**6 rows meet their target, 6 miss.**"


def test_section_added_when_the_document_has_none() -> None:
    doc = DOC.replace(DOC[DOC.index("## Incidents") : DOC.index("## Other figures")], "")
    out = update_section(doc, RES, "incidents")
    assert out.count("## Incidents (bench/bench_incidents.py)") == 1
    assert out.index("## Incidents") < out.index("## Other figures")
