"""drivers/network.py: routes, links, Android connectivity on real captures; probes on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.network import (
    ErrorKind,
    check_http_204,
    default_routes,
    parse_dumpsys_connectivity,
    parse_host_port,
    parse_ip_route,
    parse_proc_net_ipv6_route,
    parse_proc_net_route,
    parse_route_n,
    probe_host,
    read_link,
    read_routes,
    resolve,
)
from drivers.roots import Roots
from simulator.hosts import SimCert, SimHost, SimNet, SimRoute, make_self_signed_cert

FIX = Path(__file__).resolve().parents[1] / "fixtures"
LIN = FIX / "linux"
AND = FIX / "android"


# --------------------------------------------------------------------------- routes


def test_proc_net_route_byte_exact_debian() -> None:
    """The byte-exact Debian table (tabs, 127-column padding) gives one default via 192.0.2.1."""
    routes = parse_proc_net_route(
        (LIN / "proc_net_route_debian12_vm_bytes_exact.txt").read_text(), byteorder="little"
    )
    assert len(routes) == 2
    d = default_routes(routes)
    assert [(r.gateway, r.interface, r.metric) for r in d] == [("192.0.2.1", "eth0", 0)]
    net = routes[1]
    assert (net.destination, net.prefix_len, net.gateway) == ("192.0.2.0", 24, None)


def test_proc_net_route_tabs_expanded() -> None:
    """A terminal copy with tabs turned into spaces still parses (default via 172.20.64.1)."""
    routes = parse_proc_net_route(
        (LIN / "proc_net_route_eth0_default_only_tabs_expanded.txt").read_text(),
        byteorder="little",
    )
    assert [(r.gateway, r.interface) for r in default_routes(routes)] == [("172.20.64.1", "eth0")]


def test_proc_net_ipv6_route_skips_unreachable_default() -> None:
    """IPv6: default via fd00::1 metric 1024; the kernel's reject default on lo is not usable."""
    routes = parse_proc_net_ipv6_route(
        (LIN / "proc_net_ipv6_route_debian12_vm_bytes_exact.txt").read_text()
    )
    assert len(routes) == 8
    assert any(r.prefix_len == 0 and r.rejected and r.interface == "lo" for r in routes)
    d = default_routes(routes)
    assert [(r.gateway, r.interface, r.metric) for r in d] == [("fd00::1", "eth0", 1024)]


def test_two_default_routes_ordered_by_metric() -> None:
    """`ip route` and `route -n` from the same host: wired metric 100 before Wi-Fi 600."""
    for routes in (
        parse_ip_route((LIN / "ip_route_fedora_two_default_routes.txt").read_text()),
        parse_route_n((LIN / "route_n_fedora_two_default_routes.txt").read_text()),
    ):
        d = default_routes(routes)
        assert [(r.interface, r.metric) for r in d] == [("enp68s0", 100), ("wlp69s0", 600)]
        assert all(r.gateway == "192.168.0.1" for r in d)


def test_ip_route_linkdown_and_ipv6() -> None:
    """`linkdown` is kept; `ip -6 route` defaults via link-local and ULA gateways are found."""
    fedora = parse_ip_route((LIN / "ip_route_fedora_two_default_routes.txt").read_text())
    assert [r.interface for r in fedora if r.linkdown] == ["virbr0"]
    ra = default_routes(parse_ip_route((LIN / "ip_-6_route_laptop_wifi_ra.txt").read_text()))
    assert [(r.family, r.gateway, r.metric) for r in ra] == [(6, "fe80::8af7:c7ff:fe14:5a06", 600)]
    vm = default_routes(parse_ip_route((LIN / "ip_-6_route_debian12_vm.txt").read_text()))
    assert [(r.gateway, r.metric) for r in vm] == [("fd00::1", 1024)]
    v4 = default_routes(parse_ip_route((LIN / "ip_route_debian12_vm.txt").read_text()))
    assert [(r.family, r.gateway) for r in v4] == [(4, "192.0.2.1")]


def test_ip_route_rejects_and_multipath() -> None:
    """`unreachable default` is not a usable default; multipath nexthops become routes."""
    text = (
        "unreachable default metric 4278198272\n"
        "default proto static metric 50\n"
        "\tnexthop via 10.0.0.1 dev eth0 weight 1\n"
        "\tnexthop via 10.0.1.1 dev eth1 weight 1\n"
    )
    d = default_routes(parse_ip_route(text))
    assert [(r.gateway, r.interface, r.metric) for r in d] == [
        ("10.0.0.1", "eth0", 50),
        ("10.0.1.1", "eth1", 50),
    ]


