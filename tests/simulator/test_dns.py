"""The DNS server twin (real UDP on loopback) and the namespace whose only resolver it is.

Queries are built with struct and sent over a real socket; inside a network
namespace we create (root only) the real glibc getaddrinfo asks the twin,
which listens on the host end of the veth, and nothing else.
"""

from __future__ import annotations

import errno
import json
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.dns import (
    QTYPE_A,
    QTYPE_AAAA,
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    RCODE_SERVFAIL,
    SimDns,
    parse_query,
)
from simulator.netns import NETNS_ETC, SimNetns, netns_unavailable

NAME = "pay.posagent.test"


def query(name: str, qtype: int = QTYPE_A, qid: int = 0x1234) -> bytes:
    """A standard recursive query for name (one question, class IN)."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


def ask(dns: SimDns, data: bytes, timeout_s: float = 1.0) -> bytes | None:
    """Send one datagram to the twin; its reply, or None when none came in timeout_s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout_s)
        s.sendto(data, dns.address)
        try:
            return s.recv(4096)
        except TimeoutError:
            return None


def decode(reply: bytes) -> tuple[int, int, int, list[str]]:
    """(id, rcode, answer count, A addresses) of a reply."""
    qid, flags, qd, an, _ns, _ar = struct.unpack_from("!HHHHHH", reply)
    assert flags & 0x8000 and qd == 1
    pos = 12
    while reply[pos]:
        pos += reply[pos] + 1
    pos += 5
    addrs = []
    for _ in range(an):
        _ptr, rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHHIH", reply, pos)
        pos += 12
        if rtype == QTYPE_A:
            addrs.append(socket.inet_ntoa(reply[pos : pos + rdlen]))
        pos += rdlen
    return qid, flags & 0xF, an, addrs


@pytest.fixture
def dns() -> Iterator[SimDns]:
    with SimDns({NAME: "10.9.8.7"}) as d:
        yield d


def test_answers_a_for_a_known_name(dns: SimDns) -> None:
    """An A query for a configured name gets NOERROR, the query id back and the one address."""
    reply = ask(dns, query("PAY.posagent.test", qid=0xBEEF))
    assert reply is not None
    assert decode(reply) == (0xBEEF, RCODE_NOERROR, 1, ["10.9.8.7"])
    assert dns.queries[-1] == (NAME, QTYPE_A)


def test_aaaa_is_empty_and_unknown_names_are_nxdomain(dns: SimDns) -> None:
    """AAAA for a known name is NOERROR with no answer; any query for an unknown name is NXDOMAIN."""
    reply = ask(dns, query(NAME, QTYPE_AAAA))
    assert reply is not None and decode(reply)[1:] == (RCODE_NOERROR, 0, [])
    reply = ask(dns, query("other.posagent.test"))
    assert reply is not None and decode(reply)[1:] == (RCODE_NXDOMAIN, 0, [])


def test_modes_switch_at_run_time(dns: SimDns) -> None:
    """servfail and nxdomain answer every query so; silent drops them; ok answers again."""
    dns.set_mode("servfail")
    reply = ask(dns, query(NAME))
    assert reply is not None and decode(reply)[1] == RCODE_SERVFAIL
    dns.set_mode("nxdomain")
    reply = ask(dns, query(NAME))
    assert reply is not None and decode(reply)[1] == RCODE_NXDOMAIN
    dns.set_mode("silent")
    assert ask(dns, query(NAME), timeout_s=0.3) is None
    assert dns.dropped == 1
    dns.set_mode("ok")
    reply = ask(dns, query(NAME))
    assert reply is not None and decode(reply)[3] == ["10.9.8.7"]
    with pytest.raises(ValueError, match="mode must be one of"):
        dns.set_mode("sometimes")


