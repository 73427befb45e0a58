"""Spool durability: kill -9 loops, a full disk, and the fsync protocol under strace."""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent.bundle.format import BundleError, verify_file
from agent.spool.maildir import Limits, Spool, SpoolError, SpoolFull
from tests.bundle.kit import KEY, small_bundle
from tests.conftest import is_root, posagent_argv, write_config


def _child_enqueue_forever(state: Path, wfd: int) -> None:
    """In a forked child: enqueue bundles forever, acknowledging each id after enqueue returns."""
    try:
        sp = Spool(state, Limits(reserve_bytes=0, max_items=100_000, max_bytes=1 << 34)).open()
        n = 0
        while True:
            b = small_bundle(f"kill-loop {n}", pad=random.choice((0, 4000, 30000)))
            sp.enqueue(b.bundle_id, b.data, n % 3)
            os.write(wfd, (b.bundle_id + "\n").encode())
            n += 1
    finally:
        os._exit(0)


def _read_until_line(fd: int, deadline_s: float) -> bytes:
    """Read from a pipe until it holds one full line (or EOF, or the deadline)."""
    buf = b""
    end = time.monotonic() + deadline_s
    while b"\n" not in buf and time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf


@pytest.mark.slow
def test_kill9_loop_never_loses_an_acknowledged_bundle(tmp_path: Path) -> None:
    """A child enqueueing bundles is SIGKILLed 200 times at random points; nothing acked is lost, nothing partial is in new/."""
    rng = random.Random(1234)
    acked: set[str] = set()
    checked: set[str] = set()
    kills = 0
    for _ in range(200):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            _child_enqueue_forever(tmp_path, w)
        os.close(w)
        early = b""
        if kills % 3 == 0:
            # every third kill comes after the child has acknowledged a bundle, however
            # slow this machine's fsync is right now: the loop always has acked bundles to lose
            early = _read_until_line(r, deadline_s=30.0)
        time.sleep(rng.uniform(0.0, 0.03))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        kills += 1
        with os.fdopen(r, "rb") as f:
            written = (early + f.read()).decode()
        for line in written.splitlines():
            if len(line) == 36:
                acked.add(line)
        sp = Spool(tmp_path).open()  # restart recovery
        assert not list((sp.root / "tmp").iterdir())
        present = {i.bundle_id: i for i in sp.items("new")}
        missing = acked - set(present)
        assert not missing, f"acknowledged bundles lost after {kills} kills: {sorted(missing)[:3]}"
        for bid, item in present.items():
            if bid not in checked:
                verify_file(item.path, KEY)  # raises on a partial or corrupt file
                checked.add(bid)
    assert kills == 200
    assert len(acked) >= 67


