"""The command envelope checks of agent/channel/commands.py, one refusal reason each."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from agent.channel.commands import Refused, check_command, envelope_id
from agent.core.timefmt import rfc3339
from agent.upload.protocol import canonical_json

NOW = time.time()


def env(**over: Any) -> bytes:
    doc = {
        "v": 1,
        "id": "c-1",
        "device": "T-1",
        "kind": "capture",
        "args": {},
        "issued_at": rfc3339(NOW),
        "expires_at": rfc3339(NOW + 600),
    }
    doc.update(over)
    return canonical_json(doc)


def check(raw: bytes, sig: str = "", seen: dict[str, float] | None = None) -> Any:
    return check_command(
        raw, sig, device_id="T-1", now=NOW, seen=seen or {}, command_logs={"pos": "/var/log/p"}
    )


def test_a_good_capture_passes() -> None:
    cmd = check(env(args={"note": "hello"}))
    assert (cmd.id, cmd.kind, cmd.args) == ("c-1", "capture", {"note": "hello"})


@pytest.mark.parametrize(
    ("raw", "sig", "seen", "reason"),
    [
        (env(), "bad signature", None, "bad signature"),
        (b"{not json", "", None, "envelope is not JSON"),
        (env(v=2), "", None, "envelope is not a v1 command"),
        (env(device="T-2"), "", None, "for another device ('T-2')"),
        (env(expires_at=rfc3339(NOW - 301)), "", None, "expired at"),
        (env(), "", {"c-1": NOW + 600}, "replayed"),
        (env(kind="exec", args={"argv": ["sh"]}), "", None, "unknown kind 'exec'"),
        (
            env(kind="logs", args={"name": "/etc/shadow"}),
            "",
            None,
            "is not in [upload] command_logs",
        ),
        (env(kind="checkin-interval", args={"seconds": 5}), "", None, "30 to 86400"),
        (env(kind="selftest", args={"x": 1}), "", None, "unknown argument(s): x"),
        (env(kind="set-level", args={"until": rfc3339(NOW - 1)}), "", None, "until is in the past"),
        (
            env(kind="set-level", args={"until": rfc3339(NOW + 8 * 86400)}),
            "",
            None,
            "more than 7 days",
        ),
    ],
)
def test_each_refusal_names_its_reason(
    raw: bytes, sig: str, seen: dict[str, float] | None, reason: str
) -> None:
    with pytest.raises(Refused) as e:
        check(raw, sig, seen)
    assert reason in str(e.value)


def test_expiry_has_a_five_minute_grace_for_a_wrong_clock() -> None:
    assert check(env(expires_at=rfc3339(NOW - 200))).id == "c-1"


def test_set_level_values_are_dotted_config_keys() -> None:
    cmd = check(
        env(
            kind="set-level",
            args={
                "faults": {"printer.paper_end": {"severity": "warning", "enabled": False}},
                "capture": {"cooldown_s": 30},
                "until": rfc3339(NOW + 3600),
            },
        )
    )
    assert cmd.values == {
        "faults.printer.paper_end.severity": "warning",
        "faults.printer.paper_end.enabled": False,
        "capture.cooldown_s": 30,
    }
    assert cmd.until == pytest.approx(NOW + 3600, abs=0.01)


def test_envelope_id_reads_only_a_plausible_id() -> None:
    assert envelope_id(env()) == "c-1"
    assert envelope_id(json.dumps({"id": "x" * 500}).encode()) == ""
    assert envelope_id(b"garbage") == ""
