"""The fault catalog as data: coverage of docs/ARCHITECTURE.md §8, defaults, thresholds and overrides."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from agent.core.config import Config, FaultOverride, PowerConfig, SystemConfig
from agent.core.model import Severity
from agent.faults.catalog import (
    RULES,
    CheckContext,
    Kind,
    apply_override,
    effective_rules,
    p95,
    readings,
    seconds,
    unknown_override_keys,
)

# Every key named in the table of docs/ARCHITECTURE.md §8 (compound rows split).
CATALOG_TABLE_KEYS = [
    "power.ac_lost",
    "power.battery_low",
    "power.battery_critical",
    "power.not_charging",
    "power.battery_health",
    "power.battery_hot",
    "power.unclean_shutdown",
    "network.link_down",
    "network.no_route",
    "network.dns_failure",
    "network.host_unreachable",
    "network.high_latency",
    "network.flapping",
    "printer.absent",
    "printer.no_reply",
    "printer.offline",
    "printer.cover_open",
    "printer.paper_end",
    "printer.cutter_error",
    "printer.unrecoverable",
    "printer.overheat",
    "printer.paper_near_end",
    "printer.drawer_open_too_long",
    "serial.missing",
    "serial.identity_changed",
    "serial.unexpected_device",
    "serial.no_reply",
    "system.disk_low",
    "system.memory_low",
    "system.cpu_saturated",
    "system.clock_unsynced",
    "system.clock_jump",
    "app.not_running",
    "app.crash_loop",
    "app.hung",
    "app.crash_report",
    "app.anr",
    "app.log_error",
    "manual.report",
]

# Keys named elsewhere in the design and the Reading contract.
EXTRA_KEYS = ["upload.auth_failed", "agent.monitor_failed", "adb.offline"]

# (key, severity, raise_after, clear_after) as docs/ARCHITECTURE.md §8 gives them.
DEFAULTS = [
    ("power.ac_lost", "error", readings(2, 5.0), readings(2)),
    ("power.battery_low", "warning", readings(1), readings(1)),
    ("power.battery_critical", "critical", readings(1), readings(1)),
    ("power.not_charging", "warning", seconds(300), readings(1)),
    ("power.battery_health", "error", readings(1), readings(1)),
    ("power.battery_hot", "warning", readings(2), readings(2)),
    ("network.link_down", "critical", readings(2), readings(3)),
    ("network.no_route", "critical", readings(3), readings(3)),
    ("network.dns_failure", "critical", readings(3), readings(3)),
    ("network.host_unreachable", "critical", readings(3), readings(3)),
    ("network.high_latency", "warning", seconds(300), seconds(120)),
    ("network.flapping", "error", readings(6), seconds(300)),
    ("printer.absent", "error", readings(1), readings(1)),
    ("printer.no_reply", "error", readings(3), readings(1)),
    ("printer.offline", "error", readings(2), readings(2)),
    ("printer.cover_open", "critical", readings(2), readings(2)),
    ("printer.paper_end", "critical", readings(2), readings(2)),
    ("printer.cutter_error", "error", readings(2), readings(2)),
    ("printer.unrecoverable", "critical", readings(2), readings(2)),
    ("printer.overheat", "error", readings(2), readings(2)),
    ("printer.paper_near_end", "warning", readings(2), readings(2)),
    ("printer.drawer_open_too_long", "warning", seconds(120), readings(1)),
    ("serial.missing", "error", readings(1), readings(1)),
    ("serial.identity_changed", "critical", readings(1), readings(1)),
    ("serial.unexpected_device", "warning", readings(1), readings(1)),
    ("serial.no_reply", "error", readings(3), readings(2)),
    ("system.cpu_saturated", "error", seconds(120), readings(2)),
    ("system.clock_unsynced", "warning", readings(1), readings(1)),
    ("system.clock_jump", "warning", readings(1), readings(1)),
    ("app.not_running", "critical", readings(2), readings(2)),
    ("app.crash_loop", "critical", readings(2), readings(2)),
    ("app.hung", "critical", readings(2), readings(2)),
]


def test_catalog_covers_every_design_key() -> None:
    """Every key of docs/ARCHITECTURE.md §8's table, and the agent's own keys, has a rule."""
    assert [k for k in CATALOG_TABLE_KEYS + EXTRA_KEYS if k not in RULES] == []


def test_catalog_defaults_match_the_design_table() -> None:
    """Severities and raise/clear thresholds are docs/ARCHITECTURE.md §8's defaults."""
    got = [
        (k, RULES[k].severity.value, RULES[k].raise_after, RULES[k].clear_after)
        for k, *_ in DEFAULTS
    ]
    assert got == DEFAULTS