def test_garbage_datagrams_are_ignored(dns: SimDns) -> None:
    """Short, response, pointer-laden and multi-question datagrams get no reply; the twin keeps serving."""
    good = query(NAME)
    bad = [
        b"",
        b"\x00" * 5,
        good[:2] + b"\x81\x80" + good[4:],  # a response
        good[:12] + b"\xc0\x0c" + good[-4:],  # compression pointer in the question
        good[:4] + b"\x00\x02" + good[6:],  # two questions announced, one present
        good[:-3],  # truncated type/class
        b"\xff" * 600,
    ]
    for data in bad:
        assert ask(dns, data, timeout_s=0.2) is None
    assert dns.ignored == len(bad)
    reply = ask(dns, good)
    assert reply is not None and decode(reply)[3] == ["10.9.8.7"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_datagram_is_answered_or_ignored_without_error(data: bytes) -> None:
    """answer() never raises: any bytes give a reply that starts with the query id, or None."""
    twin = SimDns({NAME: "10.9.8.7"})
    reply = twin.answer(data)
    if reply is not None:
        assert parse_query(data) is not None and reply[:2] == data[:2]


# --------------------------------------------------------------------------- in a namespace

_CHILD = """
import json, socket, sys
try:
    infos = socket.getaddrinfo(sys.argv[1], 443, socket.AF_INET, socket.SOCK_STREAM)
    print(json.dumps({"ok": sorted({i[4][0] for i in infos})}))
except socket.gaierror as e:
    print(json.dumps({"err": e.errno}))
"""


def _resolve_in(ns: SimNetns, name: str) -> dict[str, object]:
    r = subprocess.run(
        ns.exec_argv([sys.executable, "-c", _CHILD, name]),
        capture_output=True,
        text=True,
        timeout=20,
    )
    if r.returncode != 0 and "mount" in r.stderr.lower():
        pytest.skip(f"`ip netns exec` cannot set up the namespace's /etc: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    out: dict[str, object] = json.loads(r.stdout)
    return out


@pytest.mark.root
def test_getaddrinfo_in_the_namespace_asks_only_the_twin() -> None:
    """In the namespace glibc resolves through the twin on the veth: ok, SERVFAIL, NXDOMAIN, silence."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    ns = SimNetns().start()
    try:
        with SimDns({NAME: ns.host_ip}, host=ns.host_ip, port=53) as twin:
            ns.write_etc(ns.host_ip)
            assert _resolve_in(ns, NAME) == {"ok": [ns.host_ip]}
            assert (NAME, QTYPE_A) in twin.queries
            twin.set_mode("servfail")
            assert _resolve_in(ns, NAME) == {"err": socket.EAI_AGAIN}
            twin.set_mode("nxdomain")
            assert _resolve_in(ns, NAME) == {"err": socket.EAI_NONAME}
            twin.set_mode("silent")
            assert _resolve_in(ns, NAME) == {"err": socket.EAI_AGAIN}
            assert twin.dropped >= 1
            twin.set_mode("ok")
            assert _resolve_in(ns, "localhost") == {"ok": ["127.0.0.1"]}
            assert _resolve_in(ns, "elsewhere.example") == {"err": socket.EAI_NONAME}
            resolv = (ns.etc_dir / "resolv.conf").read_text()
            assert resolv.splitlines()[0] == f"nameserver {ns.host_ip}"
    finally:
        ns.stop()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert ns.name not in names.split()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert ns.host_if not in links
    assert not (NETNS_ETC / ns.name).exists()


@pytest.mark.root
def test_namespace_reaches_only_the_host_end() -> None:
    """From inside, the host end of the veth answers TCP; there is no route anywhere else."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    with SimNetns() as ns:
        routes = subprocess.run(
            ["ip", "-n", ns.name, "-4", "route", "show"], capture_output=True, text=True
        ).stdout
        assert "default" not in routes
        with socket.socket() as srv:
            srv.bind((ns.host_ip, 0))
            srv.listen(1)
            probe = (
                "import socket,sys\n"
                "socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()\n"
                "try:\n"
                "    socket.create_connection(('192.0.2.1', 9), timeout=2)\n"
                "except OSError as e:\n"
                "    print(e.errno)\n"
            )
            r = subprocess.run(
                ns.exec_argv([sys.executable, "-c", probe, ns.host_ip, str(srv.getsockname()[1])]),
                capture_output=True,
                text=True,
                timeout=20,
            )
        assert r.returncode == 0, r.stderr
        assert int(r.stdout.strip()) == errno.ENETUNREACH
    assert not Path(NETNS_ETC / ns.name).exists()
