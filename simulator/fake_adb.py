"""A fake `adb` executable answering from a JSON state file, and the API tests use to drive it.

Run as `python -m simulator.fake_adb ARGS...` (a launcher script named `adb`
does that; put its directory first on PATH). The state file comes from
$POSAGENT_SIM_ADB_STATE. Supported: `devices`, `get-state`, `reconnect`,
`start-server`, `kill-server`, `[-s SERIAL] shell CMD...` with `dumpsys
battery|connectivity|window`, `dumpsys dropbox [--print] [DATE] [TIME] [TAG]`,
`getprop [KEY]`, `logcat -d [-v threadtime] [-t N | -T 'MM-DD HH:MM:SS.mmm']`,
`pidof NAME`, `ls -l DIR`, `stat -c %Y FILE`, `date [+FORMAT]`,
`screencap -p`, `echo`, `true`, commands joined by `;` and piped through
`head -n N|-c N` / `tail -n N`, and `[-s SERIAL] exec-out screencap -p` (a PNG
drawn from the state with Pillow). The device's clock is this machine's plus
`clock_offset_s`, shown in UTC; dropbox entries, files and dirs ("ok",
"denied", "absent") and logcat lines come from the state. A device can be
"device", "offline", "unauthorized" or "gone" (not listed: "error: device
'X' not found"), and `hang: true` makes every command sleep until killed.
Every invocation is appended to the state's call log.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from simulator.state import read_json, write_json_atomic

ENV_STATE = "POSAGENT_SIM_ADB_STATE"
DEFAULT_SERIAL = "SIM0001"

DEFAULT_PROPS = {
    "ro.product.model": "SimPOS 1",
    "ro.product.brand": "posagent",
    "ro.product.manufacturer": "posagent",
    "ro.product.device": "simpos",
    "ro.build.version.release": "13",
    "ro.build.version.sdk": "33",
    "ro.build.fingerprint": "posagent/simpos/simpos:13/TQ3A.230901.001/1:user/release-keys",
}

_STATUS_CODES = {"Unknown": 1, "Charging": 2, "Discharging": 3, "Not charging": 4, "Full": 5}
_HEALTH_CODES = {
    "Unknown": 1,
    "Good": 2,
    "Overheat": 3,
    "Dead": 4,
    "Over voltage": 5,
    "Unspecified failure": 6,
    "Cold": 7,
}


def default_device() -> dict[str, Any]:
    """The state of a healthy simulated Android terminal."""
    return {
        "state": "device",
        "hang": False,
        "reconnect_restores": True,
        "battery": {
            "ac": True,
            "usb": False,
            "wireless": False,
            "dock": False,
            "status": "Charging",
            "health": "Good",
            "present": True,
            "level": 80,
            "scale": 100,
            "voltage_mv": 4200,
            "temp_c": 30.0,
            "technology": "Li-ion",
            "updates_stopped": False,
        },
        "network": {
            "id": 101,
            "type": "ETHERNET",
            "interface": "eth0",
            "connected": True,
            "validated": True,
            "address": "192.0.2.10/24",
            "gateway": "192.0.2.1",
        },
        "focus": {"package": "com.example.pos", "activity": "com.example.pos.SaleActivity"},
        "props": dict(DEFAULT_PROPS),
        "processes": {"com.example.pos": [4242]},
        "logcat": "01-01 00:00:00.000  4242  4242 I PosApp  : sale screen ready\n",
        "screen": {"width": 320, "height": 240, "color": [30, 120, 200]},
        "outputs": {},
        "clock_offset_s": 0.0,
        # [{"at": epoch s, "tag": "data_app_crash", "text": "..."}], oldest first
        "dropbox": [],
        # path -> {"mtime": epoch s, "size": n, "mode": "-rw-r-----", "owner": .., "group": ..}
        "files": {},
        # as `adb shell` (user shell) sees them on a production build
        "dirs": {"/data/tombstones": "denied", "/data/anr": "denied", "/sdcard": "ok"},
    }


# --------------------------------------------------------------------------- renderers


def render_dumpsys_battery(b: Mapping[str, Any]) -> str:
    """`dumpsys battery` in the AOSP layout (as in the captured dumps)."""

    def tf(v: Any) -> str:
        return "true" if v else "false"

    lines = ["Current Battery Service state:"]
    if b.get("updates_stopped"):
        lines.append("  (UPDATES STOPPED -- use 'reset' to restart)")
    temp = round(float(b.get("temp_c", 30.0)) * 10)
    lines += [
        f"  AC powered: {tf(b.get('ac'))}",
        f"  USB powered: {tf(b.get('usb'))}",
        f"  Wireless powered: {tf(b.get('wireless'))}",
        f"  Dock powered: {tf(b.get('dock'))}",
        "  Max charging current: 1500000",
        "  Max charging voltage: 5000000",
        "  Charge counter: 3376000",
        f"  status: {_STATUS_CODES.get(str(b.get('status')), 1)}",
        f"  health: {_HEALTH_CODES.get(str(b.get('health')), 1)}",
        f"  present: {tf(b.get('present', True))}",
        f"  level: {int(b.get('level', 0))}",
        f"  scale: {int(b.get('scale', 100))}",
        f"  voltage: {int(b.get('voltage_mv', 0))}",
        f"  temperature: {temp}",
        f"  technology: {b.get('technology', 'Li-ion')}",
        "  Charging state: 0",
        "  Charging policy: 0",
        "  Capacity level: 3",
    ]
    return "\n".join(lines) + "\n"


def render_dumpsys_connectivity(n: Mapping[str, Any] | None) -> str:
    """`dumpsys connectivity` head in the Android 12 layout (as the RK3588 dump)."""
    if not n:
        return (
            "NetworkProviders for: WifiNetworkFactory Ethernet\n\n"
            "Active default network: none\n\nCurrent Networks:\n\n"
        )
    nid = int(n.get("id", 100))
    typ = str(n.get("type", "ETHERNET")).upper()
    label = {"ETHERNET": "Ethernet", "WIFI": "WIFI", "MOBILE": "MOBILE[LTE]"}.get(typ, typ)
    transport = {"ETHERNET": "ETHERNET", "WIFI": "WIFI", "MOBILE": "CELLULAR"}.get(typ, typ)
    state = "CONNECTED" if n.get("connected", True) else "DISCONNECTED"
    caps = "NOT_METERED&INTERNET&NOT_RESTRICTED&TRUSTED&NOT_VPN"
    if n.get("validated", True):
        caps += "&VALIDATED"
    iface = n.get("interface", "eth0")
    addr = n.get("address", "192.0.2.10/24")
    gw = n.get("gateway", "192.0.2.1")
    nai = (
        f"  NetworkAgentInfo{{network{{{nid}}}  handle{{437197393933}}  ni{{{label} {state} "
        f"extra: }} Score(70 ; KeepConnected : 0 ; Policies : IS_UNMETERED)  "
        f"lp{{{{InterfaceName: {iface} LinkAddresses: [ {addr} ] DnsAddresses: [ /{gw} ] "
        f"Domains: null MTU: 0 Routes: [ 0.0.0.0/0 -> {gw} {iface} mtu 0 ]}}}}  "
        f"nc{{[ Transports: {transport} Capabilities: {caps} LinkUpBandwidth>=100000Kbps]}}}}"
    )
    return (
        "NetworkProviders for: WifiNetworkFactory Ethernet VpnNetworkProvider:0\n\n"
        f"Active default network: {nid}\n\n"
        "Current Networks:\n"
        f"{nai}\n"
        "    Requests: REQUEST:1 LISTEN:0 BACKGROUND_REQUEST:0 total:1\n\n"
        "Status for known UIDs:\n\n"
    )


def render_dumpsys_window(f: Mapping[str, Any] | None) -> str:
    """The focus lines of `dumpsys window` in the Android 10+ layout."""
    if not f or not f.get("package"):
        return (
            "WINDOW MANAGER WINDOWS (dumpsys window windows)\n"
            "  mCurrentFocus=null\n  mFocusedApp=null\n"
        )
    pkg = str(f["package"])
    act = str(f.get("activity") or f"{pkg}.MainActivity")
    short = act[len(pkg) :] if act.startswith(pkg + ".") else act
    return (
        "WINDOW MANAGER WINDOWS (dumpsys window windows)\n"
        f"  Window #0 Window{{5e9b13b u0 {pkg}/{act}}}:\n"
        "    mDisplayId=0 rootTaskId=7\n"
        f"  mCurrentFocus=Window{{5e9b13b u0 {pkg}/{act}}}\n"
        f"  mFocusedApp=ActivityRecord{{a646676 u0 {pkg}/{short} t7}}\n"
    )


def device_now(dev: Mapping[str, Any]) -> float:
    """The simulated device's wall clock (epoch seconds)."""
    return time.time() + float(dev.get("clock_offset_s") or 0.0)