def test_one_shot_keys_are_event_rules() -> None:
    """Crash reports, ANRs, log errors, manual reports and unclean shutdowns are one-shot."""
    one_shot = {k for k, r in RULES.items() if r.kind is Kind.EVENT}
    assert one_shot == {
        "power.unclean_shutdown",
        "app.crash_report",
        "app.anr",
        "app.log_error",
        "manual.report",
    }


def test_every_area_has_a_flapping_rule() -> None:
    """Each area whose rules can transition has an <area>.flapping rule."""
    areas = {
        r.area for r in RULES.values() if r.kind in (Kind.READING, Kind.CONDITION, Kind.MONITOR)
    }
    assert {f"{a}.flapping" for a in areas} <= set(RULES)


def test_reading_rules_name_their_sources() -> None:
    """Reading rules apply to the sources of the Reading contract, and subject is the part after ':'."""
    contract = {
        "power",
        "network",
        "network:*",
        "payment:*",
        "printer:*",
        "serial:*",
        "peripherals",
        "system",
        "app",
        "adb",
    }
    assert {r.source for r in RULES.values() if r.kind is Kind.READING} <= contract
    rule = RULES["printer.paper_end"]
    assert rule.subject_of("printer:receipt") == "receipt"
    assert rule.subject_of("printer") is None
    assert rule.subject_of("printer:") is None
    assert RULES["network.no_route"].subject_of("network") == ""
    assert RULES["network.no_route"].subject_of("network:eth0") is None
    assert RULES["network.dns_failure"].subject_of("payment:[::1]:443") == "[::1]:443"


def test_thresholds_come_from_config() -> None:
    """Battery, temperature and system thresholds are read from the config sections."""
    cfg = dataclasses.replace(
        Config(),
        power=PowerConfig(
            battery_low_pct=30,
            battery_critical_pct=10,
            battery_hot_c=40.0,
            battery_critical_hot_c=50.0,
        ),
        system=SystemConfig(
            disk_low_pct=20.0,
            disk_low_mib=1,
            memory_low_pct=50.0,
            cpu_saturated_pct=80.0,
            clock_jump_s=5.0,
        ),
    )
    ctx = CheckContext(cfg)
    assert RULES["power.battery_low"].check({"battery_pct": 30.0}, ctx) is True
    assert RULES["power.battery_low"].check({"battery_pct": 33.0}, ctx) is None
    assert RULES["power.battery_low"].check({"battery_pct": 35.0}, ctx) is False
    assert RULES["power.battery_critical"].check({"battery_pct": 10.0}, ctx) is True
    assert RULES["power.battery_hot"].check({"battery_temp_c": 41.0}, ctx) is True
    assert RULES["power.battery_hot"].check({"battery_temp_c": 50.0}, ctx) is Severity.CRITICAL
    assert (
        RULES["system.disk_low"].check({"disk_free_pct": 19.0, "disk_free_mib": 9e9}, ctx) is True
    )
    assert RULES["system.memory_low"].check({"mem_available_pct": 49.0}, ctx) is True
    assert RULES["system.cpu_saturated"].check({"cpu_pct": 80.0}, ctx) is True
    assert RULES["system.clock_jump"].check({"clock_jump_s": 6.0}, ctx) is True


def test_checks_return_none_for_missing_or_mistyped_values() -> None:
    """A check given no values, or values of the wrong type, answers None (unknown)."""
    ctx = CheckContext(Config())
    for rule in RULES.values():
        if rule.kind is not Kind.READING:
            continue
        if rule.expand is not None:
            assert rule.expand({}, ctx) is None
            continue
        assert rule.check({}, ctx) is None, rule.key
        garbage = dict.fromkeys(
            ("ac_online", "battery_pct", "carrier", "link", "state", "cpu_pct", "running"), "x"
        )
        verdict = rule.check(garbage, ctx)
        assert verdict is None or isinstance(verdict, bool), rule.key


def test_override_replaces_thresholds_in_the_rule_unit_and_severity() -> None:
    """raise_after/clear_after keep the rule's unit; -1 and "" keep the defaults."""
    ac = apply_override(RULES["power.ac_lost"], FaultOverride(raise_after=4, clear_after=-1))
    assert (ac.raise_after, ac.clear_after) == (readings(4), readings(2))
    nc = apply_override(
        RULES["power.not_charging"], FaultOverride(raise_after=60.5, severity="critical")
    )
    assert (nc.raise_after, nc.severity) == (seconds(60.5), Severity.CRITICAL)
    off = apply_override(RULES["app.anr"], FaultOverride(enabled=False))
    assert off.enabled is False and off.severity is Severity.ERROR
    assert apply_override(RULES["app.anr"], None) is RULES["app.anr"]


