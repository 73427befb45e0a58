"""A DNS server twin: UDP, answers A queries for the names it is given, switchable failure modes.

`SimDns(records={"pay.posagent.test": "10.231.0.1"}, host=..., port=53).start()`
answers on UDP with the stdlib only (socket + struct, one thread):
- mode "ok": A for a known name -> one answer (TTL 0); AAAA or any other
  type for a known name -> NOERROR with no answer; unknown name -> NXDOMAIN;
- mode "servfail": every query -> SERVFAIL;
- mode "nxdomain": every query -> NXDOMAIN;
- mode "silent": queries are read and dropped (the resolver times out).
`set_mode()` switches at run time. Datagrams that are not one well-formed
query (responses, truncated headers, compression pointers in the question,
several questions, garbage) are counted in `ignored` and never answered.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from dataclasses import dataclass

from simulator.service import Service

MODES = ("ok", "servfail", "nxdomain", "silent")
QTYPE_A = 1
QTYPE_AAAA = 28
QCLASS_IN = 1
RCODE_NOERROR, RCODE_SERVFAIL, RCODE_NXDOMAIN = 0, 2, 3
_HEADER = struct.Struct("!HHHHHH")


@dataclass(frozen=True)
class DnsQuery:
    """The parts of a query the twin answers from."""

    qid: int
    flags: int
    name: str  # lower case, no trailing dot
    qtype: int
    qclass: int
    question: bytes  # the question section as received (echoed in the answer)


def parse_query(data: bytes) -> DnsQuery | None:
    """One standard query with exactly one question, or None for anything else."""
    if len(data) < _HEADER.size:
        return None
    qid, flags, qdcount, ancount, nscount, _arcount = _HEADER.unpack_from(data)
    if flags & 0x8000 or (flags >> 11) & 0xF != 0 or qdcount != 1 or ancount or nscount:
        return None  # a response, not a QUERY opcode, or not one plain question
    pos = _HEADER.size
    labels: list[str] = []
    while True:
        if pos >= len(data):
            return None
        length = data[pos]
        pos += 1
        if length == 0:
            break
        if length & 0xC0:  # compression pointer or reserved label type: not in a query
            return None
        label = data[pos : pos + length]
        if len(label) != length:
            return None
        labels.append(label.decode("ascii", "replace").lower())
        pos += length
    if pos + 4 > len(data) or sum(len(x) + 1 for x in labels) > 255:
        return None
    qtype, qclass = struct.unpack_from("!HH", data, pos)
    pos += 4
    return DnsQuery(qid, flags, ".".join(labels), qtype, qclass, data[_HEADER.size : pos])


def build_response(q: DnsQuery, rcode: int, address: str | None = None) -> bytes:
    """The answer to q: rcode, and one A record (TTL 0) when address is given."""
    flags = 0x8000 | 0x0400 | (q.flags & 0x0100) | 0x0080 | (rcode & 0xF)
    answers = b""
    if address is not None:
        rdata = socket.inet_aton(address)
        answers = struct.pack("!HHHIH", 0xC00C, QTYPE_A, QCLASS_IN, 0, len(rdata)) + rdata
    head = _HEADER.pack(q.qid, flags, 1, 1 if answers else 0, 0, 0)
    return head + q.question + answers


class SimDns(Service):
    """A UDP DNS server on host:port answering from `records` according to `mode`."""

    def __init__(
        self,
        records: dict[str, str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        mode: str = "ok",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.records = {_norm(k): v for k, v in (records or {}).items()}
        for ip in self.records.values():
            socket.inet_aton(ip)  # OSError now rather than at the first query
        self.host = host
        self.port = port
        self.mode = mode
        self.answered = 0
        self.dropped = 0
        self.ignored = 0
        self.queries: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) it listens on."""
        return self.host, self.port

    def start(self) -> SimDns:
        """Bind the UDP socket and serve in a thread."""
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((self.host, self.port))
        s.settimeout(0.1)
        self.port = s.getsockname()[1]
        self._sock = s
        self._thread = threading.Thread(target=self._serve, name="simdns", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def set_mode(self, mode: str) -> None:
        """Switch how the next queries are answered."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        with self._lock:
            self.mode = mode

    def add(self, name: str, address: str) -> None:
        """Resolve name to the IPv4 address from now on."""
        socket.inet_aton(address)
        with self._lock:
            self.records[_norm(name)] = address

    def answer(self, data: bytes) -> bytes | None:
        """The reply to one datagram under the current mode (None: no reply)."""
        q = parse_query(data)
        with self._lock:
            if q is None:
                self.ignored += 1
                return None
            self.queries.append((q.name, q.qtype))
            if len(self.queries) > 1000:
                del self.queries[:500]
            mode = self.mode
            address = self.records.get(q.name)
            if mode == "silent":
                self.dropped += 1
                return None
            self.answered += 1
        if mode == "servfail":
            return build_response(q, RCODE_SERVFAIL)
        if mode == "nxdomain" or address is None:
            return build_response(q, RCODE_NXDOMAIN)
        if q.qtype == QTYPE_A and q.qclass == QCLASS_IN:
            return build_response(q, RCODE_NOERROR, address)
        return build_response(q, RCODE_NOERROR)

    def _serve(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            reply = self.answer(data)
            if reply is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(reply, peer)


def _norm(name: str) -> str:
    return name.rstrip(".").lower()
