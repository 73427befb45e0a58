"""Real links and a real resolver in a network namespace we create (root only).

A veth pair joins this namespace and a fresh one; the driver reads the
host-side end from the real /sys while the peer goes up and down. The DNS
tests run the driver inside the namespace with its own resolv.conf pointing
at 127.0.0.1 there, so no query ever leaves the namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.network import read_link
from drivers.roots import Roots

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.root


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


@pytest.fixture
def netns() -> Iterator[tuple[str, str, str]]:
    """(namespace, host-side veth, peer veth in the namespace); everything removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 `ip` not installed")
    tag = uuid.uuid4().hex[:6]
    ns, host_if, peer_if = f"pa-{tag}", f"vpa{tag}h", f"vpa{tag}p"
    r = _ip("netns", "add", ns, check=False)
    if r.returncode != 0:
        pytest.skip(f"`ip netns add` failed: {r.stderr.strip()}")
    try:
        r = _ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if, check=False)
        if r.returncode != 0:
            pytest.skip(f"`ip link add type veth` failed: {r.stderr.strip()}")
        _ip("link", "set", peer_if, "netns", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        yield ns, host_if, peer_if
    finally:
        _ip("link", "del", host_if, check=False)
        _ip("netns", "del", ns, check=False)
        shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        try:
            Path("/etc/netns").rmdir()
        except OSError:
            pass


def _wait_link(name: str, want_carrier: bool | None, timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if read_link(Roots(), name).carrier is want_carrier:
            return
        time.sleep(0.02)


def test_veth_carrier_follows_peer(netns: tuple[str, str, str]) -> None:
    """Host veth: up/1 with the peer up, down/0 with the peer down, EINVAL when admin-down."""
    ns, host_if, peer_if = netns
    _ip("link", "set", host_if, "up")
    _ip("-n", ns, "link", "set", peer_if, "up")
    _wait_link(host_if, True)
    link = read_link(Roots(), host_if)
    assert link.exists and link.carrier is True and link.operstate == "up" and link.up
    assert link.admin_up is True

    _ip("-n", ns, "link", "set", peer_if, "down")
    _wait_link(host_if, False)
    link = read_link(Roots(), host_if)
    assert link.carrier is False and link.operstate == "down" and not link.up
    assert link.admin_up is True

    _ip("link", "set", host_if, "down")
    _wait_link(host_if, None)
    link = read_link(Roots(), host_if)
    assert link.carrier is None and link.admin_up is False and not link.up
    assert "carrier: EINVAL" in link.errors


_DNS_SCRIPT = r"""
import json, socket, sys, time
sys.path.insert(0, sys.argv[1])
from drivers.network import resolve
hang = sys.argv[2] == "hang"
if hang:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 53))  # receives queries, never answers
t0 = time.monotonic()
r = resolve("pay.posagent.test", 0.5)
print(json.dumps({"elapsed": time.monotonic() - t0, "kind": r.error_kind, "ok": r.ok}))
"""


def _resolve_in_ns(ns: str, mode: str) -> dict[str, object]:
    d = Path("/etc/netns") / ns
    d.mkdir(parents=True, exist_ok=True)
    (d / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:5 attempts:2\n")
    r = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", _DNS_SCRIPT, str(ROOT), mode],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if r.returncode != 0 and "mount" in r.stderr.lower():
        pytest.skip(f"`ip netns exec` cannot set up the namespace's /etc: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    result: dict[str, object] = json.loads(r.stdout)
    return result


def test_dns_hang_returns_at_the_deadline(netns: tuple[str, str, str]) -> None:
    """A resolver that never answers: resolve() returns `timeout` after 0.5 s, not 10 s."""
    out = _resolve_in_ns(netns[0], "hang")
    assert out["ok"] is False and out["kind"] == "timeout"
    assert isinstance(out["elapsed"], float) and 0.45 <= out["elapsed"] < 2.0


def test_dns_no_server_is_dns_failure(netns: tuple[str, str, str]) -> None:
    """No resolver listening (port unreachable): resolve() reports dns_failure quickly."""
    out = _resolve_in_ns(netns[0], "none")
    assert out["ok"] is False and out["kind"] == "dns_failure"
