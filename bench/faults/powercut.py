"""Power cuts: a qemu guest terminal running the posagent unit has its power cut again and again.

The guest (tests/field/qemu.py: Debian 12, the project installed by
systemd/install.sh, the real unit) captures a manual report every few seconds
(files dropped into its trigger dir by a load service) with a vfb screenshot
and every diagnostics collector, and uploads to a collector on this machine's
loopback (10.0.2.2 through slirp). Its disk is one raw image with
cache=writeback that persists across cuts; a cut is SIGKILL of qemu, so what
the guest kernel had not flushed to the virtual disk is gone, unlike a kill -9
on this machine. After each reboot the unit must come up (the spool opens)
and raise `power.unclean_shutdown`. The agent's log reaches the host through
the serial console as it is written, so what it acknowledged survives the
cut: a bundle logged `bundle_captured` or `upload_ok` is acknowledged, and at
the end (load stopped, spool drained, clean shutdown) each must be stored by
the collector and verify with the device key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.faults import Result

DEVICE = "T-PWR"
# A run that lived this long after READY has readings (monitors poll every 5-10 s) that an
# unclean-shutdown bundle must carry (issue 13 item 5: at most 5 s lost to a cut).
RUN_WITHOUT_READINGS_S = 10.0
CUTS = 30  # POSAGENT_POWERCUT_CUTS overrides; POSAGENT_POWERCUT_BUDGET_S stops cutting after that
TRIGGER_DIR = "/var/lib/posagent/trigger"
SPOOL = "/var/lib/posagent/spool"

LOAD_SH = f"""#!/bin/sh
# field tests: a merchant pressing "report a problem" every few seconds
d={TRIGGER_DIR}
boot=$(cat /proc/sys/kernel/random/boot_id)
n=0
while :; do
  if [ -d $d ]; then n=$((n+1)); echo "power cut load $boot $n" > $d/load-$n; fi
  sleep 3
done
"""

LOAD_UNIT = """\
[Unit]
Description=posagent field test: manual reports every few seconds
After=posagent.service
[Service]
ExecStart=/usr/local/sbin/posagent-field-load
[Install]
WantedBy=multi-user.target
"""


def agent_toml(port: int) -> str:
    """The guest's agent.toml: upload to the host's collector, fbdev screenshots, a trigger dir."""
    return f"""\
[agent]
device_id = "{DEVICE}"
site = "Field"

[upload]
endpoint = "http://10.0.2.2:{port}"
token_file = "/etc/posagent/token"

[network]
interfaces = ["eth0"]
payment_hosts = ["10.0.2.2:{port}"]

[screen]
backend = "fbdev"
timeout_s = 20.0

