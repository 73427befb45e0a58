"""`posagent report` end to end: a sealed, redacted bundle an operator can verify and read."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

from tests.conftest import posagent_argv, write_config

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