@pytest.mark.skipif(not is_root(), reason="mounting a tmpfs needs root")
def test_full_disk_never_partial_never_over_quota(tmp_path: Path) -> None:
    """On a tiny tmpfs the spool refuses cleanly: no partial bundle, never over quota, report exits non-zero."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=768k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {r.stderr.strip()}")
    try:
        # 1) ENOSPC in the middle of a write (free-space check disabled to force it)
        sp = Spool(
            mnt / "a", Limits(reserve_bytes=-(1 << 40), max_bytes=1 << 30, max_items=10_000)
        ).open()
        captured = refused = 0
        for i in range(60):
            b = small_bundle(f"fill {i}", pad=40_000)
            try:
                sp.enqueue(b.bundle_id, b.data, 1)
                captured += 1
            except SpoolError as e:
                assert "not captured" in str(e)
                refused += 1
        assert captured > 0 and refused > 0
        assert not list((sp.root / "tmp").iterdir())
        for item in sp.items("new"):
            verify_file(item.path, KEY)
        shutil.rmtree(mnt / "a")
        # 1b) with the free-space check on, a full disk evicts older bundles or refuses, never errors midway
        sp = Spool(mnt / "c", Limits(reserve_bytes=0, max_bytes=1 << 30, max_items=10_000)).open()
        kept = []
        for i in range(40):
            b = small_bundle(f"fill {i}", pad=40_000)
            sp.enqueue(b.bundle_id, b.data, 1)
            kept.append(b.bundle_id)
        present = [i.bundle_id for i in sp.items("new")]
        assert kept[-1] in present and len(present) < 40
        assert sp.pending_evictions()["new"] == 40 - len(present)
        shutil.rmtree(mnt / "c")
        # 2) quota below the disk: never over quota
        quota = 200_000
        sp = Spool(mnt / "b", Limits(reserve_bytes=0, max_bytes=quota, max_items=10_000)).open()
        for i in range(30):
            b = small_bundle(f"q {i}", pad=20_000)
            try:
                sp.enqueue(b.bundle_id, b.data, i % 3)
            except SpoolFull:
                assert i % 3 < 2  # only a lower rank than what fills the queue is refused
            assert sp.usage()[0] <= quota
        shutil.rmtree(mnt / "b")
        # 3) posagent report on a full disk says clearly it was not captured
        filler = mnt / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        cfg = write_config(tmp_path)
        cfg.write_text(
            cfg.read_text().replace(
                f'state_dir = "{tmp_path / "state"}"', f'state_dir = "{mnt / "state"}"'
            )
        )
        # room for the layout, not a bundle (a report's note is cut to 10,000 characters, so
        # the bundle is a few KiB of diagnostics and note: far more than this room)
        os.truncate(filler, os.path.getsize(filler) - 8 * 1024)
        rr = subprocess.run(
            posagent_argv(
                "report",
                "--config",
                str(cfg),
                "--note",
                "printer jammed " + secrets.token_hex(50_000),
            ),
            capture_output=True,
            text=True,
        )
        assert rr.returncode != 0
        assert "not captured" in rr.stderr
        new = mnt / "state" / "spool" / "new"
        assert not new.exists() or not list(new.iterdir())
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_fsync_protocol_under_strace(tmp_path: Path) -> None:
    """The bundle file is fsynced before its rename into new/, new/ is fsynced after, before 'captured' is printed."""
    cfg = write_config(tmp_path)
    log = tmp_path / "strace.log"
    r = subprocess.run(
        [
            "strace",
            "-f",
            "-y",
            "-qq",
            "-s",
            "200",
            "-o",
            str(log),
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2,write",
            *posagent_argv("report", "--config", str(cfg), "--note", "strace me", "--json"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    bid = json.loads(r.stdout)["bundle_id"]
    lines = log.read_text().splitlines()

    def first(pattern: str) -> int:
        for i, line in enumerate(lines):
            if re.search(pattern, line):
                return i
        raise AssertionError(f"no syscall matching {pattern!r} in strace output")

    fsync_file = first(rf"fsync\(\d+<[^>]*/spool/tmp/{bid}[^>]*>\)\s+=\s+0")
    rename = first(rf"rename\w*\(.*spool/tmp/{bid}.*spool/new/{bid}")
    fsync_dir = next(
        i
        for i, line in enumerate(lines)
        if i > rename and re.search(r"fsync\(\d+<[^>]*/spool/new>\)\s+=\s+0", line)
    )
    # the command's own stdout (its pid is the renamer's): children (journalctl, dmesg)
    # write to their own pipes
    pid = lines[rename].split()[0]
    said = next(
        i
        for i, line in enumerate(lines)
        if line.startswith(pid + " ") and re.search(r'write\(1<[^>]*>, "\{', line)
    )
    assert fsync_file < rename < fsync_dir < said


def test_verify_rejects_truncated_spool_file(tmp_path: Path) -> None:
    """Sanity: a truncated copy of a bundle never verifies (what the kill loop relies on)."""
    b = small_bundle(pad=10_000)
    p = tmp_path / "x.zip"
    p.write_bytes(b.data[: len(b.data) // 2])
    with pytest.raises(BundleError):
        verify_file(p, KEY)
