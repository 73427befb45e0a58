"""`posagent demo`: a simulated terminal, the collector and the agent, one fault story.

Starts the simulated terminal (printer, PIN pad, power, payment host, the POS
screen on Xvfb or a framebuffer file), the collector and the agent as real
subprocesses (simulator.stack), then plays five steps, one progress line each:
1. printer paper end -> bundle uploaded;
2. network outage (payment host refusing, uplink to the collector cut) and a
   fault during it -> bundle queued offline;
3. network back -> the queue drains;
4. a manual report whose note holds a card number -> stored redacted;
5. a PIN entry screen during a fault -> no screenshot, and the reason.
Ends with a table and where to look. `--keep` leaves the collector running.
Exit 0 when every step passed, 1 otherwise (naming the step).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from simulator.stack import BundleInfo, Stack, StackError, bundle_names, bundle_texts

T = TypeVar("T")

STEP_TIMEOUT_S = 25.0
TEST_PAN = "4111 1111 1111 1111"
PAN_DIGITS = re.compile(r"4111[ -]?1111[ -]?1111[ -]?1111")


class StepFailed(Exception):
    """A demo step did not see what it expected."""


@dataclass
class Row:
    """One line of the final table."""

    step: str
    fault: str
    detected_s: float | None
    bundle_id: str
    uploaded_s: float | None
    note: str = ""


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def wait_for(fn: Callable[[], T | None], timeout_s: float, poll_s: float = 0.2) -> T | None:
    """Call fn until it returns something truthy or timeout_s passes; its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        v = fn()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(poll_s)


def _fmt_s(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} s"


