"""Config: typed loading, errors located by file/key/line, sample kept in sync with the code."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from agent.core.config import (
    SAMPLE_CONFIG,
    Config,
    ConfigError,
    FaultOverride,
    PrinterConfig,
    ScreenConfig,
    SerialConfig,
    load_config,
    parse_config,
)
from agent.core.sensitive import DEFAULT_SENSITIVE_WINDOWS
from tests.conftest import posagent_argv


def _keys(obj: object, prefix: str = "") -> set[str]:
    out = set()
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        if f.metadata.get("internal"):
            continue
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out |= _keys(v, f"{prefix}{f.name}.")
        else:
            out.add(f"{prefix}{f.name}")
    return out


def _commented_block(text: str, first: str) -> str:
    """The commented-out TOML block of the sample that starts with `# {first}`, uncommented."""
    lines = text.splitlines()
    start = lines.index(f"# {first}")
    out: list[str] = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        out.append(line[2:] if line.startswith("# ") else line[1:])
    return "\n".join(out) + "\n"


def test_sample_config_matches_code_defaults() -> None:
    """Every section of the shipped sample equals the dataclass defaults, key for key."""
    sample = load_config(SAMPLE_CONFIG)
    default = Config()
    for f in dataclasses.fields(Config):
        if f.name in ("faults", "source"):
            continue
        assert getattr(sample, f.name) == getattr(default, f.name), f.name
    assert sample.faults == {"power.battery_low": FaultOverride()}


def test_sample_config_declares_no_device() -> None:
    """As shipped nothing may be missing on a terminal: no printer, serial device, payment host
    or named interface (every interface that carried a default route is watched)."""
    sample = load_config(SAMPLE_CONFIG)
    assert sample.printer == [] and sample.serial == []
    assert sample.network.payment_hosts == [] and sample.network.interfaces == []
    assert sample.app.process == "" and sample.app.pid_file == ""


def test_sample_config_commented_examples_show_the_defaults() -> None:
    """The commented [[printer]], [[serial]] and sensitive_windows examples parse and carry
    each key's default (sensitive_windows: the shipped list the agent uses when it is unset)."""
    text = SAMPLE_CONFIG.read_text()
    assert parse_config(_commented_block(text, "[[printer]]")).printer == [PrinterConfig()]
    assert parse_config(_commented_block(text, "[[serial]]")).serial == [SerialConfig()]
    windows = parse_config("[screen]\n" + _commented_block(text, "sensitive_windows = ["))
    assert windows.screen.sensitive_windows == list(DEFAULT_SENSITIVE_WINDOWS)
    assert ScreenConfig().sensitive_windows == list(DEFAULT_SENSITIVE_WINDOWS)
    assert parse_config("[screen]\nsensitive_windows = []\n").screen.sensitive_windows == []


def test_sample_config_documents_every_key() -> None:
    """Every config key in the code appears literally in the sample, set or as a commented
    example (no hidden keys)."""
    text = SAMPLE_CONFIG.read_text()
    cfg = Config(printer=[PrinterConfig()], serial=[SerialConfig()])
    keys = _keys(cfg) | {f"printer.{k}" for k in _keys(PrinterConfig())}
    keys |= {f"serial.{k}" for k in _keys(SerialConfig())}
    keys |= {f"faults.{k}" for k in _keys(FaultOverride())}
    for key in sorted(keys):
        if key in ("printer", "serial", "faults"):
            continue
        section, leaf = key.rsplit(".", 1)
        if section in ("printer", "serial"):
            assert f"\n{leaf} = " in _commented_block(text, f"[[{section}]]"), key
        elif key == "screen.sensitive_windows":
            assert "\n# sensitive_windows = [\n" in text
        else:
            assert f"\n{leaf} = " in text, f"{key} missing from the sample config"


def test_sample_config_ships_in_the_package() -> None:
    """The sample lives inside the agent package (package data), not only in the repo."""
    assert SAMPLE_CONFIG.is_file()
    assert "agent" in SAMPLE_CONFIG.parts


