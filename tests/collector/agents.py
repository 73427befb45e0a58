"""Terminals for the collector's failure tests and `make reliability`: each one the agent's
real spool and uploader (agent.upload.uploader, its worker child, protocol v1) for one
registered device, pointed at a collector, with quick retries."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from agent.core.config import load_config
from agent.spool.maildir import Limits, Spool
from agent.upload.uploader import Uploader
from tests.bundle.kit import small_bundle
from tests.conftest import write_config

AGENT_READ_TIMEOUT_S = 60.0  # the agent's default: an answer must come before it


class Agent:
    """One terminal: a spool under tmp/<device>, bundles added with `add`, the real
    uploader (`start`/`stop`), what it sent and what the collector acknowledged."""

    def __init__(self, tmp: Path, device: str, token: str, endpoint: str):
        adir = tmp / device
        cfg = load_config(write_config(adir))
        (adir / "token").write_text(token + "\n")
        cfg = dataclasses.replace(
            cfg,
            agent=dataclasses.replace(cfg.agent, device_id=device),
            upload=dataclasses.replace(
                cfg.upload,
                endpoint=endpoint,
                backoff_base_s=0.05,
                backoff_cap_s=0.5,
                read_timeout_s=AGENT_READ_TIMEOUT_S,
            ),
        )
        self.device = device
        self.spool = Spool(cfg.agent.state_dir, Limits(reserve_bytes=0)).open()
        self.sent: dict[str, bytes] = {}  # every bundle enqueued, by id
        self.uploader = Uploader(cfg, self.spool)
        self._n = 0

    def add(self, n: int, size: int = 40_000) -> None:
        """Enqueue n new sealed bundles of about size bytes (the uploader sees them)."""
        for _ in range(n):
            b = small_bundle(f"{self.device} #{self._n}", size_bytes=size, device=self.device)
            self.spool.enqueue(b.bundle_id, b.data, 1)
            self.sent[b.bundle_id] = b.data
            self._n += 1
        self.uploader.wake()

    def acked(self) -> set[str]:
        """Bundles the collector acknowledged (201/200): moved to sent/."""
        return {i.bundle_id for i in self.spool.items("sent")}

    def saw(self, status: int) -> bool:
        """True when the last failed attempt was answered `status`."""
        reason = self.uploader.status()["last_failure_reason"] or ""
        return str(reason).startswith(f"HTTP {status}")

    def done(self) -> bool:
        """Everything enqueued is acknowledged."""
        return len(self.acked()) == len(self.sent)

    def left(self) -> dict[str, int]:
        """Bundles still in new/, cur/ or failed/ (all 0 once everything is stored)."""
        return {s: sum(1 for _ in self.spool.items(s)) for s in ("new", "cur", "failed")}

    def check_spool(self) -> None:
        """Everything acknowledged, nothing left queued or refused."""
        assert self.acked() == set(self.sent), self.uploader.status()
        assert self.left() == {"new": 0, "cur": 0, "failed": 0}, self.left()
