"""`posagent report` end to end: a sealed, redacted bundle an operator can verify and read;
handed to a running daemon over its control socket, or captured standalone (and then
still readable by the daemon's user)."""

from __future__ import annotations

import io
import json
import os
import pwd
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from agent.core.model import Reading
from agent.faults.recorder import FlightRecorder
from tests.conftest import ROOT, is_root, posagent_argv, wait_until, write_config

PAN = "4111 1111 1111 1111"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(posagent_argv(*args), capture_output=True, text=True, timeout=60)


def test_report_with_card_number_verifies_and_holds_no_pan(tmp_path: Path) -> None:
    """A report whose note has a card number is captured, verifies, and contains no full PAN anywhere."""
    cfg = write_config(tmp_path)
    r = run(
        "report",
        "--config",
        str(cfg),
        "--note",
        f"customer card {PAN} was declined twice",
        "--contact",
        "Ana, +1 555 0100",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    path = Path(res["path"])
    assert path.parent.name == "new" and res["bundle_id"] in path.name
    v = run("bundle", "verify", "--config", str(cfg), str(path))
    assert v.returncode == 0, v.stderr
    digits = PAN.replace(" ", "")
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            data = z.read(name).decode("utf-8", "replace")
            assert digits not in data.replace(" ", "").replace("-", ""), name
        manifest = json.loads(z.read("manifest.json"))
        report = z.read("report.txt").decode()
        system = json.loads(z.read("diagnostics/system.json"))
    assert manifest["trigger"]["kind"] == "manual"
    assert manifest["trigger"]["contact"] == "Ana, +1 555 0100"
    assert manifest["redaction"]["counts"]["pan"] >= 1
    assert "4111 11** **** 1111" in manifest["trigger"]["note"]
    assert "Ana, +1 555 0100" in report and "T-TEST" in report
    assert {"cpu_pct", "memory", "disks", "uptime_s", "interfaces", "top_processes"} <= set(system)


def test_show_and_html_and_extract(tmp_path: Path) -> None:
    """bundle show (text and --json), html and extract work on a captured report."""
    cfg = write_config(tmp_path)
    r = run("report", "--config", str(cfg), "--note", "drawer stuck", "--json")
    path = json.loads(r.stdout)["path"]
    s = run("bundle", "show", "--config", str(cfg), path)
    assert s.returncode == 0 and "drawer stuck" in s.stdout and "HMAC verified" in s.stdout
    sj = json.loads(run("bundle", "show", "--config", str(cfg), "--json", path).stdout)
    assert sj["verified"] is True and sj["manifest"]["trigger"]["note"] == "drawer stuck"
    out = tmp_path / "page.html"
    h = run("bundle", "html", "--config", str(cfg), path, "-o", str(out))
    assert h.returncode == 0 and "drawer stuck" in out.read_text()
    x = run("bundle", "extract", "--config", str(cfg), path, str(tmp_path / "x"))
    assert x.returncode == 0 and (tmp_path / "x" / "report.txt").is_file()


def test_verify_fails_on_edit_with_one_line_reason(tmp_path: Path) -> None:
    """Changing one byte makes `bundle verify` exit non-zero with a one-line reason."""
    cfg = write_config(tmp_path)
    path = Path(
        json.loads(run("report", "--config", str(cfg), "--note", "n", "--json").stdout)["path"]
    )
    src = zipfile.ZipFile(path)
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "report.txt":
                data = data.replace(b"posagent", b"p0sagent", 1)
            z.writestr(info.filename, data)
    v = run("bundle", "verify", "--config", str(cfg), str(bad))
    assert v.returncode != 0
    assert v.stderr.strip().count("\n") == 0 and "entry changed: report.txt" in v.stderr
    wrong = tmp_path / "wrong.key"
    wrong.write_text("not the key")
    v2 = run("bundle", "verify", "--key-file", str(wrong), str(path))
    assert v2.returncode != 0 and "HMAC" in v2.stderr


def test_spool_commands(tmp_path: Path) -> None:
    """spool list/show/retry/purge operate on the queue."""
    cfg = write_config(tmp_path)
    ids = [
        json.loads(run("report", "--config", str(cfg), "--note", f"n{i}", "--json").stdout)[
            "bundle_id"
        ]
        for i in range(3)
    ]
    rows = json.loads(run("spool", "list", "--config", str(cfg), "--json").stdout)
    assert sorted(r["bundle_id"] for r in rows) == sorted(ids)
    assert all(r["state"] == "new" for r in rows)
    txt = run("spool", "list", "--config", str(cfg)).stdout
    assert "3 bundle(s)" in txt
    show = run("spool", "show", "--config", str(cfg), ids[0][:13])
    assert show.returncode == 0 and "n0" in show.stdout
    assert run("spool", "show", "--config", str(cfg), "0000000000").returncode == 66
    assert run("spool", "purge", "--config", str(cfg)).returncode == 64
    p = run("spool", "purge", "--config", str(cfg), "--all")
    assert p.returncode == 0 and "purged 3" in p.stdout


def test_every_command_has_help() -> None:
    """`posagent --help` and each command's --help work."""
    top = run("--help")
    assert top.returncode == 0
    for cmd in ("check-config", "report", "spool", "bundle"):
        h = run(cmd, "--help")
        assert h.returncode == 0 and "usage: posagent" in h.stdout


# --------------------------------------------------------------------------- daemon or standalone

NOBODY = 65534


def screen_config(tmp: Path, extra: str = "") -> Path:
    """A daemon config (quick intervals, loopback only) whose screen is a known PNG."""
    png = tmp / "screen.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(png)
    return write_config(
        tmp,
        f"""
[network]
interval_s = 0.5
interfaces = ["lo"]
payment_hosts = []

[power]
interval_s = 0.5

[system]
interval_s = 1.0

[screen]
backend = "command"
command = ["cat", "{png}"]
sensitive_windows = []

[capture]
persist_interval_s = 1.0
{extra}
""",
    )


def shared_tmp(owner: int) -> Path:
    """A scratch dir outside pytest's 0700 tree, owned by `owner` (the daemon's user)."""
    d = Path(tempfile.mkdtemp(prefix="posagent-report-"))
    d.chmod(0o755)
    os.chown(d, owner, owner)
    return d


def as_user(uid: int, *args: str) -> tuple[list[str], dict[str, str]]:
    """argv and env running `posagent args` as uid (root only). When uid cannot exec this
    interpreter (a venv under root's 0700 home), a system python of the same version runs
    this checkout with the venv's packages: the daemon must be able to start its children."""
    env = dict(os.environ)
    name = pwd.getpwuid(uid).pw_name
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    dirs = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/local/bin", "/usr/bin"]
    candidates = [sys.executable, *(os.path.join(d, version) for d in dirs)]
    runs = (
        c
        for c in candidates
        if subprocess.run(
            ["runuser", "-u", name, "--", c, "-c", "0"], capture_output=True
        ).returncode
        == 0
    )
    python = next(runs, "")
    if not python:
        pytest.skip(f"no {version} that {name} may run")
    if python != sys.executable:
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *site.getsitepackages()])
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    return [*drop, python, "-m", "agent.commands.main", *args], env


