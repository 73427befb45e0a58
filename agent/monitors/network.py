"""Network monitors: link state and default route ("network"), payment host probes ("payment").

Readings (the catalog's network rules read them; None when unknown):
- "network:<ifname>": carrier, operstate (plus exists, admin_up). A configured
  interface that does not exist reads operstate "notpresent" (a USB NIC
  unplugged is a link down). With `interfaces = []` (the default) the
  interfaces watched are those that have carried a default route since the
  monitor started: an uplink that loses its carrier (and with it, under
  DHCP, its route) stays watched and reads down, and nothing is watched on a
  terminal that never had a route (network.no_route says that).
- "network": default_route (bool), default_interface, default_gateway.
- "payment:<host:port>": dns_ok, connect_ok, connect_ms (time to a usable
  connection: TCP connect, plus the TLS handshake with [network].tls), tls_ok,
  error (plus error_kind, stage, address). TLS verifies against the system
  store (OpenSSL honours SSL_CERT_FILE).

Target local reads <sys>/class/net and <proc>/net/{route,ipv6_route} through
Roots; targets android and adb read `dumpsys connectivity` through the Shell
(an interface carries a link when Android lists a CONNECTED network on it;
the default route is the active default network). Payment probes always run
from where the agent runs (on the adb box, that box's own network).

Connectivity hook for the uploader: ``subscribe_connectivity(callback)``
registers ``callback(up: bool)``; it is called (from a monitor thread) every
time the combined state changes, the first determination included. "Up"
means a default route is present (or unknown) and, when reachability is
probed, at least one target answered: the payment hosts, or the upload
endpoint's host when no payment host is configured. The daemon wires it as
``subscribe_connectivity(lambda up: up and uploader.notify_online())``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import structlog

from agent.core.config import Config, NetworkConfig
from agent.core.model import Reading
from agent.monitors import Monitor, MonitorContext, register
from drivers import android
from drivers.network import (
    AndroidConnectivity,
    ConnectResult,
    default_routes,
    parse_host_port,
    probe_host,
    read_link,
    read_routes,
)
from drivers.roots import Roots
from drivers.shell import Shell

log = structlog.get_logger(__name__)

SHELL_TIMEOUT_S = 10.0

# --------------------------------------------------------------------------- connectivity hook

ConnectivityCallback = Callable[[bool], object]
_subscribers: list[ConnectivityCallback] = []
_subscribers_lock = threading.Lock()


def subscribe_connectivity(callback: ConnectivityCallback) -> Callable[[], None]:
    """Call `callback(up)` on every connectivity change; returns the unsubscribe function."""
    with _subscribers_lock:
        _subscribers.append(callback)

    def unsubscribe() -> None:
        with _subscribers_lock:
            if callback in _subscribers:
                _subscribers.remove(callback)

    return unsubscribe


def notify_subscribers(up: bool) -> None:
    """Tell every subscriber; a failing callback is logged and never stops the others."""
    with _subscribers_lock:
        callbacks = list(_subscribers)
    for cb in callbacks:
        try:
            cb(up)
        except Exception as e:
            log.error("connectivity_callback_failed", error=repr(e))


_UNSET: Any = object()


class ConnectivityTracker:
    """Combines the default route and probe reachability; calls `notify` when "up" changes."""

    def __init__(self, notify: Callable[[bool], None] = notify_subscribers) -> None:
        self._notify = notify
        self._lock = threading.Lock()
        self._route: bool | None = None
        self._reach: bool | None = None
        self._up: bool | None = None

    @property
    def up(self) -> bool | None:
        """The last combined state (None until known)."""
        with self._lock:
            return self._up

    def update(self, *, default_route: Any = _UNSET, reachable: Any = _UNSET) -> None:
        """Record one side's latest observation (None: unknown) and notify on a change."""
        with self._lock:
            if default_route is not _UNSET:
                self._route = default_route
            if reachable is not _UNSET:
                self._reach = reachable
            if self._route is False or self._reach is False:
                up: bool | None = False
            elif self._reach is True:
                up = True
            else:
                up = self._route
            changed = up is not None and up != self._up
            if up is not None:
                self._up = up
        if changed and up is not None:
            log.info("connectivity_changed", up=up)
            self._notify(up)


# --------------------------------------------------------------------------- link + route


def android_link_values(conn: AndroidConnectivity, interface: str) -> dict[str, Any]:
    """carrier / operstate of one interface as `dumpsys connectivity` implies them."""
    for n in conn.networks:
        if n.interface == interface:
            return {
                "carrier": n.connected,
                "operstate": "up" if n.connected else "down",
                "exists": True,
                "network_type": n.type,
                "validated": n.validated,
            }
    if not conn.recognized:
        return {"carrier": None, "operstate": None, "exists": None}
    return {"carrier": None, "operstate": "down", "exists": None}