[capture]
trigger_dir = "{TRIGGER_DIR}"
# TCG runs the guest about ten times slower than a terminal: a wider capture budget
total_budget_s = 60.0
probe_timeout_s = 20.0
# reports every few seconds: above the default manual limit (3 at once, 6 an hour)
manual_per_hour = 3600.0
manual_burst = 100
"""


@dataclass
class Boot:
    """One power-on of the guest, as seen from the host."""

    index: int
    boot_id: str = ""
    btime: float = 0.0  # guest clock: when this boot started
    offset_s: float = 0.0  # guest clock minus host clock
    agent_s: float = 0.0  # power-on to the command agent answering
    active_s: float = 0.0  # power-on to posagent active (READY)
    ready_host: float = 0.0  # host clock when posagent was seen active
    cut_host: float = 0.0  # host clock at the cut
    events: list[dict[str, Any]] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _posagent() -> str:
    return str(Path(sys.executable).with_name("posagent"))


class Collector:
    """`posagent collector serve` on the host loopback, with the guest's token and key."""

    def __init__(self, work: Path, device_key: bytes):
        self.work = work
        self.port = _free_port()
        self.data = work / "collector-data"
        keys = work / "keys"
        keys.mkdir(parents=True, exist_ok=True)
        (keys / f"{DEVICE}.key").write_bytes(device_key + b"\n")
        self.config = work / "collector.toml"
        self.config.write_text(
            f'[agent]\nlog_format = "json"\n\n[collector]\nlisten = "127.0.0.1:{self.port}"\n'
            f'data_dir = "{self.data}"\ntokens_file = "{work / "tokens"}"\n'
            f'device_keys_dir = "{keys}"\nrate_per_minute = 100000\n'
        )
        r = subprocess.run(
            [_posagent(), "collector", "add-device", DEVICE, "--config", str(self.config)],
            capture_output=True,
            text=True,
            check=True,
        )
        self.token = r.stdout.strip()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait for /healthz."""
        log = open(self.work / "collector.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [_posagent(), "collector", "serve", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("collector did not start") from None
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop the server."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def blobs(self) -> dict[str, Path]:
        """Stored bundle files by id (the blob is the record)."""
        return {p.stem: p for p in (self.data / "bundles").glob("*/*.zip")}


def verify_blob(path: Path, key: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(manifest, timeline) of a stored bundle after checking its HMAC and entry digests."""
    with zipfile.ZipFile(path) as z:
        raw = z.read("manifest.json")
        sig = z.read("manifest.sig").decode().strip()
        if not hmac.compare_digest(sig, hmac.new(key, raw, hashlib.sha256).hexdigest()):
            raise ValueError("manifest.sig does not match")
        manifest = json.loads(raw)
        for f in manifest["files"]:
            data = z.read(f["name"])
            if hashlib.sha256(data).hexdigest() != f["sha256"]:
                raise ValueError(f"{f['name']}: digest mismatch")
        names = z.namelist()
        timeline = json.loads(z.read("timeline.json")) if "timeline.json" in names else []
    if isinstance(timeline, dict):
        timeline = timeline.get("readings", [])
    return manifest, list(timeline)


def _events_of(guest: Any, kind: str) -> list[dict[str, Any]]:
    from tests.field.qemu import json_events

    return [e for e in json_events(guest.console_text()) if e.get("event") == kind]


def _boot(guest: Any, boot: Boot, res: Result) -> bool:
    """Power on and wait for posagent READY; False (a stall counted) when it never comes."""
    from tests.field.qemu import GuestError

    try:
        guest.start()
        boot.agent_s = guest.wait_agent(timeout_s=300)
        boot.active_s = guest.wait_unit_active(timeout_s=240)
        boot.ready_host = time.time()
    except (GuestError, TimeoutError) as e:
        res.stall(f"boot {boot.index}: posagent not active: {str(e)[:300]}")
        return False
    boot.boot_id = guest.boot_id()
    t0 = time.time()
    up, _ = guest.read_file("/proc/uptime").decode().split()
    now = float(guest.run(["date", "+%s.%N"]).text)
    t1 = time.time()
    boot.offset_s = now - (t0 + t1) / 2
    boot.btime = now - float(up)
    return True


