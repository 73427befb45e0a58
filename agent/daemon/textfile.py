"""The agent's own figures as a node_exporter textfile (``[agent] metrics_textfile``).

Fleets that already run Prometheus point node_exporter's textfile collector at a
directory (``--collector.textfile.directory``); the daemon writes ``<name>.prom``
there with every status refresh, atomically (a scrape never reads half a file). The
figures come from the status document (`agent.daemon.runner.Agent.status`), so the file
and ``posagent status`` never disagree. `render` is pure; `write` is the thin writer.

Every series is prefixed ``posagent_`` and labelled with the device id:

| metric | type | from |
|---|---|---|
| posagent_up | gauge | 1 while the daemon runs, 0 in the file it leaves at stop |
| posagent_queue_bundles{state} | gauge | spool counts: new, cur, failed, sent |
| posagent_queue_bytes{state} | gauge | spool bytes by state |
| posagent_queue_oldest_age_seconds | gauge | age of the oldest queued bundle (absent: none) |
| posagent_evictions_total{state} | counter | bundles evicted for room since start |
| posagent_captures_total | counter | bundles captured since start |
| posagent_capture_failures_total | counter | captures that failed |
| posagent_captures_suppressed_total | counter | events the capture policy did not capture |
| posagent_uploads_total{result} | counter | uploaded, failed (refused for good) |
| posagent_upload_consecutive_failures | gauge | failed attempts since the last success |
| posagent_upload_online | gauge | 1 when the collector was reachable last time |
| posagent_monitor_polls_total{monitor} | counter | polls per monitor |
| posagent_monitor_failures_total{monitor} | counter | polls that failed |
| posagent_monitor_timeouts_total{monitor} | counter | polls that timed out |
| posagent_active_faults{severity} | gauge | raised faults now |
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agent.core.files import atomic_write

_HELP: dict[str, tuple[str, str]] = {
    "posagent_up": ("gauge", "1 while the posagent daemon runs"),
    "posagent_queue_bundles": ("gauge", "Bundles in the spool by state"),
    "posagent_queue_bytes": ("gauge", "Bytes in the spool by state"),
    "posagent_queue_oldest_age_seconds": ("gauge", "Age of the oldest queued bundle"),
    "posagent_evictions_total": ("counter", "Bundles evicted for room since start"),
    "posagent_captures_total": ("counter", "Bundles captured since start"),
    "posagent_capture_failures_total": ("counter", "Captures that failed since start"),
    "posagent_captures_suppressed_total": ("counter", "Events not captured by the policy"),
    "posagent_uploads_total": ("counter", "Bundles uploaded or refused for good"),
    "posagent_upload_consecutive_failures": ("gauge", "Failed attempts since the last success"),
    "posagent_upload_online": ("gauge", "1 when the collector answered last time"),
    "posagent_monitor_polls_total": ("counter", "Polls per monitor"),
    "posagent_monitor_failures_total": ("counter", "Failed polls per monitor"),
    "posagent_monitor_timeouts_total": ("counter", "Timed-out polls per monitor"),
    "posagent_active_faults": ("gauge", "Raised faults by severity"),
}
SEVERITIES = ("warning", "error", "critical")


def _label(value: str) -> str:
    """A label value in the exposition format's escaping."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _fmt(v: float) -> str:
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def render(status: Mapping[str, Any], *, up: bool = True) -> str:
    """The textfile for a status document; entries it lacks are left out, never guessed."""
    device = _label(str(status.get("device_id", "")))
    samples: dict[str, list[tuple[str, float]]] = {name: [] for name in _HELP}

    def add(name: str, value: Any, **labels: str) -> None:
        v = _num(value)
        if v is None:
            return
        parts = [f'device="{device}"'] + [f'{k}="{_label(x)}"' for k, x in labels.items()]
        samples[name].append(("{" + ",".join(parts) + "}", v))

    def section(key: str) -> Mapping[str, Any]:
        got = status.get(key)
        return got if isinstance(got, Mapping) else {}

    add("posagent_up", 1 if up else 0)
    queue = section("queue")
    for state in ("new", "cur", "failed", "sent"):
        counts = queue.get(state)
        if isinstance(counts, Mapping):
            add("posagent_queue_bundles", counts.get("count"), state=state)
            add("posagent_queue_bytes", counts.get("bytes"), state=state)
    add("posagent_queue_oldest_age_seconds", queue.get("oldest_queued_age_s"))
    evictions = status.get("evictions")
    if isinstance(evictions, Mapping):
        for state, n in sorted(evictions.items()):
            add("posagent_evictions_total", n, state=str(state))
    captures = section("captures")
    add("posagent_captures_total", captures.get("count"))
    add("posagent_capture_failures_total", captures.get("failures"))
    add("posagent_captures_suppressed_total", captures.get("suppressed"))
    upload = section("upload")
    add("posagent_uploads_total", upload.get("uploaded_total"), result="uploaded")
    add("posagent_uploads_total", upload.get("failed_total"), result="failed")
    add("posagent_upload_consecutive_failures", upload.get("consecutive_failures"))
    if upload.get("online") is not None:
        add("posagent_upload_online", bool(upload.get("online")))
    monitors = status.get("monitors")
    for m in monitors if isinstance(monitors, list) else []:
        if isinstance(m, Mapping) and isinstance(m.get("name"), str):
            for field, metric in (
                ("polls", "posagent_monitor_polls_total"),
                ("failures", "posagent_monitor_failures_total"),
                ("timeouts", "posagent_monitor_timeouts_total"),
            ):
                add(metric, m.get(field), monitor=m["name"])
    faults = status.get("active_faults")
    by_sev = Counter(
        str(f.get("severity"))
        for f in (faults if isinstance(faults, list) else [])
        if isinstance(f, Mapping)
    )
    if isinstance(faults, list):
        for sev in SEVERITIES:
            add("posagent_active_faults", by_sev.get(sev, 0), severity=sev)
    return "".join(_family(name, samples[name]) for name in _HELP if samples[name])


def _family(name: str, rows: Iterable[tuple[str, float]]) -> str:
    kind, text = _HELP[name]
    lines = [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels} {_fmt(v)}" for labels, v in rows]
    return "\n".join(lines) + "\n"


def write(path: str | Path, status: Mapping[str, Any], *, up: bool = True) -> None:
    """Replace the textfile atomically (OSError to the caller, who logs it)."""
    atomic_write(Path(path), render(status, up=up).encode("utf-8"), durable=False)