def test_read_routes_from_fake_proc(tmp_path: Path) -> None:
    """read_routes reads the fixture files placed under a fake <proc>/net."""
    net = tmp_path / "net"
    net.mkdir()
    (net / "route").write_bytes((LIN / "proc_net_route_debian12_vm_bytes_exact.txt").read_bytes())
    (net / "ipv6_route").write_bytes(
        (LIN / "proc_net_ipv6_route_debian12_vm_bytes_exact.txt").read_bytes()
    )
    table = read_routes(Roots(proc=tmp_path))
    assert table.errors == () and table.has_default
    assert table.default_v6 is not None and table.default_v6.gateway == "fd00::1"
    assert table.default_v4 is not None and table.default_v4.interface == "eth0"


def test_read_routes_missing_files(tmp_path: Path) -> None:
    """Missing route files give an empty table and named errors, not an exception."""
    table = read_routes(Roots(proc=tmp_path))
    assert not table.has_default and table.errors == ("route: missing", "ipv6_route: missing")


def test_read_routes_real_proc() -> None:
    """This machine's own /proc/net/route parses; its row count matches the file."""
    table = read_routes(Roots())
    rows = Path("/proc/net/route").read_text().splitlines()[1:]
    assert len(table.ipv4) == len([r for r in rows if r.strip()])


# --------------------------------------------------------------------------- links


def test_read_link_fake_tree(tmp_path: Path) -> None:
    """carrier/operstate/flags from a simulated tree: up, then cable out, then admin down."""
    sim = SimNet(tmp_path, tmp_path / "proc")
    roots = Roots(sys=tmp_path)
    sim.set_link("eth0", carrier=True)
    link = read_link(roots, "eth0")
    assert link.up and link.carrier is True and link.admin_up is True and link.errors == ()
    sim.set_link("eth0", carrier=False)
    link = read_link(roots, "eth0")
    assert not link.up and link.carrier is False and link.operstate == "down"
    sim.set_link("eth0", admin_up=False)
    link = read_link(roots, "eth0")
    assert link.carrier is None and link.admin_up is False and not link.up


def test_read_link_missing_and_invalid(tmp_path: Path) -> None:
    """An absent interface is exists=False; a name with a slash is refused, not joined."""
    assert read_link(Roots(sys=tmp_path), "eth9").exists is False
    bad = read_link(Roots(sys=tmp_path), "../../etc")
    assert bad.exists is False and bad.errors == ("invalid interface name",)


def test_read_link_unreadable_carrier(tmp_path: Path) -> None:
    """A carrier that cannot be read (EISDIR here) is an error entry and carrier None."""
    d = tmp_path / "class" / "net" / "eth0"
    d.mkdir(parents=True)
    (d / "operstate").write_text("up\n")
    (d / "carrier").mkdir()
    link = read_link(Roots(sys=tmp_path), "eth0")
    assert link.carrier is None and "carrier: EISDIR" in link.errors and not link.up


def test_read_link_real_loopback() -> None:
    """The real `lo` reads with carrier 1 and operstate "unknown" (loopback has no PHY)."""
    link = read_link(Roots(), "lo")
    assert link.exists and link.carrier is True and link.operstate == "unknown"


# --------------------------------------------------------------------------- DNS


def test_resolve_localhost_and_numeric() -> None:
    """localhost (from /etc/hosts) and a numeric address resolve without the network."""
    r = resolve("localhost", 2.0)
    assert r.ok and ("127.0.0.1" in r.addresses or "::1" in r.addresses)
    n = resolve("127.0.0.1", 2.0)
    assert n.ok and n.addresses == ("127.0.0.1",)


def test_resolve_invalid_name_is_dns_failure() -> None:
    """A name IDNA cannot encode fails as dns_failure at once (no query is sent)."""
    r = resolve("a" * 300 + ".test", 2.0)
    assert not r.ok and r.error_kind is ErrorKind.DNS_FAILURE


def test_parse_host_port() -> None:
    """host:port, [v6]:port and a bare host are split as payment_hosts entries need."""
    assert parse_host_port("pay.example.com:8443") == ("pay.example.com", 8443)
    assert parse_host_port("[::1]:443") == ("::1", 443)
    assert parse_host_port("pay.example.com") == ("pay.example.com", 443)


# --------------------------------------------------------------------------- probes on loopback


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> SimCert:
    return make_self_signed_cert(tmp_path_factory.mktemp("cert"))


@pytest.fixture
def host() -> Iterator[SimHost]:
    with SimHost() as h:
        yield h


def test_tcp_ok(host: SimHost) -> None:
    """A listening loopback host: connect succeeds and the time is measured."""
    r = probe_host(host.host, host.port, timeout_s=2.0)
    assert r.ok and r.address == "127.0.0.1" and r.connect_s is not None and r.error_kind is None


