"""The daemon's glibc heap settings: a capped arena count and malloc_trim, checked in real child processes."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys
from pathlib import Path

import pytest

from agent.daemon.runner import trim_heap

_CHILD = r"""
import ctypes, re, sys, threading
sys.path.insert(0, sys.argv[1])
from agent.daemon.runner import limit_arenas
if sys.argv[2] != "default":
    limit_arenas(int(sys.argv[2]))
keep = []
barrier = threading.Barrier(8)
def work():
    barrier.wait()
    for _ in range(200):
        keep.append([bytearray(2000) for _ in range(20)])  # > 512 B: glibc malloc, not pymalloc
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
fp = ctypes.c_void_p(libc.fopen(sys.argv[3].encode(), b"w"))
libc.malloc_info(0, fp)
libc.fclose(fp)
print(len(re.findall(r"<heap nr=", open(sys.argv[3]).read())))
"""


def _glibc() -> bool:
    name = ctypes.util.find_library("c") or ""
    return name.startswith("libc.so.6")


def _heaps(tmp_path: Path, arenas: str) -> int:
    root = str(Path(__file__).resolve().parents[2])
    out = tmp_path / f"malloc-{arenas}.xml"
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, root, arenas, str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())


@pytest.mark.skipif(not _glibc(), reason="the heap settings are glibc's (mallopt, malloc_info)")
def test_limit_arenas_caps_glibc_arenas_for_busy_threads(tmp_path: Path) -> None:
    """Eight threads allocating at once get several arenas by default, one when capped at one."""
    assert _heaps(tmp_path, "1") == 1
    assert _heaps(tmp_path, "default") > 1


@pytest.mark.skipif(not _glibc(), reason="malloc_trim is glibc's")
def test_trim_heap_returns_freed_memory_to_the_os() -> None:
    """After freeing 64 MiB of small blocks, trim_heap lowers this process's RSS."""

    def rss_kib() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    blocks = [bytearray(1000) for _ in range(64 * 1024)]  # 64 MiB in glibc's heap
    keep = blocks[-1]  # the top chunk stays used: only a trim can release what lies below
    del blocks
    before = rss_kib()
    trim_heap()
    after = rss_kib()
    assert keep and before - after > 16 * 1024, (before, after)


_MMAP_CHILD = r"""
import ctypes, sys
sys.path.insert(0, sys.argv[1])
from agent.daemon.runner import fix_mmap_threshold
if sys.argv[2] == "fixed":
    fix_mmap_threshold()
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
big = ctypes.create_string_buffer(4 << 20)  # mmapped, then freed: glibc's default raises
del big                                     # its threshold to 4 MiB
held = [ctypes.create_string_buffer(256 << 10) for _ in range(8)]
print(libc.mallinfo2().hblks)
"""


def _mmapped_blocks(mode: str) -> int:
    root = str(Path(__file__).resolve().parents[2])
    r = subprocess.run(
        [sys.executable, "-c", _MMAP_CHILD, root, mode], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())


@pytest.mark.skipif(not _glibc(), reason="mallopt and mallinfo2 are glibc's")
def test_fixed_mmap_threshold_keeps_large_buffers_out_of_the_heap() -> None:
    """After a 4 MiB buffer is freed, 256 KiB buffers are their own mappings only when the
    threshold is fixed (by default glibc has raised it and serves them from the heap)."""
    assert _mmapped_blocks("fixed") >= 8
    assert _mmapped_blocks("default") < 8
