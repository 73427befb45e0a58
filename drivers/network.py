"""Network: link state, routes, DNS, TCP/TLS reachability, HTTP 204, Android connectivity.

Pure parsers (`parse_proc_net_route`, `parse_proc_net_ipv6_route`,
`parse_ip_route`, `parse_route_n`, `parse_dumpsys_connectivity`) beside
readers that take `Roots` (`read_link`, `read_routes`) and probes that talk to
the network with hard deadlines (`resolve`, `probe_host`, `check_http_204`).
Every failure comes back as an explicit result with an `ErrorKind`, never as a
hang past the caller's timeout.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import ssl

from drivers.roots import Roots

# Linux route flags (include/uapi/linux/route.h)
RTF_UP = 0x0001
RTF_GATEWAY = 0x0002
RTF_HOST = 0x0004
RTF_REJECT = 0x0200
IFF_UP = 0x1

_IFNAME = re.compile(r"^[^/\s\x00]{1,15}$")


class ErrorKind(StrEnum):
    """Why a probe failed; kinds are kept apart so rules can tell them apart."""

    DNS_FAILURE = "dns_failure"
    TIMEOUT = "timeout"
    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    RESET = "reset"
    TLS_FAILURE = "tls_failure"
    HTTP_ERROR = "http_error"
    ERROR = "error"


# --------------------------------------------------------------------------- link


@dataclass(frozen=True)
class LinkState:
    """carrier / operstate / admin flag of one interface from <sys>/class/net/<if>."""

    interface: str
    exists: bool
    operstate: str | None = None
    carrier: bool | None = None
    admin_up: bool | None = None
    errors: tuple[str, ...] = ()

    @property
    def up(self) -> bool:
        """True only with carrier 1 and operstate "up" (docs/ARCHITECTURE.md §8 network.link_down)."""
        return self.exists and self.carrier is True and self.operstate == "up"


def _errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno, str(e.errno)) if e.errno is not None else type(e).__name__


def list_interfaces(roots: Roots) -> list[str]:
    """Names under <sys>/class/net, sorted; empty when the directory is missing."""
    try:
        return sorted(p.name for p in roots.sys_path("class", "net").iterdir())
    except OSError:
        return []


def read_link(roots: Roots, interface: str) -> LinkState:
    """Read carrier, operstate and flags; reading carrier of an admin-down link fails
    with EINVAL in Linux: that is reported as carrier None, admin_up False."""
    if not _IFNAME.match(interface):
        return LinkState(interface, exists=False, errors=("invalid interface name",))
    base = roots.sys_path("class", "net", interface)
    if not base.exists():
        return LinkState(interface, exists=False)
    errors: list[str] = []

    def read(name: str) -> str | None:
        try:
            return base.joinpath(name).read_text("ascii", "replace").strip()
        except FileNotFoundError:
            errors.append(f"{name}: missing")
        except OSError as e:
            errors.append(f"{name}: {_errname(e)}")
        return None

    operstate = read("operstate")
    carrier_text = read("carrier")
    flags_text = read("flags")
    carrier: bool | None = None
    if carrier_text in ("0", "1"):
        carrier = carrier_text == "1"
    elif carrier_text is not None:
        errors.append(f"carrier: unexpected {carrier_text[:16]!r}")
    admin_up: bool | None = None
    if flags_text is not None:
        try:
            admin_up = bool(int(flags_text, 16) & IFF_UP)
        except ValueError:
            errors.append(f"flags: unexpected {flags_text[:16]!r}")
    return LinkState(
        interface,
        exists=True,
        operstate=operstate or None,
        carrier=carrier,
        admin_up=admin_up,
        errors=tuple(errors),
    )


# --------------------------------------------------------------------------- routes


@dataclass(frozen=True)
class Route:
    """One routing table entry (IPv4 or IPv6) from any of the parsers."""

    family: int  # 4 or 6
    destination: str
    prefix_len: int
    gateway: str | None
    interface: str
    metric: int = 0
    flags: int | None = None
    rejected: bool = False  # unreachable / blackhole / prohibit (RTF_REJECT)
    linkdown: bool = False

    @property
    def is_default(self) -> bool:
        """A usable route to 0.0.0.0/0 or ::/0."""
        if self.prefix_len != 0 or self.rejected:
            return False
        return self.flags is None or bool(self.flags & RTF_UP)


def _hex_ipv4(text: str, byteorder: str) -> str:
    n = int(text, 16) & 0xFFFFFFFF
    return socket.inet_ntoa(n.to_bytes(4, "little" if byteorder == "little" else "big"))


def _mask_len(mask: str) -> int:
    # Masks are contiguous; counting bits is byte-order independent.
    return bin(int(mask, 16) & 0xFFFFFFFF).count("1")


def parse_proc_net_route(text: str, byteorder: str = sys.byteorder) -> list[Route]:
    """Parse /proc/net/route (tab or space separated, with the kernel's padding).

    Addresses are hex in the host byte order of the machine that wrote the
    file; pass `byteorder` for a capture from another architecture.
    """
    routes: list[Route] = []
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 8 or cols[0] == "Iface":
            continue
        try:
            dest = _hex_ipv4(cols[1], byteorder)
            gw = _hex_ipv4(cols[2], byteorder)
            flags = int(cols[3], 16)
            metric = int(cols[6])
            plen = _mask_len(cols[7])
        except ValueError:
            continue
        routes.append(
            Route(
                family=4,
                destination=dest,
                prefix_len=plen,
                gateway=None if gw == "0.0.0.0" else gw,
                interface=cols[0],
                metric=metric,
                flags=flags,
                rejected=bool(flags & RTF_REJECT),
            )
        )
    return routes


def _hex_ipv6(text: str) -> str:
    if len(text) != 32:
        raise ValueError("not 32 hex digits")
    return socket.inet_ntop(socket.AF_INET6, bytes.fromhex(text))


def parse_proc_net_ipv6_route(text: str) -> list[Route]:
    """Parse /proc/net/ipv6_route (dest plen src plen nexthop metric ref use flags iface)."""
    routes: list[Route] = []
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 10:
            continue
        try:
            dest = _hex_ipv6(cols[0])
            plen = int(cols[1], 16)
            nh = _hex_ipv6(cols[4])
            metric = int(cols[5], 16)
            flags = int(cols[8], 16)
        except ValueError:
            continue
        routes.append(
            Route(
                family=6,
                destination=dest,
                prefix_len=plen,
                gateway=None if nh == "::" else nh,
                interface=cols[9],
                metric=metric,
                flags=flags,
                rejected=bool(flags & RTF_REJECT),
            )
        )
    return routes


_IP_ROUTE_TYPES = frozenset(
    {"unicast", "local", "broadcast", "multicast", "throw", "unreachable", "prohibit", "blackhole"}
)
_REJECT_TYPES = frozenset({"unreachable", "prohibit", "blackhole", "throw"})


def _ip_route_fields(tokens: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t in ("linkdown", "onlink", "dead", "pervasive", "offload", "trap"):
            out[t] = "1"
            i += 1
        elif i + 1 < len(tokens):
            out.setdefault(t, tokens[i + 1])
            i += 2
        else:
            i += 1
    return out


def parse_ip_route(text: str, family: int | None = None) -> list[Route]:
    """Parse `ip route` / `ip -6 route` output (multipath `nexthop` lines included).

    `family` None infers 6 from a ':' in the destination or gateway, else 4.
    """
    routes: list[Route] = []
    head: tuple[str, int, int, bool] | None = None  # destination, plen, metric, rejected
    fam_head = 4
    for line in text.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        if line[0] in " \t":
            if head is None or tokens[0] != "nexthop":
                continue
            f = _ip_route_fields(tokens[1:])
            dest, plen, metric, rejected = head
            routes.append(
                Route(
                    fam_head,
                    dest,
                    plen,
                    f.get("via"),
                    f.get("dev", ""),
                    metric,
                    None,
                    rejected,
                    "linkdown" in f,
                )
            )
            continue
        rtype = "unicast"
        if tokens[0] in _IP_ROUTE_TYPES:
            rtype = tokens.pop(0)
            if not tokens:
                continue
        dest_text = tokens[0]
        f = _ip_route_fields(tokens[1:])
        gw = f.get("via")
        if gw is not None and gw.startswith(("inet ", "inet6 ")):
            gw = gw.split()[-1]
        fam = family or (6 if ":" in dest_text or (gw is not None and ":" in gw) else 4)
        if dest_text == "default":
            dest, plen = ("::" if fam == 6 else "0.0.0.0"), 0
        else:
            addr, _, plen_text = dest_text.partition("/")
            try:
                plen = int(plen_text) if plen_text else (128 if fam == 6 else 32)
            except ValueError:
                continue
            dest = addr
        try:
            metric = int(f.get("metric", "0"))
        except ValueError:
            metric = 0
        rejected = rtype in _REJECT_TYPES
        head, fam_head = (dest, plen, metric, rejected), fam
        if "dev" not in f and gw is None and not rejected:
            continue  # a multipath head; its nexthop lines follow
        routes.append(
            Route(fam, dest, plen, gw, f.get("dev", ""), metric, None, rejected, "linkdown" in f)
        )
    return routes


def parse_route_n(text: str) -> list[Route]:
    """Parse `route -n` (net-tools): Destination Gateway Genmask Flags Metric Ref Use Iface."""
    routes: list[Route] = []
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 8:
            continue
        try:
            dest = str(ipaddress.IPv4Address(cols[0]))
            gw = str(ipaddress.IPv4Address(cols[1]))
            plen = ipaddress.IPv4Network(f"0.0.0.0/{cols[2]}").prefixlen
            metric = int(cols[4])
        except ValueError:
            continue
        letters = cols[3]
        flags = (RTF_UP if "U" in letters else 0) | (RTF_GATEWAY if "G" in letters else 0)
        routes.append(
            Route(
                4,
                dest,
                plen,
                None if gw == "0.0.0.0" else gw,
                cols[7],
                metric,
                flags,
                "!" in letters,
            )
        )
    return routes


def default_routes(routes: list[Route]) -> list[Route]:
    """Usable default routes, lowest metric first."""
    return sorted((r for r in routes if r.is_default), key=lambda r: r.metric)


@dataclass(frozen=True)
class RouteTable:
    """IPv4 and IPv6 routes read from <proc>/net, with read errors kept apart."""

    ipv4: tuple[Route, ...] = ()
    ipv6: tuple[Route, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def default_v4(self) -> Route | None:
        """The preferred (lowest metric) IPv4 default route."""
        d = default_routes(list(self.ipv4))
        return d[0] if d else None

    @property
    def default_v6(self) -> Route | None:
        """The preferred (lowest metric) IPv6 default route."""
        d = default_routes(list(self.ipv6))
        return d[0] if d else None

    @property
    def has_default(self) -> bool:
        """True when either family has a usable default route."""
        return self.default_v4 is not None or self.default_v6 is not None


def read_routes(roots: Roots) -> RouteTable:
    """Read <proc>/net/route and <proc>/net/ipv6_route (each may be absent)."""
    errors: list[str] = []
    texts: dict[str, str] = {}
    for name in ("route", "ipv6_route"):
        p = roots.proc_path("net", name)
        try:
            texts[name] = p.read_text("ascii", "replace")
        except FileNotFoundError:
            errors.append(f"{name}: missing")
        except OSError as e:
            errors.append(f"{name}: {_errname(e)}")
    return RouteTable(
        ipv4=tuple(parse_proc_net_route(texts.get("route", ""))),
        ipv6=tuple(parse_proc_net_ipv6_route(texts.get("ipv6_route", ""))),
        errors=tuple(errors),
    )


# --------------------------------------------------------------------------- DNS

MAX_INFLIGHT_DNS = 8
_dns_lock = threading.Lock()
_dns_inflight = 0


@dataclass(frozen=True)
class DnsResult:
    """Addresses for a name, or why there are none."""

    host: str
    addresses: tuple[str, ...] = ()
    elapsed_s: float = 0.0
    error_kind: ErrorKind | None = None
    error: str = ""
    sockaddrs: tuple[tuple[int, tuple[str, int]], ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        """True when at least one address came back."""
        return self.error_kind is None and bool(self.addresses)


def resolve(host: str, timeout_s: float, *, port: int = 0, family: int = 0) -> DnsResult:
    """getaddrinfo in a daemon thread with a hard deadline.

    The caller gets a result within timeout_s whatever the resolver does; a
    stuck lookup finishes in the background. At most MAX_INFLIGHT_DNS stuck
    lookups are kept; beyond that, new ones fail at once.
    """
    global _dns_inflight
    start = time.monotonic()
    with _dns_lock:
        if _dns_inflight >= MAX_INFLIGHT_DNS:
            return DnsResult(
                host, error_kind=ErrorKind.TIMEOUT, error="resolver saturated by stuck lookups"
            )
        _dns_inflight += 1
    box: dict[str, object] = {}
    done = threading.Event()

    def work() -> None:
        global _dns_inflight
        try:
            box["infos"] = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        except (OSError, UnicodeError, ValueError) as e:
            box["error"] = e
        finally:
            with _dns_lock:
                _dns_inflight -= 1
            done.set()

    threading.Thread(target=work, name=f"dns:{host[:40]}", daemon=True).start()
    finished = done.wait(max(0.0, timeout_s))
    elapsed = time.monotonic() - start
    if not finished:
        return DnsResult(
            host, elapsed_s=elapsed, error_kind=ErrorKind.TIMEOUT, error="resolver timed out"
        )
    err = box.get("error")
    if err is not None:
        return DnsResult(host, elapsed_s=elapsed, error_kind=ErrorKind.DNS_FAILURE, error=str(err))
    infos = box.get("infos")
    addrs: list[str] = []
    sockaddrs: list[tuple[int, tuple[str, int]]] = []
    if isinstance(infos, list):
        for fam, _t, _p, _c, sa in infos:
            a = str(sa[0])
            if a not in addrs:
                addrs.append(a)
                sockaddrs.append((int(fam), (a, int(sa[1]))))
    if not addrs:
        return DnsResult(
            host, elapsed_s=elapsed, error_kind=ErrorKind.DNS_FAILURE, error="no addresses"
        )
    return DnsResult(host, tuple(addrs), elapsed, sockaddrs=tuple(sockaddrs))


# --------------------------------------------------------------------------- TCP / TLS


@dataclass(frozen=True)
class ConnectResult:
    """One reachability probe: DNS, TCP connect, optional TLS handshake."""

    host: str
    port: int
    ok: bool
    address: str | None = None
    dns_s: float | None = None
    connect_s: float | None = None
    tls_s: float | None = None
    tls_version: str | None = None
    error_kind: ErrorKind | None = None
    stage: str | None = None  # "dns" | "connect" | "tls" | "http"
    error: str = ""


def _classify(e: BaseException) -> ErrorKind:
    if isinstance(e, TimeoutError | socket.timeout):
        return ErrorKind.TIMEOUT
    ssl_mod = sys.modules.get("ssl")  # an SSL error means a TLS probe imported ssl
    if ssl_mod is not None and isinstance(e, ssl_mod.SSLError | ssl_mod.CertificateError):
        return ErrorKind.TLS_FAILURE
    if isinstance(e, ConnectionRefusedError):
        return ErrorKind.REFUSED
    if isinstance(e, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        return ErrorKind.RESET
    if isinstance(e, OSError) and e.errno in (
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.EADDRNOTAVAIL,
        errno.ENETDOWN,
    ):
        return ErrorKind.UNREACHABLE
    return ErrorKind.ERROR


def tls_context(ca_file: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """A client context: the system store, or `ca_file` alone when given; verify off on request."""
    import ssl  # lazy: only a TLS probe needs ssl (and libssl, ~4 MiB of the daemon's RSS)

    if not verify:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=ca_file or None)


def _open(
    host: str,
    port: int,
    timeout_s: float,
    dns_timeout_s: float | None,
    tls: bool,
    server_hostname: str | None,
    ca_file: str | None,
    verify: bool,
) -> tuple[socket.socket | None, ConnectResult]:
    """Resolve, connect, handshake; returns the open socket or None, and the result."""
    dns = resolve(host, dns_timeout_s if dns_timeout_s is not None else timeout_s, port=port)
    if not dns.ok:
        return None, ConnectResult(
            host,
            port,
            False,
            dns_s=dns.elapsed_s,
            error_kind=dns.error_kind,
            stage="dns",
            error=dns.error,
        )
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    sock: socket.socket | None = None
    address: str | None = None
    t0 = time.monotonic()
    for fam, sa in dns.sockaddrs:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            last = TimeoutError("connect timed out")
            break
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(remaining)
        try:
            s.connect(sa)
        except OSError as e:
            s.close()
            last = e
            continue
        sock, address = s, sa[0]
        break
    connect_s = time.monotonic() - t0
    if sock is None:
        err = last or OSError("no address to connect to")
        return None, ConnectResult(
            host,
            port,
            False,
            dns_s=dns.elapsed_s,
            connect_s=connect_s,
            error_kind=_classify(err),
            stage="connect",
            error=str(err) or type(err).__name__,
        )
    if not tls:
        return sock, ConnectResult(
            host, port, True, address=address, dns_s=dns.elapsed_s, connect_s=connect_s
        )
    t1 = time.monotonic()
    try:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        ctx = tls_context(ca_file, verify)
        tsock = ctx.wrap_socket(sock, server_hostname=server_hostname or host)
    except (OSError, ValueError) as e:
        sock.close()
        return None, ConnectResult(
            host,
            port,
            False,
            address=address,
            dns_s=dns.elapsed_s,
            connect_s=connect_s,
            tls_s=time.monotonic() - t1,
            error_kind=_classify(e),
            stage="tls",
            error=str(e) or type(e).__name__,
        )
    return tsock, ConnectResult(
        host,
        port,
        True,
        address=address,
        dns_s=dns.elapsed_s,
        connect_s=connect_s,
        tls_s=time.monotonic() - t1,
        tls_version=tsock.version(),
    )


def probe_host(
    host: str,
    port: int,
    *,
    timeout_s: float,
    dns_timeout_s: float | None = None,
    tls: bool = False,
    server_hostname: str | None = None,
    ca_file: str | None = None,
    verify: bool = True,
) -> ConnectResult:
    """Resolve (≤ dns_timeout_s), then connect and handshake within timeout_s together."""
    sock, result = _open(
        host, port, timeout_s, dns_timeout_s, tls, server_hostname, ca_file, verify
    )
    if sock is not None:
        sock.close()
    return result


def parse_host_port(spec: str, default_port: int = 443) -> tuple[str, int]:
    """'host:port', '[v6]:port', 'host' → (host, port); ValueError on a bad port."""
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if spec.count(":") == 1:
        host, _, port = spec.partition(":")
        return host, int(port)
    return spec, default_port


# --------------------------------------------------------------------------- HTTP 204


@dataclass(frozen=True)
class HttpCheckResult:
    """Captive-portal check: a 204 means open internet; any other answer means a portal."""

    url: str
    status: int | None = None
    elapsed_s: float = 0.0
    error_kind: ErrorKind | None = None
    stage: str | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        """True on HTTP 204."""
        return self.status == 204

    @property
    def captive(self) -> bool:
        """True when a server answered, but not with 204 (a portal or a proxy)."""
        return self.status is not None and self.status != 204


_STATUS = re.compile(rb"^HTTP/\d(?:\.\d)? (\d{3})")


def check_http_204(
    url: str,
    *,
    timeout_s: float,
    dns_timeout_s: float | None = None,
    ca_file: str | None = None,
    verify: bool = True,
) -> HttpCheckResult:
    """GET url (http or https) without following redirects; read only the status line."""
    start = time.monotonic()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return HttpCheckResult(url, error_kind=ErrorKind.ERROR, error="not an http(s) URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:
        return HttpCheckResult(url, error_kind=ErrorKind.ERROR, error=str(e))
    host = parts.hostname
    sock, res = _open(
        host,
        port,
        timeout_s,
        dns_timeout_s,
        parts.scheme == "https",
        None,
        ca_file,
        verify,
    )
    if sock is None:
        return HttpCheckResult(
            url,
            elapsed_s=time.monotonic() - start,
            error_kind=res.error_kind,
            stage=res.stage,
            error=res.error,
        )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    hosthdr = f"[{host}]" if ":" in host else host
    if parts.port:
        hosthdr += f":{parts.port}"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {hosthdr}\r\nUser-Agent: posagent\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii", "replace")
    deadline = start + (dns_timeout_s or 0.0) + timeout_s
    buf = b""
    try:
        with sock:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.sendall(request)
            while b"\r\n" not in buf and len(buf) < 4096:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = sock.recv(1024)
                if not chunk:
                    break
                buf += chunk
    except OSError as e:
        return HttpCheckResult(
            url,
            elapsed_s=time.monotonic() - start,
            error_kind=_classify(e),
            stage="http",
            error=str(e) or type(e).__name__,
        )
    m = _STATUS.match(buf)
    if m is None:
        return HttpCheckResult(
            url,
            elapsed_s=time.monotonic() - start,
            error_kind=ErrorKind.HTTP_ERROR,
            stage="http",
            error="no HTTP status line" if buf else "connection closed without a reply",
        )
    return HttpCheckResult(url, status=int(m.group(1)), elapsed_s=time.monotonic() - start)


# --------------------------------------------------------------------------- Android


@dataclass(frozen=True)
class AndroidNetwork:
    """One NetworkAgentInfo entry of `dumpsys connectivity`."""

    network_id: int
    type: str | None = None  # MOBILE, WIFI, ETHERNET, ... (upper case)
    subtype: str | None = None  # LTE, ...
    state: str | None = None  # CONNECTED, CONNECTING, DISCONNECTED, ...
    interface: str | None = None
    transports: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()

    @property
    def connected(self) -> bool:
        """True when the NetworkInfo state is CONNECTED."""
        return self.state == "CONNECTED"

    @property
    def validated(self) -> bool:
        """True when Android validated internet access (VALIDATED capability)."""
        return "VALIDATED" in self.capabilities


@dataclass(frozen=True)
class AndroidConnectivity:
    """The active default network and every network listed under Current Networks."""

    recognized: bool
    active_network_id: int | None = None
    networks: tuple[AndroidNetwork, ...] = ()

    @property
    def default(self) -> AndroidNetwork | None:
        """The NetworkAgentInfo of the active default network, when listed."""
        for n in self.networks:
            if n.network_id == self.active_network_id:
                return n
        return None

    @property
    def connected(self) -> bool | None:
        """False without a default network; None when its details were not in the dump."""
        if self.active_network_id is None:
            return False if self.recognized else None
        d = self.default
        return d.connected if d is not None else None


_ACTIVE = re.compile(r"^Active default network: *(\S*)", re.M)
_NET_ID = re.compile(r"\bnetwork\{(\d+)\}")
_NI_LEGACY = re.compile(r"ni\{\[type: ([A-Za-z_]+)(?:\[([^\]]*)\])?, state: ([A-Z_]+)")
_NI_NEW = re.compile(r"ni\{([A-Za-z_]+)(?:\[([^\]]*)\])? ([A-Z_]+)")
_IFACE = re.compile(r"InterfaceName: (\S+)")
_TRANSPORTS = re.compile(r"Transports: ([A-Z_|]+)")
_CAPS = re.compile(r"Capabilities: ([A-Z_&]+)")


def _parse_nai(line: str) -> AndroidNetwork | None:
    m = _NET_ID.search(line)
    if m is None:
        return None
    try:
        nid = int(m.group(1))
    except ValueError:
        return None
    ni = _NI_LEGACY.search(line) or _NI_NEW.search(line)
    iface = _IFACE.search(line)
    tr = _TRANSPORTS.search(line)
    caps = _CAPS.search(line)
    return AndroidNetwork(
        network_id=nid,
        type=ni.group(1).upper() if ni else None,
        subtype=(ni.group(2) or None) if ni else None,
        state=ni.group(3) if ni else None,
        interface=iface.group(1) if iface else None,
        transports=tuple(t for t in tr.group(1).split("|") if t) if tr else (),
        capabilities=tuple(c for c in caps.group(1).split("&") if c) if caps else (),
    )


def parse_dumpsys_connectivity(text: str) -> AndroidConnectivity:
    """Parse `dumpsys connectivity` (legacy NetworkAgentInfo{ ni{[type: ...]} } and the
    newer NetworkAgentInfo{network{N} ... ni{Ethernet CONNECTED ...}} formats)."""
    m = _ACTIVE.search(text)
    recognized = m is not None
    active: int | None = None
    if m is not None:
        try:
            active = int(m.group(1))
        except ValueError:
            active = None  # "none" or empty: no default network
    networks: list[AndroidNetwork] = []
    in_current = False
    for line in text.splitlines():
        if line.startswith("Current Networks:"):
            in_current = True
            continue
        if in_current and line and not line[0].isspace():
            in_current = False
        if in_current and line.lstrip().startswith("NetworkAgentInfo{"):
            n = _parse_nai(line)
            if n is not None:
                networks.append(n)
    return AndroidConnectivity(recognized, active, tuple(networks))
