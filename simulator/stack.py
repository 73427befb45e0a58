"""The simulated terminal with a real collector and a real agent, as subprocesses.

`Stack(workdir).start()`:
1. starts the SimTerminal (twins in this process: ptys, sockets, Xvfb/Tk);
2. writes the collector config (`collector_config`'s keys added to its
   [collector] section), registers the device (`posagent collector
   add-device`, the token goes to the agent's token_file), shares the device
   HMAC key with the collector (device_keys_dir), makes an admin with a generated
   password and a personal API token for its own reads (`collector user add`,
   `token create`: the read side is closed; `operator_login` is the name and
   password for the page), starts `posagent collector serve` and waits for /healthz;
3. puts a NetCut proxy in front of the collector (the agent's upload endpoint);
4. writes the agent config and starts `posagent run`, reading its JSON log
   lines on a thread (fault_raised / fault_cleared events, with times).
`close()` stops everything it started, in reverse order, even after a failure;
`stop_agent()` / `start_agent()` stop and start the agent alone (a terminal
powered off and on).

Besides the terminal's devices, the stack itself can be acted on (STACK_DEVICES):
the uplink (cut / restore), the agent (`kill9`: SIGKILL its whole process
group, as a power cut would, then start it again on the same state dir) and
the device credentials (`revoke`: `posagent collector add-device --rotate`,
so the token the agent holds is no longer valid; `provision`: write the
collector's current token to the agent's token_file, as an operator would).

The agent config decides two optional twins: `[app] process` set starts the
POS app process (its pid file and heartbeat are filled in), `[network] tls =
true` makes the payment host speak TLS with a throw-away certificate the
agent trusts through SSL_CERT_FILE.

`agent_argv` runs the agent from elsewhere (the `posagent` command of an installed venv
instead of this interpreter's `-m agent.commands.main`) and `agent_environ` gives it that
whole environment instead of the stack's (e.g. the one its systemd unit gives): the benches
measure the daemon as a terminal runs it (bench/installed.py).

Two options change where the agent runs (root / libfaketime needed):
- `netns=True`: the agent runs in a fresh network namespace (SimNetns,
  `ip netns exec`) whose resolv.conf names only the DNS twin (SimDns on the
  host end of the veth, port 53). The payment host and the NetCut relay
  listen on that host end too, and the agent's payment host is the NAME
  `PAYMENT_NAME:port`, which the twin resolves; device "dns" switches the
  twin's mode (ok | servfail | nxdomain | silent). No query leaves the
  machine: the namespace has no route beyond the veth.
- `fake_clock=True`: the agent (only) runs with libfaketime preloaded
  (FakeClock); device "clock" steps its wall clock by `step_s` seconds
  while its monotonic and boot-time clocks run on.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from simulator.clock import FakeClock
from simulator.dns import SimDns
from simulator.netcut import NetCut
from simulator.netns import NetnsError, SimNetns
from simulator.screen import stop_process
from simulator.terminal import SimTerminal, merge_sections, render_toml

STACK_DEVICES: dict[str, tuple[str, ...]] = {
    "uplink": ("up",),
    "agent": ("kill9",),
    "credentials": ("revoke", "provision"),
    "dns": ("mode",),
    "clock": ("step_s",),
}
PAYMENT_NAME = "pay.posagent.test"  # the payment host's name under netns=True


class StackError(RuntimeError):
    """A part of the stack did not start (the message says which and why)."""


def posagent_argv() -> list[str]:
    """How to run the `posagent` CLI with this interpreter."""
    return [sys.executable, "-m", "agent.commands.main"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def parse_ts(text: str) -> float:
    """Epoch seconds from an RFC 3339 / ISO timestamp ("...Z" allowed); 0.0 if unparsable."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return 0.0


