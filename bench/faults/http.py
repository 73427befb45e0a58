"""Every HTTP failure mode of the upload protocol, against the loopback fault server."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import socket
import time
from collections import Counter
from email.utils import formatdate
from pathlib import Path
from typing import Any

from agent.spool.maildir import Limits, Spool
from bench.faults import Result


def _modes() -> list[tuple[str, list[Any], bool]]:
    """(name, behaviours scripted for the first requests, permanent rejection expected)."""
    from tests.upload.faultserver import (
        CommitThenDrop,
        Garbage,
        Hang,
        Reply,
        ResetMidBody,
        Trickle,
    )

    later = formatdate(time.time() + 2, usegmt=True)
    return [
        ("reset at 10 % of the body", [ResetMidBody(0.1)], False),
        ("reset at 90 % of the body", [ResetMidBody(0.9)], False),
        ("reset three times running", [ResetMidBody(0.5)] * 3, False),
        ("hang after the body (read timeout)", [Hang()], False),
        ("trickled 500 with an endless body", [Trickle(500, 0.002, True)], False),
        ("trickled 503 reply", [Trickle(503, 0.002, False)], False),
        ("garbage instead of HTTP", [Garbage()], False),
        ("stored, then the connection dropped", [CommitThenDrop()], False),
        ("stored, dropped, twice", [CommitThenDrop(), CommitThenDrop()], False),
        ("429 Retry-After 1", [Reply(429, {"Retry-After": "1"})], False),
        ("503 Retry-After HTTP date", [Reply(503, {"Retry-After": later})], False),
        ("503 Retry-After garbage", [Reply(503, {"Retry-After": "soon-ish"})], False),
        ("503 without Retry-After", [Reply(503)], False),
        ("408 Retry-After 0", [Reply(408, {"Retry-After": "0"})], False),
        ("500", [Reply(500, body=b"boom")], False),
        ("502", [Reply(502)], False),
        ("504-like unknown 5xx (599)", [Reply(599)], False),
        ("204 (not a success for v1)", [Reply(204)], False),
        ("307 redirect (not followed)", [Reply(307, {"Location": "http://127.0.0.1:1/"})], False),
        ("401 then healed", [Reply(401)], False),
        ("403 twice then healed", [Reply(403), Reply(403)], False),
        ("400 (permanent)", [Reply(400, body=b"bad")], True),
        ("409 (permanent)", [Reply(409)], True),
        ("413 (permanent)", [Reply(413)], True),
        ("422 (permanent)", [Reply(422)], True),
    ]


def _config(state: Path, endpoint: str, **upload: Any) -> Any:
    from bench.faults.storage import _uploader_config

    cfg = _uploader_config(state, endpoint)
    return dataclasses.replace(
        cfg, upload=dataclasses.replace(cfg.upload, read_timeout_s=1.0, **upload)
    )


OUTCOMES: Counter[str] = Counter()


class _Trial:
    """One spool with a few bundles, drained through faults until it is empty or time is up."""

    def __init__(self, work: Path, name: str, rng: random.Random) -> None:
        from tests.bundle.kit import small_bundle

        self.state = work / name
        self.spool = Spool(self.state, Limits(reserve_bytes=0)).open()
        self.bundles = {}
        for i in range(3):
            b = small_bundle(f"{name} {i}", size_bytes=rng.choice((3_000, 40_000, 150_000)))
            self.spool.enqueue(b.bundle_id, b.data, 2 - i)  # the first one is tried first
            self.bundles[b.bundle_id] = hashlib.sha256(b.data).hexdigest()
        self.first = next(iter(self.bundles))

    def drain(self, cfg: Any, rounds: int = 12) -> None:
        from agent.upload.uploader import Uploader
        from bench.faults.clock import Wall

        wall = Wall()
        up = Uploader(cfg, self.spool, clock=wall)
        for _ in range(rounds):
            s = up.drain_once(deadline_s=30)
            if s.stopped == "empty":
                return
            wall.offset += 5.0  # time passes: Retry-After and backoff are over

    def check(self, res: Result, store: dict[str, Any], label: str, permanent: bool) -> None:
        failed = {i.bundle_id for i in self.spool.items("failed")}
        sent = {i.bundle_id for i in self.spool.items("sent")}
        queued = {i.bundle_id for s in ("new", "cur") for i in self.spool.items(s)}
        for bid, sha in self.bundles.items():
            rec = store.get(bid)
            if permanent and bid == self.first:
                if bid not in failed:
                    res.loss(f"{label}: permanently rejected bundle not kept in failed/")
                else:
                    OUTCOMES["kept in failed/"] += 1
                continue
            if rec is not None and rec.digest_hex == sha and bid in sent:
                OUTCOMES["stored once" if rec.creations == 1 else "stored twice"] += 1
                continue
            if bid in queued:
                res.stall(f"{label}: {bid} still queued after the server healed")
            else:
                res.loss(f"{label}: {bid} neither stored nor kept")
        res.duplicates += sum(max(0, store[b].creations - 1) for b in self.bundles if b in store)


def http_failures(quick: bool, work: Path) -> Result:
    """Each failure mode of the collector (resets mid-body, hangs, trickles, garbage, stored-then-dropped, 408/429/503 with every Retry-After form, 5xx, 401/403, 3xx, 204, 400/409/413/422), connection refused, DNS failure and an untrusted TLS certificate: every bundle ends stored once, or kept in failed/ for a permanent rejection; never lost."""
    from tests.upload.faultserver import FaultServer, make_pki, server_tls_context

    res = Result("http_failures", "HTTP failure modes (fault server)")
    OUTCOMES.clear()
    rng = random.Random(51)
    reps = 1 if quick else 5
    modes = _modes()
    with FaultServer() as srv:
        for _rep in range(reps):
            for name, script, permanent in modes:
                res.trials += 1
                t = _Trial(work, f"mode-{res.trials}", rng)
                srv.script(*script)
                t.drain(_config(t.state, srv.url))
                t.check(res, srv.store, name, permanent)
        # the collector is down (nothing listens), then up
        for _ in range(reps):
            res.trials += 1
            t = _Trial(work, f"down-{res.trials}", rng)
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                dead = f"http://127.0.0.1:{s.getsockname()[1]}"
            t.drain(_config(t.state, dead), rounds=3)
            t.drain(_config(t.state, srv.url))
            t.check(res, srv.store, "connection refused", False)
            res.trials += 1
            t = _Trial(work, f"dns-{res.trials}", rng)
            t.drain(_config(t.state, "http://collector.invalid:8080", connect_timeout_s=1.0), 2)
            t.drain(_config(t.state, srv.url))
            t.check(res, srv.store, "DNS failure", False)
    # TLS: a certificate from a CA the agent does not trust, then the right CA
    pki = make_pki(work / "pki")
    with FaultServer(tls=server_tls_context(pki)) as tls_srv:
        for _ in range(reps):
            res.trials += 1
            t = _Trial(work, f"tls-{res.trials}", rng)
            t.drain(_config(t.state, tls_srv.url, ca_file=str(pki["other_ca"])), rounds=3)
            if any(True for _ in t.spool.items("sent")):
                res.loss("uploaded to a server whose certificate is not trusted")
            t.drain(_config(t.state, tls_srv.url, ca_file=str(pki["ca"])))
            t.check(res, tls_srv.store, "untrusted TLS certificate", False)
    res.notes.append(
        f"{len(modes)} scripted modes × {reps}, plus connection refused, DNS failure and an "
        f"untrusted certificate × {reps}; 3 bundles per trial (3-150 kB), the first one "
        f"meets the fault; outcomes {dict(sorted(OUTCOMES.items()))}; "
        f"{len(srv.requests) + len(tls_srv.requests)} requests"
    )
    return res
