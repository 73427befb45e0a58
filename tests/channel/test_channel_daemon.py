"""The terminal's side of the two-way channel, end to end: a real `posagent run` daemon
against the collector TEST DOUBLE of tests/channel/collector_double.py (protocol v1 from
docs/CHANNEL.md). The proof with the real collector comes when both sides merge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle.format import BundleReader
from tests.channel.collector_double import ChannelCollector
from tests.conftest import posagent_argv, quick_config, wait_until

DEVICE = "T-TEST"
TIMEOUT_S = 60.0


@pytest.fixture
def collector() -> Iterator[ChannelCollector]:
    c = ChannelCollector().start()
    yield c
    c.stop()


class Terminal:
    """A daemon under test: its config, its log, its process."""

    def __init__(self, tmp: Path, collector: ChannelCollector, enrollment: str, extra: str = ""):
        self.tmp = tmp
        self.state = tmp / "state"
        self.log = tmp / "daemon.log"
        enroll_file = tmp / "enrollment"
        enroll_file.write_text(enrollment + "\n")
        enroll_file.chmod(0o600)
        self.cfg = quick_config(tmp, [], extra)
        text = self.cfg.read_text().replace(
            "[upload]\n",
            "[upload]\n"
            f'endpoint = "{collector.url}"\n'
            f'enrollment_token_file = "{enroll_file}"\n'
            "checkin_interval_s = 30\n"
            "longpoll = true\n"
            "backoff_base_s = 0.2\n"
            "backoff_cap_s = 2.0\n",
        )
        self.cfg.write_text(text)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Terminal:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("NOTIFY_SOCKET", None)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                posagent_argv("run", "--config", str(self.cfg)), stdout=out, stderr=out, env=env
            )
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and doc.get("event") == name:
                out.append(doc)
        return out

    def check_config(self) -> str:
        r = subprocess.run(
            posagent_argv("check-config", "--config", str(self.cfg)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout


@pytest.fixture
def terminal(tmp_path: Path, collector: ChannelCollector) -> Iterator[Terminal]:
    t = Terminal(tmp_path, collector, collector.make_enrollment_token()).start()
    yield t
    t.stop()


def enrolled(t: Terminal, c: ChannelCollector) -> None:
    assert wait_until(lambda: c.checkins(DEVICE), TIMEOUT_S), t.log.read_text()[-3000:]


def result_of(c: ChannelCollector, command_id: str) -> dict[str, Any]:
    r = wait_until(lambda: c.result(DEVICE, command_id), TIMEOUT_S)
    assert r, f"no result for {command_id}"
    return dict(r)


# --------------------------------------------------------------------------- enrollment


def test_enrollment_writes_token_key_and_remote_then_checks_in(
    terminal: Terminal, collector: ChannelCollector
) -> None:
    enrolled(terminal, collector)
    token = (terminal.tmp / "token").read_text().strip()
    assert token == collector.devices[DEVICE].token
    assert (terminal.tmp / "token").stat().st_mode & 0o777 == 0o600
    assert (terminal.state / "collector.pub").read_text() == collector.public_pem
    remote = json.loads((terminal.state / "remote.json").read_text())
    assert remote["site"] == "S1" and remote["tenant"] == "T1"
    assert "BEGIN PUBLIC KEY" in collector.devices[DEVICE].public_keys[0]
    body = collector.checkins(DEVICE)[0]
    assert body["device_id"] == DEVICE and body["config_digest"] == ""
    assert body["interval_s"] == 30 and body["agent_version"] and body["boot_id"]
    summary = body["summary"]
    assert set(summary) >= {
        "battery_pct", "ac_online", "link", "payment_latency_ms", "printer",
        "queue_depth", "queue_oldest_age_s", "active_faults", "config_digest",
    }  # fmt: skip
    assert isinstance(summary["queue_depth"], int) and isinstance(summary["active_faults"], list)
    assert summary["config_digest"].startswith("sha256:")
    assert len(terminal.events("channel_enrolled")) == 1


def test_bad_enrollment_token_is_one_line_and_nothing_else(
    tmp_path: Path, collector: ChannelCollector
) -> None:
    t = Terminal(tmp_path, collector, "not-a-token").start()
    try:
        refused = wait_until(lambda: t.events("channel_enroll_refused"), TIMEOUT_S)
        assert (
            refused
            and "401" in refused[0]["error"]
            and "unknown enrollment token" in (refused[0]["error"])
        )
        # the retry waits a check-in interval (30 s): nothing else happens meanwhile
        time.sleep(3)
        assert len(t.events("channel_enroll_refused")) == 1
        assert not (tmp_path / "token").exists()
        assert not (t.state / "collector.pub").exists()
        assert collector.devices == {}
        assert [p for m, p, s in collector.requests] == ["/v1/enroll"]
        assert (tmp_path / "enrollment").read_text().strip() == "not-a-token"  # kept
    finally:
        t.stop()


def test_used_up_enrollment_token_is_refused(tmp_path: Path, collector: ChannelCollector) -> None:
    token = collector.make_enrollment_token(uses=0)
    t = Terminal(tmp_path, collector, token).start()
    try:
        refused = wait_until(lambda: t.events("channel_enroll_refused"), TIMEOUT_S)
        assert refused and "410" in refused[0]["error"]
        assert not (tmp_path / "token").exists()
    finally:
        t.stop()


# --------------------------------------------------------------------------- commands


def test_capture_command_is_answered_with_a_bundle(
    terminal: Terminal, collector: ChannelCollector
) -> None:
    enrolled(terminal, collector)
    cid = collector.queue_command(DEVICE, "capture", {"note": "merchant on the phone"})
    r = result_of(collector, cid)
    assert r["status"] == "done", r
    bundle_id = r["detail"].split("bundle ", 1)[1]
    data = wait_until(lambda: collector.bundles.get(bundle_id), TIMEOUT_S)
    assert data, "the bundle never arrived"
    manifest = BundleReader(data).manifest()
    assert manifest["trigger"]["kind"] == "manual"
    assert manifest["trigger"]["note"] == "merchant on the phone"
    assert manifest["trigger"]["contact"] == f"collector command {cid}"


def test_capture_in_a_sensitive_window_is_refused(
    tmp_path: Path, collector: ChannelCollector
) -> None:
    flag = tmp_path / "pin.flag"
    extra = f'\n[screen]\nbackend = "none"\npin_flag_file = "{flag}"\n'
    t = Terminal(tmp_path, collector, collector.make_enrollment_token(), "")
    t.cfg.write_text(t.cfg.read_text().replace('[screen]\nbackend = "none"\n', extra))
    t.start()
    try:
        enrolled(t, collector)
        flag.write_text("1")  # the POS app shows its PIN screen
        cid = collector.queue_command(DEVICE, "capture", {})
        r = result_of(collector, cid)
        assert (r["status"], r["detail"]) == ("refused", "sensitive window")
        assert not [e for e in t.events("capture_done") if e["trigger"] == "manual"]
    finally:
        t.stop()


def test_logs_command_sends_only_allow_listed_files(
    tmp_path: Path, collector: ChannelCollector
) -> None:
    log_file = tmp_path / "pos.log"
    log_file.write_text("2026-01-01 payment host timeout\n")
    t = Terminal(tmp_path, collector, collector.make_enrollment_token())
    t.cfg.write_text(
        t.cfg.read_text().replace(
            "longpoll = true\n", f'longpoll = true\ncommand_logs = {{ pos = "{log_file}" }}\n'
        )
    )
    t.start()
    try:
        enrolled(t, collector)
        bad = collector.queue_command(DEVICE, "logs", {"name": "shadow"})
        assert result_of(collector, bad)["status"] == "refused"
        assert "not in [upload] command_logs" in result_of(collector, bad)["detail"]
        good = collector.queue_command(DEVICE, "logs", {"name": "pos"})
        r = result_of(collector, good)
        assert r["status"] == "done", r
        bundle_id = r["detail"].split("bundle ", 1)[1]
        data = wait_until(lambda: collector.bundles.get(bundle_id), TIMEOUT_S)
        reader = BundleReader(data)
        assert b"payment host timeout" in reader.read("diagnostics/log-pos.txt")
    finally:
        t.stop()


def test_hostile_commands_are_refused_each_with_its_reason(
    terminal: Terminal, collector: ChannelCollector
) -> None:
    enrolled(terminal, collector)
    c = collector
    forged = c.envelope(DEVICE, "capture")
    c.queue(DEVICE, c.sign(forged, Ed25519PrivateKey.generate()))
    expired = c.envelope(DEVICE, "capture", expires_in_s=-3600)
    c.queue(DEVICE, c.sign(expired))
    other = c.envelope("T-OTHER", "capture")
    c.queue(DEVICE, c.sign(other))
    unknown = c.envelope(DEVICE, "shell", {"cmd": "rm -rf /"})
    c.queue(DEVICE, c.sign(unknown))
    assert result_of(c, forged["id"]) | {"at": ""} == {
        "command_id": forged["id"], "status": "refused", "detail": "bad signature", "at": ""
    }  # fmt: skip
    r = result_of(c, expired["id"])
    assert r["status"] == "refused" and r["detail"].startswith("expired at ")
    r = result_of(c, other["id"])
    assert r["status"] == "refused" and "another device" in r["detail"]
    r = result_of(c, unknown["id"])
    assert r["status"] == "refused" and r["detail"] == "unknown kind 'shell'"
    # replayed: the same signed envelope a second time
    once = c.envelope(DEVICE, "selftest")
    item = c.sign(once)
    c.queue(DEVICE, item)
    first = result_of(c, once["id"])
    assert first["status"] == "done" and first["detail"].startswith("selftest"), first
    c.devices[DEVICE].results.pop(once["id"])
    c.queue(DEVICE, item)
    again = result_of(c, once["id"])
    assert again["status"] == "refused" and again["detail"].startswith("replayed")
    assert len(terminal.events("channel_command_refused")) == 5
    assert [e["command_id"] for e in terminal.events("channel_command")] == [once["id"]]


def test_set_level_applies_then_expires_and_survives_a_restart(
    terminal: Terminal, collector: ChannelCollector
) -> None:
    enrolled(terminal, collector)
    until = time.time() + 40
    from agent.core.timefmt import rfc3339

    cid = collector.queue_command(
        DEVICE,
        "set-level",
        {
            "faults": {"printer.paper_end": {"severity": "warning"}},
            "capture": {"cooldown_s": 42.0},
            "until": rfc3339(until),
        },
    )
    r = result_of(collector, cid)
    assert r["status"] == "done" and "2 value(s) until" in r["detail"], r
    assert wait_until(lambda: terminal.events("config_reloaded"), TIMEOUT_S)
    shown = terminal.check_config()
    assert "cooldown_s = 42.0  # set-level until" in shown
    assert 'severity = "warning"  # set-level until' in shown
    # a restart keeps it while its window lasts
    terminal.stop()
    terminal.start()
    assert "cooldown_s = 42.0  # set-level until" in terminal.check_config()
    # and it ends by itself: the daemon drops it and reloads
    assert wait_until(
        lambda: terminal.events("channel_set_level_expired"), until - time.time() + 30
    )
    assert wait_until(lambda: len(terminal.events("config_reloaded")) >= 2, TIMEOUT_S)
    shown = terminal.check_config()
    assert "set-level" not in shown and "cooldown_s = 300.0" in shown
    assert json.loads((terminal.state / "overrides.json").read_text())["overrides"] == []


def test_bad_set_level_is_refused_with_its_reason(
    terminal: Terminal, collector: ChannelCollector
) -> None:
    enrolled(terminal, collector)
    from agent.core.timefmt import rfc3339

    until = rfc3339(time.time() + 600)
    cid = collector.queue_command(DEVICE, "set-level", {"capture": {"burst": 0}, "until": until})
    r = result_of(collector, cid)
    assert r["status"] == "refused" and "capture.burst" in r["detail"] and "minimum" in r["detail"]
    cid = collector.queue_command(
        DEVICE, "set-level", {"faults": {"no.such": {"enabled": False}}, "until": until}
    )
    r = result_of(collector, cid)
    assert r["status"] == "refused" and "unknown fault key" in r["detail"]


# --------------------------------------------------------------------------- remote config


def test_remote_config_is_merged_under_the_local_file_with_provenance(
    tmp_path: Path, collector: ChannelCollector
) -> None:
    t = Terminal(tmp_path, collector, collector.make_enrollment_token())
    # the local file sets bundles_per_hour: the remote value for it must lose
    t.cfg.write_text(
        t.cfg.read_text().replace("[capture]\n", "[capture]\nbundles_per_hour = 9.0\n")
    )
    collector.set_config(
        {
            "capture.cooldown_s": 60.0,
            "capture.bundles_per_hour": 1.0,
            "screen.sensitive_windows": ["(?i)loyalty pin"],
        }
    )
    t.start()
    try:
        enrolled(t, collector)
        assert wait_until(lambda: t.events("channel_remote_config"), TIMEOUT_S)
        assert wait_until(lambda: t.events("config_reloaded"), TIMEOUT_S)
        shown = t.check_config()
        assert "cooldown_s = 60.0  # remote" in shown
        assert "bundles_per_hour = 9.0  # local file" in shown
        assert "(?i)loyalty pin" in shown and "# default + remote" in shown
        assert "persist_interval_s = 1.0  # local file" in shown
        digest = collector.config_digest()
        assert wait_until(
            lambda: any(b["config_digest"] == digest for b in collector.checkins(DEVICE)),
            TIMEOUT_S,
        )
    finally:
        t.stop()


def test_remote_config_with_an_unsafe_key_is_refused(
    tmp_path: Path, collector: ChannelCollector
) -> None:
    t = Terminal(tmp_path, collector, collector.make_enrollment_token())
    collector.set_config({"upload.endpoint": "https://evil.example", "capture.cooldown_s": 5.0})
    t.start()
    try:
        refused = wait_until(lambda: t.events("channel_remote_config_refused"), TIMEOUT_S)
        assert refused and "upload.endpoint" in refused[0]["error"]
        assert "evil" not in t.check_config()
        assert not t.events("config_reloaded")
    finally:
        t.stop()