@pytest.mark.parametrize(
    ("text", "key", "line", "words"),
    [
        ("[agent]\ndevice_id = 'x'\nbogus = 1\n", "agent.bogus", 3, "unknown key"),
        ("[power]\n\ninterval_s = 'fast'\n", "power.interval_s", 3, "expected a number"),
        ("[power]\ninterval_s = 0\n", "power.interval_s", 2, "below the minimum"),
        ("[agent]\ntarget = 'ios'\n", "agent.target", 2, "must be one of"),
        (
            "[[printer]]\nname='a'\n[[printer]]\nname='b'\nbaudrate = true\n",
            "printer[1].baudrate",
            5,
            "integer",
        ),
        ("[network]\npayment_hosts = ['nohostport']\n", "network.payment_hosts", 2, "host:port"),
        ("[spool]\nmax_mib = 1\n[nosuch]\nx = 1\n", "nosuch", 3, "unknown key"),
        (
            "[faults.'printer.paper_end']\nseverity = 'meh'\n",
            "faults.printer.paper_end.severity",
            2,
            "one of",
        ),
    ],
)
def test_config_errors_name_key_and_line(text: str, key: str, line: int, words: str) -> None:
    """Unknown keys, wrong types and out-of-range values name the file, the key and the line."""
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "agent.toml")
    e = exc.value
    assert e.key == key
    assert e.line == line
    assert words in e.message
    assert str(e).startswith(f"agent.toml:{line}: {key}: ")


def test_syntax_error_has_line() -> None:
    """A TOML syntax error names the line."""
    with pytest.raises(ConfigError) as exc:
        parse_config("[agent]\ndevice_id = \n", "a.toml")
    assert exc.value.line == 2
    assert "syntax" in str(exc.value)