class Demo:
    """The five steps against a running simulator.stack.Stack."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.rows: list[Row] = []

    # ------------------------------------------------------------------ helpers

    def _raised(self, key: str, after: float) -> float:
        ev = wait_for(lambda: self.stack.faults.find(key, "raised"), STEP_TIMEOUT_S)
        if ev is None:
            raise StepFailed(f"{key} was not raised within {STEP_TIMEOUT_S:.0f} s")
        return max(0.0, float(ev["at"]) - after)

    def _cleared(self, key: str) -> None:
        def cleared() -> bool:
            return any(
                e["state"] == "cleared" and e.get("key") == key for e in self.stack.faults.events
            )

        wait_for(cleared, 10.0)

    def _uploaded(self, key: str, kind: str = "fault") -> BundleInfo:
        def find() -> BundleInfo | None:
            for b in self.stack.collector_bundles():
                if b.key == key and b.kind == kind:
                    return b
            return None

        b = wait_for(find, STEP_TIMEOUT_S)
        if b is None:
            raise StepFailed(f"no {key} bundle reached the collector within {STEP_TIMEOUT_S:.0f} s")
        return b

    def _collector_ids(self) -> frozenset[str]:
        return frozenset(b.bundle_id for b in self.stack.collector_bundles())

    # ------------------------------------------------------------------ steps

    def step1_paper_end(self) -> None:
        t0 = time.time()
        self.stack.term.apply("printer", {"paper": "end"})
        detected = self._raised("printer.paper_end", t0)
        b = self._uploaded("printer.paper_end")
        self.rows.append(
            Row("1", "printer.paper_end", detected, b.bundle_id, b.received_at - t0, b.screenshot)
        )
        _out(
            f"[1/5] printer paper end: raised after {detected:.1f} s, bundle {b.bundle_id} "
            f"in the collector after {b.received_at - t0:.1f} s (screenshot {b.screenshot})"
        )
        self.stack.term.apply("printer", {"paper": "ok"})
        self._cleared("printer.paper_end")

    def step2_outage(self) -> tuple[str, float]:
        t0 = time.time()
        self.stack.term.apply("payment_host", {"mode": "refuse"})
        self.stack.cut_uplink()
        self._raised("network.host_unreachable", t0)
        before = self._collector_ids()
        t1 = time.time()
        self.stack.term.apply("printer", {"cover_open": True})
        detected = self._raised("printer.cover_open", t1)

        def queued() -> str | None:
            for b in self.stack.spool_bundles():
                if b.key == "printer.cover_open" and b.kind == "fault" and b.where == "new":
                    return b.bundle_id
            return None

        bid = wait_for(queued, STEP_TIMEOUT_S)
        if bid is None:
            raise StepFailed("the printer.cover_open bundle was not queued in the spool's new/")
        time.sleep(2.0)  # the uploader tries meanwhile: the bundle must stay queued
        if bid in self._collector_ids() - before:
            raise StepFailed("a bundle reached the collector through a cut uplink")
        if queued() != bid:
            raise StepFailed(f"bundle {bid} left the queue while the uplink was cut")
        n = sum(1 for b in self.stack.spool_bundles() if b.where == "new")
        _out(
            f"[2/5] outage (payment host refusing, uplink cut): network.host_unreachable raised; "
            f"printer.cover_open raised after {detected:.1f} s, bundle {bid} queued offline "
            f"({n} bundles in spool/new, none reached the collector)"
        )
        self.rows.append(Row("2", "printer.cover_open", detected, bid, None, "queued offline"))
        return bid, t1

    def step3_back(self, queued_id: str) -> None:
        t0 = time.time()
        self.stack.term.apply("payment_host", {"mode": "ok"})
        self.stack.restore_uplink()
        self.stack.term.apply("printer", {"cover_open": False})

        def arrived() -> float | None:
            for b in self.stack.collector_bundles():
                if b.bundle_id == queued_id:
                    return b.received_at
            return None

        received = wait_for(arrived, STEP_TIMEOUT_S)
        if received is None:
            raise StepFailed(f"queued bundle {queued_id} did not reach the collector")

        def drained() -> bool:
            return not any(b.where in ("new", "cur") for b in self.stack.spool_bundles())

        empty = wait_for(drained, STEP_TIMEOUT_S)
        left = sum(1 for b in self.stack.spool_bundles() if b.where in ("new", "cur"))
        self.rows[-1].uploaded_s = received - t0
        self.rows[-1].note = "uploaded when the network came back"
        _out(
            f"[3/5] network back: queue drained, bundle {queued_id} in the collector "
            f"{received - t0:.1f} s after the uplink returned"
            + ("" if empty else f" ({left} still queued)")
        )
        if not empty:
            raise StepFailed(f"the queue did not drain: {left} bundles left")

    def step4_manual(self) -> None:
        t0 = time.time()
        note = f"Customer card {TEST_PAN} declined twice, receipt did not print"
        self.stack.term.drop_trigger(note, "Ana, +44 20 7946 0000")
        detected = self._raised("manual.report", t0)
        b = self._uploaded("manual.report", kind="manual")
        texts = bundle_texts(self.stack.download(b.bundle_id))
        leaks = [name for name, text in texts.items() if PAN_DIGITS.search(text)]
        if leaks:
            raise StepFailed(f"the collector's copy holds the full card number in {leaks}")
        masked = sorted({m for t in texts.values() for m in re.findall(r"4111[\d* -]*1111", t)})
        self.rows.append(
            Row("4", "manual.report", detected, b.bundle_id, b.received_at - t0, "PAN redacted")
        )
        _out(
            f"[4/5] manual report with a card number in the note: bundle {b.bundle_id} stored "
            f"after {b.received_at - t0:.1f} s, no full card number in its "
            f"{len(texts)} text entries" + (f" (the note reads {masked[0]!r})" if masked else "")
        )

    def step5_pin_screen(self) -> None:
        term = self.stack.term
        if term.screen is None:
            raise StepFailed("the terminal has no screen")
        term.apply("screen", {"pin": True})
        t0 = time.time()
        term.apply("pinpad", {"plugged": False})
        detected = self._raised("serial.missing", t0)
        b = self._uploaded("serial.missing")
        term.apply("pinpad", {"plugged": True})
        term.apply("screen", {"pin": False})
        if not b.screenshot.startswith("skipped:"):
            raise StepFailed(
                f"bundle {b.bundle_id} has screenshot {b.screenshot!r} during PIN entry"
            )
        if "screenshot.png" in bundle_names(self.stack.download(b.bundle_id)):
            raise StepFailed(f"bundle {b.bundle_id} holds a screenshot taken during PIN entry")
        self.rows.append(
            Row("5", "serial.missing", detected, b.bundle_id, b.received_at - t0, b.screenshot)
        )
        _out(
            f"[5/5] PIN entry screen + PIN pad unplugged: serial.missing raised after "
            f"{detected:.1f} s, bundle {b.bundle_id} has no screenshot; manifest "
            f"redaction.screenshot = {b.screenshot!r}"
        )

    # ------------------------------------------------------------------ output

    def table(self) -> None:
        _out()
        head = f"{'step':<5}{'fault':<22}{'detected after':>15}  {'bundle id':<37}{'uploaded after':>15}  note"
        _out(head)
        _out("-" * len(head))
        for r in self.rows:
            _out(
                f"{r.step:<5}{r.fault:<22}{_fmt_s(r.detected_s):>15}  {r.bundle_id:<37}"
                f"{_fmt_s(r.uploaded_s):>15}  {r.note}"
            )


def run_demo(args: argparse.Namespace) -> int:
    """The `posagent demo` handler."""
    started = time.monotonic()
    workdir = (
        Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="posagent-demo-"))
    )
    _out(f"posagent demo: simulated terminal, collector and agent under {workdir}")
    stack = Stack(workdir, screen=args.screen, log=lambda m: _out("  " + m))
    demo = Demo(stack)
    failed = ""
    queued: list[str] = []
    steps: list[tuple[str, Callable[[], object]]] = [
        ("step 1 (printer paper end)", demo.step1_paper_end),
        ("step 2 (network outage)", lambda: queued.append(demo.step2_outage()[0])),
        ("step 3 (network back)", lambda: demo.step3_back(queued[0])),
        ("step 4 (manual report)", demo.step4_manual),
        ("step 5 (PIN entry screen)", demo.step5_pin_screen),
    ]
    try:
        try:
            stack.start()
        except StackError as e:
            failed = f"setup: {e}"
        for label, step in steps:
            if failed:
                break
            try:
                step()
            except StepFailed as e:
                failed = f"{label}: {e}"
        if demo.rows:
            demo.table()
        _where(stack, workdir, demo)
        elapsed = time.monotonic() - started
        if failed:
            _out(f"\nFAILED {failed} (after {elapsed:.0f} s); agent log: {workdir / 'agent.log'}")
            for line in stack.faults.tail(8):
                _out("  | " + line[:200])
            return 1
        _out(f"\nall 5 steps passed in {elapsed:.0f} s")
        if args.keep:
            stack.stop_agent()
            _out(f"--keep: the collector stays up at {stack.collector_url}/ ; Ctrl-C to stop")
            while stack.collector_proc is not None and stack.collector_proc.poll() is None:
                time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        _out("")
        return 0 if not failed and args.keep else 130
    finally:
        stack.close()


def _where(stack: Stack, workdir: Path, demo: Demo) -> None:
    _out()
    _out("where to look:")
    if stack.collector_url:
        _out(
            f"  collector page     {stack.collector_url}/   (API: {stack.collector_url}/v1/bundles)"
        )
        name, password = stack.operator_login
        if name:
            _out(
                f"  collector login    user {name}, password {password}   (an admin made for the demo)"
            )
    _out(
        f"  agent spool        {stack.term.state / 'spool'}   (uploaded bundles are kept in sent/)"
    )
    first = None
    if demo.rows:
        ids = {r.bundle_id for r in demo.rows}
        paths = [b.path for b in stack.spool_bundles() if b.bundle_id in ids and b.path]
        first = paths[0] if paths else None
    if first is not None:
        cfg = stack.agent_config_path
        _out(f"  one bundle         {first}")
        _out(f"  read it            posagent bundle show {first} --config {cfg}")
        _out(f"  as a page          posagent bundle html {first} --config {cfg}")
    _out(f"  logs               {workdir / 'agent.log'}, {workdir / 'collector.log'}")


def main(args: argparse.Namespace) -> int:
    """Entry point used by agent.commands.main."""
    return run_demo(args)
