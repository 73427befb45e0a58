"""Diagnostics collectors on the twins (local) and the fake adb: cheap, JSON-able, no printer poll."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.capture.probes import build_probes, tail_bytes
from agent.core.model import Reading
from drivers.shell import Shell
from simulator.fake_adb import FakeAdb
from tests.monitors.kit import MonitorRig


@pytest.fixture
def term(tmp_path: Path) -> Iterator[MonitorRig]:
    t = MonitorRig(tmp_path)
    try:
        yield t
    finally:
        t.close()


def test_local_collectors(term: MonitorRig) -> None:
    """Every local collector returns JSON-able data; the printer entry reuses the last reading."""
    log = term.tmp / "pos.log"
    log.write_text("".join(f"line {i}\n" for i in range(20000)))
    sections = term.sections()
    sections["app"] = {"process": "posapp-none", "log_files": [str(log), str(term.tmp / "gone")]}
    cfg = term.config(sections)
    last = {
        "printer:receipt": Reading("printer:receipt", {"link": "ok", "paper_end": True}),
        f"payment:{term.host.address}": Reading(f"payment:{term.host.address}", {"connect_ok": 1}),
        "power": Reading("power", {"battery_pct": 3}),
    }
    assert term.printer is not None
    queries_before = len(term.printer.queries)
    collectors = {c.name: c for c in build_probes(cfg, term.context(), lambda: last)}
    assert {"power", "network", "system", "printer", "serial", "app", "logs", "dmesg"} <= set(
        collectors
    )
    results: dict[str, object] = {}
    for name, c in collectors.items():
        assert c.timeout_s == cfg.capture.probe_timeout_s
        if name in ("dmesg", "journal"):
            continue  # the host's kernel log may be closed to this container; see below
        results[name] = c.fn()
        json.dumps(results[name])
    assert len(term.printer.queries) == queries_before  # never polls the printer
    printer = results["printer"]
    assert isinstance(printer, dict) and printer["last_readings"][0]["values"]["paper_end"]
    power = results["power"]
    assert isinstance(power, dict)
    assert {s["name"] for s in power["supplies"]} == {"AC", "BAT0"}
    net = results["network"]
    assert isinstance(net, dict)
    assert [i["interface"] for i in net["interfaces"]] == ["eth0"]
    assert net["routes"]["ipv4"][0]["gateway"] == "192.0.2.1"
    assert [r["source"] for r in net["last_readings"]] == [f"payment:{term.host.address}"]
    serial = results["serial"]
    assert isinstance(serial, dict)
    assert "0403:6001:PP000123" in [p["usb_id"] for p in serial["ports"]]
    logs = results["logs"]
    assert isinstance(logs, str)
    assert logs.count("line 19999") == 1 and "line 0\n" not in logs
    assert "[unreadable:" in logs
    assert len(logs.encode()) <= 70 * 1024
    app = results["app"]
    assert isinstance(app, dict) and app["process"]["found"] is False


def test_dmesg_collector_runs_or_raises(term: MonitorRig) -> None:
    """dmesg through the shell: text when permitted, a ShellError (recorded) otherwise."""
    from drivers.shell import ShellError

    (c,) = [c for c in build_probes(term.config(), term.context(), dict) if c.name == "dmesg"]
    try:
        text = c.fn()
    except ShellError as e:
        assert "dmesg" in str(e)
    else:
        assert isinstance(text, str) and len(text.splitlines()) <= 500


def _fake_tools(tmp_path: Path, scripts: dict[str, str]) -> str:
    """A bin dir of shell scripts, put first on PATH: the real commands' stand-ins."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in scripts.items():
        f = bin_dir / name
        f.write_text("#!/bin/sh\n" + body + "\n")
        f.chmod(0o755)
    return str(bin_dir)


def test_dmesg_falls_back_to_the_journal_when_the_ring_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the unit `dmesg` is refused (ProtectKernelLogs): the kernel's lines come from
    `journalctl _TRANSPORT=kernel`, and the entry says so; both refused is one error naming both."""
    from agent.capture.probes import collect_dmesg
    from drivers.shell import ShellError

    tools = _fake_tools(
        tmp_path,
        {
            "dmesg": 'echo "dmesg: read kernel buffer failed: Operation not permitted" >&2; exit 1',
            "journalctl": 'case "$*" in *_TRANSPORT=kernel*) echo "Dec 06 kernel: usb 1-1: new device";; *) exit 2;; esac',
        },
    )
    monkeypatch.setenv("PATH", f"{tools}:/usr/bin:/bin")
    text = collect_dmesg(Shell())
    assert "kernel ring buffer closed" in text and "Operation not permitted" in text
    assert "usb 1-1: new device" in text
    (tmp_path / "bin" / "journalctl").write_text("#!/bin/sh\necho 'No journal files' >&2; exit 1\n")
    with pytest.raises(ShellError) as e:
        collect_dmesg(Shell())
    assert "dmesg:" in str(e.value) and "journal:" in str(e.value)


def test_tail_bytes_cuts_at_a_line(tmp_path: Path) -> None:
    """A cut tail starts at the next line; a short file is returned whole."""
    p = tmp_path / "f"
    p.write_text("aaaa\nbbbb\ncccc\n")
    assert tail_bytes(p, 7) == "cccc\n"
    assert tail_bytes(p, 100) == "aaaa\nbbbb\ncccc\n"


def test_adb_collectors(term: MonitorRig, tmp_path: Path) -> None:
    """Target adb: power from dumpsys, logcat and getprop from the device, no dmesg."""
    fake = FakeAdb(tmp_path / "adb")
    shell = Shell(mode="adb", adb_serial=fake.serial, adb_path=str(fake.adb_path))
    sections = term.sections()
    sections["agent"] |= {"target": "adb", "adb_serial": fake.serial}
    sections["app"] = {"process": "com.example.pos"}
    cfg = term.config(sections)
    collectors = {c.name: c for c in build_probes(cfg, term.context(shell), dict)}
    assert "dmesg" not in collectors and {"logcat", "getprop"} <= set(collectors)
    assert "sale screen ready" in collectors["logcat"].fn()
    assert collectors["getprop"].fn()["ro.product.model"] == "SimPOS 1"
    power = collectors["power"].fn()
    assert power["source"] == "dumpsys"
    assert "Active default network" in collectors["network"].fn()["dumpsys_connectivity"]
    assert collectors["app"].fn()["pids"] == [4242]
