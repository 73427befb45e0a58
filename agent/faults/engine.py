"""Fault engine: readings in, FaultEvents out, with hysteresis and flapping.

State is kept per fault instance (rule key, subject). A bad verdict advances
the instance's bad run; once the run satisfies the rule's `raise_after`
(consecutive readings and/or seconds) the instance becomes active and a RAISED
event carries the readings of the run (bounded). Good verdicts do the same for
`clear_after`; the CLEARED event says how long the fault lasted. ``None``
verdicts and readings with ``ok=False`` leave device faults untouched.

Every real transition of an instance is timestamped. When an instance makes
`<area>.flapping`'s raise_after transitions within its window, the engine
raises ONE `<area>.flapping` fault for that subject and folds every further
transition of that area and subject into its `suppressed` count. After the
quiet period (flapping rule's clear_after seconds) the flapping fault clears
and each folded instance whose real state differs from what consumers last
saw is reconciled with one event, so every RAISED is eventually CLEARED.

Times: `clock` (monotonic, injectable) drives every duration; `wall` gives the
timestamps written into events. `snapshot()` stores durations as ages so a
`restore()` after a restart (even a reboot) keeps them meaningful.

Thread safety: `feed`, `event`, `set_condition`, `tick` and `active` may be
called from different threads (engine thread, uploader, watchers).
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from agent.core.config import Config
from agent.core.model import FaultEvent, FaultState, Reading, Severity
from agent.faults.catalog import (
    CheckContext,
    Kind,
    Rule,
    Threshold,
    Verdict,
    effective_rules,
    flapping_key,
    p95,
    unknown_override_keys,
)

log = structlog.get_logger(__name__)

EVIDENCE_MAX = 10  # readings carried by one event (the first of the run + the last ones)
TRANSITIONS_MAX = 64  # transition timestamps kept per instance
SNAPSHOT_VERSION = 1

_SEV_BY_RANK = {s.rank: s for s in Severity}


@dataclass
class _Instance:
    """Mutable state of one (key, subject) fault instance."""

    key: str
    subject: str
    active: bool = False  # state after hysteresis
    emitted: bool = False  # True when consumers last saw RAISED
    severity: Severity = Severity.WARNING
    summary: str = ""
    raised_at: float = 0.0  # wall
    raised_mono: float = 0.0
    bad_count: int = 0
    bad_since: float | None = None
    good_count: int = 0
    good_since: float | None = None
    ranks: deque[int] = field(default_factory=lambda: deque(maxlen=TRANSITIONS_MAX))
    bad_run: list[Reading] = field(default_factory=list)
    good_run: list[Reading] = field(default_factory=list)
    evidence: tuple[Reading, ...] = ()
    window: deque[float] = field(default_factory=deque)
    transitions: deque[float] = field(default_factory=lambda: deque(maxlen=TRANSITIONS_MAX))

    @property
    def ident(self) -> tuple[str, str]:
        return (self.key, self.subject)

    def idle(self) -> bool:
        """True when forgetting this instance loses nothing."""
        return not (
            self.active or self.emitted or self.bad_count or self.window or self.transitions
        )


@dataclass
class _Flap:
    """An active `<area>.flapping` fault for one subject."""

    key: str
    subject: str
    severity: Severity
    summary: str
    raised_at: float
    raised_mono: float
    last_mono: float
    suppressed: int = 0
    members: set[tuple[str, str]] = field(default_factory=set)
    evidence: tuple[Reading, ...] = ()


def _append_bounded(run: list[Reading], reading: Reading) -> None:
    """Append keeping the first reading of the run and the last EVIDENCE_MAX - 1."""
    run.append(reading)
    if len(run) > EVIDENCE_MAX:
        del run[1]


def _reached(t: Threshold, count: int, since: float | None, now: float) -> bool:
    return count >= t.count and since is not None and now - since >= t.seconds


def _duration(seconds_: float) -> str:
    s = max(0, round(seconds_))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


_FIELD = re.compile(r"\{(\w+)(?::[^{}]*)?\}")


def format_summary(template: str, values: Mapping[str, Any]) -> str:
    """Fill a summary template; missing or None values print as '?' and never raise."""
    try:
        if all(values.get(m.group(1)) is not None for m in _FIELD.finditer(template)):
            return template.format_map(dict(values))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        pass
    return _FIELD.sub(
        lambda m: "?" if values.get(m.group(1)) is None else str(values[m.group(1)]), template
    )


class FaultEngine:
    """Turns readings, one-shot events and conditions into FaultEvents."""

    def __init__(
        self,
        cfg: Config,
        clock: Callable[[], float] = time.monotonic,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = cfg
        self._clock = clock
        self._wall = wall
        self._rules = effective_rules(cfg)
        self._lock = threading.RLock()
        self._instances: dict[tuple[str, str], _Instance] = {}
        self._flaps: dict[tuple[str, str], _Flap] = {}
        self._exact: dict[str, list[Rule]] = {}
        self._prefix: dict[str, list[Rule]] = {}
        for rule in self._rules.values():
            if not rule.enabled or not (
                rule.kind is Kind.READING or (rule.kind is Kind.EVENT and rule.source)
            ):
                continue
            if rule.source.endswith(":*"):
                self._prefix.setdefault(rule.source[:-2], []).append(rule)
            else:
                self._exact.setdefault(rule.source, []).append(rule)
        for key in unknown_override_keys(cfg.faults):
            log.warning("fault_override_unknown_key", key=key)

    # ------------------------------------------------------------------ public

    @property
    def rules(self) -> Mapping[str, Rule]:
        """The effective rules (catalog with overrides), by key."""
        return self._rules

    def feed(self, reading: Reading) -> list[FaultEvent]:
        """Evaluate one reading against every rule that reads its source."""
        out: list[FaultEvent] = []
        with self._lock:
            now = self._clock()
            self._monitor_health(reading, now, out)
            if reading.ok:
                area, _, subject = reading.source.partition(":")
                rules = self._exact.get(reading.source, [])
                if subject:
                    rules = rules + self._prefix.get(area, [])
                for rule in rules:
                    subj = rule.subject_of(reading.source)
                    if subj is None:
                        continue
                    if rule.kind is Kind.EVENT:
                        out.extend(self._event_of(rule, subj, reading))
                    else:
                        self._apply(rule, subj, reading, now, out)
            self._check_flaps(now, out)
        return out

    def set_condition(
        self,
        key: str,
        subject: str,
        bad: bool,
        summary: str = "",
        values: Mapping[str, Any] | None = None,
    ) -> list[FaultEvent]:
        """Report a condition of a non-reading component (uploader, agent parts).

        Goes through the same hysteresis and flapping machinery as readings.
        """
        rule = self._rule(key)
        if rule.kind is not Kind.CONDITION:
            raise ValueError(f"{key} is not a condition rule (kind {rule.kind.value})")
        out: list[FaultEvent] = []
        if not rule.enabled:
            return out
        vals: dict[str, Any] = {"bad": bad, **(values or {})}
        if summary:
            vals["summary"] = summary
        source = f"{rule.area}:{subject}" if subject else rule.area
        reading = Reading(source, vals, ts=self._wall(), mono=self._clock())
        with self._lock:
            now = self._clock()
            inst = self._instance(rule, subject)
            self._observe(rule, inst, bad, reading, now, out, summary=summary or None)
            self._check_flaps(now, out)
        return out

    def event(
        self,
        key: str,
        subject: str = "",
        severity: Severity | None = None,
        summary: str = "",
        values: Mapping[str, Any] | None = None,
    ) -> FaultEvent | None:
        """A one-shot RAISED event (crash report, ANR, log error, manual report...).

        `severity` None means the catalog default; an override configured in
        cfg.faults wins over both. Returns None when the rule is disabled.
        One-shot events never become active and never clear.
        """
        rule = self._rule(key)
        if not rule.enabled:
            return None
        ov = self._cfg.faults.get(key)
        sev = Severity(ov.severity) if ov is not None and ov.severity else severity or rule.severity
        vals: dict[str, Any] = {"subject": subject, **(values or {})}
        text = summary or format_summary(rule.summary, vals)
        at = self._wall()
        source = f"{rule.area}:{subject}" if subject else rule.area
        reading = Reading(source, dict(values or {}), ts=at, mono=self._clock())
        return FaultEvent(key, FaultState.RAISED, sev, text, subject, at, at, (reading,))

    def _event_of(self, rule: Rule, subject: str, reading: Reading) -> list[FaultEvent]:
        """A reading of an event rule's source: one RAISED event carrying that reading.

        The reading's `summary` value, when it has one, is the event's summary.
        """
        summary = reading.values.get("summary")
        ev = self.event(
            rule.key,
            subject,
            summary=summary if isinstance(summary, str) else "",
            values=reading.values,
        )
        if ev is None:
            return []
        return [replace(ev, at=reading.ts, raised_at=reading.ts, readings=(reading,))]

    def tick(self) -> list[FaultEvent]:
        """Time-driven work without a reading: clears quiet flapping faults."""
        out: list[FaultEvent] = []
        with self._lock:
            self._check_flaps(self._clock(), out)
        return out

    def active(self) -> list[FaultEvent]:
        """Currently raised faults as consumers saw them, most severe first."""
        with self._lock:
            items = [
                FaultEvent(
                    i.key,
                    FaultState.RAISED,
                    i.severity,
                    i.summary,
                    i.subject,
                    i.raised_at,
                    i.raised_at,
                    i.evidence,
                )
                for i in self._instances.values()
                if i.emitted
            ]
            items += [
                FaultEvent(
                    f.key,
                    FaultState.RAISED,
                    f.severity,
                    f.summary,
                    f.subject,
                    f.raised_at,
                    f.raised_at,
                    f.evidence,
                    f.suppressed,
                )
                for f in self._flaps.values()
            ]
        return sorted(items, key=lambda e: (-e.severity.rank, e.raised_at, e.instance))

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state for persistence; durations are stored as ages."""
        with self._lock:
            now = self._clock()

            def age(t: float | None) -> float | None:
                return None if t is None else round(now - t, 3)

            instances = [
                {
                    "key": i.key,
                    "subject": i.subject,
                    "active": i.active,
                    "emitted": i.emitted,
                    "severity": i.severity.value,
                    "summary": i.summary,
                    "raised_at": i.raised_at,
                    "raised_age": age(i.raised_mono),
                    "bad_count": i.bad_count,
                    "bad_age": age(i.bad_since),
                    "good_count": i.good_count,
                    "good_age": age(i.good_since),
                    "ranks": list(i.ranks),
                    "window": list(i.window),
                    "transition_ages": [age(t) for t in i.transitions],
                    "evidence": [r.to_json() for r in i.evidence],
                }
                for i in self._instances.values()
                if not i.idle()
            ]
            flaps = [
                {
                    "key": f.key,
                    "subject": f.subject,
                    "severity": f.severity.value,
                    "summary": f.summary,
                    "raised_at": f.raised_at,
                    "raised_age": age(f.raised_mono),
                    "last_age": age(f.last_mono),
                    "suppressed": f.suppressed,
                    "members": sorted([list(m) for m in f.members]),
                }
                for f in self._flaps.values()
            ]
            return {
                "version": SNAPSHOT_VERSION,
                "wall": self._wall(),
                "instances": instances,
                "flapping": flaps,
            }

    def restore(self, data: Mapping[str, Any]) -> None:
        """Load a snapshot; unknown or disabled rules and malformed entries are dropped.

        Time spent down (wall clock difference, never negative) is added to
        every stored age, so a 5-minute duration rule does not restart.
        """
        if not isinstance(data, Mapping) or data.get("version") != SNAPSHOT_VERSION:
            log.warning("fault_snapshot_ignored", reason="unknown version")
            return
        with self._lock:
            now = self._clock()
            down = max(0.0, self._wall() - float(data.get("wall", self._wall())))

            def at(a: Any) -> float | None:
                return None if a is None else now - down - float(a)

            self._instances.clear()
            self._flaps.clear()
            for d in data.get("instances", []):
                try:
                    self._restore_instance(d, at)
                except (KeyError, TypeError, ValueError) as e:
                    log.warning("fault_snapshot_entry_dropped", entry=str(d)[:200], error=str(e))
            for d in data.get("flapping", []):
                try:
                    rule = self._rules.get(d["key"])
                    if rule is None or not rule.enabled or rule.kind is not Kind.FLAPPING:
                        continue
                    f = _Flap(
                        d["key"],
                        d["subject"],
                        Severity(d["severity"]),
                        d["summary"],
                        float(d["raised_at"]),
                        at(d["raised_age"]) or now,
                        at(d["last_age"]) or now,
                        int(d["suppressed"]),
                        {(m[0], m[1]) for m in d["members"]},
                    )
                    self._flaps[(f.key, f.subject)] = f
                except (KeyError, TypeError, ValueError, IndexError) as e:
                    log.warning("fault_snapshot_entry_dropped", entry=str(d)[:200], error=str(e))

    def _restore_instance(self, d: Mapping[str, Any], at: Callable[[Any], float | None]) -> None:
        rule = self._rules.get(d["key"])
        if rule is None or not rule.enabled or rule.kind in (Kind.EVENT, Kind.FLAPPING):
            return
        inst = self._instance(rule, str(d["subject"]))
        inst.active = bool(d["active"])
        inst.emitted = bool(d["emitted"])
        inst.severity = Severity(d["severity"])
        inst.summary = str(d["summary"])
        inst.raised_at = float(d["raised_at"])
        inst.raised_mono = at(d["raised_age"]) or 0.0
        inst.bad_count = int(d["bad_count"])
        inst.bad_since = at(d["bad_age"])
        inst.good_count = int(d["good_count"])
        inst.good_since = at(d["good_age"])
        inst.ranks.extend(int(r) for r in d["ranks"])
        inst.window.extend(float(x) for x in d["window"])
        inst.transitions.extend(t for t in (at(a) for a in d["transition_ages"]) if t is not None)
        inst.evidence = tuple(
            Reading(
                r["source"],
                dict(r.get("values", {})),
                bool(r.get("ok", True)),
                str(r.get("error", "")),
                float(r["ts"]),
            )
            for r in d.get("evidence", [])
        )

    # ------------------------------------------------------------------ internals

    def _rule(self, key: str) -> Rule:
        try:
            return self._rules[key]
        except KeyError:
            raise KeyError(f"unknown fault key {key!r}") from None

    def _instance(self, rule: Rule, subject: str) -> _Instance:
        ident = (rule.key, subject)
        inst = self._instances.get(ident)
        if inst is None:
            size = rule.window_size(self._cfg) if rule.window_size else 0
            inst = _Instance(rule.key, subject, window=deque(maxlen=max(1, size)))
            self._instances[ident] = inst
        return inst

    def _forget_if_idle(self, inst: _Instance) -> None:
        flap_rule = self._rules.get(flapping_key(inst.key.split(".", 1)[0]))
        horizon = flap_rule.flap_window_s if flap_rule is not None else 0.0
        now = self._clock()
        while inst.transitions and now - inst.transitions[0] > horizon:
            inst.transitions.popleft()
        if inst.idle():
            self._instances.pop(inst.ident, None)

    def _monitor_health(self, reading: Reading, now: float, out: list[FaultEvent]) -> None:
        rule = self._rules["agent.monitor_failed"]
        if not rule.enabled:
            return
        if not reading.ok:
            inst = self._instance(rule, reading.source)
            vals = {"error": reading.error or "failed"}
            self._observe(rule, inst, True, reading, now, out, values=vals)
            return
        for subject in {reading.source, reading.area}:
            inst_or_none = self._instances.get((rule.key, subject))
            if inst_or_none is not None:
                self._observe(rule, inst_or_none, False, reading, now, out)
                self._forget_if_idle(inst_or_none)

    def _apply(
        self, rule: Rule, subject: str, reading: Reading, now: float, out: list[FaultEvent]
    ) -> None:
        values = reading.values
        if rule.expand is not None:
            try:
                found = rule.expand(values, CheckContext(self._cfg))
            except Exception as e:  # a rule bug must not stop the engine
                log.error("fault_rule_failed", key=rule.key, source=reading.source, error=repr(e))
                found = None
            if found is None:
                return  # the list itself is unknown: hold every instance
            verdicts = dict(found)
            known = [i for (k, _), i in self._instances.items() if k == rule.key]
            for inst in known:
                verdicts.setdefault(inst.subject, False)
            for subj, verdict in verdicts.items():
                inst = self._instance(rule, subj)
                self._observe(rule, inst, verdict, reading, now, out, values={"subject": subj})
                self._forget_if_idle(inst)
            return
        inst = self._instance(rule, subject)
        extra: dict[str, Any] = {"subject": subject}
        if rule.sample is not None:
            sample = rule.sample(values)
            if sample is not None:
                inst.window.append(sample)
            if inst.window:
                extra["p95_ms"] = p95(list(inst.window))
        try:
            verdict = rule.check(values, CheckContext(self._cfg, tuple(inst.window)))
        except Exception as e:  # a rule bug must not stop the engine: unknown verdict
            log.error("fault_rule_failed", key=rule.key, source=reading.source, error=repr(e))
            verdict = None
        self._observe(rule, inst, verdict, reading, now, out, values=extra)
        self._forget_if_idle(inst)

    def _observe(
        self,
        rule: Rule,
        inst: _Instance,
        verdict: Verdict,
        reading: Reading,
        now: float,
        out: list[FaultEvent],
        *,
        values: Mapping[str, Any] | None = None,
        summary: str | None = None,
    ) -> None:
        """Advance one instance's hysteresis by one verdict."""
        if verdict is None:
            return
        if verdict is False:
            inst.bad_count, inst.bad_since = 0, None
            inst.ranks.clear()
            inst.bad_run.clear()
            if not inst.active:
                inst.good_count, inst.good_since = 0, None
                inst.good_run.clear()
                return
            inst.good_count += 1
            if inst.good_since is None:
                inst.good_since = now
            _append_bounded(inst.good_run, reading)
            if _reached(rule.clear_after, inst.good_count, inst.good_since, now):
                self._transition(rule, inst, False, now, out)
            return
        sev = rule.severity
        if isinstance(verdict, Severity) and verdict.rank > sev.rank:
            sev = verdict
        inst.good_count, inst.good_since = 0, None
        inst.good_run.clear()
        inst.bad_count += 1
        if inst.bad_since is None:
            inst.bad_since = now
        inst.ranks.append(sev.rank)
        _append_bounded(inst.bad_run, reading)
        fill = {"subject": inst.subject, **reading.values, **(values or {})}
        text = summary or format_summary(rule.summary, fill)
        if not _reached(rule.raise_after, inst.bad_count, inst.bad_since, now):
            return
        n = rule.raise_after.count
        level = _SEV_BY_RANK[min(list(inst.ranks)[-n:])]
        if not inst.active:
            inst.severity, inst.summary = level, text
            self._transition(rule, inst, True, now, out)
        elif level.rank > inst.severity.rank:
            inst.severity, inst.summary = level, text
            inst.evidence = tuple(inst.bad_run)
            if inst.emitted and self._flap_of(inst) is None:
                out.append(self._raised_event(inst))
        else:
            inst.summary = text

    def _transition(
        self, rule: Rule, inst: _Instance, active: bool, now: float, out: list[FaultEvent]
    ) -> None:
        inst.active = active
        if active and not inst.emitted:  # an emitted fault that re-raises while folded continues
            inst.raised_at = self._wall()
            inst.raised_mono = now
            inst.evidence = tuple(inst.bad_run)
        inst.transitions.append(now)
        flap_rule = self._rules.get(flapping_key(rule.area))
        if flap_rule is None or not flap_rule.enabled:
            self._emit_state(inst, now, out)
            return
        while inst.transitions and now - inst.transitions[0] > flap_rule.flap_window_s:
            inst.transitions.popleft()
        group = self._flap_of(inst)
        if group is not None:
            group.last_mono = now
            group.suppressed += 1
            group.members.add(inst.ident)
            return
        if len(inst.transitions) >= flap_rule.raise_after.count:
            self._start_flapping(flap_rule, inst, now, out)
            return
        self._emit_state(inst, now, out)

    def _flap_of(self, inst: _Instance) -> _Flap | None:
        return self._flaps.get((flapping_key(inst.key.split(".", 1)[0]), inst.subject))

    def _start_flapping(
        self, rule: Rule, inst: _Instance, now: float, out: list[FaultEvent]
    ) -> None:
        instance = f"{inst.key}@{inst.subject}" if inst.subject else inst.key
        text = format_summary(
            rule.summary,
            {
                "instance": instance,
                "subject": inst.subject,
                "transitions": len(inst.transitions),
                "window_min": rule.flap_window_s / 60,
            },
        )
        wall = self._wall()
        evidence = inst.evidence if inst.active else tuple(inst.good_run) or inst.evidence
        group = _Flap(
            rule.key, inst.subject, rule.severity, text, wall, now, now, 1, {inst.ident}, evidence
        )
        self._flaps[(rule.key, inst.subject)] = group
        log.info("fault_flapping", key=rule.key, subject=inst.subject, instance=instance)
        out.append(
            FaultEvent(
                rule.key,
                FaultState.RAISED,
                group.severity,
                text,
                inst.subject,
                wall,
                wall,
                evidence,
                1,
            )
        )

    def _check_flaps(self, now: float, out: list[FaultEvent]) -> None:
        for ident, group in list(self._flaps.items()):
            rule = self._rules[group.key]
            if now - group.last_mono < rule.clear_after.seconds:
                continue
            del self._flaps[ident]
            lasted = _duration(now - group.raised_mono)
            out.append(
                FaultEvent(
                    group.key,
                    FaultState.CLEARED,
                    group.severity,
                    f"cleared after {lasted}: {group.summary}",
                    group.subject,
                    group.raised_at,
                    self._wall(),
                    (),
                    group.suppressed,
                )
            )
            for member in sorted(group.members):
                inst = self._instances.get(member)
                if inst is None:
                    continue
                inst.transitions.clear()
                self._emit_state(inst, now, out)
                self._forget_if_idle(inst)

    def _emit_state(self, inst: _Instance, now: float, out: list[FaultEvent]) -> None:
        """Tell consumers the instance's real state if it differs from what they saw."""
        if inst.active and not inst.emitted:
            inst.emitted = True
            out.append(self._raised_event(inst))
        elif not inst.active and inst.emitted:
            inst.emitted = False
            lasted = _duration(now - inst.raised_mono)
            out.append(
                FaultEvent(
                    inst.key,
                    FaultState.CLEARED,
                    inst.severity,
                    f"cleared after {lasted}: {inst.summary}",
                    inst.subject,
                    inst.raised_at,
                    self._wall(),
                    tuple(inst.good_run),
                )
            )

    def _raised_event(self, inst: _Instance) -> FaultEvent:
        return FaultEvent(
            inst.key,
            FaultState.RAISED,
            inst.severity,
            inst.summary,
            inst.subject,
            inst.raised_at,
            self._wall(),
            inst.evidence,
        )