@dataclass
class FaultLog:
    """Fault events seen in the agent's log, in order."""

    events: list[dict[str, Any]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def feed(self, line: str) -> None:
        with self.lock:
            self.lines.append(line.rstrip("\n"))
            if len(self.lines) > 5000:
                del self.lines[:1000]
        try:
            rec = json.loads(line)
        except ValueError:
            return
        if not isinstance(rec, dict):
            return
        ev = rec.get("event")
        if ev == "agent_started":
            self.started.set()
        if ev in ("fault_raised", "fault_cleared"):
            rec["state"] = "raised" if ev == "fault_raised" else "cleared"
            rec["at"] = parse_ts(str(rec.get("timestamp", ""))) or time.time()
            with self.lock:
                self.events.append(rec)

    def find(
        self, key: str, state: str = "raised", subject: str | None = None
    ) -> dict[str, Any] | None:
        """The first event of key in state (and subject, when given)."""
        with self.lock:
            for e in self.events:
                same = e.get("key") == key and e["state"] == state
                if same and (subject is None or e.get("subject") == subject):
                    return e
        return None

    def tail(self, n: int = 40) -> list[str]:
        with self.lock:
            return self.lines[-n:]


@dataclass
class BundleInfo:
    """One bundle, from the agent's spool or the collector."""

    bundle_id: str
    key: str
    kind: str
    screenshot: str
    where: str  # spool state (new/cur/sent/failed) or "collector"
    path: Path | None = None
    received_at: float = 0.0
    created_at: float = 0.0


class Stack:
    """Terminal twins + collector + netcut + agent, all under workdir."""

    def __init__(
        self,
        workdir: Path,
        *,
        screen: str = "none",
        collector: bool = True,
        agent_config: dict[str, Any] | None = None,
        collector_config: dict[str, Any] | None = None,
        log: Callable[[str], None] | None = None,
        disk_mib: int = 0,
        netns: bool = False,
        fake_clock: bool = False,
        agent_argv: list[str] | None = None,
        agent_environ: dict[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.extra_config = agent_config or {}
        self.extra_collector = collector_config or {}
        app_cfg = self.extra_config.get("app", {})
        net_cfg = self.extra_config.get("network", {})
        self._term_args: dict[str, Any] = {
            "screen": screen,
            "pos_app": bool(isinstance(app_cfg, dict) and app_cfg.get("process")),
            "payment_tls": bool(isinstance(net_cfg, dict) and net_cfg.get("tls")),
            "disk_mib": disk_mib,
        }
        self.term = SimTerminal(self.workdir / "terminal", **self._term_args)
        self.want_netns = netns
        self.want_fake_clock = fake_clock
        self.netns: SimNetns | None = None
        self.dns: SimDns | None = None
        self.clock: FakeClock | None = None
        self.with_collector = collector
        self.say = log or (lambda _m: None)
        self.collector_proc: subprocess.Popen[bytes] | None = None
        self.agent_proc: subprocess.Popen[bytes] | None = None
        self.netcut: NetCut | None = None
        self.collector_url = ""
        self.faults = FaultLog()
        self.agent_config_path = self.workdir / "agent.toml"
        self.token_path = self.workdir / "token"
        self.current_token = ""
        self.operator_login: tuple[str, str] = ("", "")
        self.collector_config_path = self.workdir / "collector.toml"
        self._reader: threading.Thread | None = None
        self._http = requests.Session()
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        root = str(Path(__file__).resolve().parent.parent)
        self.env["PYTHONPATH"] = root + os.pathsep + self.env.get("PYTHONPATH", "")
        self.env.pop("POSAGENT_CONFIG", None)
        self.agent_argv = agent_argv or posagent_argv()
        self.agent_environ = agent_environ

    # ----------------------------------------------------------------- start

    def start(self) -> Stack:
        """Start every part; on any failure stop what started and raise StackError."""
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if self.want_netns:
                self._start_netns()
            if self.want_fake_clock:
                self.clock = FakeClock(self.workdir / "faketime").start()
            self.term.start()
            self.say(
                "terminal: printer on dev/ttyS0, PIN pad on dev/ttyUSB0, payment host "
                f"{self.term.host.address}, screen "
                + (self.term.screen.backend if self.term.screen else "none")
                + (
                    f" {self.term.screen.display}"
                    if self.term.screen and self.term.screen.display
                    else ""
                )
            )
            if self.term.screen and self.term.screen.note:
                self.say(f"screen: {self.term.screen.note}")
            key_path = self.workdir / "keys" / f"{self.term.device_id}.key"
            key_path.parent.mkdir(parents=True, exist_ok=True)
            key_path.write_text(secrets.token_hex(32) + "\n")
            key_path.chmod(0o600)
            token_path = self.token_path
            endpoint = ""
            if self.term.payment_ca_file:
                self.env["SSL_CERT_FILE"] = self.term.payment_ca_file
            if self.with_collector:
                self._start_collector(token_path)
                self.netcut = NetCut(
                    "127.0.0.1",
                    int(self.collector_url.rsplit(":", 1)[1]),
                    host=self.netns.host_ip if self.netns is not None else "127.0.0.1",
                )
                self.netcut.start()
                endpoint = self.netcut.url
                self.say(f"collector: {self.collector_url} (agent uploads via {endpoint})")
            sections = self.term.agent_sections(endpoint, str(token_path), str(key_path))
            if self.netns is not None:
                sections["network"]["payment_hosts"] = [f"{PAYMENT_NAME}:{self.term.host.port}"]
            sections = merge_sections(sections, self.extra_config)
            self.agent_config_path.write_text(render_toml(sections))
            self._start_agent()
        except BaseException as e:
            self.close()
            if isinstance(e, StackError | KeyboardInterrupt):
                raise
            raise StackError(f"{type(e).__name__}: {e}") from e
        return self

    def _start_netns(self) -> None:
        """Namespace + veth, the DNS twin on the host end, the payment host bound there too."""
        if self._term_args["payment_tls"]:
            raise StackError("netns with [network] tls = true is not supported")
        try:
            self.netns = SimNetns().start()
        except NetnsError as e:
            raise StackError(f"network namespace: {e}") from e
        ip = self.netns.host_ip
        self.term = SimTerminal(self.workdir / "terminal", payment_bind=ip, **self._term_args)
        self.dns = SimDns({PAYMENT_NAME: ip}, host=ip, port=53).start()
        self.netns.write_etc(ip)
        self.say(
            f"netns: {self.netns.name}, agent at {self.netns.ns_ip}, DNS twin {ip}:53 "
            f"({PAYMENT_NAME} -> {ip})"
        )

    def agent_env(self) -> dict[str, str]:
        """The agent's environment: the stack's (or agent_environ), plus libfaketime under
        fake_clock."""
        env = dict(self.env if self.agent_environ is None else self.agent_environ)
        if self.term.payment_ca_file:
            env["SSL_CERT_FILE"] = self.term.payment_ca_file
        if self.clock is not None:
            env.update(self.clock.env())
        return env

    def set_dns_mode(self, mode: str) -> None:
        """Switch the DNS twin (ok | servfail | nxdomain | silent); StackError without netns."""
        if self.dns is None:
            raise StackError("the stack has no DNS twin (scenario key netns = true)")
        self.dns.set_mode(mode)

    def step_clock(self, seconds: float) -> float:
        """Step the agent's wall clock by seconds; returns the total offset."""
        if self.clock is None:
            raise StackError("the agent has no fake clock (scenario key fake_clock = true)")
        return self.clock.step(seconds)

    def _start_collector(self, token_path: Path) -> None:
        port = free_port()
        cdir = self.workdir / "collector"
        cfg = {
            "agent": {"log_format": "json", "state_dir": str(cdir / "unused")},
            "collector": {
                "listen": f"127.0.0.1:{port}",
                "data_dir": str(cdir / "data"),
                "tokens_file": str(cdir / "tokens"),
                "device_keys_dir": str(self.workdir / "keys"),
                "rate_per_minute": 10000,
                **self.extra_collector,
            },
        }
        self.collector_config_path.write_text(render_toml(cfg))
        self._add_device(rotate=False)
        self.provision_token()
        self._add_operator()
        self.collector_log = (self.workdir / "collector.log").open("wb")
        self.collector_proc = subprocess.Popen(
            [*posagent_argv(), "collector", "serve", "--config", str(self.collector_config_path)],
            stdout=self.collector_log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        self.collector_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.collector_proc.poll() is not None:
                raise StackError(
                    f"collector exited ({self.collector_proc.returncode}): "
                    + _tail(self.workdir / "collector.log")
                )
            with contextlib.suppress(requests.RequestException):
                if self._http.get(self.collector_url + "/healthz", timeout=1).ok:
                    return
            time.sleep(0.1)
        raise StackError("collector did not answer /healthz within 20 s")

    def _add_device(self, *, rotate: bool) -> None:
        """Register (or rotate) the device on the collector; keeps the token it printed."""
        r = subprocess.run(
            [
                *posagent_argv(),
                "collector",
                "add-device",
                self.term.device_id,
                "--config",
                str(self.collector_config_path),
                *(["--rotate"] if rotate else []),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env=self.env,
        )
        if r.returncode != 0 or not r.stdout.strip():
            raise StackError(f"collector add-device failed ({r.returncode}): {r.stderr.strip()}")
        self.current_token = r.stdout.strip()

    def _collector_cli(self, *args: str, stdin: str | None = None) -> str:
        """Run `posagent collector ARGS --config ...`; its stdout (StackError on failure)."""
        r = subprocess.run(
            [*posagent_argv(), "collector", *args, "--config", str(self.collector_config_path)],
            capture_output=True,
            text=True,
            input=stdin,
            timeout=60,
            env=self.env,
        )
        if r.returncode != 0:
            raise StackError(f"collector {args[0]} {args[1]} failed ({r.returncode}): {r.stderr}")
        return r.stdout.strip()

    def _add_operator(self) -> None:
        """An admin with a generated password (for the page) and an API token (our reads)."""
        name, password = "operator", secrets.token_urlsafe(12)
        self._collector_cli(
            "user", "add", name, "--role", "admin", "--password-stdin", stdin=password + "\n"
        )
        token = self._collector_cli("token", "create", name, "--name", "simulator")
        self._http.headers["Authorization"] = f"Bearer {token}"
        self.operator_login = (name, password)

    def revoke_token(self) -> None:
        """Rotate the device's token on the collector: the agent's copy stops being valid."""
        self._add_device(rotate=True)

    def provision_token(self) -> None:
        """Write the collector's current token to the agent's token_file."""
        self.token_path.write_text(self.current_token + "\n")
        self.token_path.chmod(0o600)

    def kill9_agent(self) -> int:
        """SIGKILL the agent's process group (no clean stop), then start it again; the old pid."""
        if self.agent_proc is None:
            raise StackError("the agent is not running")
        old = self.agent_proc
        with contextlib.suppress(ProcessLookupError):
            os.killpg(old.pid, signal.SIGKILL)
        old.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(2)
        self.faults.started.clear()
        self._start_agent()
        return old.pid

    @property
    def http(self) -> requests.Session:
        """The admin's session on the collector (its API token in the headers)."""
        return self._http

    def start_agent(self) -> None:
        """Start the agent again after `stop_agent` (same config and state dir)."""
        if self.agent_proc is not None and self.agent_proc.poll() is None:
            raise StackError("the agent is already running")
        self.faults.started.clear()
        self._start_agent()

    def _start_agent(self) -> None:
        argv = [*self.agent_argv, "run", "--config", str(self.agent_config_path)]
        if self.netns is not None:
            argv = self.netns.exec_argv(argv)
        self.agent_proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.agent_env(),
            start_new_session=True,
        )
        agent_log = (self.workdir / "agent.log").open("a")
        proc = self.agent_proc

        def read() -> None:
            assert proc.stdout is not None
            with agent_log:
                for raw in proc.stdout:
                    line = raw.decode("utf-8", "replace")
                    agent_log.write(line)
                    agent_log.flush()
                    self.faults.feed(line)

        self._reader = threading.Thread(target=read, name="agent-log", daemon=True)
        self._reader.start()
        if not self.faults.started.wait(20):
            code = proc.poll()
            raise StackError(
                "agent did not start within 20 s"
                + (f" (exit {code})" if code is not None else "")
                + ": "
                + " | ".join(self.faults.tail(5))
            )
        self.say(f"agent: pid {proc.pid}, config {self.agent_config_path}")

    # ----------------------------------------------------------------- observe

    def spool_bundles(self) -> list[BundleInfo]:
        """Every bundle in the agent's spool (new, cur, sent, failed), oldest first."""
        out: list[BundleInfo] = []
        spool = self.term.state / "spool"
        for where in ("new", "cur", "sent", "failed"):
            d = spool / where
            if not d.is_dir():
                continue
            for p in d.glob("*.zip"):
                m = read_manifest(p)
                if m is None:
                    continue
                trig = m.get("trigger") or {}
                red = m.get("redaction") or {}
                out.append(
                    BundleInfo(
                        str(m.get("bundle_id", p.name.split(".")[0])),
                        str(trig.get("key", "")),
                        str(trig.get("kind", "")),
                        str(red.get("screenshot", "")),
                        where,
                        p,
                        created_at=parse_ts(str(m.get("created_at", ""))),
                    )
                )
        return sorted(out, key=lambda b: b.bundle_id)

    def collector_bundles(self) -> list[BundleInfo]:
        """Every bundle the collector stored for this device (API, newest first)."""
        if not self.collector_url:
            return []
        try:
            r = self._http.get(
                self.collector_url + "/v1/bundles",
                params={"device": self.term.device_id, "limit": "500"},
                timeout=5,
            )
            r.raise_for_status()
            doc = r.json()
        except (requests.RequestException, ValueError):
            return []
        return [
            BundleInfo(
                str(b["bundle_id"]),
                str(b.get("fault_key", "")),
                str(b.get("trigger_kind", "")),
                str(b.get("screenshot", "")),
                "collector",
                received_at=parse_ts(str(b.get("received_at", ""))),
                created_at=parse_ts(str(b.get("created_at", ""))),
            )
            for b in doc.get("bundles", [])
        ]

    def download(self, bundle_id: str) -> bytes:
        """The collector's copy of a bundle (the zip)."""
        r = self._http.get(f"{self.collector_url}/v1/bundles/{bundle_id}/download", timeout=10)
        r.raise_for_status()
        return r.content

    # ----------------------------------------------------------------- uplink

    def cut_uplink(self) -> None:
        """The collector becomes unreachable for the agent."""
        if self.netcut is not None:
            self.netcut.cut()

    def restore_uplink(self) -> None:
        """The collector is reachable again."""
        if self.netcut is not None:
            self.netcut.restore()

    # ----------------------------------------------------------------- stop

    def stop_agent(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM the agent and wait; returns its exit code."""
        if self.agent_proc is None:
            return None
        stop_process(self.agent_proc, timeout_s)
        if self._reader is not None:
            self._reader.join(2)
        code = self.agent_proc.returncode
        self.agent_proc = None
        return code

    def close(self) -> None:
        """Stop agent, proxy, collector and twins (each even if another fails)."""
        with contextlib.suppress(Exception):
            self.stop_agent()
        if self.netcut is not None:
            with contextlib.suppress(Exception):
                self.netcut.stop()
            self.netcut = None
        if self.collector_proc is not None:
            with contextlib.suppress(Exception):
                stop_process(self.collector_proc)
            self.collector_proc = None
            with contextlib.suppress(Exception):
                self.collector_log.close()
        with contextlib.suppress(Exception):
            self.term.close()
        if self.dns is not None:
            with contextlib.suppress(Exception):
                self.dns.stop()
            self.dns = None
        if self.netns is not None:
            with contextlib.suppress(Exception):
                self.netns.stop()
            self.netns = None
        self._http.close()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_manifest(path: Path) -> dict[str, Any] | None:
    """manifest.json of a bundle zip; None when unreadable (being moved, corrupt)."""
    try:
        with zipfile.ZipFile(path) as z:
            doc = json.loads(z.read("manifest.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return doc if isinstance(doc, dict) else None


def bundle_texts(data: bytes) -> dict[str, str]:
    """Every text/JSON entry of a bundle zip, decoded (images skipped)."""

    out: dict[str, str] = {}
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for name in z.namelist():
            if name.endswith((".png", ".jpg")):
                continue
            out[name] = z.read(name).decode("utf-8", "replace")
    return out


def bundle_names(data: bytes) -> list[str]:
    """Entry names of a bundle zip."""

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return z.namelist()


def _tail(path: Path, n: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
