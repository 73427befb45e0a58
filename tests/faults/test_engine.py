"""Table-driven tests of every catalog rule: readings in, expected events out."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from agent.core.config import Config, FaultOverride
from agent.core.model import Severity
from agent.faults.catalog import RULES
from tests.faults.kit import COND, EV, F, R, Row, Step, make_config, run

PAY = "payment:pay.example.com:443"
HOST = "pay.example.com:443"


@dataclass(frozen=True)
class Case:
    """One table row: steps fed to a fresh engine and the watched events expected."""

    id: str
    key: str
    steps: list[Step]
    expect: list[Row]
    watch: set[str] = field(default_factory=set)
    faults: dict[str, FaultOverride] = field(default_factory=dict)
    latency_window: int | None = None

    def config(self) -> Config:
        return make_config(self.faults, self.latency_window)


def printer_ok(**bits: bool) -> dict[str, object]:
    """A printer reading with a valid reply and every status bit clear unless given."""
    base: dict[str, object] = {
        "link": "ok",
        "online": True,
        "cover_open": False,
        "paper_end": False,
        "paper_near_end": False,
        "cutter_error": False,
        "unrecoverable": False,
        "auto_recoverable": False,
        "drawer_open": False,
    }
    base.update(bits)
    return base


PRINTER_BITS = [
    ("printer.offline", {"online": False}, "error"),
    ("printer.cover_open", {"cover_open": True}, "critical"),
    ("printer.paper_end", {"paper_end": True}, "critical"),
    ("printer.cutter_error", {"cutter_error": True}, "error"),
    ("printer.unrecoverable", {"unrecoverable": True}, "critical"),
    ("printer.overheat", {"auto_recoverable": True}, "error"),
    ("printer.paper_near_end", {"paper_near_end": True}, "warning"),
]

CASES: list[Case] = [
    # ---------------------------------------------------------------- power
    Case(
        "ac_lost raises after 2 readings 5 s apart and clears after 2",
        "power.ac_lost",
        [
            R("power", ac_online=True),
            R("power", ac_online=False),
            R("power", ac_online=False),
            R("power", ac_online=True),
            R("power", ac_online=True),
        ],
        [(2, "power.ac_lost", "", "raised", "error"), (4, "power.ac_lost", "", "cleared", "error")],
    ),
    Case(
        "ac_lost needs 5 s even with more than 2 readings",
        "power.ac_lost",
        [R("power", dt=1, ac_online=False) for _ in range(6)],
        [(5, "power.ac_lost", "", "raised", "error")],
    ),
    Case(
        "ac_lost: None values neither raise nor reset the run",
        "power.ac_lost",
        [
            R("power", ac_online=False),
            R("power", ac_online=None),
            R("power"),
            R("power", ac_online=False),
        ],
        [(3, "power.ac_lost", "", "raised", "error")],
    ),
    Case(
        "ac_lost: a good reading in between resets the run",
        "power.ac_lost",
        [
            R("power", ac_online=False),
            R("power", ac_online=True),
            R("power", ac_online=False),
            R("power", ac_online=False),
        ],
        [(3, "power.ac_lost", "", "raised", "error")],
    ),
    Case(
        "battery_low at 15 %, held inside the band, cleared at 20 %",
        "power.battery_low",
        [
            R("power", battery_pct=50.0),
            R("power", battery_pct=15.0),
            R("power", battery_pct=17.0),
            R("power", battery_pct=19.9),
            R("power", battery_pct=20.0),
            R("power", battery_pct=18.0),
        ],
        [
            (1, "power.battery_low", "", "raised", "warning"),
            (4, "power.battery_low", "", "cleared", "warning"),
        ],
    ),
    Case(
        "battery_low clears when the battery is removed",
        "power.battery_low",
        [R("power", battery_pct=10.0), R("power", battery_present=False, battery_pct=None)],
        [
            (0, "power.battery_low", "", "raised", "warning"),
            (1, "power.battery_low", "", "cleared", "warning"),
        ],
    ),
    Case(
        "battery_critical at 5 %, cleared at 10 %",
        "power.battery_critical",
        [
            R("power", battery_pct=6.0),
            R("power", battery_pct=5.0),
            R("power", battery_pct=9.0),
            R("power", battery_pct=10.0),
        ],
        [
            (1, "power.battery_critical", "", "raised", "critical"),
            (3, "power.battery_critical", "", "cleared", "critical"),
        ],
    ),
    Case(
        "not_charging holds 5 min before raising, clears on 1 reading",
        "power.not_charging",
        [
            R("power", dt=0, plugged=True, battery_status="Not charging"),
            R("power", dt=100, plugged=True, battery_status="Not charging"),
            R("power", dt=100, plugged=True, battery_status="Not charging"),
            R("power", dt=99, plugged=True, battery_status="Not charging"),
            R("power", dt=1, plugged=True, battery_status="Not charging"),
            R("power", dt=5, plugged=True, battery_status="Charging"),
        ],
        [
            (4, "power.not_charging", "", "raised", "warning"),
            (5, "power.not_charging", "", "cleared", "warning"),
        ],
    ),
    Case(
        "not_charging is fine when unplugged and unknown without plugged",
        "power.not_charging",
        [
            R("power", dt=400, plugged=False, battery_status="Not charging"),
            R("power", dt=400, plugged=None, battery_status="Not charging"),
            R("power", dt=400, plugged=False, battery_status="Discharging"),
        ],
        [],
    ),
    Case(
        "battery_health raises on Overheat, holds on Unknown, clears on Good",
        "power.battery_health",
        [
            R("power", battery_health="Good"),
            R("power", battery_health="Overheat"),
            R("power", battery_health="Unknown"),
            R("power", battery_health="Good"),
        ],
        [
            (1, "power.battery_health", "", "raised", "error"),
            (3, "power.battery_health", "", "cleared", "error"),
        ],
    ),
    Case(
        "battery_hot: warning after 2, escalates to critical after 2 critical readings",
        "power.battery_hot",
        [
            R("power", battery_temp_c=46.0),
            R("power", battery_temp_c=47.0),
            R("power", battery_temp_c=61.0),
            R("power", battery_temp_c=62.0),
            R("power", battery_temp_c=50.0),
            R("power", battery_temp_c=40.0),
            R("power", battery_temp_c=39.0),
        ],
        [
            (1, "power.battery_hot", "", "raised", "warning"),
            (3, "power.battery_hot", "", "raised", "critical"),
            (6, "power.battery_hot", "", "cleared", "critical"),
        ],
    ),
    Case(
        "battery_hot: a warning and a critical reading raise at warning",
        "power.battery_hot",
        [R("power", battery_temp_c=46.0), R("power", battery_temp_c=65.0)],
        [(1, "power.battery_hot", "", "raised", "warning")],
    ),
    Case(
        "unclean_shutdown is a one-shot event",
        "power.unclean_shutdown",
        [EV("power.unclean_shutdown")],
        [(0, "power.unclean_shutdown", "", "raised", "error")],
    ),
    # ---------------------------------------------------------------- network
    Case(
        "link_down after 2 carrier-0 readings, cleared after 3 good",
        "network.link_down",
        [
            R("network:eth0", carrier=False, operstate="down"),
            R("network:eth0", carrier=False, operstate="down"),
            R("network:eth0", carrier=True, operstate="up"),
            R("network:eth0", carrier=True, operstate="up"),
            R("network:eth0", carrier=True, operstate="unknown"),
        ],
        [
            (1, "network.link_down", "eth0", "raised", "critical"),
            (4, "network.link_down", "eth0", "cleared", "critical"),
        ],
    ),
    Case(
        "link_down from operstate alone; unknown carrier and state hold",
        "network.link_down",
        [
            R("network:wlan0", carrier=None, operstate="dormant"),
            R("network:wlan0", carrier=None, operstate=None),
            R("network:wlan0", operstate="lowerlayerdown"),
        ],
        [(2, "network.link_down", "wlan0", "raised", "critical")],
    ),
    Case(
        "link_down instances are per interface",
        "network.link_down",
        [
            R("network:eth0", carrier=False),
            R("network:eth1", carrier=True, operstate="up"),
            R("network:eth0", carrier=False),
            R("network:eth1", carrier=True, operstate="up"),
        ],
        [(2, "network.link_down", "eth0", "raised", "critical")],
    ),
    Case(
        "no_route after 3, cleared after 3",
        "network.no_route",
        [R("network", default_route=False)] * 3 + [R("network", default_route=True)] * 3,
        [
            (2, "network.no_route", "", "raised", "critical"),
            (5, "network.no_route", "", "cleared", "critical"),
        ],
    ),
    Case(
        "dns_failure per payment host after 3",
        "network.dns_failure",
        [R(PAY, dns_ok=False, error="NXDOMAIN")] * 3 + [R(PAY, dns_ok=True)] * 3,
        [
            (2, "network.dns_failure", HOST, "raised", "critical"),
            (5, "network.dns_failure", HOST, "cleared", "critical"),
        ],
    ),
    Case(
        "host_unreachable on connect failure; not judged when connect was not tried",
        "network.host_unreachable",
        [
            R(PAY, dns_ok=False, connect_ok=None),
            R(PAY, dns_ok=True, connect_ok=False, error="refused"),
            R(PAY, dns_ok=True, connect_ok=False, error="refused"),
            R(PAY, dns_ok=True, connect_ok=False, error="refused"),
            R(PAY, dns_ok=True, connect_ok=True, tls_ok=True),
            R(PAY, dns_ok=True, connect_ok=True, tls_ok=None),
            R(PAY, dns_ok=True, connect_ok=True, tls_ok=True),
        ],
        [
            (3, "network.host_unreachable", HOST, "raised", "critical"),
            (6, "network.host_unreachable", HOST, "cleared", "critical"),
        ],
    ),
    Case(
        "host_unreachable on a failed TLS handshake",
        "network.host_unreachable",
        [R(PAY, dns_ok=True, connect_ok=True, tls_ok=False, error="cert")] * 3,
        [(2, "network.host_unreachable", HOST, "raised", "critical")],
    ),
    Case(
        "high_latency: p95 over the window > 2 s for 5 min, cleared after 2 min",
        "network.high_latency",
        [R(PAY, dt=60, connect_ok=True, connect_ms=3000.0) for _ in range(10)]
        + [R(PAY, dt=60, connect_ok=True, connect_ms=100.0) for _ in range(7)],
        [
            (9, "network.high_latency", HOST, "raised", "warning"),
            (16, "network.high_latency", HOST, "cleared", "warning"),
        ],
        latency_window=5,
    ),
    Case(
        "high_latency ignores failed connects (no sample) and one slow outlier",
        "network.high_latency",
        [R(PAY, dt=60, connect_ok=True, connect_ms=100.0) for _ in range(19)]
        + [R(PAY, dt=60, connect_ok=True, connect_ms=9000.0)]
        + [R(PAY, dt=60, connect_ok=False, connect_ms=None) for _ in range(10)],
        [],
        latency_window=20,
    ),
    Case(
        "network.flapping after 6 link transitions within 10 min",
        "network.flapping",
        [R("network:eth0", dt=10, carrier=bool(i % 2)) for i in range(6) for _ in range(3)],
        [
            (1, "network.link_down", "eth0", "raised", "critical"),
            (5, "network.link_down", "eth0", "cleared", "critical"),
            (7, "network.link_down", "eth0", "raised", "critical"),
            (11, "network.link_down", "eth0", "cleared", "critical"),
            (13, "network.link_down", "eth0", "raised", "critical"),
            (17, "network.flapping", "eth0", "raised", "error"),
        ],
        watch={"network.link_down", "network.flapping"},
    ),
    # ---------------------------------------------------------------- printer
    Case(
        "printer.absent on the first missing reading, cleared on a valid reply",
        "printer.absent",
        [R("printer:receipt", link="absent"), R("printer:receipt", **printer_ok())],
        [
            (0, "printer.absent", "receipt", "raised", "error"),
            (1, "printer.absent", "receipt", "cleared", "error"),
        ],
    ),
    Case(
        "printer.no_reply after 3 misses; absent holds; never a paper fault",
        "printer.no_reply",
        [
            R("printer:receipt", link="no_reply"),
            R("printer:receipt", link="invalid_reply"),
            R("printer:receipt", link="absent"),
            R("printer:receipt", link="no_reply"),
            R("printer:receipt", **printer_ok()),
        ],
        [
            (3, "printer.no_reply", "receipt", "raised", "error"),
            (4, "printer.no_reply", "receipt", "cleared", "error"),
        ],
        watch={"printer.no_reply", "printer.paper_end", "printer.offline"},
    ),
    *[
        Case(
            f"{key} after 2 polls, cleared after 2",
            key,
            [
                R("printer:receipt", **printer_ok(**bits)),  # type: ignore[arg-type]
                R("printer:receipt", link="no_reply", **bits),  # type: ignore[arg-type]
                R("printer:receipt", **printer_ok(**bits)),  # type: ignore[arg-type]
                R("printer:receipt", **printer_ok()),
                R("printer:receipt", **printer_ok()),
            ],
            [(2, key, "receipt", "raised", sev), (4, key, "receipt", "cleared", sev)],
        )
        for key, bits, sev in PRINTER_BITS
    ],
    Case(
        "drawer open 2 min raises, one closed reading clears",
        "printer.drawer_open_too_long",
        [R("printer:receipt", dt=30, **printer_ok(drawer_open=True)) for _ in range(5)]
        + [R("printer:receipt", dt=2, **printer_ok())],
        [
            (4, "printer.drawer_open_too_long", "receipt", "raised", "warning"),
            (5, "printer.drawer_open_too_long", "receipt", "cleared", "warning"),
        ],
    ),
    # ---------------------------------------------------------------- serial
    Case(
        "serial.missing at once, cleared when the port answers again",
        "serial.missing",
        [R("serial:pinpad", state="absent"), R("serial:pinpad", state="no_reply")],
        [
            (0, "serial.missing", "pinpad", "raised", "error"),
            (1, "serial.missing", "pinpad", "cleared", "error"),
        ],
    ),
    Case(
        "serial.identity_changed is critical on the first reading",
        "serial.identity_changed",
        [
            R("serial:pinpad", state="ok", identity_changed=False, identity="0403:6001:A"),
            R("serial:pinpad", state="ok", identity_changed=True, identity="1a86:7523:B"),
        ],
        [(1, "serial.identity_changed", "pinpad", "raised", "critical")],
    ),
    Case(
        "serial.unexpected_device: one instance per identity, None holds, gone clears",
        "serial.unexpected_device",
        [
            R("peripherals", unexpected=[]),
            R("peripherals", unexpected=["1a86:7523:X"]),
            R("peripherals", unexpected=["1a86:7523:X", "0403:6001:Y"]),
            R("peripherals", unexpected=None),
            R("peripherals", unexpected=["0403:6001:Y"]),
            R("peripherals", unexpected=[]),
        ],
        [
            (1, "serial.unexpected_device", "1a86:7523:X", "raised", "warning"),
            (2, "serial.unexpected_device", "0403:6001:Y", "raised", "warning"),
            (4, "serial.unexpected_device", "1a86:7523:X", "cleared", "warning"),
            (5, "serial.unexpected_device", "0403:6001:Y", "cleared", "warning"),
        ],
    ),
    Case(
        "serial.no_reply after 3 (wrong reply counts), absent holds, cleared after 2 ok",
        "serial.no_reply",
        [
            R("serial:pinpad", state="no_reply"),
            R("serial:pinpad", state="absent"),
            R("serial:pinpad", state="wrong_reply"),
            R("serial:pinpad", state="no_reply"),
            R("serial:pinpad", state="ok"),
            R("serial:pinpad", state="ok"),
        ],
        [
            (3, "serial.no_reply", "pinpad", "raised", "error"),
            (5, "serial.no_reply", "pinpad", "cleared", "error"),
        ],
    ),
    # ---------------------------------------------------------------- system
    Case(
        "disk_low on percent or MiB after 2",
        "system.disk_low",
        [
            R("system", disk_free_pct=4.0, disk_free_mib=5000.0),
            R("system", disk_free_pct=40.0, disk_free_mib=100.0),
            R("system", disk_free_pct=40.0, disk_free_mib=9000.0),
            R("system", disk_free_pct=40.0, disk_free_mib=9000.0),
        ],
        [
            (1, "system.disk_low", "", "raised", "error"),
            (3, "system.disk_low", "", "cleared", "error"),
        ],
    ),
    Case(
        "memory_low below 10 % available after 2",
        "system.memory_low",
        [R("system", mem_available_pct=5.0)] * 2 + [R("system", mem_available_pct=50.0)] * 2,
        [
            (1, "system.memory_low", "", "raised", "error"),
            (3, "system.memory_low", "", "cleared", "error"),
        ],
    ),
    Case(
        "cpu_saturated needs 2 min at ≥ 95 %",
        "system.cpu_saturated",
        [R("system", dt=60, cpu_pct=99.0) for _ in range(3)]
        + [R("system", dt=10, cpu_pct=20.0) for _ in range(2)],
        [
            (2, "system.cpu_saturated", "", "raised", "error"),
            (4, "system.cpu_saturated", "", "cleared", "error"),
        ],
    ),
    Case(
        "clock_unsynced at once, cleared when synced",
        "system.clock_unsynced",
        [
            R("system", clock_synced=None),
            R("system", clock_synced=False),
            R("system", clock_synced=True),
        ],
        [
            (1, "system.clock_unsynced", "", "raised", "warning"),
            (2, "system.clock_unsynced", "", "cleared", "warning"),
        ],
    ),
    Case(
        "clock_jump above 60 s in either direction",
        "system.clock_jump",
        [
            R("system", clock_jump_s=30.0),
            R("system", clock_jump_s=-3600.0),
            R("system", clock_jump_s=0.0),
        ],
        [
            (1, "system.clock_jump", "", "raised", "warning"),
            (2, "system.clock_jump", "", "cleared", "warning"),
        ],
    ),
    # ---------------------------------------------------------------- app
    Case(
        "app.not_running after 2, cleared after 2",
        "app.not_running",
        [R("app", running=False)] * 2 + [R("app", running=True)] * 2,
        [
            (1, "app.not_running", "", "raised", "critical"),
            (3, "app.not_running", "", "cleared", "critical"),
        ],
    ),
    Case(
        "app.crash_loop at 3 restarts in 10 min",
        "app.crash_loop",
        [
            R("app", running=True, restarts_10min=2),
            R("app", running=True, restarts_10min=3),
            R("app", running=True, restarts_10min=4),
        ],
        [(2, "app.crash_loop", "", "raised", "critical")],
    ),
    Case(
        "app.hung when the heartbeat is too old; not judged while not running",
        "app.hung",
        [
            R("app", running=True, heartbeat_age_s=100.0),
            R("app", running=False, heartbeat_age_s=200.0),
            R("app", running=True, heartbeat_age_s=300.0),
            R("app", running=True, heartbeat_age_s=1.0),
            R("app", running=True, heartbeat_age_s=None),
            R("app", running=True, heartbeat_age_s=2.0),
        ],
        [(2, "app.hung", "", "raised", "critical"), (5, "app.hung", "", "cleared", "critical")],
    ),
    Case(
        "app.crash_report per new file",
        "app.crash_report",
        [EV("app.crash_report", "/data/tombstones/tombstone_01")],
        [(0, "app.crash_report", "/data/tombstones/tombstone_01", "raised", "error")],
    ),
    Case(
        "app.anr per new file",
        "app.anr",
        [EV("app.anr", "/data/anr/anr_1")],
        [(0, "app.anr", "/data/anr/anr_1", "raised", "error")],
    ),
    Case(
        "app.log_error per matched line",
        "app.log_error",
        [EV("app.log_error", "/var/log/pos.log"), EV("app.log_error", "/var/log/pos.log")],
        [
            (0, "app.log_error", "/var/log/pos.log", "raised", "error"),
            (1, "app.log_error", "/var/log/pos.log", "raised", "error"),
        ],
    ),
    Case(
        "manual.report takes the given severity",
        "manual.report",
        [EV("manual.report"), EV("manual.report", severity=Severity.CRITICAL)],
        [
            (0, "manual.report", "", "raised", "warning"),
            (1, "manual.report", "", "raised", "critical"),
        ],
    ),
    # ---------------------------------------------------------------- agent itself
    Case(
        "upload.auth_failed through set_condition",
        "upload.auth_failed",
        [
            COND("upload.auth_failed", "collector", True),
            COND("upload.auth_failed", "collector", True),
            COND("upload.auth_failed", "collector", False),
        ],
        [
            (0, "upload.auth_failed", "collector", "raised", "error"),
            (2, "upload.auth_failed", "collector", "cleared", "error"),
        ],
    ),
    Case(
        "monitor_failed after 3 failed polls, cleared by the monitor's next reading",
        "agent.monitor_failed",
        [
            F("printer"),
            F("printer"),
            F("printer", error="timeout after 1 s"),
            R("printer:receipt", **printer_ok()),
        ],
        [
            (2, "agent.monitor_failed", "printer", "raised", "error"),
            (3, "agent.monitor_failed", "printer", "cleared", "error"),
        ],
    ),
    Case(
        "adb.offline after 2 readings",
        "adb.offline",
        [R("adb", online=False)] * 2 + [R("adb", online=True)] * 2,
        [
            (1, "adb.offline", "", "raised", "critical"),
            (3, "adb.offline", "", "cleared", "critical"),
        ],
    ),
    # ---------------------------------------------------------------- monitor failures
    Case(
        "a failed monitor reading neither raises nor clears device faults",
        "printer.paper_end",
        [
            R("printer:receipt", **printer_ok(paper_end=True)),
            F("printer:receipt"),
            R("printer:receipt", **printer_ok(paper_end=True)),
            F("printer:receipt"),
            R("printer:receipt", **printer_ok()),
            F("printer:receipt"),
            R("printer:receipt", **printer_ok()),
        ],
        [
            (2, "printer.paper_end", "receipt", "raised", "critical"),
            (6, "printer.paper_end", "receipt", "cleared", "critical"),
        ],
    ),
    # ---------------------------------------------------------------- overrides
    Case(
        "override: a disabled rule never raises",
        "power.battery_low",
        [R("power", battery_pct=3.0)] * 3,
        [],
        faults={"power.battery_low": FaultOverride(enabled=False)},
    ),
    Case(
        "override: raise_after in readings for a count rule",
        "network.no_route",
        [R("network", default_route=False)] * 5 + [R("network", default_route=True)],
        [
            (4, "network.no_route", "", "raised", "critical"),
            (5, "network.no_route", "", "cleared", "critical"),
        ],
        faults={"network.no_route": FaultOverride(raise_after=5, clear_after=1)},
    ),
    Case(
        "override: raise_after in seconds for a duration rule",
        "power.not_charging",
        [R("power", dt=30, plugged=True, battery_status="Not charging") for _ in range(3)],
        [(2, "power.not_charging", "", "raised", "warning")],
        faults={"power.not_charging": FaultOverride(raise_after=60)},
    ),
    Case(
        "override: raise_after 1 drops the 5 s minimum of ac_lost",
        "power.ac_lost",
        [R("power", dt=0.5, ac_online=False)],
        [(0, "power.ac_lost", "", "raised", "error")],
        faults={"power.ac_lost": FaultOverride(raise_after=1)},
    ),
    Case(
        "override: severity replaces the base level, the critical level stays",
        "power.battery_hot",
        [R("power", battery_temp_c=50.0)] * 2 + [R("power", battery_temp_c=70.0)] * 2,
        [
            (1, "power.battery_hot", "", "raised", "error"),
            (3, "power.battery_hot", "", "raised", "critical"),
        ],
        faults={"power.battery_hot": FaultOverride(severity="error")},
    ),
    Case(
        "override: configured severity wins over the one given to event()",
        "app.crash_report",
        [EV("app.crash_report", "x", severity=Severity.WARNING)],
        [(0, "app.crash_report", "x", "raised", "critical")],
        faults={"app.crash_report": FaultOverride(severity="critical")},
    ),
    Case(
        "override: a disabled one-shot event gives nothing",
        "app.log_error",
        [EV("app.log_error", "/var/log/pos.log")],
        [],
        faults={"app.log_error": FaultOverride(enabled=False)},
    ),
    Case(
        "override: disabled flapping leaves every transition visible",
        "network.flapping",
        [R("network:eth0", dt=10, carrier=bool(i % 2)) for i in range(8) for _ in range(3)],
        [
            (i * 6 + off, "network.link_down", "eth0", st, "critical")
            for i in range(4)
            for off, st in ((1, "raised"), (5, "cleared"))
        ],
        watch={"network.link_down", "network.flapping"},
        faults={"network.flapping": FaultOverride(enabled=False)},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_catalog_rule(case: Case) -> None:
    """Each row's steps produce exactly the expected events for the watched keys."""
    rows, _, _, _ = run(case.steps, case.watch or {case.key}, case.config())
    assert rows == case.expect


def test_every_catalog_key_has_a_row() -> None:
    """The table exercises every rule of the catalog, flapping rules by area included."""
    covered = {c.key for c in CASES} | {k for c in CASES for k in c.watch}
    flapping = {k for k in RULES if k.endswith(".flapping")}
    missing = set(RULES) - covered - (flapping - {"network.flapping"})
    assert missing == set()
