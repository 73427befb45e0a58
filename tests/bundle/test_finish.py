"""The sealing worker (agent.bundle.finish.SealWorker): one process serves the captures
that follow, started as a capture begins; replaced when it died or went idle; a bad key
or a hung or garbled worker is a one-line FinishError; a rotated key signs the next
bundle."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from pyrage import x25519

from agent.bundle.finish import FinishError, SealWorker, _worker
from agent.bundle.format import BundleReader, key_id
from agent.bundle.sealed import (
    generate_signing_key,
    load_signing_key,
    open_sealed,
    rotate_signing_key,
)
from tests.bundle.test_sealed import KEY, make
from tests.conftest import wait_until


def _seal_worker(tmp: Path, *recipients: str, idle_s: float = 60.0) -> SealWorker:
    args = ["--serve", "--idle-s", str(idle_s), "--key", str(tmp / "device.ed25519")]
    for r in recipients:
        args += ["--to", r]
    return SealWorker(_worker(*args))


def _pid(w: SealWorker) -> int:
    assert w._proc is not None
    return w._proc.pid


def test_one_worker_serves_several_bundles_and_is_replaced_when_it_dies(tmp_path: Path) -> None:
    ident = x25519.Identity.generate()
    sk = generate_signing_key(tmp_path / "device.ed25519")
    w = _seal_worker(tmp_path, str(ident.to_public()))
    try:
        w.prewarm()
        pid = _pid(w)
        for _ in range(3):
            data, m = make(None)
            out = w(data, m, 3)
            inner = open_sealed(out, [ident])
            with BundleReader(inner) as r:
                assert r.verify(KEY, sk.public_key()).ed25519_checked
            with BundleReader(out) as r:
                assert r.verify(None, sk.public_key()).manifest["rank"] == 3
        assert w.started == 1 and _pid(w) == pid
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: w._proc is not None and w._proc.poll() is not None, 10)
        data, m = make(None)
        assert BundleReader(w(data, m, 1)).sealed
        assert w.started == 2
    finally:
        w.close()
    assert w._proc is None


def test_an_idle_worker_exits_and_the_next_bundle_starts_another(tmp_path: Path) -> None:
    generate_signing_key(tmp_path / "device.ed25519")
    w = _seal_worker(tmp_path, idle_s=0.3)
    try:
        w.prewarm()
        proc = w._proc
        assert proc is not None
        assert wait_until(lambda: proc.poll() is not None, 30)
        assert proc.returncode == 0
        data, m = make(None)
        signed = w(data, m, 0)  # no recipient: signed, not sealed
        with BundleReader(signed) as r:
            assert not r.sealed and r.verify(
                KEY, load_signing_key(tmp_path / "device.ed25519").public_key()
            )
        assert w.started == 2
    finally:
        w.close()


def test_a_rotated_key_signs_the_next_bundle(tmp_path: Path) -> None:
    path = tmp_path / "device.ed25519"
    old = generate_signing_key(path)
    w = _seal_worker(tmp_path)
    try:
        data, m = make(None)
        with BundleReader(w(data, m, 0)) as r:
            assert r.verify(None, old.public_key()).ed25519_checked
        _, new = rotate_signing_key(path)
        data, m = make(None)
        with BundleReader(w(data, m, 0)) as r:
            res = r.verify(None, new.public_key())
            assert res.ed25519_checked and key_id(new.public_key()) != key_id(old.public_key())
        assert w.started == 1
    finally:
        w.close()


def test_bad_key_and_bad_bundle_are_one_line_finish_errors(tmp_path: Path) -> None:
    key = tmp_path / "device.ed25519"
    key.write_text("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    key.chmod(0o600)
    w = _seal_worker(tmp_path)
    try:
        data, m = make(None)
        with pytest.raises(FinishError) as e:
            w(data, m, 0)
        assert str(key) in str(e.value) and "\n" not in str(e.value)
        key.unlink()
        generate_signing_key(key)
        with pytest.raises(FinishError, match="^not sealed: "):
            w(b"not a zip", m, 0)
        assert BundleReader(w(data, m, 0)).names  # the worker lives on after a refusal
    finally:
        w.close()


def test_a_hung_or_garbled_worker_is_a_finish_error(tmp_path: Path) -> None:
    data, m = make(None)
    hung = SealWorker([sys.executable, "-c", "import time; time.sleep(120)"], timeout_s=1.0)
    with pytest.raises(FinishError, match="no answer within 1 s"):
        hung(data, m, 0)
    assert hung._proc is None  # killed
    garbled = SealWorker(
        [sys.executable, "-c", "import sys; sys.stdout.write('x' * 64); sys.stdout.flush()"]
    )
    with pytest.raises(FinishError, match="bundle signing worker: "):
        garbled(data, m, 0)
    assert garbled.started == 2  # tried again once with a fresh one
    garbled.close()
