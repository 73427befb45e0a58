"""Network monitors on fake sys/proc trees, loopback payment hosts, the fake adb and a real veth."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.core.config import NetworkConfig
from agent.core.model import Reading
from agent.monitors.network import (
    ConnectivityTracker,
    LinkMonitor,
    PaymentMonitor,
    collector_target,
    subscribe_connectivity,
)
from drivers.roots import Roots
from drivers.shell import Shell
from simulator.fake_adb import FakeAdb
from simulator.hosts import SimHost, SimNet, SimRoute


def _by_source(readings: list[Reading]) -> dict[str, dict[str, Any]]:
    return {r.source: r.values for r in readings}


@pytest.fixture
def net(tmp_path: Path) -> tuple[SimNet, Roots]:
    sim = SimNet(tmp_path / "sys", tmp_path / "proc")
    sim.set_link("eth0", carrier=True)
    sim.set_routes([SimRoute("eth0", gateway="192.0.2.1")])
    return sim, Roots(sys=tmp_path / "sys", proc=tmp_path / "proc")


def test_link_and_route_on_fake_trees(net: tuple[SimNet, Roots]) -> None:
    """Up link and default route; then carrier lost, admin down, unplugged, no route."""
    sim, roots = net
    mon = LinkMonitor(NetworkConfig(interfaces=["eth0", "wlan0"]), roots)
    v = _by_source(mon.poll())
    assert v["network:eth0"]["carrier"] is True and v["network:eth0"]["operstate"] == "up"
    assert v["network:wlan0"]["operstate"] == "notpresent"
    assert v["network"]["default_route"] is True
    assert v["network"]["default_gateway"] == "192.0.2.1"
    sim.set_link("eth0", carrier=False)
    v = _by_source(mon.poll())
    assert v["network:eth0"]["carrier"] is False and v["network:eth0"]["operstate"] == "down"
    sim.set_link("eth0", admin_up=False)
    v = _by_source(mon.poll())
    assert v["network:eth0"]["carrier"] is None and v["network:eth0"]["admin_up"] is False
    sim.remove_link("eth0")
    sim.set_routes([SimRoute("eth0", "10.0.0.0", 8)])
    v = _by_source(mon.poll())
    assert v["network:eth0"]["exists"] is False
    assert v["network"]["default_route"] is False


def test_ipv6_default_route_counts(net: tuple[SimNet, Roots]) -> None:
    """Only an IPv6 default route: default_route is still True."""
    sim, roots = net
    sim.set_routes([SimRoute("eth0", "::", 0, gateway="fe80::1")])
    v = _by_source(LinkMonitor(NetworkConfig(interfaces=[]), roots).poll())
    assert v["network"]["default_route"] is True


def test_missing_route_tables_are_unknown(tmp_path: Path) -> None:
    """No <proc>/net/route nor ipv6_route: default_route is None, not False."""
    v = _by_source(LinkMonitor(NetworkConfig(interfaces=[]), Roots(proc=tmp_path)).poll())
    assert v["network"]["default_route"] is None and len(v["network"]["errors"]) == 2


def _payment(host: SimHost, **kw: Any) -> dict[str, Any]:
    cfg = NetworkConfig(payment_hosts=[host.address], connect_timeout_s=0.3, **kw)
    (r,) = PaymentMonitor(cfg).poll()
    assert r.source == f"payment:{host.address}"
    return r.values


def test_payment_host_modes() -> None:
    """ok, refuse, blackhole (timeout) and hang (connect fine) on a loopback host."""
    with SimHost() as host:
        v = _payment(host)
        assert (v["dns_ok"], v["connect_ok"], v["tls_ok"]) == (True, True, None)
        assert isinstance(v["connect_ms"], float) and v["error"] == ""
        host.set_mode("refuse")
        v = _payment(host)
        assert v["connect_ok"] is False and v["error_kind"] == "refused"
        host.set_mode("blackhole")
        t0 = time.monotonic()
        v = _payment(host)
        assert v["connect_ok"] is False and v["error_kind"] == "timeout"
        assert time.monotonic() - t0 < 1.5
        host.set_mode("hang")
        assert _payment(host)["connect_ok"] is True


def test_payment_tls_handshake_and_slow_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS: a verified handshake is tls_ok; a slow handshake shows in connect_ms; untrusted fails."""
    from simulator.hosts import make_self_signed_cert

    cert = make_self_signed_cert(tmp_path)
    with SimHost(cert=cert) as host:
        v = _payment(host, tls=True)
        assert v["tls_ok"] is False and v["connect_ok"] is True  # not in the trust store
        monkeypatch.setenv("SSL_CERT_FILE", str(cert.cert_path))
        v = _payment(host, tls=True)
        assert v["tls_ok"] is True and v["connect_ok"] is True
        host.set_mode("slow", delay_s=0.15)
        v = _payment(host, tls=True)
        assert v["tls_ok"] is True and v["connect_ms"] >= 150


def test_unresolvable_payment_host_is_dns_failure() -> None:
    """A name that cannot resolve gives dns_ok False and leaves connect_ok unknown."""
    cfg = NetworkConfig(payment_hosts=["pay.invalid:443"], dns_timeout_s=0.5)
    (r,) = PaymentMonitor(cfg).poll()
    assert r.values["dns_ok"] is False and r.values["connect_ok"] is None


def test_several_hosts_are_probed_in_parallel() -> None:
    """Two blackholed hosts cost one connect timeout, not two."""
    with SimHost(mode="blackhole") as a, SimHost(mode="blackhole") as b:
        cfg = NetworkConfig(payment_hosts=[a.address, b.address], connect_timeout_s=0.5)
        t0 = time.monotonic()
        readings = PaymentMonitor(cfg).poll()
        assert time.monotonic() - t0 < 0.95
        assert [r.values["connect_ok"] for r in readings] == [False, False]


