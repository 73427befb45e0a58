"""simulator/hosts.py: loopback payment hosts, their certificate, and the fake route/link files."""

from __future__ import annotations

import socket
import ssl
import sys
import time
from pathlib import Path

import pytest

from drivers.network import ErrorKind, probe_host
from simulator.hosts import SimHost, SimNet, SimRoute, make_self_signed_cert

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "linux"


@pytest.mark.skipif(sys.byteorder != "little", reason="fixture captured on little-endian x86")
def test_route_writer_is_byte_exact_with_the_kernel(tmp_path: Path) -> None:
    """Writing the Debian VM's two routes reproduces the captured /proc/net/route byte for byte."""
    SimNet(tmp_path / "sys", tmp_path).set_routes(
        [
            SimRoute("eth0", gateway="192.0.2.1"),
            SimRoute("eth0", destination="192.0.2.0", prefix_len=24),
        ]
    )
    expected = (FIX / "proc_net_route_debian12_vm_bytes_exact.txt").read_bytes()
    assert (tmp_path / "net" / "route").read_bytes() == expected


def test_ipv6_route_line_layout(tmp_path: Path) -> None:
    """The IPv6 default route line has the kernel's ten columns with hex metric and flags."""
    SimNet(tmp_path / "sys", tmp_path).set_routes(
        [SimRoute("eth0", destination="::", gateway="fd00::1", metric=1024)]
    )
    cols = (tmp_path / "net" / "ipv6_route").read_text().split()
    assert cols[0] == "0" * 32 and cols[1] == "00" and cols[4] == "fd" + "0" * 29 + "1"
    assert cols[5] == "00000400" and cols[8] == "00000003" and cols[9] == "eth0"


def test_link_files(tmp_path: Path) -> None:
    """set_link writes operstate/flags/carrier; admin-down drops carrier; remove_link cleans up."""
    sim = SimNet(tmp_path, tmp_path / "proc")
    sim.set_link("eth0", carrier=False)
    d = tmp_path / "class" / "net" / "eth0"
    assert (d / "carrier").read_text() == "0\n" and (d / "operstate").read_text() == "down\n"
    sim.set_link("eth0", admin_up=False)
    assert not (d / "carrier").exists() and (d / "flags").read_text() == "0x1002\n"
    sim.remove_link("eth0")
    assert not d.exists()


def test_certificate_has_names(tmp_path: Path) -> None:
    """The throw-away certificate carries localhost and 127.0.0.1 and loads as a CA."""
    cert = make_self_signed_cert(tmp_path)
    info = ssl._ssl._test_decode_cert(str(cert.cert_path))  # type: ignore[attr-defined]
    assert ("DNS", "localhost") in info["subjectAltName"]
    assert ("IP Address", "127.0.0.1") in info["subjectAltName"]
    ctx = ssl.create_default_context(cafile=str(cert.cert_path))
    assert ctx.cert_store_stats()["x509_ca"] == 1


def test_modes_switch_back_and_forth() -> None:
    """ok → refuse → blackhole → ok on the same port, each seen by a real connect."""
    with SimHost() as h:
        port = h.port
        assert probe_host("127.0.0.1", port, timeout_s=1.0).ok
        h.set_mode("refuse")
        assert probe_host("127.0.0.1", port, timeout_s=1.0).error_kind is ErrorKind.REFUSED
        h.set_mode("blackhole")
        assert probe_host("127.0.0.1", port, timeout_s=0.3).error_kind is ErrorKind.TIMEOUT
        h.set_mode("ok")
        assert h.port == port and probe_host("127.0.0.1", port, timeout_s=1.0).ok


def test_started_refusing_has_a_closed_port() -> None:
    """A host started in refuse mode owns a port number nobody listens on."""
    with SimHost(mode="refuse") as h:
        assert h.port > 0
        assert probe_host("127.0.0.1", h.port, timeout_s=1.0).error_kind is ErrorKind.REFUSED
        h.set_mode("ok")
        assert probe_host("127.0.0.1", h.port, timeout_s=1.0).ok


def test_hang_accepts_but_never_answers() -> None:
    """In hang mode the connection is accepted, but nothing ever comes back."""
    with SimHost(mode="hang", http_status=204) as h:
        with socket.create_connection(("127.0.0.1", h.port), timeout=1.0) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(0.3)
            with pytest.raises(TimeoutError):
                s.recv(10)
        deadline = time.monotonic() + 2
        while h.accepted < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert h.accepted == 1


def test_bad_mode_rejected() -> None:
    """An unknown mode is a ValueError."""
    with pytest.raises(ValueError):
        SimHost(mode="explode")