@dataclass
class LinkMonitor:
    """Carrier and operstate of the configured interfaces, and the default route."""

    cfg: NetworkConfig
    roots: Roots = field(default_factory=Roots)
    shell: Shell = field(default_factory=Shell)
    tracker: ConnectivityTracker | None = None
    name: str = "network"
    # interfaces = []: every interface seen with a default route, in order of first sight
    uplinks: list[str] = field(default_factory=list)

    @property
    def interval_s(self) -> float:
        return self.cfg.interval_s

    @property
    def timeout_s(self) -> float:
        return SHELL_TIMEOUT_S + 2.0 if self.shell.mode in ("android", "adb") else 3.0

    def watched(self, default_interfaces: list[str]) -> list[str]:
        """The configured interfaces, or (none configured) every uplink seen so far."""
        if self.cfg.interfaces:
            return list(self.cfg.interfaces)
        for ifname in default_interfaces:
            if ifname and ifname not in self.uplinks:
                self.uplinks.append(ifname)
        return list(self.uplinks)

    def poll(self) -> list[Reading]:
        if self.shell.mode in ("android", "adb"):
            readings = self._poll_android()
        else:
            readings = self._poll_local()
        if self.tracker is not None:
            self.tracker.update(default_route=readings[-1].values.get("default_route"))
        return readings

    def _poll_local(self) -> list[Reading]:
        out: list[Reading] = []
        table = read_routes(self.roots)
        defaults = default_routes([*table.ipv4, *table.ipv6])
        for ifname in self.watched([r.interface for r in defaults]):
            link = read_link(self.roots, ifname)
            values: dict[str, Any] = {
                "carrier": link.carrier,
                "operstate": link.operstate if link.exists else "notpresent",
                "exists": link.exists,
                "admin_up": link.admin_up,
            }
            if link.errors:
                values["errors"] = list(link.errors)
            out.append(Reading(f"network:{ifname}", values))
        route = table.default_v4 or table.default_v6
        known = len(table.errors) < 2  # at least one table could be read
        out.append(
            Reading(
                "network",
                {
                    "default_route": table.has_default if known else None,
                    "default_interface": route.interface if route else None,
                    "default_gateway": route.gateway if route else None,
                    "errors": list(table.errors),
                },
            )
        )
        return out

    def _poll_android(self) -> list[Reading]:
        conn = android.read_connectivity(self.shell, SHELL_TIMEOUT_S)
        default = conn.default
        uplink = [default.interface] if default is not None and default.interface else []
        out = [
            Reading(f"network:{ifname}", android_link_values(conn, ifname))
            for ifname in self.watched(uplink)
        ]
        out.append(
            Reading(
                "network",
                {
                    "default_route": conn.connected,
                    "default_interface": default.interface if default else None,
                    "default_gateway": None,
                    "validated": default.validated if default else None,
                },
            )
        )
        return out


# --------------------------------------------------------------------------- payment hosts


def payment_values(result: ConnectResult, tls: bool) -> dict[str, Any]:
    """The "payment:<host:port>" reading's values from one probe (pure)."""
    dns_failed = result.stage == "dns"
    connected = result.ok or result.stage in ("tls", "http")
    tls_ok: bool | None = None
    if tls and connected:
        tls_ok = result.ok
    return {
        "dns_ok": not dns_failed,
        "connect_ok": None if dns_failed else connected,
        "connect_ms": round((result.connect_s + (result.tls_s or 0.0)) * 1000, 2)
        if result.connect_s is not None and connected
        else None,
        "tls_ok": tls_ok,
        "error": result.error,
        "error_kind": str(result.error_kind) if result.error_kind else None,
        "stage": result.stage,
        "address": result.address,
    }


def collector_target(endpoint: str) -> tuple[str, int] | None:
    """(host, port) of the upload endpoint URL, None when unset or not a URL."""
    if not endpoint:
        return None
    parts = urlsplit(endpoint)
    if not parts.hostname:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return parts.hostname, port


@dataclass
class PaymentMonitor:
    """DNS + TCP connect (+ TLS when configured) to every payment host, in parallel."""

    cfg: NetworkConfig
    collector: tuple[str, int] | None = None  # probed only when no payment host is configured
    tracker: ConnectivityTracker | None = None
    name: str = "payment"

    @property
    def interval_s(self) -> float:
        return self.cfg.interval_s

    @property
    def timeout_s(self) -> float:
        return self.cfg.dns_timeout_s + self.cfg.connect_timeout_s + 2.0

    def _probe(self, host: str, port: int, tls: bool) -> ConnectResult:
        return probe_host(
            host,
            port,
            timeout_s=self.cfg.connect_timeout_s,
            dns_timeout_s=self.cfg.dns_timeout_s,
            tls=tls,
        )

    def poll(self) -> list[Reading]:
        targets = [parse_host_port(spec) for spec in self.cfg.payment_hosts]
        specs = list(self.cfg.payment_hosts)
        tls = self.cfg.tls
        if not targets and self.collector is not None:
            targets, specs, tls = [self.collector], [], False
        if not targets:
            return []
        if len(targets) == 1:
            results = [self._probe(*targets[0], tls)]
        else:
            with ThreadPoolExecutor(len(targets), thread_name_prefix="payment-probe") as pool:
                results = list(pool.map(lambda t: self._probe(t[0], t[1], tls), targets))
        if self.tracker is not None:
            self.tracker.update(reachable=any(r.ok for r in results))
        return [
            Reading(f"payment:{spec}", payment_values(r, tls))
            for spec, r in zip(specs, results, strict=False)
        ]


@register("network")
def network_monitors(cfg: Config, ctx: MonitorContext) -> list[Monitor]:
    """The link/route monitor and the payment probe monitor, sharing one connectivity tracker."""
    tracker = ConnectivityTracker()
    out: list[Monitor] = [LinkMonitor(cfg.network, ctx.roots, ctx.shell, tracker)]
    collector = collector_target(cfg.upload.endpoint)
    if cfg.network.payment_hosts or collector is not None:
        out.append(PaymentMonitor(cfg.network, collector, tracker))
    return out