def _dropbox_time(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


def render_dumpsys_dropbox(entries: Sequence[Mapping[str, Any]], args: Sequence[str]) -> str:
    """`dumpsys dropbox` as DropBoxManagerService.dump writes it (Android 10+ layout).

    Every argument that is not an option must be part of the entry's date or equal its
    tag; --print writes each entry's text after a line of 40 '='.
    """
    do_print = any(a in ("-p", "--print") for a in args)
    search = [a for a in args if not a.startswith("-")]
    out = [
        f"Drop box contents: {len(entries)} entries",
        "Max entries: 1000",
        "Low priority rate limit period: 2000 ms",
        "Low priority tags: {data_app_wtf, keymaster, system_server_wtf, system_app_strictmode}",
    ]
    if search:
        out.append("Searching for: " + " ".join(search))
    out.append("")
    found = 0
    for e in sorted(entries, key=lambda e: float(e.get("at", 0))):
        date, tag = _dropbox_time(float(e.get("at", 0))), str(e.get("tag", ""))
        if not all(a in date or a == tag for a in search):
            continue
        found += 1
        text = str(e.get("text", ""))
        if do_print:
            out.append("=" * 40)
        out.append(f"{date} {tag} (text, {len(text.encode())} bytes)")
        if do_print:
            out.append(text if text.endswith("\n") or not text else text + "\n")
    if not found:
        out.append("(No entries found.)")
    body = "\n".join(out) + "\n"
    if not args:
        body += "\nUsage: dumpsys dropbox [--print|--file] [YYYY-mm-dd] [HH:MM:SS] [tag]\n"
    return body


def logcat_time(at: float) -> str:
    """A threadtime timestamp ("MM-DD HH:MM:SS.mmm", UTC) for epoch seconds."""
    ms = int((at - int(at)) * 1000)
    return time.strftime("%m-%d %H:%M:%S", time.gmtime(int(at))) + f".{ms:03d}"


def render_logcat_line(at: float, pid: int, tid: int, level: str, tag: str, msg: str) -> str:
    """One `logcat -v threadtime` line."""
    return f"{logcat_time(at)} {pid:5d} {tid:5d} {level} {tag:<8}: {msg}"


def _logcat(dev: Mapping[str, Any], args: list[str]) -> tuple[int, bytes, str]:
    lines = str(dev.get("logcat", "")).splitlines(keepends=True)
    if "-t" in args:
        i = args.index("-t")
        try:
            n = int(args[i + 1])
        except (IndexError, ValueError):
            return 1, b"", "logcat: bad -t"
        lines = lines[-n:]
    if "-T" in args:
        i = args.index("-T")
        since = args[i + 1] if i + 1 < len(args) else ""
        if len(since) < 18:
            return 1, b"", f"logcat: bad -T {since!r}"
        lines = [ln for ln in lines if ln[:18] >= since[:18]]
    return 0, "".join(lines).encode(), ""


def _ls(dev: Mapping[str, Any], args: list[str]) -> tuple[int, bytes, str]:
    paths = [a for a in args if not a.startswith("-")]
    if not paths:
        return 1, b"", "ls: missing operand"
    path = paths[0].rstrip("/") or "/"
    dirs: Mapping[str, str] = dev.get("dirs") or {}
    files: Mapping[str, Mapping[str, Any]] = dev.get("files") or {}
    state = dirs.get(path, "ok" if any(f.startswith(path + "/") for f in files) else "absent")
    if state == "denied":
        return 1, b"", f"ls: {path}: Permission denied"
    if state != "ok":
        return 1, b"", f"ls: {path}: No such file or directory"
    rows = []
    for name, f in sorted(files.items()):
        parent, _, base = name.rpartition("/")
        if parent != path:
            continue
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(float(f.get("mtime", 0))))
        rows.append(
            f"{f.get('mode', '-rw-r-----')} 1 {f.get('owner', 'system')} "
            f"{f.get('group', 'system')} {int(f.get('size', 0))} {when} {base}"
        )
    return 0, "".join(r + "\n" for r in [f"total {len(rows) * 8}", *rows]).encode(), ""


