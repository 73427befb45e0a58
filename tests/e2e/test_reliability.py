"""The fault-injection suite in its quick form: every trial family runs, and none loses a bundle.

`python -m bench.reliability --quick` runs in a child process (it forks, mounts
tmpfs as root and reconfigures logging), writing its results as JSON; each
family is then one test here. Losses and stalls the suite attributes to a
defect it found earlier (bench.faults.KNOWN_ISSUES) are kept apart: each such
defect is a strict xfail of its own, which fails loudly once the defect is fixed
so that its entry is removed; anything else lost fails its family's test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from bench.faults import KNOWN_ISSUES
from bench.reliability import FAMILIES
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the quick suite once for this module; returns results by family, the report and the exit code."""
    out = tmp_path_factory.mktemp("reliability")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.reliability", "--quick",
         "--out", str(out / "RELIABILITY.md"), "--json", str(out / "results.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert (out / "results.json").exists(), proc.stdout + proc.stderr
    results = {r["family"]: r for r in json.loads((out / "results.json").read_text())}
    return {
        "results": results,
        "report": (out / "RELIABILITY.md").read_text(),
        "returncode": proc.returncode,
        "stdout": proc.stdout,
    }


@pytest.mark.parametrize("family", [name for name, _ in FAMILIES])
def test_family_loses_nothing(quick_run: dict[str, Any], family: str) -> None:
    """The family ran trials (or was skipped for a stated reason) and lost, duplicated and stalled nothing beyond known defects."""
    r = quick_run["results"][family]
    if r["skipped"]:
        pytest.skip(r["skipped"])
    assert r["trials"] > 0, r
    assert r["duplicates"] == 0, r["notes"]
    known = sum(r["known"].values())
    assert r["losses"] + r["stalls"] == known, r["details"]


if KNOWN_ISSUES:  # defects found and not fixed yet: one strict xfail each

    @pytest.mark.parametrize(
        "issue",
        [
            pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=desc))
            for k, desc in KNOWN_ISSUES.items()
        ],
    )
    def test_known_defect_is_fixed(quick_run: dict[str, Any], issue: str) -> None:
        """No trial hits the known defect any more (a strict xfail while it still reproduces)."""
        hits = {
            f: r["known"][issue] for f, r in quick_run["results"].items() if issue in r["known"]
        }
        assert not hits, f"{issue} still reproduces: {hits}"


def test_report_lists_every_family_and_exit_status_follows(quick_run: dict[str, Any]) -> None:
    """The Markdown report has the machine, one table row per family, and the exit status is 1 exactly when something was lost or stalled."""
    report = quick_run["report"]
    results = quick_run["results"]
    assert "- Python: CPython 3." in report and "- machine: " in report
    rows = [line for line in report.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == len(FAMILIES) + 1  # header + one per family
    for r in results.values():
        assert any(row.startswith(f"| {r['title']} | {r['trials']} |") for row in rows), r
    bad = any(r["losses"] or r["stalls"] for r in results.values())
    assert quick_run["returncode"] == (1 if bad else 0), quick_run["stdout"]
    assert set(results) == {name for name, _ in FAMILIES}