def test_connectivity_hook_fires_on_changes(net: tuple[SimNet, Roots]) -> None:
    """Subscribers hear down when the route goes and up when host and route come back."""
    sim, roots = net
    heard: list[bool] = []
    unsubscribe = subscribe_connectivity(heard.append)
    try:
        with SimHost() as host:
            cfg = NetworkConfig(interfaces=["eth0"], payment_hosts=[host.address])
            tracker = ConnectivityTracker()
            link = LinkMonitor(cfg, roots, tracker=tracker)
            pay = PaymentMonitor(cfg, tracker=tracker)
            link.poll()
            pay.poll()
            sim.set_routes([])
            link.poll()
            host.set_mode("refuse")
            pay.poll()
            sim.set_routes([SimRoute("eth0", gateway="192.0.2.1")])
            link.poll()
            host.set_mode("ok")
            pay.poll()
            pay.poll()
    finally:
        unsubscribe()
    assert heard == [True, False, True]
    subscribe_connectivity(heard.append)()  # unsubscribed at once: nothing more is heard
    ConnectivityTracker().update(default_route=True)
    assert heard == [True, False, True]


def test_collector_probed_only_without_payment_hosts() -> None:
    """No payment host: the upload endpoint's host is probed for connectivity, no reading."""
    assert collector_target("https://c.example.com") == ("c.example.com", 443)
    assert collector_target("http://c.example.com:8080/x") == ("c.example.com", 8080)
    assert collector_target("") is None
    seen: list[bool] = []
    tracker = ConnectivityTracker(seen.append)
    with SimHost() as host:
        mon = PaymentMonitor(
            NetworkConfig(payment_hosts=[]), ("127.0.0.1", host.port), tracker=tracker
        )
        assert mon.poll() == []
    assert seen == [True]


def test_android_links_from_dumpsys_connectivity(tmp_path: Path) -> None:
    """Target adb: eth0 carries the default network; disconnected or none reads down."""
    fake = FakeAdb(tmp_path)
    shell = Shell(mode="adb", adb_serial=fake.serial, adb_path=str(fake.adb_path))
    mon = LinkMonitor(NetworkConfig(interfaces=["eth0", "wlan0"]), Roots(), shell)
    v = _by_source(mon.poll())
    assert v["network:eth0"]["carrier"] is True and v["network:eth0"]["operstate"] == "up"
    assert v["network:wlan0"]["operstate"] == "down"
    assert v["network"]["default_route"] is True
    fake.set_network(connected=False)
    v = _by_source(mon.poll())
    assert v["network:eth0"]["carrier"] is False
    fake.set_network(id=None)
    v = _by_source(mon.poll())
    assert v["network"]["default_route"] is False and v["network:eth0"]["operstate"] == "down"


@pytest.fixture
def veth() -> Iterator[tuple[str, str, str]]:
    """A veth pair with its peer in a fresh namespace (root only)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 `ip` not installed")
    tag = uuid.uuid4().hex[:6]
    ns, host_if, peer_if = f"pam-{tag}", f"vpm{tag}h", f"vpm{tag}p"

    def ip(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)

    if ip("netns", "add", ns).returncode != 0:
        pytest.skip("`ip netns add` failed")
    try:
        if ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if).returncode != 0:
            pytest.skip("`ip link add type veth` failed")
        ip("link", "set", peer_if, "netns", ns)
        ip("link", "set", host_if, "up")
        yield ns, host_if, peer_if
    finally:
        ip("link", "del", host_if)
        ip("netns", "del", ns)


def test_real_veth_link(veth: tuple[str, str, str]) -> None:
    """The link monitor on the real /sys follows the veth peer going up and down."""
    ns, host_if, peer_if = veth
    mon = LinkMonitor(NetworkConfig(interfaces=[host_if]), Roots())

    def wait_carrier(want: bool) -> dict[str, Any]:
        # the kernel sets operstate a moment after the carrier: wait for both (a busy
        # machine may take seconds)
        deadline = time.monotonic() + 30
        while True:
            v = _by_source(mon.poll())[f"network:{host_if}"]
            settled = (v["operstate"] == "up") is want
            if (v["carrier"] is want and settled) or time.monotonic() > deadline:
                return v
            time.sleep(0.02)

    subprocess.run(["ip", "-n", ns, "link", "set", peer_if, "up"], check=True)
    v = wait_carrier(True)
    assert v["carrier"] is True and v["operstate"] == "up"
    subprocess.run(["ip", "-n", ns, "link", "set", peer_if, "down"], check=True)
    v = wait_carrier(False)
    assert v["carrier"] is False and v["operstate"] in ("down", "lowerlayerdown")


def test_no_interfaces_configured_watches_every_uplink(net: tuple[SimNet, Roots]) -> None:
    """interfaces = []: the interface carrying the default route is watched, and stays watched
    when its carrier and (as under DHCP) its route go; one that never had a route is not."""
    sim, roots = net
    sim.set_link("wlan0", carrier=True)
    mon = LinkMonitor(NetworkConfig(interfaces=[]), roots)
    v = _by_source(mon.poll())
    assert set(v) == {"network", "network:eth0"}
    assert v["network:eth0"]["operstate"] == "up"
    sim.set_link("eth0", carrier=False)
    sim.set_routes([])
    v = _by_source(mon.poll())
    assert v["network:eth0"]["carrier"] is False and v["network"]["default_route"] is False
    sim.set_routes([SimRoute("wlan0", gateway="192.0.2.9")])
    v = _by_source(mon.poll())
    assert set(v) == {"network", "network:eth0", "network:wlan0"}
    assert v["network:wlan0"]["operstate"] == "up"
