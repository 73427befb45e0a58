"""Simulated network: payment hosts on loopback, and fake <sys>/class/net and <proc>/net/route.

`SimHost` listens on 127.0.0.1 (or the address it is given) and can be switched at run time between
answering ("ok"), refusing (port closed), blackholing (SYNs dropped: the
accept queue is kept full, so connect() times out), hanging after accept
(no TLS handshake, no HTTP answer) and answering slowly (a delay first).
TLS uses a throw-away self-signed certificate made with the openssl CLI.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from drivers.shell import run_argv
from simulator.service import Service
from simulator.state import write_atomic

MODES = ("ok", "refuse", "blackhole", "hang", "slow")


# --------------------------------------------------------------------------- certificate


@dataclass(frozen=True)
class SimCert:
    """A self-signed certificate and its key; the certificate is also the client's CA file."""

    cert_path: Path
    key_path: Path


def make_self_signed_cert(
    directory: Path,
    common_name: str = "localhost",
    names: tuple[str, ...] = ("localhost", "127.0.0.1"),
    days: int = 2,
) -> SimCert:
    """Generate a P-256 self-signed certificate with `openssl req -x509` (subjectAltName=names)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{common_name}.crt", directory / f"{common_name}.key"
    san = []
    for n in names:
        try:
            ipaddress.ip_address(n)
            san.append(f"IP:{n}")
        except ValueError:
            san.append(f"DNS:{n}")
    argv = [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(cert),
        "-days",
        str(days),
        "-subj",
        f"/CN={common_name}",
        "-addext",
        "subjectAltName=" + ",".join(san),
    ]
    r = run_argv(argv, timeout_s=30)
    if r.returncode != 0:
        raise RuntimeError("openssl req failed: " + r.stderr.decode("utf-8", "replace")[:500])
    return SimCert(cert, key)


# --------------------------------------------------------------------------- host


class SimHost(Service):
    """A payment host on 127.0.0.1 (plain TCP or TLS), switchable between failure modes.

    In mode "ok" it completes the TLS handshake (when TLS) and, if `http_status`
    is set, answers any request with that status; otherwise it holds the
    connection open until the client closes it.
    """

    def __init__(
        self,
        *,
        cert: SimCert | None = None,
        mode: str = "ok",
        delay_s: float = 0.0,
        http_status: int | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.cert = cert
        self.mode = mode
        self.delay_s = delay_s
        self.http_status = http_status
        self.host = host
        self.port = port
        self.accepted = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._fillers: list[socket.socket] = []
        self._conns: set[socket.socket] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ctx: ssl.SSLContext | None = None
        if cert is not None:
            self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._ctx.load_cert_chain(str(cert.cert_path), str(cert.key_path))

    @property
    def address(self) -> str:
        """ "127.0.0.1:PORT", the form used in `payment_hosts`."""
        return f"{self.host}:{self.port}"

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> SimHost:
        """Bind (keeping the port for the host's lifetime) and serve in a thread."""
        self._open_listener()
        self._thread = threading.Thread(target=self._serve, name="simhost", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection."""
        self._stop.set()
        with self._lock:
            self._close_listener()
            for c in list(self._conns):
                with contextlib.suppress(OSError):
                    c.close()
            self._conns.clear()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def set_mode(self, mode: str, delay_s: float | None = None) -> None:
        """Switch behaviour for new connections (refuse/blackhole take effect at once)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        with self._lock:
            old = self.mode
            self.mode = mode
            if delay_s is not None:
                self.delay_s = delay_s
            if mode != old and (mode in ("refuse", "blackhole") or old in ("refuse", "blackhole")):
                self._close_listener()
                if mode != "refuse":
                    self._open_listener_locked()

    # ----------------------------------------------------------------- listener

    def _open_listener(self) -> None:
        with self._lock:
            self._open_listener_locked()

    def _open_listener_locked(self) -> None:
        if self.mode == "refuse" and self.port:
            return
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(50):
            try:
                s.bind((self.host, self.port))
                break
            except OSError as e:  # the old listener's port may linger for a moment
                if e.errno != errno.EADDRINUSE or not self.port:
                    raise
                time.sleep(0.02)
        else:
            s.close()
            raise OSError(errno.EADDRINUSE, f"port {self.port} stays in use")
        self.port = s.getsockname()[1]
        if self.mode == "refuse":
            s.close()  # we now own a port number; closed means refused
            return
        if self.mode == "blackhole":
            s.listen(0)
            # Fill the accept queue; with a full queue Linux drops new SYNs.
            for _ in range(3):
                f = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                f.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    f.connect((self.host, self.port))
                self._fillers.append(f)
            time.sleep(0.05)
        else:
            s.listen(64)
        s.settimeout(0.1)
        self._listener = s

    def _close_listener(self) -> None:
        if self._listener is not None:
            # shutdown() stops a Linux listener at once, even while the serving
            # thread is inside accept(); close() alone waits for that call.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self._listener.close()
            self._listener = None
        for f in self._fillers:
            with contextlib.suppress(OSError):
                f.close()
        self._fillers.clear()

    # ----------------------------------------------------------------- serving

    def _serve(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                listener = self._listener if self.mode != "blackhole" else None
            if listener is None:
                time.sleep(0.05)
                continue
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.accepted += 1
                self._conns.add(conn)
                mode, delay = self.mode, self.delay_s
            threading.Thread(
                target=self._handle, args=(conn, mode, delay), name="simhost-conn", daemon=True
            ).start()

    def _handle(self, conn: socket.socket, mode: str, delay_s: float) -> None:
        try:
            if mode == "hang":
                self._stop.wait(3600)
                return
            if mode == "slow":
                self._stop.wait(delay_s)
            conn.settimeout(10)
            sock: socket.socket = conn
            if self._ctx is not None:
                sock = self._ctx.wrap_socket(conn, server_side=True)
                with self._lock:
                    self._conns.add(sock)
            if self.http_status is not None:
                self._answer_http(sock)
                return
            while not self._stop.is_set():
                data = sock.recv(4096)
                if not data:
                    return
        except (OSError, ssl.SSLError):
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _answer_http(self, sock: socket.socket) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf and len(buf) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                return
            buf += chunk
        status = self.http_status or 204
        reason = {204: "No Content", 200: "OK", 302: "Found"}.get(status, "Status")
        body = b"" if status == 204 else b"<html>portal</html>"
        head = f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        if status == 302:
            head += "Location: http://portal.invalid/login\r\n"
        if status != 204:
            head += f"Content-Length: {len(body)}\r\n"
        sock.sendall(head.encode() + b"\r\n" + body)


# --------------------------------------------------------------------------- sysfs / procfs

_PROC_ROUTE_HEADER = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"
)


def _hex_le(addr: str) -> str:
    n = int.from_bytes(socket.inet_aton(addr), sys.byteorder)
    return f"{n:08X}"


@dataclass(frozen=True)
class SimRoute:
    """One route to write into the fake routing tables."""

    interface: str
    destination: str = "0.0.0.0"  # or "::" for IPv6
    prefix_len: int = 0
    gateway: str | None = None
    metric: int = 0
    reject: bool = False


class SimNet:
    """Fake <sys>/class/net/<if>/{carrier,operstate,flags} and <proc>/net/{route,ipv6_route}."""

    def __init__(self, sys_root: Path, proc_root: Path) -> None:
        self.sys_root = Path(sys_root)
        self.proc_root = Path(proc_root)

    def set_link(
        self,
        interface: str,
        *,
        carrier: bool = True,
        operstate: str | None = None,
        admin_up: bool = True,
    ) -> None:
        """Write the link files. Admin-down removes `carrier` (Linux answers EINVAL there)."""
        d = self.sys_root / "class" / "net" / interface
        d.mkdir(parents=True, exist_ok=True)
        state = operstate or ("up" if (admin_up and carrier) else "down")
        write_atomic(d / "operstate", state + "\n")
        flags = 0x1003 if admin_up else 0x1002
        write_atomic(d / "flags", f"0x{flags:x}\n")
        if admin_up:
            write_atomic(d / "carrier", ("1" if carrier else "0") + "\n")
        else:
            with contextlib.suppress(FileNotFoundError):
                (d / "carrier").unlink()

    def remove_link(self, interface: str) -> None:
        """The interface disappears (USB NIC unplugged)."""
        d = self.sys_root / "class" / "net" / interface
        for f in ("operstate", "flags", "carrier"):
            with contextlib.suppress(FileNotFoundError):
                (d / f).unlink()
        with contextlib.suppress(OSError):
            d.rmdir()

    def set_routes(self, routes: list[SimRoute]) -> None:
        """Write both routing tables in the kernel's byte layout (127-column padded IPv4)."""
        v4 = [_PROC_ROUTE_HEADER.ljust(127)]
        v6: list[str] = []
        for r in routes:
            if ":" in r.destination:
                dest = socket.inet_pton(socket.AF_INET6, r.destination).hex()
                gw = socket.inet_pton(socket.AF_INET6, r.gateway or "::").hex()
                flags = 0x0001 | (0x0002 if r.gateway else 0) | (0x0200 if r.reject else 0)
                v6.append(
                    f"{dest} {r.prefix_len:02x} {'0' * 32} 00 {gw} {r.metric:08x} "
                    f"00000001 00000000 {flags:08x} {r.interface:>8}"
                )
            else:
                mask = (0xFFFFFFFF << (32 - r.prefix_len)) & 0xFFFFFFFF if r.prefix_len else 0
                mask_addr = socket.inet_ntoa(mask.to_bytes(4, "big"))
                flags = 0x0001 | (0x0002 if r.gateway else 0) | (0x0200 if r.reject else 0)
                line = "\t".join(
                    [
                        r.interface,
                        _hex_le(r.destination),
                        _hex_le(r.gateway or "0.0.0.0"),
                        f"{flags:04X}",
                        "0",
                        "0",
                        str(r.metric),
                        _hex_le(mask_addr),
                        "0",
                        "0",
                        "0",
                    ]
                )
                v4.append(line.ljust(127))
        write_atomic(self.proc_root / "net" / "route", "\n".join(v4) + "\n")
        write_atomic(self.proc_root / "net" / "ipv6_route", "".join(x + "\n" for x in v6))