def test_check_config_exit_78_on_typo(tmp_path: Path) -> None:
    """`posagent check-config` exits 78 (EX_CONFIG) and names the line of a typo."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[agent]\ndevice_id = 'T-1'\nsite = 'x'\n\n[network]\nintervall_s = 5\n")
    r = subprocess.run(
        posagent_argv("check-config", "--config", str(cfg)), capture_output=True, text=True
    )
    assert r.returncode == 78
    assert f"{cfg}:6: network.intervall_s: unknown key" in r.stderr


def test_check_config_hides_secrets(tmp_path: Path) -> None:
    """check-config prints the effective config but never an inline token."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[upload]\ntoken = 'supersecret-token-value'\nendpoint = 'https://c.example'\n")
    r = subprocess.run(
        posagent_argv("check-config", "--config", str(cfg)), capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "supersecret" not in r.stdout
    assert 'token = "***"' in r.stdout
    assert 'endpoint = "https://c.example"' in r.stdout
    assert "[power]\ninterval_s = 5.0" in r.stdout


def test_check_config_output_parses_back(tmp_path: Path) -> None:
    """The printed effective config is itself a valid config with the same values."""
    r = subprocess.run(
        posagent_argv("check-config", "--config", str(SAMPLE_CONFIG)),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    again = parse_config(r.stdout, "printed")
    assert dataclasses.replace(again, source="") == dataclasses.replace(
        load_config(SAMPLE_CONFIG), source=""
    )


def test_missing_config_is_a_config_error(tmp_path: Path) -> None:
    """A missing file is reported with exit 78, not a traceback."""
    r = subprocess.run(
        posagent_argv("check-config", "--config", str(tmp_path / "nope.toml")),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 78
    assert "not found" in r.stderr


def test_roots_come_from_one_object(tmp_path: Path) -> None:
    """All filesystem roots (sys, proc, dev, run, state) are overridable from config."""
    cfg = parse_config(
        f"[agent]\nstate_dir = '{tmp_path}/s'\n[roots]\nsys = '{tmp_path}/sys'\nproc = '/p'\ndev = '/d'\nrun = '/r'\n"
    )
    r = cfg.fs_roots()
    assert (str(r.sys), str(r.proc), str(r.dev), str(r.run), str(r.state)) == (
        f"{tmp_path}/sys",
        "/p",
        "/d",
        "/r",
        f"{tmp_path}/s",
    )


# --------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize("value", ["nan", "+nan", "-nan", "inf", "-inf", "+inf"])
def test_non_finite_floats_are_refused(value: str) -> None:
    """nan compares false with every bound, inf is no interval: both are config errors."""
    for section, key in (("power", "interval_s"), ("capture", "cooldown_s")):
        with pytest.raises(ConfigError) as exc:
            parse_config(f"[{section}]\n{key} = {value}\n", "agent.toml")
        assert exc.value.key == f"{section}.{key}" and "not a finite number" in exc.value.message
    with pytest.raises(ConfigError):
        parse_config(f"[faults.'power.ac_lost']\nraise_after = {value}\n", "agent.toml")


DEEP = {
    "open arrays": "a=" + "[" * 100_000,
    "balanced arrays": "[collector]\nx=" + "[" * 5000 + "]" * 5000,
    "inline tables": "a = " + "{b=" * 5000 + "1" + "}" * 5000,
}


@pytest.mark.parametrize("name", sorted(DEEP))
def test_deeply_nested_toml_is_a_config_error(name: str) -> None:
    """Nesting deep enough to exhaust the parser's recursion is a ConfigError, not a traceback."""
    with pytest.raises(ConfigError) as exc:
        parse_config(DEEP[name], "agent.toml")
    assert "nested too deeply" in str(exc.value) or "syntax" in str(exc.value)


@pytest.mark.parametrize("command", ["check-config", "run", "selftest"])
def test_deeply_nested_toml_exits_78(tmp_path: Path, command: str) -> None:
    """check-config, the daemon and selftest exit 78 with one line, never a traceback."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(DEEP["open arrays"])
    r = subprocess.run(
        posagent_argv(command, "--config", str(cfg)), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 78, r.stderr
    assert "Traceback" not in r.stderr and str(cfg) in r.stderr


def _secret_setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A config (write_config) whose token and key files are 0600; (config, token, key)."""
    from tests.conftest import write_config

    cfg = write_config(tmp_path)
    token, key = tmp_path / "token", tmp_path / "device.key"
    token.write_text("device-token-0123456789\n")
    for p in (token, key):
        p.chmod(0o600)
    return cfg, token, key


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(posagent_argv(*args), capture_output=True, text=True, timeout=120)


def test_safe_secret_files_pass_quietly(tmp_path: Path) -> None:
    """0600 token and key files owned by the agent's user: no warning."""
    cfg, _, _ = _secret_setup(tmp_path)
    r = _cli("check-config", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "secret file" not in r.stderr


def test_world_readable_secret_file_is_a_warning(tmp_path: Path) -> None:
    """A token file every user can read: check-config warns, naming it, and exits 0."""
    cfg, token, _ = _secret_setup(tmp_path)
    token.chmod(0o644)
    r = _cli("check-config", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert f"upload.token_file: {token} is readable by every user" in r.stderr


@pytest.mark.parametrize("attack", ["group-writable", "world-writable", "symlink", "fifo"])
@pytest.mark.parametrize("command", ["check-config", "selftest", "run"])
def test_secret_file_others_can_change_is_refused_78(
    tmp_path: Path, attack: str, command: str
) -> None:
    """A key file others can write, or a symlink or FIFO in its place: check-config,
    selftest and the daemon refuse with 78, naming the file; the FIFO blocks nothing."""
    import os

    cfg, _, key = _secret_setup(tmp_path)
    if attack == "group-writable":
        key.chmod(0o660)
    elif attack == "world-writable":
        key.chmod(0o602)
    elif attack == "symlink":
        real = tmp_path / "real.key"
        key.rename(real)
        key.symlink_to(real)
    else:
        key.unlink()
        os.mkfifo(key)
    r = _cli(command, "--config", str(cfg))
    assert r.returncode == 78, (r.stdout, r.stderr)
    assert f"bundle.hmac_key_file: {key}" in r.stderr
    assert "Traceback" not in r.stderr


def test_secret_file_checks_name_every_problem() -> None:
    """check_file: owner, directory without sticky bit, several findings at once."""
    import os
    import tempfile

    from agent.core.secret_files import check_file

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "token"
        p.write_text("t")
        os.chmod(d, 0o777)  # every user may write the directory: the file can be replaced
        p.chmod(0o666)
        found = check_file("upload.token_file", str(p), euid=4242 if os.geteuid() else 0)
        msgs = " | ".join(f.message for f in found)
        assert "writable by group and others" in msgs
        assert "a directory every user may write" in msgs
        assert "readable by every user" in msgs
        assert [f.refuse for f in found].count(False) == 1
        assert check_file("upload.token_file", str(p) + ".missing") == []
        if os.geteuid() != 0:
            assert any("owned by uid" in f.message for f in found)
