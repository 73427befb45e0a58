"""A fresh network namespace joined to this one by a veth pair, with its own /etc resolver files.

`SimNetns().start()` (root and iproute2 only; `netns_unavailable()` says why
not) creates namespace `pa-<pid>-<n>` and a veth pair: the host end gets
`host_ip`/30, the peer inside the namespace `ns_ip`/30, and `lo` is up
there. There is deliberately no default route: from inside, the only
reachable addresses are the namespace's own loopback and `host_ip`, so
nothing started in it can reach past this machine.

`write_etc(nameserver)` writes /etc/netns/<ns>/{resolv.conf, hosts,
nsswitch.conf}, which `ip netns exec` binds over /etc for the commands it
runs: resolv.conf names only `nameserver` (timeout 1 s, one attempt),
hosts holds only localhost and nsswitch.conf's hosts line is "files dns", so a lookup
in the namespace asks no one but that server. `exec_argv(argv)` wraps a
command to run inside. `stop()` removes the veth, the namespace and the
/etc/netns files, also after a partial start.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
from pathlib import Path

from simulator.service import Service

NETNS_ETC = Path("/etc/netns")
_counter = itertools.count(1)


class NetnsError(RuntimeError):
    """A namespace step failed (the `ip` command and its error in the message)."""


def netns_unavailable() -> str:
    """Why this host cannot create network namespaces ('' when it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 `ip` not installed"
    return ""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and r.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def _used_ipv4() -> set[str]:
    """Every IPv4 address configured on this machine's interfaces."""
    out = _ip("-4", "-o", "addr", "show").stdout
    used = set()
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            used.add(parts[parts.index("inet") + 1].split("/")[0])
    return used


def _nsswitch_files_dns(source: Path = Path("/etc/nsswitch.conf")) -> str:
    """This machine's nsswitch.conf with the hosts line replaced by "hosts: files dns"."""
    try:
        lines = source.read_text().splitlines()
    except OSError:
        lines = []
    kept = [x for x in lines if not x.strip().startswith("hosts:")]
    return "\n".join([*kept, "hosts: files dns"]) + "\n"


class SimNetns(Service):
    """A network namespace and the veth pair that joins it to this one."""

    def __init__(self) -> None:
        n = next(_counter)
        pid = os.getpid()
        self.name = f"pa-{pid}-{n}"
        self.host_if = f"vp{pid:x}{n}h"[-15:]
        self.peer_if = f"vp{pid:x}{n}p"[-15:]
        self.host_ip = ""
        self.ns_ip = ""
        self._seed = (pid * 16 + n) % 16384
        self._made_ns = False
        self._made_veth = False

    @property
    def etc_dir(self) -> Path:
        """/etc/netns/<name>: the files `ip netns exec` binds over /etc."""
        return NETNS_ETC / self.name

    def start(self) -> SimNetns:
        """Create namespace and veth pair, address both ends; NetnsError (after cleanup) on failure."""
        reason = netns_unavailable()
        if reason:
            raise NetnsError(reason)
        try:
            _ip("netns", "add", self.name)
            self._made_ns = True
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if)
            self._made_veth = True
            _ip("link", "set", self.peer_if, "netns", self.name)
            self.host_ip, self.ns_ip = self._pick_subnet()
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            _ip("-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.peer_if)
            _ip("-n", self.name, "link", "set", self.peer_if, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.stop()
            raise
        return self

    def _pick_subnet(self) -> tuple[str, str]:
        """A 10.231.x.y/30 none of whose addresses this machine already has."""
        used = _used_ipv4()
        for i in range(16384):
            k = (self._seed + i * 7919) % 16384
            base = f"10.231.{k >> 6}.{(k & 63) * 4}"
            a, b, c, d = (int(x) for x in base.split("."))
            block = {f"{a}.{b}.{c}.{d + j}" for j in range(4)}
            if not block & used:
                return f"{a}.{b}.{c}.{d + 1}", f"{a}.{b}.{c}.{d + 2}"
        raise NetnsError("no free /30 in 10.231.0.0/16")

    def write_etc(self, nameserver: str) -> None:
        """resolv.conf (only `nameserver`), hosts (only localhost), nsswitch.conf (files dns)."""
        self.etc_dir.mkdir(parents=True, exist_ok=True)
        (self.etc_dir / "resolv.conf").write_text(
            f"nameserver {nameserver}\noptions timeout:1 attempts:1\n"
        )
        (self.etc_dir / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
        (self.etc_dir / "nsswitch.conf").write_text(_nsswitch_files_dns())

    def exec_argv(self, argv: list[str]) -> list[str]:
        """argv run inside the namespace (with the /etc/netns files bound over /etc)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def stop(self) -> None:
        """Remove veth, namespace and /etc/netns/<name> (safe to call twice)."""
        if self._made_veth:
            _ip("link", "del", self.host_if, check=False)
            self._made_veth = False
        if self._made_ns:
            _ip("netns", "del", self.name, check=False)
            self._made_ns = False
        shutil.rmtree(self.etc_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            NETNS_ETC.rmdir()  # only when no other namespace has files there
