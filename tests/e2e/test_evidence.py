"""Evidence end to end on the simulated terminal: paper end → one bundle with the real screen,
the minutes before, the printer status and every collector; a PIN screen → no screenshot and
why; a 100-event storm → at most the configured bundles and the suppressed count."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from agent.capture.probes import build_probes
from agent.core.config import load_config
from agent.daemon.runner import Agent
from agent.faults.policy import CapturePolicy
from simulator.screen import render_pos_screen, xvfb_available
from simulator.terminal import SimTerminal, merge_sections
from tests.conftest import wait_until

pytestmark = pytest.mark.skipif(not xvfb_available(), reason="Xvfb not installed")


def bundles(state: Path, key: str) -> list[dict[str, Any]]:
    """Bundles in spool/new whose trigger key is `key`, with their entries."""
    out = []
    for f in sorted((state / "spool" / "new").glob("*.zip")):
        with zipfile.ZipFile(f) as z:
            m = json.loads(z.read("manifest.json"))
            if m["trigger"].get("key") == key:
                out.append({"manifest": m, "entries": {n: z.read(n) for n in z.namelist()}})
    return out


class SteppedClock:
    """time.monotonic() plus the steps a test takes."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def step(self, seconds: float) -> None:
        self.offset += seconds


POLICY_CLOCK = SteppedClock()


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[tuple[SimTerminal, Agent]]:
    """A simulated terminal with an Xvfb POS screen and an in-process agent on it."""
    term = SimTerminal(tmp_path / "term", screen="x11").start()
    try:
        sections = merge_sections(
            term.agent_sections(),
            {
                "capture": {
                    "cooldown_s": 60.0,
                    "burst": 10,
                    "bundles_per_hour": 1.0,
                    "critical_reserve": 1,
                }
            },
        )
        cfg = load_config(term.write_config(tmp_path / "agent.toml", sections))
        agent = Agent(cfg)
        # the policy's monotonic clock, steppable: "past the cooldown" is a step of this
        # clock, not a sleep that a slow capture on a busy machine could outlast
        agent.policy = CapturePolicy(
            cfg.capture, Path(cfg.agent.state_dir) / "policy.json", clock=POLICY_CLOCK
        )
        agent.start()
        try:
            yield term, agent
        finally:
            agent.stop()
    finally:
        term.close()


def test_paper_end_pin_screen_and_storm(terminal: tuple[SimTerminal, Agent]) -> None:
    """Paper end gives one full bundle; PIN entry gives no screenshot with the reason; a storm is bounded."""
    term, agent = terminal
    state = term.state
    assert wait_until(
        lambda: (
            agent.last.get("printer:receipt")
            and agent.last["printer:receipt"].values.get("link") == "ok"
        )
    )
    time.sleep(2.0)  # some minutes-before (seconds here) in the flight recorder

    t_fault = time.time()
    term.apply("printer", {"paper": "end"})
    found = wait_until(lambda: bundles(state, "printer.paper_end"), 20)
    assert found, "no printer.paper_end bundle"
    time.sleep(1.0)
    assert len(bundles(state, "printer.paper_end")) == 1
    b = found[0]
    m, entries = b["manifest"], b["entries"]
    # the screenshot is the POS screen shown on the Xvfb display, pixel for pixel
    assert m["redaction"]["screenshot"] == "captured"
    shot = Image.open(io.BytesIO(entries["screenshot.png"])).convert("RGB")
    expected = render_pos_screen("sale", term.screen.width, term.screen.height).convert("RGB")  # type: ignore[union-attr]
    assert shot.size == expected.size
    assert shot.tobytes() == expected.tobytes()
    # the timeline holds the printer readings from before the fault
    readings = json.loads(entries["timeline.json"])["readings"]
    before = [r for r in readings if r["source"] == "printer:receipt" and r["ts"] < t_fault]
    assert len(before) >= 2 and all(r["values"]["paper_end"] is False for r in before)
    # the printer status and every other collector
    printer = json.loads(entries["diagnostics/printer.json"])
    assert "paper_end" in json.dumps(printer)
    names = {c.name for c in build_probes(agent.cfg, agent.ctx, lambda: {})}
    errors = json.loads(entries.get("diagnostics/errors.json", b"{}"))
    got = {
        n.split("/", 1)[1].rsplit(".", 1)[0] for n in entries if n.startswith("diagnostics/")
    } - {"errors"}
    assert names <= got | set(errors), (names, got, errors)
    assert m["trigger"]["readings"], "the readings that raised it travel in the manifest"

    # a PIN-entry screen during a fault: no screenshot, and why
    term.apply("screen", {"pin": True})
    time.sleep(0.5)
    term.apply("printer", {"paper": "ok", "cover_open": True})
    pin = wait_until(lambda: bundles(state, "printer.cover_open"), 20)
    assert pin, "no printer.cover_open bundle"
    status = pin[0]["manifest"]["redaction"]["screenshot"]
    assert status.startswith("skipped:") and "sensitive" in status, status
    assert "screenshot.png" not in pin[0]["entries"]

    # a 100-event storm over three faults: one bundle per fault (cooldown), within the bucket,
    # and the next bundle of a fault says how many of its repeats were suppressed
    keys = ("app.log_error", "app.crash_report", "app.anr")
    before_storm = sum(1 for _ in (state / "spool" / "new").glob("*.zip"))
    for i in range(100):
        ev = agent.engine.event(keys[i % 3], subject=f"pos-{i}.log", summary="storm")
        assert ev is not None
        agent._emit([ev])
    assert wait_until(lambda: all(bundles(state, k) for k in keys), 10)
    time.sleep(1.0)
    assert [len(bundles(state, k)) for k in keys] == [1, 1, 1]
    storm_bundles = sum(1 for _ in (state / "spool" / "new").glob("*.zip")) - before_storm
    assert storm_bundles <= agent.cfg.capture.burst
    assert agent.policy.suppressed_total()["app.log_error"] == 33
    POLICY_CLOCK.step(61.0)  # past the cooldown
    ev = agent.engine.event("app.log_error", subject="pos-last.log", summary="storm")
    assert ev is not None
    agent._emit([ev])
    later = wait_until(
        lambda: [
            b for b in bundles(state, "app.log_error") if b["manifest"]["trigger"]["suppressed"]
        ],
        10,
    )
    assert later, "no bundle carried the suppressed count"
    assert later[0]["manifest"]["trigger"]["suppressed"] == 33
    assert "33" in later[0]["entries"]["report.txt"].decode()