def test_tcp_refused(host: SimHost) -> None:
    """A closed port is `refused` at the connect stage."""
    host.set_mode("refuse")
    r = probe_host(host.host, host.port, timeout_s=2.0)
    assert not r.ok and r.error_kind is ErrorKind.REFUSED and r.stage == "connect"


def test_tcp_blackhole_times_out_within_deadline(host: SimHost) -> None:
    """Dropped SYNs give `timeout` at the connect stage, returned within the deadline."""
    host.set_mode("blackhole")
    t0 = time.monotonic()
    r = probe_host(host.host, host.port, timeout_s=0.4)
    elapsed = time.monotonic() - t0
    assert not r.ok and r.error_kind is ErrorKind.TIMEOUT and r.stage == "connect"
    assert elapsed < 3.0
    host.set_mode("ok")
    assert probe_host(host.host, host.port, timeout_s=2.0).ok


def test_tls_handshake_with_ca(cert: SimCert) -> None:
    """TLS against the sim host verifies with its CA file, for the name and the IP."""
    with SimHost(cert=cert) as h:
        for name in ("localhost", "127.0.0.1"):
            r = probe_host(name, h.port, timeout_s=3.0, tls=True, ca_file=str(cert.cert_path))
            assert r.ok, r.error
            assert r.tls_version is not None and r.tls_version.startswith("TLS")
            assert r.tls_s is not None


def test_tls_untrusted_is_tls_failure(cert: SimCert) -> None:
    """Without the CA (system store only) the self-signed host fails as tls_failure."""
    with SimHost(cert=cert) as h:
        r = probe_host("127.0.0.1", h.port, timeout_s=3.0, tls=True)
        assert not r.ok and r.error_kind is ErrorKind.TLS_FAILURE and r.stage == "tls"
        r2 = probe_host("127.0.0.1", h.port, timeout_s=3.0, tls=True, verify=False)
        assert r2.ok


def test_tls_wrong_name_is_tls_failure(cert: SimCert) -> None:
    """A server_hostname not in the certificate fails verification."""
    with SimHost(cert=cert) as h:
        r = probe_host(
            "127.0.0.1",
            h.port,
            timeout_s=3.0,
            tls=True,
            ca_file=str(cert.cert_path),
            server_hostname="pay.example.com",
        )
        assert not r.ok and r.error_kind is ErrorKind.TLS_FAILURE


def test_tls_hang_times_out_at_tls_stage(cert: SimCert) -> None:
    """A host that accepts but never handshakes: connect ok, then timeout at the tls stage."""
    with SimHost(cert=cert, mode="hang") as h:
        t0 = time.monotonic()
        r = probe_host("127.0.0.1", h.port, timeout_s=0.5, tls=True, ca_file=str(cert.cert_path))
        assert time.monotonic() - t0 < 3.0
        assert not r.ok and r.error_kind is ErrorKind.TIMEOUT and r.stage == "tls"
        assert r.connect_s is not None


def test_tls_slow_host_measured(cert: SimCert) -> None:
    """A slow host (0.3 s before the handshake) succeeds, and the handshake time shows it."""
    with SimHost(cert=cert, mode="slow", delay_s=0.3) as h:
        r = probe_host("127.0.0.1", h.port, timeout_s=3.0, tls=True, ca_file=str(cert.cert_path))
        assert r.ok and r.tls_s is not None and r.tls_s >= 0.25


def test_http_204_and_portal() -> None:
    """An HTTP 204 answer is ok; a 302 is a captive portal; a silent host is http timeout."""
    with SimHost(http_status=204) as h:
        r = check_http_204(f"http://127.0.0.1:{h.port}/generate_204", timeout_s=2.0)
        assert r.ok and r.status == 204 and not r.captive
    with SimHost(http_status=302) as h:
        r = check_http_204(f"http://127.0.0.1:{h.port}/generate_204", timeout_s=2.0)
        assert not r.ok and r.captive and r.status == 302
    with SimHost(mode="hang") as h:
        r = check_http_204(f"http://127.0.0.1:{h.port}/", timeout_s=0.4)
        assert r.error_kind is ErrorKind.TIMEOUT and r.stage == "http"


def test_https_204(cert: SimCert) -> None:
    """The 204 check over TLS verifies with the CA file."""
    with SimHost(cert=cert, http_status=204) as h:
        r = check_http_204(
            f"https://localhost:{h.port}/gen_204", timeout_s=3.0, ca_file=str(cert.cert_path)
        )
        assert r.ok, r.error


def test_http_check_bad_url() -> None:
    """A non-http URL is an error result."""
    r = check_http_204("ftp://127.0.0.1/", timeout_s=1.0)
    assert not r.ok and r.error_kind is ErrorKind.ERROR