def start_daemon(cfg: Path, log: Path, uid: int | None = None) -> subprocess.Popen[bytes]:
    if uid is None:
        argv, env = posagent_argv("run", "--config", str(cfg)), dict(os.environ)
    else:
        argv, env = as_user(uid, "run", "--config", str(cfg))
    return subprocess.Popen(
        argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT, env=env
    )


def stop_daemon(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def entries(path: Path) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    with zipfile.ZipFile(path) as z:
        return (
            json.loads(z.read("manifest.json")),
            json.loads(z.read("timeline.json")),
            z.namelist(),
        )


def test_report_handed_to_running_daemon(tmp_path: Path) -> None:
    """With `posagent run` up, report hands the request over the control socket: the daemon
    captures it like a fault bundle (screenshot, timeline, probes) and the CLI says so.
    As root, the daemon runs as nobody and the bundle is nobody's."""
    uid = NOBODY if is_root() else None
    tmp = shared_tmp(NOBODY) if uid is not None else tmp_path
    try:
        cfg = screen_config(tmp)
        if uid is not None:
            for p in tmp.rglob("*"):
                os.chown(p, NOBODY, NOBODY)
        log = tmp / "agent.log"
        proc = start_daemon(cfg, log, uid)
        try:
            sock = tmp / "run" / "control.sock"
            assert wait_until(sock.exists, 20), log.read_text()[-2000:]
            status = tmp / "run" / "status.json"
            assert wait_until(
                lambda: status.exists() and json.loads(status.read_text())["readings"], 20
            )
            r = run("report", "--config", str(cfg), "--note", f"card {PAN} stuck", "--json")
            assert r.returncode == 0, r.stderr + log.read_text()[-2000:]
            res = json.loads(r.stdout)
            assert res["via"] == "daemon"
            path = Path(res["path"])
            manifest, timeline, names = entries(path)
            assert manifest["trigger"]["kind"] == "manual"
            assert manifest["trigger"]["key"] == "manual.report"
            assert "4111 11** **** 1111" in manifest["trigger"]["note"]
            assert manifest["redaction"]["screenshot"] in ("captured", "masked")
            assert "screenshot.png" in names
            assert timeline["readings"], "the daemon's flight recorder travels in the bundle"
            assert {"diagnostics/power.json", "diagnostics/network.json"} <= set(names)
            assert {"diagnostics/system.json", "diagnostics/serial.json"} <= set(names)
            st = path.stat()
            assert st.st_uid == (NOBODY if uid is not None else os.geteuid())
            t = run("report", "--config", str(cfg), "--note", "printer jams")
            assert t.returncode == 0, t.stderr
            assert t.stdout.startswith("handed to the running daemon: bundle "), t.stdout
            assert "control_report_requested" in log.read_text()
        finally:
            stop_daemon(proc)
        assert proc.returncode == 0, log.read_text()[-2000:]
    finally:
        if tmp is not tmp_path:
            shutil.rmtree(tmp, ignore_errors=True)


def test_report_without_daemon_captures_standalone_with_screen_and_persisted_timeline(
    tmp_path: Path,
) -> None:
    """No daemon (and a stale socket from a killed one): the CLI captures standalone with the
    screenshot and the flight recorder's persisted window, however old, and says so."""
    cfg = screen_config(tmp_path)
    state = tmp_path / "state"
    rec = FlightRecorder(state / "recorder.json", window_s=600)
    old = time.time() - 3 * 3600  # the daemon stopped three hours ago
    for i in range(50):
        rec.add(Reading("power", {"ac_online": i < 45, "battery_pct": 80}, ts=old + i))
    rec.compact()
    rec.add(Reading("power", {"ac_online": False, "battery_pct": 79}, ts=old + 60))
    rec.flush()  # one reading only in the journal
    rec.close()
    (tmp_path / "run").mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "run" / "control.sock"))
    stale.close()  # bound, never listening: ECONNREFUSED, like after kill -9
    r = run("report", "--config", str(cfg), "--note", "screen froze")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("no daemon running: captured standalone: bundle "), r.stdout
    path = Path(r.stdout.split("path ", 1)[1].strip())
    manifest, timeline, names = entries(path)
    assert manifest["redaction"]["screenshot"] in ("captured", "masked")
    with zipfile.ZipFile(path) as z:
        assert Image.open(io.BytesIO(z.read("screenshot.png"))).size == (40, 30)
    ts = [row["ts"] for row in timeline["readings"]]
    assert len(ts) == 51 and min(ts) == round(old, 3) and max(ts) == round(old + 60, 3)
    assert {"diagnostics/power.json", "diagnostics/system.json"} <= set(names)
    power = json.loads(zipfile.ZipFile(path).read("diagnostics/power.json"))
    assert power, "the probes see the monitors' last persisted readings"


@pytest.mark.skipif(not is_root(), reason="needs root to own files as another user")
def test_root_standalone_report_is_readable_by_the_daemons_user(tmp_path: Path) -> None:
    """`sudo posagent report` with no daemon: the bundle belongs to the spool's owner (the
    daemon's user), who can read and verify it; before, it was root's 0640 and quarantined."""
    tmp = shared_tmp(NOBODY)
    try:
        cfg = screen_config(tmp)
        spool = tmp / "state" / "spool"
        for d in ("tmp", "new", "cur", "failed", "sent", "retry"):
            (spool / d).mkdir(parents=True)
        for p in tmp.rglob("*"):
            os.chown(p, NOBODY, NOBODY)
        r = run("report", "--config", str(cfg), "--note", "as root", "--json")
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        assert res["via"] == "standalone"
        path = Path(res["path"])
        assert (path.stat().st_uid, path.stat().st_gid) == (NOBODY, NOBODY)
        assert not [p for p in spool.rglob("*") if p.stat().st_uid != NOBODY]
        argv, env = as_user(NOBODY, "bundle", "verify", "--config", str(cfg), str(path))
        v = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
        assert v.returncode == 0, v.stderr
        assert os.geteuid() == 0  # the CLI switched back (in its own process; this is ours)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
