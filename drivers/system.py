"""System: CPU, memory, disks, load, temperatures, the POS app's process, heartbeat, clock.

Readers over psutil and the kernel; `parse_timedatectl_ntp` and
`parse_pid_file` are the pure parsers. Nothing here decides what is "low" or
"hung": monitors compare these readings with their thresholds.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from drivers.files import read_regular, stat_regular
from drivers.roots import Roots
from drivers.shell import Shell, ShellError

# --------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class DiskUsage:
    """Usage of the filesystem holding `path` (error set when it cannot be read)."""

    path: str
    total_bytes: int | None = None
    used_bytes: int | None = None
    free_bytes: int | None = None
    error: str = ""

    @property
    def free_pct(self) -> float | None:
        """Free space available to unprivileged users, in percent of the total."""
        if self.total_bytes is None or self.free_bytes is None or self.total_bytes <= 0:
            return None
        return 100.0 * self.free_bytes / self.total_bytes


@dataclass(frozen=True)
class Temperature:
    """One psutil temperature sensor reading."""

    chip: str
    label: str
    current_c: float
    high_c: float | None = None
    critical_c: float | None = None


@dataclass(frozen=True)
class SystemSnapshot:
    """CPU, memory, load, disks and temperatures at one moment."""

    cpu_percent: float
    memory_total_bytes: int
    memory_available_bytes: int
    load_1: float | None
    load_5: float | None
    load_15: float | None
    cpu_count: int
    disks: tuple[DiskUsage, ...] = ()
    temperatures: tuple[Temperature, ...] = ()

    @property
    def memory_available_pct(self) -> float:
        """Available memory in percent of the total."""
        if self.memory_total_bytes <= 0:
            return 0.0
        return 100.0 * self.memory_available_bytes / self.memory_total_bytes


def read_disk(path: str) -> DiskUsage:
    """psutil.disk_usage for one path; a missing or unreadable path gives `error`."""
    try:
        u = psutil.disk_usage(path)
    except OSError as e:
        return DiskUsage(path, error=f"{errno.errorcode.get(e.errno or 0, 'OSError')}: {e}")
    return DiskUsage(path, u.total, u.used, u.free)


def read_temperatures() -> tuple[Temperature, ...]:
    """psutil.sensors_temperatures() when the platform has it, else empty."""
    fn = getattr(psutil, "sensors_temperatures", None)
    if fn is None:
        return ()
    try:
        data = fn()
    except (OSError, RuntimeError):
        return ()
    out: list[Temperature] = []
    for chip, entries in sorted(data.items()):
        for e in entries:
            out.append(Temperature(chip, e.label or chip, e.current, e.high, e.critical))
    return tuple(out)


def read_system(
    disk_paths: tuple[str, ...] | list[str] = ("/",),
    *,
    cpu_interval_s: float | None = None,
    temperatures: bool = True,
) -> SystemSnapshot:
    """One snapshot. cpu_interval_s None compares with the previous call (0.0 the first time)."""
    cpu = psutil.cpu_percent(interval=cpu_interval_s)
    vm = psutil.virtual_memory()
    try:
        l1, l5, l15 = os.getloadavg()
        load: tuple[float | None, float | None, float | None] = (l1, l5, l15)
    except OSError:
        load = (None, None, None)
    return SystemSnapshot(
        cpu_percent=float(cpu),
        memory_total_bytes=int(vm.total),
        memory_available_bytes=int(vm.available),
        load_1=load[0],
        load_5=load[1],
        load_15=load[2],
        cpu_count=psutil.cpu_count() or 1,
        disks=tuple(read_disk(p) for p in disk_paths),
        temperatures=read_temperatures() if temperatures else (),
    )


def read_interfaces() -> dict[str, dict[str, Any]]:
    """Every network interface: up, speed, IPv4/IPv6 addresses (psutil)."""

    stats = psutil.net_if_stats()
    out: dict[str, dict[str, Any]] = {}
    for name, addrs in psutil.net_if_addrs().items():
        st = stats.get(name)
        out[name] = {
            "up": bool(st.isup) if st else None,
            "speed_mbps": st.speed if st else None,
            "addresses": [
                a.address for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)
            ],
        }
    return out


def top_processes(n: int = 10) -> list[dict[str, Any]]:
    """The n processes with the largest RSS: pid, name, rss, cpu seconds, status."""
    procs: list[dict[str, Any]] = []
    for proc in psutil.process_iter(["pid", "name", "memory_info", "cpu_times", "status"]):
        info = proc.info
        mem = info.get("memory_info")
        cpu = info.get("cpu_times")
        procs.append(
            {
                "pid": info["pid"],
                "name": info.get("name") or "",
                "rss_bytes": mem.rss if mem else 0,
                "cpu_s": round(cpu.user + cpu.system, 2) if cpu else None,
                "status": info.get("status"),
            }
        )
    procs.sort(key=lambda d: d["rss_bytes"], reverse=True)
    return procs[:n]


# --------------------------------------------------------------------------- the POS app

PID_MAX_LIMIT = 4_194_304  # the kernel's ceiling for /proc/sys/kernel/pid_max


@dataclass(frozen=True)
class ProcessInfo:
    """The POS application's process, or why it was not found."""

    found: bool
    pid: int | None = None
    name: str | None = None
    create_time: float | None = None  # epoch seconds; a new value means a restart
    rss_bytes: int | None = None
    status: str | None = None
    matches: int = 0  # processes matching the name
    error: str = ""


