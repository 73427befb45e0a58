"""Scenarios: a timeline of actions on the simulated terminal and what the agent must do.

A scenario is a TOML file:

    name = "printer paper end"
    about = "one sentence"
    timeout_s = 12          # bound on waiting for the expectations (default 12)
    screen = "none"         # none | auto | x11 | fbdev
    collector = true        # start the collector behind the cuttable uplink
    disk_mib = 0            # > 0: the terminal's disk is a tmpfs of this size (needs root)
    netns = false           # the agent runs in a network namespace whose only resolver
                            # is the DNS twin; its payment host is a name (needs root)
    fake_clock = false      # the agent runs on a libfaketime clock that steps can move

    [config]                # merged into the agent config (tables by key, arrays by index)
    printer = [{interval_s = 0.5}]

    [[step]]
    at_s = 1                # seconds after the agent started (at the earliest)
    device = "printer"      # printer | power | network | payment_host | pinpad | usb
    set = {paper = "end"}   # | screen | trigger | app (see terminal.DEVICES)
                            # | uplink | agent | credentials (see stack.STACK_DEVICES)
                            # | dns: {mode = "ok|servfail|nxdomain|silent"} (netns)
                            # | clock: {step_s = 3600} (fake_clock)

    [[expect]]
    raised = "printer.paper_end"     # or cleared = "...", or not_raised = "..."
    subject = "receipt"              # optional
    before_step = 2                  # optional: must hold before step 2 runs (gate)

    [[expect]]
    bundle = "printer.paper_end"     # a bundle whose trigger key is this
    kind = "fault"                   # fault | cleared | manual | startup (optional)
    uploaded = true                  # in the collector (false: queued in the spool, not there)
    screenshot = "captured"          # exact, or a prefix ending in "*" ("skipped:*")
    entries = ["report.txt"]         # entries the bundle must contain
    absent = ["4111111111111111"]    # strings no text entry may contain
    present = ["411111"]             # strings some text entry must contain

Expectations with `before_step` gate that step (the runner waits for them,
bounded by timeout_s); the others are awaited after the last step. Each gets
PASS or FAIL with the reason. `not_raised` is checked at the very end.
"""

from __future__ import annotations

import fnmatch
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.stack import STACK_DEVICES, BundleInfo, Stack, bundle_names, bundle_texts
from simulator.terminal import DEVICES

EXPECT_KINDS = ("raised", "cleared", "not_raised", "bundle")
BUNDLE_KEYS = ("kind", "uploaded", "screenshot", "entries", "absent", "present", "subject")
SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"


class ScenarioError(ValueError):
    """A scenario file that is not valid (file and reason in the message)."""


@dataclass(frozen=True)
class Step:
    """One action on a device."""

    at_s: float
    device: str
    changes: dict[str, Any]


@dataclass
class Expect:
    """One expectation and its outcome."""

    kind: str  # raised | cleared | not_raised | bundle
    key: str
    opts: dict[str, Any]
    before_step: int = 0  # 1-based step index it gates; 0 = awaited at the end
    passed: bool = False
    detail: str = "not checked"
    at: float = 0.0  # when it first held (wall clock)

    def describe(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.opts.items())
        return f"{self.kind} {self.key}" + (f" ({extra})" if extra else "")


@dataclass
class Scenario:
    """A parsed scenario file."""

    path: Path
    name: str
    about: str
    timeout_s: float
    screen: str
    collector: bool
    config: dict[str, Any]
    disk_mib: int
    steps: list[Step]
    expects: list[Expect]
    netns: bool = False
    fake_clock: bool = False