def _stat(dev: Mapping[str, Any], args: list[str]) -> tuple[int, bytes, str]:
    if args[:2] != ["-c", "%Y"] or len(args) < 3:
        return 1, b"", "stat: only -c %Y is simulated"
    f = (dev.get("files") or {}).get(args[2])
    if f is None:
        return 1, b"", f"stat: '{args[2]}': No such file or directory"
    return 0, f"{int(float(f.get('mtime', 0)))}\n".encode(), ""


def _date(dev: Mapping[str, Any], args: list[str]) -> tuple[int, bytes, str]:
    now = device_now(dev)
    if args and args[0].startswith("+"):
        fmt = args[0][1:].replace("%s", str(int(now)))
        return 0, (time.strftime(fmt, time.gmtime(now)) + "\n").encode(), ""
    return 0, (time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(now)) + "\n").encode(), ""


def _filter(words: list[str], data: bytes) -> tuple[int, bytes, str]:
    """`head -n N`, `head -c N` or `tail -n N` over a pipe."""
    cmd, args = words[0], words[1:]
    try:
        opt, n = args[0], int(args[1])
    except (IndexError, ValueError):
        return 1, b"", f"{cmd}: bad arguments {args}"
    if cmd == "head" and opt == "-c":
        return 0, data[:n], ""
    lines = data.splitlines(keepends=True)
    if cmd == "head" and opt == "-n":
        return 0, b"".join(lines[:n]), ""
    if cmd == "tail" and opt == "-n":
        return 0, b"".join(lines[-n:] if n else []), ""
    return 1, b"", f"{cmd}: {opt} is not simulated"


