"""The two-way channel end to end (issue 16, docs/CHANNEL.md): a REAL collector
(`collector.server.CollectorThread`, SQLite, the command key and the enrollment token
made by the `posagent collector` CLI) and a REAL `posagent run` daemon (a subprocess,
long-poll on, the minimum check-in interval of 30 s), no double.

One collector and one terminal serve the whole module (each daemon start costs seconds
on a busy machine); every test needs only "the terminal is enrolled and running", and
the silent terminal's test, which stops and restarts it, runs last and leaves it
running. The terminal is the one of tests/channel/test_channel_daemon.py (only the
collector's URL changes): the same config, log and events as the double's tests.

Figures printed (run with -s): operator queues a capture → the bundle listed in
GET /v1/bundles (long-poll); terminal stopped → device.silent open; its return → the
incident cleared.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle.sealed import public_pem
from agent.core.timefmt import parse_rfc3339, rfc3339
from collector.config import load_collector_config
from collector.server import CollectorThread
from tests.channel.operator import Operator
from tests.channel.test_channel_daemon import Terminal
from tests.collector.kit import admin_token, bearer
from tests.conftest import posagent_argv, wait_until

pytestmark = pytest.mark.slow

SITE = "Test Store"
DEVICE = "T-TEST"  # the device id of tests.conftest.write_config
INTERVAL_S = 30  # [upload] checkin_interval_s: its minimum
LONGPOLL_WAIT_S = 25  # agent.upload.protocol.LONGPOLL_WAIT_S: part of the silent deadline
SILENT_AFTER = 1
TIMEOUT_S = 90.0


def _cli(conf: Path, *args: str) -> str:
    r = subprocess.run(
        posagent_argv("collector", *args, "--config", str(conf)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, f"collector {' '.join(args)}: {r.stderr}"
    return r.stdout


@dataclass
class Fleet(Operator):
    """The real collector as the operator (an admin's API token) sees it
    (tests/channel/operator.py), with the enrollment token the CLI printed."""

    tmp: Path
    server: CollectorThread
    enrollment_token: str
    public_key: str  # the command key's public half, as `collector keygen` printed it


@dataclass
class World:
    fleet: Fleet
    terminal: Terminal
    pin_flag: Path


@contextlib.contextmanager
def running(
    tmp: Path, collector_lines: str, before_start: Callable[[Terminal], object]
) -> Iterator[tuple[Fleet, Terminal, Path]]:
    """A real collector (in a thread; its config: the store in tmp, a command key, plus
    collector_lines) and the daemon test's terminal enrolled at it with the token the CLI
    made; before_start(terminal) readies the terminal's files. Yields (the fleet, the
    terminal, the collector's config) once the collector has the device; stops both."""
    conf = tmp / "collector.toml"
    conf.write_text(
        "[collector]\n"
        f'data_dir = "{tmp / "store"}"\n'
        f'tokens_file = "{tmp / "tokens"}"\n'
        f'signing_key_file = "{tmp / "command.key"}"\n' + collector_lines
    )
    public_key = _cli(conf, "keygen")
    assert "BEGIN PUBLIC KEY" in public_key
    enrollment = _cli(conf, "enroll-token", "create", "--site", SITE).strip()
    cfg = load_collector_config(str(conf))
    http = requests.Session()
    http.headers.update(bearer(admin_token(cfg)))
    server = CollectorThread(cfg).start()
    fleet = Fleet(server.url, http, DEVICE, tmp, server, enrollment, public_key)
    term_dir = tmp / "terminal"
    term_dir.mkdir()
    # the daemon test's terminal, its collector the real one (Terminal reads only .url)
    terminal = Terminal(term_dir, fleet, enrollment)  # type: ignore[arg-type]
    try:
        before_start(terminal)
        terminal.start()
        seen = wait_until(lambda: fleet.device(), TIMEOUT_S, 0.2)
        assert seen, terminal.log.read_text()[-3000:]
        yield fleet, terminal, conf
    finally:
        terminal.stop()
        server.stop()
        http.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("channel_e2e")
    pin_flag = tmp / "terminal" / "pin.flag"

    def ready(terminal: Terminal) -> None:
        terminal.cfg.write_text(
            terminal.cfg.read_text().replace(
                '[screen]\nbackend = "none"\n',
                f'[screen]\nbackend = "none"\npin_flag_file = "{pin_flag}"\n',
            )
        )
        assert f"checkin_interval_s = {INTERVAL_S}\n" in terminal.cfg.read_text()
        assert "longpoll = true\n" in terminal.cfg.read_text()

    lines = f"silent_after_checkins = {SILENT_AFTER}\nsilent_check_interval_s = 0.5\n"
    with running(tmp, lines, ready) as (fleet, terminal, _):
        yield World(fleet, terminal, pin_flag)


def checked_in(world: World) -> dict[str, Any]:
    """The terminal running and seen by the collector (its device row)."""
    t = world.terminal
    assert t.proc is not None and t.proc.poll() is None, t.log.read_text()[-3000:]
    d = wait_until(lambda: (d := world.fleet.device()) and d["last_seen"] and d, TIMEOUT_S, 0.2)
    assert d, t.log.read_text()[-3000:]
    return dict(d)


def manual_captures(t: Terminal) -> list[dict[str, Any]]:
    return [e for e in t.events("capture_done") if e.get("trigger") == "manual"]


# --------------------------------------------------------------------------- 1. enrollment


def test_enrolled_with_the_cli_token_and_listed_with_its_summary(world: World) -> None:
    t, fleet = world.terminal, world.fleet
    d = checked_in(world)
    assert (d["site"], d["state"], d["enrollments"]) == (SITE, "ok", 1)
    assert d["interval_s"] == INTERVAL_S and d["agent_version"] and d["boot_id"]
    assert len(d["key_ids"]) == 1  # the terminal's Ed25519 key, learnt at enrollment
    summary = d["summary"]
    assert set(summary) >= {
        "battery_pct", "ac_online", "link", "payment_latency_ms", "printer",
        "queue_depth", "queue_oldest_age_s", "active_faults", "config_digest",
    }  # fmt: skip
    assert isinstance(summary["queue_depth"], int) and isinstance(summary["active_faults"], list)
    assert summary["config_digest"].startswith("sha256:")
    # what the enrollment gave the terminal: its device token and the collector's key
    token = (t.tmp / "token").read_text().strip()
    assert token and token != fleet.enrollment_token
    assert (t.tmp / "token").stat().st_mode & 0o777 == 0o600
    assert (t.state / "collector.pub").read_text().strip() == fleet.public_key.strip()
    remote = json.loads((t.state / "remote.json").read_text())
    assert remote["site"] == SITE
    assert len(t.events("channel_enrolled")) == 1
    assert not t.events("channel_checkin_failed"), t.events("channel_checkin_failed")
    # the device page says the same
    page = fleet.get(f"/v1/devices/{DEVICE}")
    assert page["device_id"] == DEVICE and page["summary"]["config_digest"]


# --------------------------------------------------------------------------- 2-3. capture


def test_capture_command_brings_a_bundle_through_the_long_poll(world: World) -> None:
    fleet = world.fleet
    checked_in(world)
    before = fleet.manual_bundles()
    t0 = time.monotonic()
    cid = fleet.command("capture", {"note": "merchant on the phone"})
    new = wait_until(lambda: fleet.manual_bundles() - before, TIMEOUT_S, 0.1)
    elapsed = time.monotonic() - t0
    assert new, world.terminal.log.read_text()[-3000:]
    print(f"\ncapture queued -> bundle listed in GET /v1/bundles: {elapsed:.2f} s (long-poll)")
    assert elapsed < 60.0
    c = fleet.answered(cid)
    assert c["status"] == "done", c
    assert len(manual_captures(world.terminal)) >= 1
    bundle_id = c["detail"].split("bundle ", 1)[1]
    assert new == {bundle_id}
    (listed,) = [
        b for b in fleet.get("/v1/bundles", device=DEVICE)["bundles"] if b["bundle_id"] == bundle_id
    ]
    assert listed["signature_checked"] is True, listed  # the key learnt at enrollment
    manifest = fleet.get(f"/v1/bundles/{bundle_id}")
    text = json.dumps(manifest)
    assert "merchant on the phone" in text and f"collector command {cid}" in text


def test_capture_on_a_pin_screen_is_refused_sensitive_window(world: World) -> None:
    fleet = world.fleet
    checked_in(world)
    before = fleet.manual_bundles()
    captured = len(manual_captures(world.terminal))
    world.pin_flag.write_text("1")  # the POS app shows its PIN screen
    try:
        cid = fleet.command("capture")
        c = fleet.answered(cid)
    finally:
        world.pin_flag.unlink()
    assert (c["status"], c["detail"]) == ("refused", "sensitive window"), c
    assert fleet.manual_bundles() == before
    assert len(manual_captures(world.terminal)) == captured  # nothing captured at all


# --------------------------------------------------------------------------- 4. set-level


def test_set_level_is_done_then_expires_by_itself(world: World) -> None:
    t, fleet = world.terminal, world.fleet
    checked_in(world)
    expired_before = len(t.events("channel_set_level_expired"))
    until = time.time() + 25
    cid = fleet.command(
        "set-level",
        {"capture": {"cooldown_s": 42.0}, "until": rfc3339(until)},
    )
    c = fleet.answered(cid)
    assert c["status"] == "done" and "until" in c["detail"], c
    assert "cooldown_s = 42.0  # set-level until" in t.check_config()
    assert wait_until(
        lambda: len(t.events("channel_set_level_expired")) > expired_before,
        until - time.time() + 60,
        0.2,
    ), t.log.read_text()[-3000:]
    ended = t.events("channel_set_level_expired")[-1]
    assert cid in ended["command_ids"]
    shown = t.check_config()
    assert "set-level" not in shown and "cooldown_s = 42.0" not in shown


# --------------------------------------------------------------------------- 6. hostile


def test_another_device_with_the_first_ones_token_is_refused(world: World, tmp_path: Path) -> None:
    fleet = world.fleet
    checked_in(world)
    stolen = (world.terminal.tmp / "token").read_text().strip()
    # on the wire: the first device's token claiming another id
    r = requests.post(
        f"{fleet.url}/v1/checkins",
        json={"device_id": "T-OTHER", "interval_s": INTERVAL_S, "summary": {}},
        headers={"Authorization": f"Bearer {stolen}", "X-Posagent-Device": "T-OTHER"},
        timeout=30,
    )
    assert (r.status_code, r.json()["status"]) == (403, "forbidden"), r.text
    # a whole second daemon with its own id, the stolen token in its token file (holding
    # a device token, it never uses the enrollment token it is also given)
    (tmp_path / "token").write_text(stolen + "\n")
    other = Terminal(tmp_path, fleet, fleet.enrollment_token)  # type: ignore[arg-type]
    other.cfg.write_text(
        other.cfg.read_text().replace('device_id = "T-TEST"', 'device_id = "T-OTHER"')
    )
    other.start()
    try:
        failed = wait_until(lambda: other.events("channel_checkin_failed"), TIMEOUT_S, 0.2)
        assert failed and failed[0]["status"] == 403, other.log.read_text()[-3000:]
    finally:
        other.stop()
    assert fleet.device("T-OTHER") is None
    assert fleet.device()["state"] == "ok"  # type: ignore[index]
    # the enrollment token was good for one use: spent by the terminal
    again = requests.post(
        f"{fleet.url}/v1/enroll",
        json={
            "enrollment_token": fleet.enrollment_token,
            "device_id": "T-OTHER",
            "ed25519_public_key": public_pem(Ed25519PrivateKey.generate().public_key()),
            "agent_version": "0.1.0",
            "boot_id": "b",
        },
        timeout=30,
    )
    assert (again.status_code, again.json()["status"]) == (410, "token_used_up"), again.text


# --------------------------------------------------------------------------- 5. silent


def test_stopped_terminal_is_silent_then_cleared_with_the_outage_on_return(world: World) -> None:
    t, fleet = world.terminal, world.fleet
    checked_in(world)
    assert not [i for i in fleet.silent_incidents() if i["active"]]
    t.stop()
    stopped = time.time()
    deadline_s = SILENT_AFTER * INTERVAL_S + LONGPOLL_WAIT_S
    opened = wait_until(
        lambda: [i for i in fleet.silent_incidents() if i["active"]], deadline_s + 60, 0.2
    )
    silent_after_s = time.time() - stopped
    assert opened, fleet.device()
    print(
        f"\nterminal stopped -> device.silent open: {silent_after_s:.1f} s (deadline {deadline_s} s)"
    )
    (inc,) = opened
    assert (inc["device"], inc["site"], inc["source"]) == (DEVICE, SITE, "fleet")
    assert (inc["status"], inc["severity"]) == ("open", "critical")
    assert inc["summary"].startswith(f"{DEVICE} stopped checking in"), inc
    d = fleet.get(f"/v1/devices/{DEVICE}")
    assert d["state"] == "silent" and d["silent_since"]
    (out,) = d["outages"]
    # never before its deadline: the last check-in + silent_after × interval + the wait
    last_seen, silent_at = parse_rfc3339(out["last_seen"]), parse_rfc3339(out["silent_at"])
    assert silent_at - last_seen >= deadline_s - 0.01, out
    # and within the bound: the configured multiple of the interval + 30 s
    assert silent_at - last_seen <= deadline_s + 30, out
    assert last_seen <= stopped + 1

    restarted = time.time()
    t.start()
    cleared = wait_until(
        lambda: [i for i in fleet.silent_incidents() if i["id"] == inc["id"] and not i["active"]],
        TIMEOUT_S,
        0.2,
    )
    back = time.time()
    assert cleared, t.log.read_text()[-3000:]
    (done,) = cleared
    d = fleet.get(f"/v1/devices/{DEVICE}")
    assert d["state"] == "ok" and d["silent_since"] is None
    (out,) = d["outages"]
    assert out["back_at"] and out["rebooted"] is False  # same boot: the daemon only
    outage_s = float(out["outage_s"])
    print(
        f"terminal restarted -> incident cleared: {back - restarted:.1f} s; "
        f"outage {outage_s:.1f} s, incident duration {done['duration_s']:.1f} s"
    )
    assert done["duration_s"] == pytest.approx(outage_s, abs=0.01)
    assert outage_s == pytest.approx(parse_rfc3339(out["back_at"]) - last_seen, abs=0.01)
    # the outage as the test's clock saw it: from the last check-in before the stop
    # (a long-poll held at most its wait) to the first after the restart
    assert restarted - stopped <= outage_s <= back - stopped + LONGPOLL_WAIT_S + 5
    assert [i["id"] for i in fleet.silent_incidents()] == [inc["id"]]