def load(path: Path) -> Scenario:
    """Parse and validate a scenario file; ScenarioError says what is wrong."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ScenarioError(f"{path}: {e}") from e
    known = {
        "name",
        "about",
        "timeout_s",
        "screen",
        "collector",
        "disk_mib",
        "netns",
        "fake_clock",
        "config",
        "step",
        "expect",
    }
    bad = sorted(set(doc) - known)
    if bad:
        raise ScenarioError(f"{path}: unknown keys {bad}")
    steps: list[Step] = []
    for i, s in enumerate(doc.get("step", []), 1):
        dev = s.get("device", "")
        if dev not in DEVICES and dev not in STACK_DEVICES:
            raise ScenarioError(f"{path}: step {i}: unknown device {dev!r}")
        changes = s.get("set", {})
        if not isinstance(changes, dict) or not changes:
            raise ScenarioError(f"{path}: step {i}: `set` must be a non-empty table")
        allowed = DEVICES.get(dev) or STACK_DEVICES[dev]
        unknown = sorted(set(changes) - set(allowed))
        if unknown:
            raise ScenarioError(f"{path}: step {i}: {dev} has no setting {unknown}")
        steps.append(Step(float(s.get("at_s", 0.0)), dev, dict(changes)))
    expects: list[Expect] = []
    for i, ex in enumerate(doc.get("expect", []), 1):
        kinds = [k for k in EXPECT_KINDS if k in ex]
        if len(kinds) != 1:
            raise ScenarioError(f"{path}: expect {i}: needs exactly one of {EXPECT_KINDS}")
        kind = kinds[0]
        opts = {k: v for k, v in ex.items() if k not in (kind, "before_step")}
        unknown = sorted(set(opts) - set(BUNDLE_KEYS if kind == "bundle" else ("subject",)))
        if unknown:
            raise ScenarioError(f"{path}: expect {i}: unknown keys {unknown}")
        gate = int(ex.get("before_step", 0))
        if gate < 0 or gate > len(steps):
            raise ScenarioError(f"{path}: expect {i}: before_step {gate} is not a step")
        expects.append(Expect(kind, str(ex[kind]), opts, gate))
    if not expects:
        raise ScenarioError(f"{path}: no [[expect]]")
    screen = str(doc.get("screen", "none"))
    if screen not in ("none", "auto", "x11", "fbdev"):
        raise ScenarioError(f"{path}: screen must be none | auto | x11 | fbdev")
    return Scenario(
        Path(path),
        str(doc.get("name", Path(path).stem)),
        str(doc.get("about", "")),
        float(doc.get("timeout_s", 12.0)),
        screen,
        bool(doc.get("collector", True)),
        dict(doc.get("config", {})),
        int(doc.get("disk_mib", 0)),
        steps,
        expects,
        bool(doc.get("netns", False)),
        bool(doc.get("fake_clock", False)),
    )


# --------------------------------------------------------------------------- checking


@dataclass
class Checker:
    """Evaluates expectations against the running stack (bundle contents cached)."""

    stack: Stack
    _texts: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)

    def check(self, e: Expect) -> tuple[bool, str]:
        subject = e.opts.get("subject")
        if e.kind in ("raised", "cleared"):
            ev = self.stack.faults.find(e.key, e.kind, subject)
            if ev is None:
                return False, f"no {e.kind} event for {e.key}"
            return True, f"{e.kind} at {time.strftime('%H:%M:%S', time.localtime(ev['at']))}"
        if e.kind == "not_raised":
            ev = self.stack.faults.find(e.key, "raised", subject)
            if ev is not None:
                return False, f"{e.key} was raised: {ev.get('summary', '')}"
            return True, "never raised"
        return self._check_bundle(e)

    def _candidates(self, e: Expect) -> tuple[list[BundleInfo], list[BundleInfo]]:
        local = [b for b in self.stack.spool_bundles() if b.key == e.key]
        remote = [b for b in self.stack.collector_bundles() if b.key == e.key]
        kind = e.opts.get("kind")
        if kind:
            local = [b for b in local if b.kind == kind]
            remote = [b for b in remote if b.kind == kind]
        return local, remote

    def _contents(self, b: BundleInfo) -> tuple[list[str], dict[str, str]]:
        if b.bundle_id not in self._texts:
            if b.where == "collector":
                data = self.stack.download(b.bundle_id)
            else:
                assert b.path is not None
                data = b.path.read_bytes()
            self._texts[b.bundle_id] = (bundle_names(data), bundle_texts(data))
        return self._texts[b.bundle_id]

    def _check_bundle(self, e: Expect) -> tuple[bool, str]:
        local, remote = self._candidates(e)
        remote_ids = {b.bundle_id for b in remote}
        uploaded = e.opts.get("uploaded")
        if uploaded is True:
            pool = remote
        elif uploaded is False:
            pool = [b for b in local if b.where == "new" and b.bundle_id not in remote_ids]
        else:
            pool = remote + [b for b in local if b.bundle_id not in remote_ids]
        if not pool:
            where = (
                " in the collector"
                if uploaded is True
                else (" queued (spool new/, not uploaded)" if uploaded is False else "")
            )
            seen = ", ".join(f"{b.bundle_id[:8]}@{b.where}" for b in local + remote) or "none"
            return False, f"no {e.key} bundle{where} (seen: {seen})"
        reasons: list[str] = []
        for b in pool:
            ok, why = self._bundle_matches(b, e)
            if ok:
                return True, f"bundle {b.bundle_id} ({b.where}){why}"
            reasons.append(f"{b.bundle_id[:8]}: {why}")
        return False, "; ".join(reasons)

    def _bundle_matches(self, b: BundleInfo, e: Expect) -> tuple[bool, str]:
        want_shot = e.opts.get("screenshot")
        if want_shot is not None and not fnmatch.fnmatchcase(b.screenshot, str(want_shot)):
            return False, f"screenshot is {b.screenshot!r}, want {want_shot!r}"
        needs_content = any(k in e.opts for k in ("entries", "absent", "present"))
        if not needs_content:
            return True, f", screenshot {b.screenshot}" if b.screenshot else ""
        try:
            names, texts = self._contents(b)
        except (OSError, ValueError) as err:
            return False, f"cannot read: {err}"
        missing = [n for n in e.opts.get("entries", []) if n not in names]
        if missing:
            return False, f"missing entries {missing}"
        for s in e.opts.get("absent", []):
            hits = [n for n, t in texts.items() if s in t]
            if hits:
                return False, f"{s!r} found in {hits}"
        for s in e.opts.get("present", []):
            if not any(s in t for t in texts.values()):
                return False, f"{s!r} in no entry"
        return True, f", screenshot {b.screenshot}, {len(names)} entries checked"


# --------------------------------------------------------------------------- running


@dataclass
class Result:
    """The outcome of one scenario run."""

    scenario: Scenario
    expects: list[Expect]
    error: str = ""
    duration_s: float = 0.0
    log_tail: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.error and all(e.passed for e in self.expects)


def _await(checker: Checker, expects: list[Expect], deadline: float, poll_s: float = 0.25) -> None:
    pending = [e for e in expects if e.kind != "not_raised"]
    while True:
        for e in pending:
            if not e.passed:
                e.passed, e.detail = checker.check(e)
                if e.passed:
                    e.at = time.time()
        if all(e.passed for e in pending) or time.monotonic() >= deadline:
            return
        time.sleep(poll_s)


def apply_step(stack: Stack, step: Step) -> str:
    """Run one step: uplink, agent, credentials, dns and clock on the stack, devices on the terminal."""
    c = step.changes
    if step.device == "uplink":
        if c["up"]:
            stack.restore_uplink()
        else:
            stack.cut_uplink()
        return f"uplink: up={c['up']}"
    if step.device == "agent":
        if not c.get("kill9"):
            return "agent: unchanged"
        old = stack.kill9_agent()
        new = stack.agent_proc.pid if stack.agent_proc is not None else 0
        return f"agent: pid {old} killed with SIGKILL, restarted as pid {new}"
    if step.device == "credentials":
        done = []
        if c.get("revoke"):
            stack.revoke_token()
            done.append("token rotated on the collector")
        if c.get("provision"):
            stack.provision_token()
            done.append("current token written to the agent's token_file")
        return "credentials: " + ("; ".join(done) or "unchanged")
    if step.device == "dns":
        stack.set_dns_mode(str(c["mode"]))
        return f"dns: mode={c['mode']}"
    if step.device == "clock":
        total = stack.step_clock(float(c["step_s"]))
        return f"clock: agent's wall clock stepped by {c['step_s']} s (offset now {total:+g} s)"
    return stack.term.apply(step.device, step.changes)


def run(sc: Scenario, workdir: Path, say: Callable[[str], None] | None = None) -> Result:
    """Start the stack, play the steps, check the expectations, stop everything."""
    out = say or (lambda _m: None)
    t0 = time.monotonic()
    result = Result(sc, sc.expects)
    stack = Stack(
        workdir,
        screen=sc.screen,
        collector=sc.collector,
        agent_config=sc.config,
        disk_mib=sc.disk_mib,
        netns=sc.netns,
        fake_clock=sc.fake_clock,
    )
    try:
        stack.start()
        checker = Checker(stack)
        start = time.monotonic()
        deadline = start + sc.timeout_s
        for i, step in enumerate(sc.steps, 1):
            gates = [e for e in sc.expects if e.before_step == i]
            if gates:
                _await(checker, gates, min(deadline, time.monotonic() + sc.timeout_s))
            wait = start + step.at_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            desc = apply_step(stack, step)
            out(f"  t={time.monotonic() - start:5.1f}s  {desc}")
        rest = [e for e in sc.expects if e.before_step == 0]
        _await(checker, rest, max(deadline, time.monotonic() + 2.0))
        for e in sc.expects:
            if e.kind == "not_raised":
                e.passed, e.detail = checker.check(e)
    except Exception as e:  # a broken stack fails the scenario with the reason
        result.error = f"{type(e).__name__}: {e}"
    finally:
        result.log_tail = stack.faults.tail(30)
        stack.close()
    result.duration_s = time.monotonic() - t0
    return result


def report(result: Result, say: Callable[[str], None]) -> None:
    """One line per expectation, then the verdict."""
    sc = result.scenario
    for e in result.expects:
        say(f"  {'PASS' if e.passed else 'FAIL'}  {e.describe()}: {e.detail}")
    if result.error:
        say(f"  ERROR {result.error}")
    verdict = "PASS" if result.passed else "FAIL"
    say(f"{verdict} {sc.name} ({sc.path.name}) in {result.duration_s:.1f} s")