def render_getprop(props: Mapping[str, str]) -> str:
    """`getprop` layout: sorted `[key]: [value]` lines."""
    return "".join(f"[{k}]: [{v}]\n" for k, v in sorted(props.items()))


def render_screencap(screen: Mapping[str, Any], focus: Mapping[str, Any] | None) -> bytes:
    """A PNG of the simulated screen: a solid background with a bar naming the focused app."""
    from PIL import Image, ImageDraw  # lazy: fake adb answers most calls without Pillow

    w, h = int(screen.get("width", 320)), int(screen.get("height", 240))
    color = tuple(int(c) for c in screen.get("color", [30, 120, 200]))[:3]
    img = Image.new("RGB", (max(1, w), max(1, h)), color)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, w, max(1, h // 8)), fill=(255, 255, 255))
    label = str((focus or {}).get("package") or "no focus")
    draw.text((4, 2), label, fill=(0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- the executable


class _Exit(Exception):
    def __init__(self, code: int, out: bytes = b"", err: str = "") -> None:
        super().__init__(code)
        self.code, self.out, self.err = code, out, err


def _shell(dev: Mapping[str, Any], words: list[str]) -> tuple[int, bytes, str]:
    outputs: Mapping[str, Any] = dev.get("outputs") or {}
    line = " ".join(words).strip()
    if line in outputs:  # a verbatim override (e.g. a captured fixture)
        o = outputs[line]
        if isinstance(o, dict):
            return (
                int(o.get("exit", 0)),
                str(o.get("stdout", "")).encode(),
                str(o.get("stderr", "")),
            )
        return 0, str(o).encode(), ""
    try:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";|&")
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError:
        return 2, b"", "/system/bin/sh: syntax error"
    code, out, errs = 0, b"", []
    for command in _split(tokens, ";"):  # `a; b`: both run, the last one's status
        stages = _split(command, "|")
        if not stages or not all(stages):
            return 2, b"", "/system/bin/sh: syntax error"
        code, data, err = _command(dev, stages[0])
        for stage in stages[1:]:  # `a | head -n N`: the pipe's status is the last stage's
            if err:
                errs.append(err)
            code, data, err = _filter(stage, data)
        out += data
        if err:
            errs.append(err)
    return code, out, "\n".join(errs)


def _split(tokens: list[str], sep: str) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    for t in tokens:
        if t == sep:
            parts.append([])
        else:
            parts[-1].append(t)
    return [p for p in parts if p] if sep == ";" else parts


def _command(dev: Mapping[str, Any], argv: list[str]) -> tuple[int, bytes, str]:
    cmd, args = argv[0], argv[1:]
    if cmd == "dumpsys" and args[:1] == ["battery"]:
        return 0, render_dumpsys_battery(dev.get("battery") or {}).encode(), ""
    if cmd == "dumpsys" and args[:1] == ["connectivity"]:
        return 0, render_dumpsys_connectivity(dev.get("network")).encode(), ""
    if cmd == "dumpsys" and args[:1] == ["window"]:
        return 0, render_dumpsys_window(dev.get("focus")).encode(), ""
    if cmd == "getprop":
        props: Mapping[str, str] = dev.get("props") or {}
        if args:
            return 0, (str(props.get(args[0], "")) + "\n").encode(), ""
        return 0, render_getprop(props).encode(), ""
    if cmd == "dumpsys" and args[:1] == ["dropbox"]:
        return 0, render_dumpsys_dropbox(dev.get("dropbox") or [], args[1:]).encode(), ""
    if cmd == "logcat" and "-d" in args:
        return _logcat(dev, args)
    if cmd == "ls":
        return _ls(dev, args)
    if cmd == "stat":
        return _stat(dev, args)
    if cmd == "date":
        return _date(dev, args)
    if cmd == "pidof":
        procs: Mapping[str, list[int]] = dev.get("processes") or {}
        pids = [p for name in args for p in procs.get(name, [])]
        if not pids:
            return 1, b"", ""
        return 0, (" ".join(str(p) for p in pids) + "\n").encode(), ""
    if cmd == "screencap" and "-p" in args:
        return 0, render_screencap(dev.get("screen") or {}, dev.get("focus")), ""
    if cmd == "echo":
        return 0, (" ".join(args) + "\n").encode(), ""
    if cmd == "true":
        return 0, b"", ""
    return 127, b"", f"/system/bin/sh: {cmd}: inaccessible or not found"


def _device(state: Mapping[str, Any], serial: str | None) -> tuple[str, dict[str, Any]]:
    devices: dict[str, dict[str, Any]] = state.get("devices") or {}
    listed = {s: d for s, d in devices.items() if d.get("state") != "gone"}
    if serial:
        if serial not in listed:
            raise _Exit(1, err=f"error: device '{serial}' not found")
        return serial, listed[serial]
    if not listed:
        raise _Exit(1, err="error: no devices/emulators found")
    if len(listed) > 1:
        raise _Exit(1, err="error: more than one device/emulator")
    s = next(iter(listed))
    return s, listed[s]


def run(argv: Sequence[str], state_path: Path) -> tuple[int, bytes, str]:
    """Execute one fake adb command line against the state file; (exit, stdout, stderr)."""
    state: dict[str, Any] = read_json(state_path, {}) or {}
    log = state.get("call_log")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps(list(argv)) + "\n")
    args = list(argv)
    serial: str | None = None
    while args and args[0] in ("-s", "-t", "-H", "-P", "-d", "-e"):
        flag = args.pop(0)
        if flag in ("-s", "-t", "-H", "-P") and args:
            value = args.pop(0)
            if flag == "-s":
                serial = value
    if not args:
        return 1, b"", "adb: usage: no command"
    cmd, rest = args[0], args[1:]
    serial = serial or os.environ.get("ANDROID_SERIAL") or None
    try:
        if cmd in ("start-server", "kill-server"):
            return 0, b"", ""
        if cmd == "devices":
            devices: dict[str, dict[str, Any]] = state.get("devices") or {}
            lines = ["List of devices attached"]
            lines += [
                f"{s}\t{d.get('state')}" for s, d in devices.items() if d.get("state") != "gone"
            ]
            return 0, ("\n".join(lines) + "\n\n").encode(), ""
        if cmd == "reconnect":
            devices = state.get("devices") or {}
            targets = [serial] if serial else list(devices)
            for s in targets:
                d = devices.get(s or "")
                if d is not None and d.get("reconnect_restores") and d.get("state") != "device":
                    d["state"] = "device"
            write_json_atomic(state_path, state)
            return 0, f"reconnecting {serial or ''} [device]\n".encode(), ""
        serial, dev = _device(state, serial)
        if dev.get("hang"):
            time.sleep(3600)
        st = dev.get("state", "device")
        if cmd == "get-state":
            if st == "device":
                return 0, b"device\n", ""
            return 1, b"", f"error: device {st}"
        if st == "offline":
            return 1, b"", "error: device offline"
        if st == "unauthorized":
            return 1, b"", "error: device unauthorized."
        if cmd == "shell":
            return _shell(dev, rest)
        if cmd == "exec-out":
            return _shell(dev, rest)
        return 1, b"", f"adb: unknown command {cmd}"
    except _Exit as e:
        return e.code, e.out, e.err


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the fake executable."""
    path = os.environ.get(ENV_STATE)
    if not path:
        sys.stderr.write(f"fake adb: ${ENV_STATE} is not set\n")
        return 1
    code, out, err = run(list(sys.argv[1:] if argv is None else argv), Path(path))
    if out:
        sys.stdout.buffer.write(out)
        sys.stdout.buffer.flush()
    if err:
        sys.stderr.write(err + "\n")
    return code


# --------------------------------------------------------------------------- test API


class FakeAdb:
    """Creates the launcher `adb` and the state file in `directory`; tests change the state.

    Put `path_dir` first on PATH (or use `env()`); the launcher also carries
    the state path, so `Shell(mode="adb", adb_path=str(fake.adb_path))` works
    without touching the environment.
    """

    def __init__(self, directory: Path, serial: str = DEFAULT_SERIAL) -> None:
        self.directory = Path(directory)
        self.path_dir = self.directory / "bin"
        self.path_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.directory / "adb_state.json"
        self.call_log = self.directory / "adb_calls.jsonl"
        self.serial = serial
        root = Path(__file__).resolve().parent.parent
        self.adb_path = self.path_dir / "adb"
        script = (
            "#!/bin/sh\n"
            f': "${{{ENV_STATE}:={self.state_path}}}"\n'
            f"export {ENV_STATE}\n"
            f'PYTHONPATH="{root}${{PYTHONPATH:+:$PYTHONPATH}}" '
            f'exec "{sys.executable}" -m simulator.fake_adb "$@"\n'
        )
        self.adb_path.write_text(script)
        self.adb_path.chmod(0o755)
        write_json_atomic(
            self.state_path,
            {"call_log": str(self.call_log), "devices": {serial: default_device()}},
        )

    def state(self) -> dict[str, Any]:
        """The whole state (devices by serial, call log path)."""
        data: dict[str, Any] = read_json(self.state_path, {})
        return data

    def device(self, serial: str | None = None) -> dict[str, Any]:
        """The state of one device."""
        dev: dict[str, Any] = self.state()["devices"][serial or self.serial]
        return dev

    def set(self, serial: str | None = None, **changes: Any) -> None:
        """Replace top-level keys of a device (state, hang, focus, processes, logcat, ...)."""
        st = self.state()
        st["devices"].setdefault(serial or self.serial, default_device()).update(changes)
        write_json_atomic(self.state_path, st)

    def set_battery(self, serial: str | None = None, **changes: Any) -> None:
        """Change battery fields (ac, usb, level, status, health, temp_c, updates_stopped...)."""
        st = self.state()
        st["devices"][serial or self.serial]["battery"].update(changes)
        write_json_atomic(self.state_path, st)

    def set_network(self, serial: str | None = None, **changes: Any) -> None:
        """Change the default network (connected, type, interface...); `id=None` for none."""
        st = self.state()
        dev = st["devices"][serial or self.serial]
        if "id" in changes and changes["id"] is None:
            dev["network"] = None
        else:
            dev["network"] = {**(dev.get("network") or {}), **changes}
        write_json_atomic(self.state_path, st)

    def set_output(self, command: str, stdout: str, serial: str | None = None) -> None:
        """Answer `shell <command>` verbatim with `stdout` (e.g. a captured fixture)."""
        st = self.state()
        st["devices"][serial or self.serial].setdefault("outputs", {})[command] = stdout
        write_json_atomic(self.state_path, st)

    def add_dropbox(
        self, tag: str, text: str, at: float | None = None, serial: str | None = None
    ) -> None:
        """A new dropbox entry (data_app_crash, data_app_anr, SYSTEM_TOMBSTONE...), now by default."""
        st = self.state()
        dev = st["devices"][serial or self.serial]
        when = device_now(dev) if at is None else at
        dev.setdefault("dropbox", []).append({"at": when, "tag": tag, "text": text})
        write_json_atomic(self.state_path, st)

    def log(
        self,
        message: str,
        tag: str = "PosApp",
        pid: int = 4242,
        level: str = "E",
        serial: str | None = None,
    ) -> str:
        """Append a logcat line stamped with the device's clock now; returns the line."""
        st = self.state()
        dev = st["devices"][serial or self.serial]
        line = render_logcat_line(device_now(dev), pid, pid, level, tag, message)
        dev["logcat"] = str(dev.get("logcat", "")) + line + "\n"
        write_json_atomic(self.state_path, st)
        return line

    def touch(
        self, path: str, mtime: float | None = None, size: int = 0, serial: str | None = None
    ) -> None:
        """Create or update a file on the device (a heartbeat, a tombstone); mtime now by default."""
        st = self.state()
        dev = st["devices"][serial or self.serial]
        when = device_now(dev) if mtime is None else mtime
        dev.setdefault("files", {})[path] = {"mtime": when, "size": size}
        write_json_atomic(self.state_path, st)

    def set_dir(self, path: str, state: str, serial: str | None = None) -> None:
        """A directory on the device is "ok", "denied" or "absent"."""
        st = self.state()
        st["devices"][serial or self.serial].setdefault("dirs", {})[path] = state
        write_json_atomic(self.state_path, st)

    def drop(self, serial: str | None = None) -> None:
        """The device falls off the bus: `error: device 'X' not found`."""
        self.set(serial, state="gone")

    def calls(self) -> list[list[str]]:
        """Every argv the fake adb received, in order."""
        try:
            return [json.loads(x) for x in self.call_log.read_text().splitlines() if x]
        except FileNotFoundError:
            return []

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment with the fake first on PATH and the state variable set."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.path_dir}{os.pathsep}{env.get('PATH', '')}"
        env[ENV_STATE] = str(self.state_path)
        return env


if __name__ == "__main__":
    raise SystemExit(main())
