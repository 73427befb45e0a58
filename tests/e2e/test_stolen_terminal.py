"""A stolen terminal (issue 17): a real `posagent run` on the simulated terminal with
`[bundle] encrypt_to` set captures a manual report with a screenshot; then the whole
state dir is searched byte-wise for the screenshot, a report line and a diagnostics
entry: none of it is there (the spool holds ciphertext only), and the PIN pad's serial
number is in no file of it (the serial baseline and the recorder's readings hold a
keyed hash). Also: the daemon refuses
to start (78) when encryption is required without a recipient, or the signing key is
corrupt, naming the file."""

from __future__ import annotations

import io
import signal
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyrage import x25519

from agent.bundle.format import BundleReader
from agent.bundle.sealed import load_public_key, open_sealed
from simulator.screen import xvfb_available
from simulator.terminal import SimTerminal
from tests.conftest import posagent_argv, wait_until

WINDOW = 32
# the agent's own working state, not bundle content: the first USB identity of each
# peripheral, to see a swap. A bundle's readings quote it as expected_identity, so it
# is left out of the window search and checked on its own: it holds no serial number,
# only "vid:pid:~<keyed hash>"
OWN_STATE = {"serial_baseline.json"}


@pytest.fixture
def term(tmp_path: Path) -> Iterator[SimTerminal]:
    t = SimTerminal(tmp_path / "term", screen="x11").start()
    try:
        yield t
    finally:
        t.close()


def _config(term: SimTerminal, tmp: Path, bundle: dict[str, object]) -> Path:
    sections = term.agent_sections()
    sections["bundle"] = {**sections["bundle"], **bundle}
    return term.write_config(tmp / "agent.toml", sections)


def _windows(data: bytes) -> set[bytes]:
    return {data[i : i + WINDOW] for i in range(0, max(len(data) - WINDOW + 1, 0))}


def _found_in(root: Path, needles: set[bytes], neutral: bytes) -> list[str]:
    """Files under root holding any of the 32-byte needles (every offset of every file)."""
    hits = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.is_symlink():
            continue
        if p.name in OWN_STATE:
            continue
        data = p.read_bytes().replace(neutral, b"@")
        if any(data[i : i + WINDOW] in needles for i in range(len(data) - WINDOW + 1)):
            hits.append(str(p.relative_to(root)))
    return hits


@pytest.mark.skipif(not xvfb_available(), reason="Xvfb not installed")
def test_stolen_terminal_state_dir_holds_no_plaintext(term: SimTerminal, tmp_path: Path) -> None:
    ident = x25519.Identity.generate()
    cfg = _config(
        term, tmp_path, {"encrypt_to": [str(ident.to_public())], "require_encryption": True}
    )
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen(
        posagent_argv("run", "--config", str(cfg)), stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    try:
        new = term.state / "spool" / "new"
        assert wait_until(lambda: b"agent_started" in log.read_bytes(), 30), log.read_text()
        term.drop_trigger("till 3 drawer stuck after refund, ask Ms Example", "0612345678")
        found = wait_until(lambda: sorted(new.glob("*.zip")), 30)
        assert found, log.read_text()[-3000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
    sealed = found[0].read_bytes()
    with BundleReader(sealed) as r:
        assert r.sealed
        pub = load_public_key(
            subprocess.run(
                posagent_argv("key", "show-public", "--config", str(cfg)),
                capture_output=True,
                check=True,
            ).stdout
        )
        assert r.verify(None, pub).ed25519_checked
    inner = open_sealed(sealed, [ident])
    # the simulated terminal's own paths (its config: /tmp/pytest-.../term/dev/ttyUSB0)
    # are in the state dir by design (serial baseline, watch state); they are not the
    # bundle's content, so both sides are searched with that prefix folded to "@"
    neutral = str(term.root).encode()
    with zipfile.ZipFile(io.BytesIO(inner)) as z:
        entries = {n: z.read(n).replace(neutral, b"@") for n in z.namelist()}
    png = entries["screenshot.png"]
    assert len(png) > 1000
    report_lines = [
        ln.strip().encode()
        for ln in entries["report.txt"].decode().splitlines()
        if len(ln.strip()) >= WINDOW
    ]
    diags = [d for n, d in entries.items() if n.startswith("diagnostics/") and len(d) >= WINDOW]
    assert report_lines and diags
    needles = _windows(png)
    needles |= {ln[:WINDOW] for ln in report_lines}
    for d in diags:
        needles |= _windows(d)
    hits = _found_in(term.state, needles, neutral)
    assert hits == [], f"plaintext of the bundle found in the state dir: {hits}"
    assert term.pinpad is not None
    serial = term.pinpad.identity.serial.encode()  # type: ignore[union-attr]
    baseline = (term.state / "serial_baseline.json").read_bytes()
    assert b'"0403:6001:~' in baseline and serial not in baseline, baseline
    # nor anywhere else in the state dir: the recorder's journal and snapshot keep the
    # readings with the pad's identity hashed the same way
    holding = [
        str(p.relative_to(term.state))
        for p in sorted(term.state.rglob("*"))
        if p.is_file() and not p.is_symlink() and serial in p.read_bytes()
    ]
    assert holding == [], f"the PIN pad's serial number found in the state dir: {holding}"
    assert any(p.name.startswith("recorder") for p in term.state.iterdir())


def test_require_encryption_without_recipient_refuses_to_start(
    term: SimTerminal, tmp_path: Path
) -> None:
    cfg = _config(term, tmp_path, {"require_encryption": True})
    r = subprocess.run(posagent_argv("run", "--config", str(cfg)), capture_output=True, timeout=60)
    assert r.returncode == 78 and b"bundle.encrypt_to" in r.stderr, r.stderr[-2000:]


def test_corrupt_signing_key_refuses_to_start_naming_the_file(
    term: SimTerminal, tmp_path: Path
) -> None:
    key = tmp_path / "sign.key"
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    key.chmod(0o600)
    cfg = _config(term, tmp_path, {"signing_key_file": str(key)})
    r = subprocess.run(posagent_argv("run", "--config", str(cfg)), capture_output=True, timeout=60)
    assert r.returncode == 78 and str(key).encode() in r.stderr, r.stderr[-2000:]
    assert len([ln for ln in r.stderr.splitlines() if str(key).encode() in ln]) >= 1
