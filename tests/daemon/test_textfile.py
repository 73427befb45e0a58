"""The node_exporter textfile (`agent.daemon.textfile`): the pure renderer against a status
document, parsed back by prometheus_client's own parser; and a real daemon writing it."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.core.config import ConfigError, parse_config
from agent.daemon import textfile
from tests.conftest import wait_until
from tests.daemon.test_runner import (
    NotifySocket,
    daemon_config,
    payment_port,
    start_daemon,
    wait_exit,
)

__all__ = ["payment_port"]

STATUS: dict[str, Any] = {
    "device_id": 'T-1 "quoted"\\',
    "monitors": [
        {"name": "power", "interval_s": 5, "polls": 12, "failures": 1, "timeouts": 0},
        {"name": "printer:/dev/ttyS0", "interval_s": 5, "polls": 10, "failures": 3, "timeouts": 2},
        {"name": 7, "polls": "x"},  # malformed: left out, never guessed
    ],
    "active_faults": [
        {"key": "power.ac_lost", "severity": "warning"},
        {"key": "printer.paper_end", "severity": "error"},
        {"key": "printer.cover_open", "severity": "error"},
    ],
    "captures": {"count": 4, "failures": 1, "suppressed": 9},
    "queue": {
        "new": {"count": 2, "bytes": 2048},
        "cur": {"count": 0, "bytes": 0},
        "failed": {"count": 1, "bytes": 100},
        "sent": {"count": 5, "bytes": 9000},
        "oldest_queued_age_s": 61.5,
    },
    "evictions": {"sent": 3},
    "upload": {
        "uploaded_total": 5,
        "failed_total": 1,
        "consecutive_failures": 2,
        "online": False,
    },
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_render_is_valid_exposition_with_every_figure() -> None:
    got = samples(textfile.render(STATUS))
    dev = ("device", 'T-1 "quoted"\\')

    def v(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted([dev, *labels.items()])))]

    assert v("posagent_up") == 1
    assert v("posagent_queue_bundles", state="new") == 2
    assert v("posagent_queue_bytes", state="sent") == 9000
    assert v("posagent_queue_oldest_age_seconds") == 61.5
    assert v("posagent_evictions_total", state="sent") == 3
    assert v("posagent_captures_total") == 4
    assert v("posagent_captures_suppressed_total") == 9
    assert v("posagent_uploads_total", result="failed") == 1
    assert v("posagent_upload_online") == 0
    assert v("posagent_monitor_failures_total", monitor="printer:/dev/ttyS0") == 3
    assert v("posagent_monitor_timeouts_total", monitor="printer:/dev/ttyS0") == 2
    assert v("posagent_active_faults", severity="error") == 2
    assert v("posagent_active_faults", severity="critical") == 0
    assert not any(labels and ("monitor", "7") in labels for _, labels in got)


def test_render_of_a_stopping_daemon_and_of_an_empty_document() -> None:
    assert (
        samples(textfile.render(STATUS, up=False))[("posagent_up", (("device", 'T-1 "quoted"\\'),))]
        == 0
    )
    assert samples(textfile.render({})) == {("posagent_up", (("device", ""),)): 1}


@pytest.mark.parametrize("bad", ["relative.prom", "/var/lib/x.txt", "/dir/"])
def test_textfile_path_is_checked(bad: str) -> None:
    with pytest.raises(ConfigError, match="metrics_textfile"):
        parse_config(f'[agent]\nmetrics_textfile = "{bad}"\n')


def test_daemon_writes_the_textfile_and_marks_it_down_at_stop(
    tmp_path: Path, payment_port: int
) -> None:
    prom = tmp_path / "textfile" / "posagent.prom"
    prom.parent.mkdir()
    cfg = daemon_config(tmp_path, payment_port)
    cfg.write_text(
        cfg.read_text().replace(
            'log_format = "json"', f'log_format = "json"\nmetrics_textfile = "{prom}"', 1
        )
    )
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = start_daemon(cfg, notify, tmp_path / "agent.log")
    try:
        notify.wait_for("READY=1", timeout_s=60, proc=proc)
        assert wait_until(prom.exists, timeout_s=60)
        assert wait_until(
            lambda: (
                ("posagent_monitor_polls_total", (("device", "T-TEST"), ("monitor", "power")))
                in samples(prom.read_text())
            ),
            timeout_s=60,
        )
        got = samples(prom.read_text())
        assert got[("posagent_up", (("device", "T-TEST"),))] == 1
        assert got[("posagent_queue_bundles", (("device", "T-TEST"), ("state", "new")))] >= 0
        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc, 60) == 0
        assert samples(prom.read_text())[("posagent_up", (("device", "T-TEST"),))] == 0
        assert [p.name for p in prom.parent.iterdir()] == ["posagent.prom"]  # no temp left
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