def test_effective_rules_apply_config_overrides() -> None:
    """effective_rules applies cfg.faults to the matching rule only."""
    cfg = Config(faults={"printer.paper_near_end": FaultOverride(severity="error")})
    rules = effective_rules(cfg)
    assert rules["printer.paper_near_end"].severity is Severity.ERROR
    assert rules["printer.paper_end"] == RULES["printer.paper_end"]


def test_unknown_override_keys_are_reported() -> None:
    """Override keys that name no rule are listed (typos)."""
    faults = {"printer.paper_ned": FaultOverride(), "power.ac_lost": FaultOverride()}
    assert unknown_override_keys(faults) == ["printer.paper_ned"]


def test_threshold_descriptions() -> None:
    """Thresholds describe themselves for status output."""
    assert readings(2, 5.0).describe() == "2 readings ≥ 5 s"
    assert readings(1).describe() == "1 reading"
    assert seconds(120).describe() == "120 s"


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200))
def test_p95_is_a_sample_at_or_above_95_percent_of_them(xs: list[float]) -> None:
    """p95 (nearest rank) is one of the samples with at least 95 % of samples at or below it."""
    v = p95(xs)
    assert v in xs
    assert sum(1 for x in xs if x <= v) >= 0.95 * len(xs)


def test_p95_small_windows() -> None:
    """With 20 samples the p95 is the 19th smallest; with 5 it is the largest."""
    assert p95([float(i) for i in range(1, 21)]) == 19.0
    assert p95([1.0, 5.0, 2.0, 4.0, 3.0]) == 5.0


ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=10),
    st.lists(st.one_of(st.text(max_size=6), st.integers()), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
VALUE_KEYS = sorted(
    {
        "ac_online", "plugged", "battery_present", "battery_pct", "battery_status",
        "battery_health", "battery_temp_c", "carrier", "operstate", "default_route",
        "dns_ok", "connect_ok", "connect_ms", "tls_ok", "link", "online", "cover_open",
        "paper_end", "paper_near_end", "cutter_error", "unrecoverable", "auto_recoverable",
        "drawer_open", "state", "identity_changed", "unexpected", "cpu_pct",
        "mem_available_pct", "disk_free_pct", "disk_free_mib", "clock_synced",
        "clock_jump_s", "running", "restarts_10min", "heartbeat_age_s",
    }
)  # fmt: skip


@given(
    st.dictionaries(st.sampled_from(VALUE_KEYS), ANY_VALUE, max_size=12),
    st.lists(st.floats(allow_nan=False), max_size=25),
)
def test_every_check_answers_a_verdict_for_any_values(
    values: dict[str, object], window: list[float]
) -> None:
    """No rule check raises on values of any type; each answers None, a bool or a Severity."""
    ctx = CheckContext(Config(), window)
    for rule in RULES.values():
        if rule.kind is not Kind.READING:
            continue
        if rule.expand is not None:
            found = rule.expand(values, ctx)
            assert found is None or all(isinstance(s, str) for s, _ in found)
            continue
        verdict = rule.check(values, ctx)
        assert verdict is None or isinstance(verdict, bool | Severity), rule.key
        if rule.sample is not None:
            sample = rule.sample(values)
            assert sample is None or isinstance(sample, float)


def test_printer_offline_only_without_a_more_specific_cause() -> None:
    """A printer offline because of paper end or an open cover raises that fault, not printer.offline too."""
    from agent.core.config import Config
    from agent.faults.catalog import RULES, CheckContext

    check = RULES["printer.offline"].check
    ctx = CheckContext(Config(), [])
    base = {"link": "ok", "online": False, "cover_open": False, "paper_end": False}
    assert check(base, ctx) is True
    assert check({**base, "paper_end": True}, ctx) is False
    assert check({**base, "cover_open": True}, ctx) is False
    assert check({**base, "online": True}, ctx) is False
    assert check({**base, "link": "no_reply"}, ctx) is None


def test_not_charging_ignores_a_full_battery() -> None:
    """Firmware that reports "Not charging" near 100 % does not raise power.not_charging."""
    from agent.core.config import Config
    from agent.faults.catalog import RULES, CheckContext

    check = RULES["power.not_charging"].check
    ctx = CheckContext(Config(), [])
    v = {
        "plugged": True,
        "battery_present": True,
        "battery_status": "Not charging",
        "battery_pct": 60.0,
    }
    assert check(v, ctx) is True
    assert check({**v, "battery_pct": 100.0}, ctx) is False
