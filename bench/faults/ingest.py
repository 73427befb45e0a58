"""Trial families for the collector's ingest guard (issue 14 item 9): manifests with hostile
fields (fixed cases and random ones) and slow or idle clients.

- `manifests`: every hostile manifest answers 4xx and stores nothing, a random field of a
  valid manifest replaced by a hostile value answers 201 or 4xx, never 5xx, and after each
  one every page and API answer still renders (a 5xx anywhere is a loss).
- `slow_clients`: half-sent requests, a silent socket and a stalled body against short
  deadlines and an idle cap: uploads succeed meanwhile (else a loss) and every slow socket
  is closed by the deadline (else a stall).
"""

from __future__ import annotations

import json
import random
import socket
import time
from pathlib import Path
from typing import Any

from bench.faults import Result


def manifests(quick: bool, work: Path) -> Result:
    """Hostile manifests refused with 422, random hostile fields never a 5xx, every page renders."""
    from agent.bundle.format import new_bundle_id
    from tests.collector.test_app import Env
    from tests.collector.test_ingest_guard import (
        HOSTILE,
        HOSTILE_RAW,
        _bundle,
        _manifest,
        _raw_manifest,
    )

    res = Result("hostile_manifests", "hostile manifest fields (collector ingest)")
    rng = random.Random(14)
    env = Env(work, rate_per_minute=1_000_000)
    try:

        def pages_render(bid: str | None) -> None:
            paths = ["/", "/?site=x", "/v1/bundles", "/v1/bundles?severity=critical"]
            if bid:
                paths += [f"/bundles/{bid}", f"/v1/bundles/{bid}", f"/v1/bundles/{bid}/diagnostics"]
            for p in paths:
                code = env.http.get(env.url + p, timeout=10).status_code
                if code >= 500:
                    res.loss(f"GET {p}: HTTP {code} after a hostile manifest")

        cases = [(n, _bundle(_manifest(b := new_bundle_id(), **c)), b) for n, c in HOSTILE.items()]
        for n, (field, raw) in HOSTILE_RAW.items():
            b = new_bundle_id()
            cases.append((n, _bundle(_raw_manifest(b, field, raw)), b))
        for name, data, bid in cases:
            res.trials += 1
            code = env.put(data, bid).status_code
            if code != 422:
                res.loss(f"{name}: HTTP {code}, not 422")
            pages_render(None)
        values: list[str] = [
            "1e300", "1e400", "NaN", "-Infinity", "null", "true", "-1", "123456789012345678901234",
            '"' + "x" * 300 + '"', '"\\u0000"', "[]", "{}", "[" * 50 + "]" * 50, '"1970-01-01T00:00:00Z"',
            '{"a": ' * 30 + "1" + "}" * 30, "[1, 2, 3]", '"<script>"',
        ]  # fmt: skip
        fields = [
            "created_at", "uptime_s", "boot_id", "clock_synced", "device", "agent", "trigger",
            "redaction", "x_extra", "device.site", "device.id", "trigger.summary", "trigger.key",
            "trigger.readings", "trigger.suppressed", "redaction.counts", "agent.version",
        ]  # fmt: skip
        for _ in range(60 if quick else 400):
            bid = new_bundle_id()
            field, value = rng.choice(fields), rng.choice(values)
            m: dict[str, Any] = _manifest(bid)
            outer, _, inner = field.partition(".")
            if inner:
                m[outer] = dict(m[outer], **{inner: "@@"})
            else:
                m[outer] = "@@"
            raw = json.dumps(m).replace('"@@"', value).encode()
            res.trials += 1
            code = env.put(_bundle(raw), bid).status_code
            if code >= 500 or code not in (201, 400, 422):
                res.loss(f"{field} = {value[:40]}: HTTP {code}")
            pages_render(bid if code == 201 else None)
        res.notes.append(f"{len(cases)} fixed cases, the rest random fields")
    finally:
        env.close()
    return res


def _closed(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        while s.recv(65536):
            pass
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def slow_clients(quick: bool, work: Path) -> Result:
    """50 half-sent requests, a silent socket and a stalled body per round (header and body
    deadlines 1 s, idle cap 20): uploads go on, every slow socket is closed in time."""
    from agent.upload.protocol import content_digest
    from tests.bundle.kit import make_bundle
    from tests.collector.test_app import DEV, Env

    res = Result("slow_clients", "slow and idle clients (collector)")
    env = Env(
        work,
        rate_per_minute=1_000_000,
        header_timeout_s=1,
        body_timeout_s=1,
        max_idle_per_client=20,
    )
    try:
        for round_ in range(2 if quick else 6):
            port = env.server.port
            socks = []
            for _ in range(50):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(b"PUT /v1/bundles/x HTTP/1.1\r\nHost: c\r\nContent-Le")
                socks.append(s)
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            b = make_bundle(device=DEV, seed=1000 + round_)
            stall = socket.create_connection(("127.0.0.1", port), timeout=5)
            stall.sendall(
                f"PUT /v1/bundles/{b.bundle_id} HTTP/1.1\r\nHost: c\r\n"
                f"Content-Type: application/zip\r\nAuthorization: Bearer {env.token}\r\n"
                f"X-Posagent-Device: {DEV}\r\nContent-Digest: {content_digest(b.data)}\r\n"
                f"Content-Length: {len(b.data)}\r\n\r\n".encode()
                + b.data[:50]
            )
            socks.append(stall)
            for i in range(3):
                res.trials += 1
                ok = make_bundle(device=DEV, seed=2000 + round_ * 10 + i)
                code = env.upload(ok).status_code
                if code != 201:
                    res.loss(f"round {round_}: an upload beside slow clients got HTTP {code}")
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline and not all(_closed(s) for s in socks):
                time.sleep(0.05)
            res.trials += 1
            still = sum(not _closed(s) for s in socks)
            if still:
                res.stall(f"round {round_}: {still} slow socket(s) still open after 4 s")
            if env.http.get(f"{env.url}/v1/bundles/{b.bundle_id}", timeout=10).status_code != 404:
                res.loss(f"round {round_}: the stalled body was stored")
            for s in socks:
                s.close()
    finally:
        env.close()
    return res
