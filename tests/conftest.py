"""Shared test fixtures: a throw-away config, state dir and device key."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis under load: CI runs on a machine that may be busy, so example generation
# may be slow and no example has a deadline; the examples themselves are unchanged.
# `make test` selects "ci" when CI is set; HYPOTHESIS_PROFILE picks another.
settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=True,
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
VENV_BIN = Path(sys.executable).parent


def write_config(tmp: Path, extra: str = "", *, agent_extra: str = "") -> Path:
    """Write a minimal agent.toml for tmp (state dir, key, token, roots) and return its path."""
    (tmp / "state").mkdir(parents=True, exist_ok=True)
    key = tmp / "device.key"
    if not key.exists():
        key.write_text("0123456789abcdef0123456789abcdef\n")
    cfg = tmp / "agent.toml"
    cfg.write_text(
        f"""
[agent]
device_id = "T-TEST"
site = "Test Store"
serial = "SN-TEST-1"
state_dir = "{tmp / "state"}"
log_format = "json"
{agent_extra}

[roots]
run = "{tmp / "run"}"

[bundle]
hmac_key_file = "{key}"

[upload]
token_file = "{tmp / "token"}"

[spool]
reserve_mib = 0

{extra}
"""
    )
    return cfg


def quick_config(tmp: Path, payment_hosts: list[str], extra: str = "") -> Path:
    """A daemon config with quick intervals, loopback-only network probes and no devices."""
    hosts = ", ".join(f'"{h}"' for h in payment_hosts)
    return write_config(
        tmp,
        f"""
[network]
interval_s = 0.5
interfaces = ["lo"]
payment_hosts = [{hosts}]

[power]
interval_s = 0.5

[system]
interval_s = 1.0

[screen]
backend = "none"

[capture]
persist_interval_s = 1.0
{extra}
""",
    )


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A valid config file in tmp_path."""
    return write_config(tmp_path)


def posagent_argv(*args: str) -> list[str]:
    """argv running the installed CLI with this interpreter."""
    return [sys.executable, "-m", "agent.commands.main", *args]


def is_root() -> bool:
    """True when the tests run as root (namespaces, mounts)."""
    return os.geteuid() == 0


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Each test starts with structlog's defaults: an in-process CLI call configures it globally."""
    import structlog

    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def wait_until(pred: Callable[[], Any], timeout_s: float = 5.0, step_s: float = 0.02) -> Any:
    """Poll `pred` until it returns something true (returned) or the deadline passes (its
    last value). The one way tests wait for a state: never a fixed sleep standing in for one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step_s)
    return pred()


# ------------------------------------------------------------------ parallel runs (xdist)
#
# `make test` runs the suite on two pytest-xdist workers. Work is handed out a module at a
# time, so a module's fixtures (a quick reliability run, a booted container, a browser)
# are made once, on one worker. The one machine-wide resource is SeaweedFS: its ports are
# fixed and a session holds its lock until the session ends, so the modules that use it
# (directly or through `fleet`/`s3_url`) and the reliability module (whose fleet family
# takes the same lock) are one unit of work: one worker runs them all. A module that
# starts using SeaweedFS without being listed here fails the collection (below). The
# reliability module comes first: its fleet family starts a SeaweedFS of its own, in a
# process of its own, so it must run before the `seaweed` fixture takes the lock (which it
# keeps until the session ends; the family, given the lock 1 s, was skipped every time).
RELIABILITY_MODULE = "tests/e2e/test_reliability.py"
SEAWEED_MODULES = frozenset(
    {
        "tests/collector/test_balancer.py",
        "tests/collector/test_failures.py",
        "tests/collector/test_fleet.py",
        "tests/collector/test_migrate_store.py",
        "tests/collector/test_retention.py",
        "tests/collector/test_storage.py",
        RELIABILITY_MODULE,
    }
)


def work_unit(nodeid: str) -> str:
    """The unit of work a test is handed out in: its module, or "seaweed"."""
    module = nodeid.split("::", 1)[0]
    return "seaweed" if module in SEAWEED_MODULES else module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's scheduler by scope, with `work_unit` as the scope."""
    from xdist.scheduler import LoadScopeScheduling  # lazy: only when xdist runs the suite

    class ByWorkUnit(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ByWorkUnit(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A module using SeaweedFS must be in SEAWEED_MODULES (else two workers would wait on
    its lock for the whole session); the reliability module's tests run first."""
    first = [it for it in items if it.nodeid.split("::", 1)[0] == RELIABILITY_MODULE]
    if first:
        items[:] = first + [it for it in items if it.nodeid.split("::", 1)[0] != RELIABILITY_MODULE]
    unlisted = sorted(
        {
            it.nodeid.split("::", 1)[0]
            for it in items
            if "seaweed" in getattr(it, "fixturenames", ())
            and it.nodeid.split("::", 1)[0] not in SEAWEED_MODULES
        }
    )
    if unlisted:
        raise pytest.UsageError(
            f"{', '.join(unlisted)} use SeaweedFS: add them to SEAWEED_MODULES in tests/conftest.py"
        )