# --------------------------------------------------------------------------- Android connectivity


def test_connectivity_legacy_lte() -> None:
    """2019 legacy format: active 101 is MOBILE/LTE on rmnet_data0, connected and validated."""
    c = parse_dumpsys_connectivity(
        (AND / "dumpsys_connectivity_lte_legacy_format_2019.txt").read_text()
    )
    assert c.active_network_id == 101 and c.connected is True
    d = c.default
    assert d is not None
    assert (d.type, d.subtype, d.state, d.interface) == (
        "MOBILE",
        "LTE",
        "CONNECTED",
        "rmnet_data0",
    )
    assert d.transports == ("CELLULAR",) and d.validated


def test_connectivity_rk3588_ethernet() -> None:
    """Android 12 format: active 101 is Ethernet on eth1, connected and validated."""
    c = parse_dumpsys_connectivity((AND / "dumpsys_connectivity_rk3588_ethernet.txt").read_text())
    d = c.default
    assert d is not None and c.connected is True
    assert (d.type, d.state, d.interface, d.transports) == (
        "ETHERNET",
        "CONNECTED",
        "eth1",
        ("ETHERNET",),
    )
    assert d.validated


def test_connectivity_android13_top_part_unknown_details() -> None:
    """Android 13 top part: active network 231 known, its details cut off → connected None."""
    c = parse_dumpsys_connectivity(
        (AND / "dumpsys_connectivity_android13_top_part.txt").read_text()
    )
    assert c.recognized and c.active_network_id == 231
    assert c.default is None and c.connected is None and c.networks == ()


def test_connectivity_no_default_network() -> None:
    """`Active default network: none` means not connected."""
    c = parse_dumpsys_connectivity("Active default network: none\n\nCurrent Networks:\n")
    assert c.recognized and c.active_network_id is None and c.connected is False


# --------------------------------------------------------------------------- fuzz


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_fuzz_route_parsers(text: str) -> None:
    """Every route parser accepts any text without an exception."""
    for routes in (
        parse_proc_net_route(text),
        parse_proc_net_ipv6_route(text),
        parse_ip_route(text),
        parse_route_n(text),
    ):
        default_routes(routes)


@settings(max_examples=200, deadline=None)
@given(st.binary())
def test_fuzz_route_parsers_bytes(raw: bytes) -> None:
    """Any bytes decoded leniently parse as routes without an exception."""
    text = raw.decode("ascii", "replace")
    assert isinstance(parse_proc_net_route(text) + parse_proc_net_ipv6_route(text), list)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["0", "00000000", "0003", "eth0", "\t", " ", "FFFFFFFF", "default", "via", "dev", "/"]
        )
        | st.text(max_size=8),
        max_size=40,
    )
)
def test_fuzz_route_parsers_tokens(tokens: list[str]) -> None:
    """Route-looking token soups parse without an exception."""
    text = " ".join(tokens).replace(" / ", "\n")
    parse_proc_net_route(text)
    parse_ip_route(text)
    parse_route_n(text)
    parse_proc_net_ipv6_route(text)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_fuzz_connectivity(text: str) -> None:
    """Any text parses as dumpsys connectivity without an exception."""
    c = parse_dumpsys_connectivity(text)
    assert c.connected in (True, False, None)


@settings(max_examples=100, deadline=None)
@given(st.binary())
def test_fuzz_connectivity_bytes(raw: bytes) -> None:
    """Any bytes decoded leniently parse as dumpsys connectivity without an exception."""
    assert isinstance(parse_dumpsys_connectivity(raw.decode("utf-8", "replace")).networks, tuple)


def test_sim_routes_feed_read_routes(tmp_path: Path) -> None:
    """Routes written by the simulator are read back by the driver, both families."""
    sim = SimNet(tmp_path / "sys", tmp_path)
    sim.set_routes(
        [
            SimRoute("eth0", gateway="192.0.2.1", metric=100),
            SimRoute("wlan0", gateway="192.0.2.254", metric=600),
            SimRoute("eth0", destination="192.0.2.0", prefix_len=24),
            SimRoute("eth0", destination="::", gateway="fd00::1", metric=1024),
        ]
    )
    t = read_routes(Roots(proc=tmp_path))
    assert t.default_v4 is not None and t.default_v4.gateway == "192.0.2.1"
    assert [r.interface for r in default_routes(list(t.ipv4))] == ["eth0", "wlan0"]
    assert t.default_v6 is not None and t.default_v6.gateway == "fd00::1"
    sim.set_routes([SimRoute("eth0", destination="192.0.2.0", prefix_len=24)])
    assert not read_routes(Roots(proc=tmp_path)).has_default
