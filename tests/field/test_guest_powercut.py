"""Three power cuts of a qemu guest terminal running the posagent unit (the quick form of bench powercut).

One guest run (module fixture): the unit captures manual reports with a vfb
screenshot and uploads them to a loopback collector; qemu is SIGKILLed 20-30 s
after each READY and booted again. Run by `make field` (about 5 min); the
30-cut family is in `make reliability`.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from bench.faults import Result
from bench.faults.powercut import run_cuts
from tests.field.qemu import qemu_missing

pytestmark = [
    pytest.mark.timeout(2400),  # TCG boots: minutes, more on a busy machine; the image build too
    pytest.mark.skipif(bool(qemu_missing()), reason=qemu_missing() or "ok"),
    pytest.mark.skipif(
        not os.environ.get("POSAGENT_FIELD"), reason="slow qemu guest test: run `make field`"
    ),
]


@pytest.fixture(scope="module")
def cuts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, dict[str, Any]]:
    """Run three cuts once for this module."""
    res = Result("powercut", "power cut (qemu guest)")
    summary = run_cuts(res, tmp_path_factory.mktemp("powercut"), 3, seed=7, wait_s=(20.0, 30.0))
    print(res.notes, res.details, summary)
    return res, summary


def test_no_acknowledged_bundle_lost_or_unreadable(cuts: tuple[Result, dict[str, Any]]) -> None:
    """Every bundle the agent logged as captured or uploaded is stored and verifies; the unit came up after every cut."""
    res, summary = cuts
    assert summary["cuts"] == 3 and res.stalls == 0, res.details
    assert summary["acknowledged"] > 0 and summary["unreadable"] == 0, res.details
    assert res.losses == summary["recorder_misses"], res.details


def test_unclean_shutdown_raised_after_every_cut(cuts: tuple[Result, dict[str, Any]]) -> None:
    """Each boot after a cut that lived past its capture stored a power.unclean_shutdown bundle (a boot cut earlier leaves it to the next)."""
    _, summary = cuts
    assert summary["unclean_stored"] >= max(1, summary["unclean_lived"]), summary


def test_unclean_shutdown_carries_readings_from_the_run_that_was_cut(
    cuts: tuple[Result, dict[str, Any]],
) -> None:
    """The unclean-shutdown bundle of each boot holds readings from the run that was cut, the newest at most 15 s before the cut."""
    _, summary = cuts
    assert summary["with_cut_run_readings"] == summary["unclean_stored"], summary
    assert max(summary["gaps_s"], default=0.0) <= 15.0, summary