def parse_pid_file(text: str) -> int | None:
    """First token of a pid file as a positive int, else None."""
    tokens = text.split()
    if not tokens:
        return None
    try:
        pid = int(tokens[0])
    except ValueError:
        return None
    return pid if 0 < pid <= PID_MAX_LIMIT else None


def _info(p: psutil.Process, matches: int) -> ProcessInfo:
    try:
        with p.oneshot():
            status = p.status()
            if status == psutil.STATUS_ZOMBIE:
                return ProcessInfo(False, p.pid, p.name(), status=status, matches=matches)
            return ProcessInfo(
                True,
                p.pid,
                p.name(),
                p.create_time(),
                p.memory_info().rss,
                status,
                matches,
            )
    except psutil.NoSuchProcess:
        return ProcessInfo(False, p.pid, error="exited", matches=matches)
    except psutil.AccessDenied as e:
        return ProcessInfo(True, p.pid, matches=matches, error=f"access denied: {e}")


def _matches(p: psutil.Process, name: str) -> bool:
    try:
        if p.name() == name:
            return True
        cmd = p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    if not cmd:
        return False
    return os.path.basename(cmd[0]) == name or (
        len(cmd) > 1 and os.path.basename(cmd[0]).startswith("python") and cmd[1].endswith(name)
    )


def find_process(name: str = "", pid_file: str | Path | None = None) -> ProcessInfo:
    """Find the POS app by pid file (preferred when given) or by process name.

    By name, the oldest matching process is returned (the parent of workers),
    matched on the kernel name, argv[0]'s basename, or a Python script's name.
    """
    if pid_file:
        try:
            text = read_regular(pid_file, 4096).decode("ascii", "replace")
        except FileNotFoundError:
            return ProcessInfo(False, error="pid file missing")
        except OSError as e:
            return ProcessInfo(False, error=f"pid file unreadable: {e.strerror}")
        pid = parse_pid_file(text)
        if pid is None:
            return ProcessInfo(False, error="pid file has no pid")
        try:
            p = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return ProcessInfo(False, pid=pid, error="no such process")
        if name and not _matches(p, name):
            return ProcessInfo(False, pid=pid, error=f"pid {pid} is not {name}")
        return _info(p, 1)
    if not name:
        return ProcessInfo(False, error="no process name or pid file configured")
    found: list[psutil.Process] = []
    for p in psutil.process_iter():
        if _matches(p, name):
            found.append(p)
    if not found:
        return ProcessInfo(False, matches=0)

    def ctime(p: psutil.Process) -> float:
        try:
            return p.create_time()
        except psutil.Error:
            return float("inf")

    found.sort(key=lambda p: (ctime(p), p.pid))
    return _info(found[0], len(found))


# --------------------------------------------------------------------------- heartbeat


@dataclass(frozen=True)
class Heartbeat:
    """Age of the app's heartbeat file (mtime), or why it is unknown."""

    path: str
    exists: bool
    age_s: float | None = None
    error: str = ""


def heartbeat_age(path: str | Path, now: float | None = None) -> Heartbeat:
    """Seconds since the heartbeat file was last modified (negative if in the future)."""
    p = str(path)
    try:
        st = stat_regular(p)  # a link in its place could borrow another file's mtime
    except FileNotFoundError:
        return Heartbeat(p, exists=False)
    except OSError as e:
        return Heartbeat(p, exists=False, error=f"{e.strerror}")
    t = time.time() if now is None else now
    return Heartbeat(p, exists=True, age_s=t - st.st_mtime)