def _wait_event(guest: Any, kind: str, key: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(e.get("key") == key for e in _events_of(guest, kind)):
            return True
        if not guest.alive():
            return False
        time.sleep(0.5)
    return False


def _setup(guest: Any, port: int, token: str) -> None:
    guest.write_file("/etc/posagent/agent.toml", agent_toml(port), "0640", "root:posagent")
    guest.write_file("/etc/posagent/token", token + "\n", "0640", "root:posagent")
    guest.write_file("/etc/modules-load.d/vfb.conf", "vfb\n")
    guest.write_file("/usr/local/sbin/posagent-field-load", LOAD_SH, "0755")
    guest.write_file("/etc/systemd/system/posagent-field-load.service", LOAD_UNIT)
    guest.run(["modprobe", "vfb"])
    guest.run(["systemctl", "daemon-reload"])
    guest.run(["systemctl", "enable", "posagent", "posagent-field-load"])
    guest.run(["sync"])
    guest.run(["systemctl", "start", "posagent", "posagent-field-load"])


def run_cuts(
    res: Result,
    work: Path,
    cuts: int,
    seed: int,
    wait_s: tuple[float, float],
    budget_s: float = 0.0,
) -> dict[str, Any]:
    """Boot and set up, then `cuts` × (run a random time after READY, cut, boot again)."""
    from tests.field.qemu import Guest, build_image, raw_copy

    rng = random.Random(seed)
    t_img = time.monotonic()
    image = build_image()
    image_s = time.monotonic() - t_img
    col = Collector(work, image.device_key)
    col.start()
    disk = raw_copy(image, work / "disk.img")
    boots: list[Boot] = []
    guest = Guest(image, disk, work / "guest", net=True)
    kept: dict[str, str] = {}
    drained = False
    t0 = time.monotonic()
    try:
        first = Boot(0)
        boots.append(first)
        guest.start()
        first.agent_s = guest.wait_agent(timeout_s=300)
        _setup(guest, col.port, col.token)
        first.active_s = guest.wait_unit_active(timeout_s=240)
        first.ready_host = time.time()
        first.boot_id = guest.boot_id()
        for i in range(1, cuts + 1):
            if budget_s and time.monotonic() - t0 > budget_s:
                res.notes.append(f"stopped after {i - 1} of {cuts} cuts: budget {budget_s:.0f} s")
                break
            prev = boots[-1]
            time.sleep(rng.uniform(*wait_s))
            prev.cut_host = time.time()
            guest.power_cut()
            res.trials += 1
            prev.events = _events_of_all(guest)
            _progress(f"cut {i}/{cuts} after {prev.cut_host - prev.ready_host:.1f} s of READY")
            boot = Boot(i)
            boots.append(boot)
            if not _boot(guest, boot, res):
                guest.power_cut()
                boot.events = _events_of_all(guest)
                if not _boot(guest, boot, res):
                    break
        cut_s = time.monotonic() - t0
        _progress(f"{res.trials} cuts in {cut_s:.0f} s; draining the spool")
        if guest.alive():
            drained, kept = _finish(guest, image.device_key, res)
        boots[-1].events = _events_of_all(guest)
    finally:
        guest.power_cut()
        col.stop()
    res.notes.append(
        f"{res.trials} cuts in {cut_s / 60:.1f} min; image {image_s:.0f} s "
        f"({'built' if image.build_s else 'cached'})"
    )
    return _account(res, boots, col, image.device_key, drained, kept, wait_s)


def _finish(guest: Any, key: bytes, res: Result) -> tuple[bool, dict[str, str]]:
    """Stop the load, let the spool drain, stop the agent cleanly; what it kept, verified."""
    _wait_event(guest, "capture_done", "power.unclean_shutdown", 180)
    guest.run(["systemctl", "stop", "posagent-field-load"])
    guest.run(f"rm -f {TRIGGER_DIR}/load-*", check=False)
    drained = False
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        events = _events_of_all(guest)
        asked = sum(1 for e in events if e.get("event") == "fault_raised" and _manual(e))
        done = sum(1 for e in events if e.get("event") == "capture_done" and _manual(e))
        left = guest.run(f"ls {SPOOL}/new {SPOOL}/cur | grep -c zip", check=False).text.strip()
        if left == "0" and asked <= done:
            drained = True
            break
        time.sleep(2)
    guest.run(["systemctl", "stop", "posagent"])
    kept: dict[str, str] = {}
    for state in ("new", "cur", "failed"):
        names = guest.run(f"ls {SPOOL}/{state}", check=False).text.split()
        for name in names:
            m = re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", name)
            if not m:
                continue
            data = guest.read_file(f"{SPOOL}/{state}/{name}")
            path = Path(tempfile.mkdtemp()) / "b.zip"
            path.write_bytes(data)
            try:
                verify_blob(path, key)
                kept[m.group(0)] = state
            except (ValueError, KeyError, OSError, zipfile.BadZipFile) as e:
                kept[m.group(0)] = f"{state} (does not verify: {e})"
            finally:
                shutil.rmtree(path.parent, ignore_errors=True)
    guest.shutdown()
    return drained, kept


def _progress(text: str) -> None:
    print(f"    powercut: {text}", file=sys.stderr, flush=True)


def _manual(e: dict[str, Any]) -> bool:
    return e.get("key") == "manual.report"


def _events_of_all(guest: Any) -> list[dict[str, Any]]:
    from tests.field.qemu import json_events

    return json_events(guest.console_text())


def _account(
    res: Result,
    boots: list[Boot],
    col: Collector,
    key: bytes,
    drained: bool,
    kept: dict[str, str],
    wait_s: tuple[float, float],
) -> dict[str, Any]:
    """Compare what the guest acknowledged with what the collector stored and the spool kept."""
    captured: dict[str, int] = {}
    sent: dict[str, int] = {}
    resent = 0
    quarantined: list[str] = []
    recovered = {"cur_to_new": 0, "tmp_removed": 0}
    asked = done = 0
    for b in boots:
        for e in b.events:
            kind = e.get("event")
            if kind == "bundle_captured":
                captured.setdefault(str(e["bundle_id"]), b.index)
            elif kind == "upload_ok":
                sent.setdefault(str(e["bundle_id"]), b.index)
                resent += int(e.get("status") == 200)
            elif kind == "bundle_quarantined":
                quarantined.append(str(e.get("file", "")))
            elif kind == "spool_recovered":
                for k in recovered:
                    recovered[k] += int(e.get(k, 0))
            elif kind == "fault_raised" and _manual(e):
                asked += 1
            elif kind == "capture_done" and _manual(e):
                done += 1
    stored = col.blobs()
    manifests: dict[str, dict[str, Any]] = {}
    timelines: dict[str, list[dict[str, Any]]] = {}
    unreadable = 0
    for bid, path in sorted(stored.items()):
        try:
            manifests[bid], timelines[bid] = verify_blob(path, key)
        except (ValueError, KeyError, OSError, zipfile.BadZipFile) as e:
            unreadable += 1
            res.loss(f"stored bundle {bid} does not verify: {e}")
    acked = set(captured) | set(sent)
    for bid in sorted(acked - set(stored)):
        where = kept.get(bid, "")
        if where in ("new", "cur"):
            continue  # kept in the spool after the clean stop: not lost
        first = captured.get(bid, sent.get(bid))
        res.loss(f"acknowledged bundle {bid} (boot {first}) neither stored nor kept ({where})")
    for bid, where in kept.items():
        if bid in acked and where not in ("new", "cur"):
            res.loss(f"acknowledged bundle {bid} in the spool's {where}")
    for name in quarantined:
        if any(bid in name for bid in acked):
            res.loss(f"acknowledged bundle quarantined after a cut: {name}")
    # power.unclean_shutdown after every cut, with readings from before it
    by_boot: dict[str, list[str]] = {}
    for bid, m in manifests.items():
        if (m.get("trigger") or {}).get("key") == "power.unclean_shutdown":
            by_boot.setdefault(str(m.get("boot_id", "")), []).append(bid)
    after_cut = [b for b in boots[1:] if b.boot_id]
    lived = [
        b
        for b in after_cut
        if any(
            e.get("event") == "capture_done" and e.get("key") == "power.unclean_shutdown"
            for e in b.events
        )
    ]
    raised = with_pre = with_last_run = recorder_misses = 0
    gaps: list[float] = []
    for b in after_cut:
        ids = by_boot.get(b.boot_id, [])
        if not ids:
            if b in lived:
                res.loss(f"boot {b.index}: power.unclean_shutdown captured but not stored")
            continue
        raised += 1
        prev = boots[b.index - 1]
        tl = timelines[ids[0]]
        before = [float(r["ts"]) for r in tl if float(r.get("ts", 0)) < b.btime]
        last_run = [t for t in before if prev.btime and t >= prev.btime]
        with_pre += bool(before)
        with_last_run += bool(last_run)
        ran = prev.cut_host - prev.ready_host if prev.ready_host else 0.0
        if not last_run and ran >= RUN_WITHOUT_READINGS_S:
            res.loss(
                f"boot {b.index}: the unclean-shutdown bundle has no reading from the run that "
                f"was cut {ran:.0f} s after READY",
            )
            recorder_misses += 1
        if last_run and prev.cut_host:
            gaps.append(prev.cut_host + prev.offset_s - max(last_run))
    unknown = set(stored) - acked
    n_cut = len(after_cut)
    gap_txt = (
        f"; newest reading of the cut run {min(gaps):.0f}-{max(gaps):.0f} s "
        f"(median {sorted(gaps)[len(gaps) // 2]:.0f} s) before the cut"
        if gaps
        else ""
    )
    actives = [b.active_s for b in boots[1:] if b.active_s]
    res.notes.append(
        f"cuts at random moments {wait_s[0]:.0f}-{wait_s[1]:.0f} s after posagent READY "
        f"(READY {min(actives, default=0):.0f}-{max(actives, default=0):.0f} s after power-on); "
        f"{len(captured)} bundles acknowledged as captured, {len(sent)} as uploaded "
        f"({resent} answered 'already stored': sent again after a cut took the move to sent/); "
        f"{len(stored)} stored and verified ({len(unknown)} of them captured just before a cut, "
        f"the log line lost), {unreadable} unreadable; {len(kept)} left in the spool after the "
        f"final clean stop; spool recovery moved {recovered['cur_to_new']} cur/ → new/, removed "
        f"{recovered['tmp_removed']} tmp/ files, quarantined {len(quarantined)}; drained: "
        f"{drained}; {asked} manual reports taken from the trigger dir, {done} captured "
        f"({asked - done} raised but not captured before a cut: the trigger file stays until its "
        f"bundle is in the spool and is read again at the next boot, so these are counted again)"
    )
    res.notes.append(
        f"power.unclean_shutdown: stored for {raised} of {n_cut} boots after a cut "
        f"({len(lived)} lived long enough to capture it; a boot cut before lets the next one "
        f"report it); {with_pre} of {raised} with readings from before the cut, {with_last_run} "
        f"with readings from the run that was cut{gap_txt}"
    )
    return {
        "cuts": res.trials,
        "acknowledged": len(acked),
        "stored": len(stored),
        "unreadable": unreadable,
        "unclean_after_cut": n_cut,
        "unclean_stored": raised,
        "unclean_lived": len(lived),
        "with_pre_cut_readings": with_pre,
        "with_cut_run_readings": with_last_run,
        "recorder_misses": recorder_misses,
        "gaps_s": gaps,
    }


def powercut(quick: bool, work: Path) -> Result:
    """Power cuts of a qemu guest terminal (Debian 12, the posagent unit, vfb screen) while it captures manual reports and uploads to a loopback collector: SIGKILL of qemu at random moments loses what the guest had not flushed; after each reboot the spool opens and power.unclean_shutdown is raised with the readings from before the cut; every acknowledged bundle ends stored and verified."""
    from tests.field.qemu import qemu_missing

    res = Result("powercut", "power cut (qemu guest)")
    why = qemu_missing()
    if why:
        res.skipped = why
        return res
    if quick:
        res.skipped = "quick run: each cut reboots a TCG guest (about 1 min); make field runs 3"
        return res
    cuts = int(os.environ.get("POSAGENT_POWERCUT_CUTS", CUTS))
    budget = float(os.environ.get("POSAGENT_POWERCUT_BUDGET_S", 0))
    run_cuts(res, work, cuts, seed=31, wait_s=(0.0, 25.0), budget_s=budget)
    return res