# --------------------------------------------------------------------------- clock

STA_UNSYNC = 0x0040
TIME_ERROR = 5


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """struct timex from <sys/timex.h> (glibc/musl, LP64 and ILP32 alike)."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


@dataclass(frozen=True)
class ClockSync:
    """Whether the kernel (or systemd) believes the clock is synchronized."""

    synced: bool | None
    source: str  # "adjtimex" | "timedatectl" | "none"
    maxerror_us: int | None = None
    esterror_us: int | None = None
    status: int | None = None
    error: str = ""


@functools.cache
def _adjtimex_fn() -> Any:
    # The interpreter's own symbols include libc (no find_library: it runs ldconfig).
    return ctypes.CDLL(None, use_errno=True).adjtimex


def adjtimex_sync() -> ClockSync:
    """Read-only adjtimex(2) (modes=0): unsynced when TIME_ERROR or STA_UNSYNC is set."""
    if not sys.platform.startswith("linux"):
        return ClockSync(None, "none", error="adjtimex: not Linux")
    try:
        fn = _adjtimex_fn()
    except (OSError, AttributeError) as e:
        return ClockSync(None, "none", error=f"adjtimex: {e}")
    tx = _Timex()
    tx.modes = 0
    rc = fn(ctypes.byref(tx))
    if rc == -1:
        return ClockSync(None, "none", error=f"adjtimex: {os.strerror(ctypes.get_errno())}")
    synced = rc != TIME_ERROR and not (tx.status & STA_UNSYNC)
    return ClockSync(synced, "adjtimex", int(tx.maxerror), int(tx.esterror), int(tx.status))


def parse_timedatectl_ntp(text: str) -> bool | None:
    """`timedatectl show -p NTPSynchronized` (with or without --value) → bool, else None."""
    for line in text.splitlines():
        v = line.strip()
        if v.startswith("NTPSynchronized="):
            v = v.partition("=")[2]
        if v in ("yes", "true", "1"):
            return True
        if v in ("no", "false", "0"):
            return False
    return None


def timedatectl_sync(shell: Shell, timeout_s: float = 3.0) -> ClockSync:
    """Ask systemd through `timedatectl show -p NTPSynchronized`."""
    try:
        r = shell.run("timedatectl show -p NTPSynchronized", timeout_s)
    except ShellError as e:
        return ClockSync(None, "none", error=f"timedatectl: {e}")
    if r.returncode != 0:
        err = r.stderr.decode("utf-8", "replace").strip()[:200]
        return ClockSync(None, "none", error=f"timedatectl: exit {r.returncode}: {err}")
    synced = parse_timedatectl_ntp(r.text)
    if synced is None:
        return ClockSync(None, "none", error="timedatectl: no NTPSynchronized value")
    return ClockSync(synced, "timedatectl")


def read_clock_sync(shell: Shell | None = None, timeout_s: float = 3.0) -> ClockSync:
    """adjtimex on local Linux; timedatectl through `shell` when adjtimex cannot answer."""
    if shell is None or shell.mode in ("local", "android"):
        r = adjtimex_sync()
        if r.synced is not None:
            return r
        if shell is None:
            return r
    return timedatectl_sync(shell, timeout_s)


@dataclass(frozen=True)
class ClockOffset:
    """Wall clock minus the boot-time clock; a change between readings is a clock jump."""

    wall_s: float
    boottime_s: float

    @property
    def offset_s(self) -> float:
        """time.time() - CLOCK_BOOTTIME: constant while nobody steps the wall clock."""
        return self.wall_s - self.boottime_s


def read_clock_offset() -> ClockOffset:
    """Sample the wall clock and CLOCK_BOOTTIME (CLOCK_MONOTONIC where that is missing)."""
    clk = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    b0 = time.clock_gettime(clk)
    w = time.time()
    b1 = time.clock_gettime(clk)
    return ClockOffset(w, (b0 + b1) / 2)


def read_boot_id(roots: Roots) -> str | None:
    """<proc>/sys/kernel/random/boot_id, None when unreadable."""
    try:
        return roots.proc_path("sys", "kernel", "random", "boot_id").read_text().strip() or None
    except OSError:
        return None


def read_uptime_s(roots: Roots) -> float | None:
    """First field of <proc>/uptime, None when unreadable."""
    try:
        return float(roots.proc_path("uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
