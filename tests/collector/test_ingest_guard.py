"""Ingest refuses what it cannot serve (issue 14 item 9): hostile manifests answer 422 and
store nothing; hostile entries that are stored render on every page and API answer; the
site is the device's registered one; redirects never echo Host; slow and idle clients are
cut off while uploads go on."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.bundle.format import SCHEMA, new_bundle_id
from agent.bundle.schema import ManifestError, check_manifest
from agent.core.timefmt import parse_rfc3339, rfc3339
from agent.upload.protocol import content_digest
from collector.auth import add_device, parse_registry
from tests.bundle.kit import make_bundle
from tests.collector.test_app import DEV, Env
from tests.conftest import wait_until


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path, header_timeout_s=2, body_timeout_s=2, max_idle_per_client=20)
    yield e
    e.close()


def _manifest(bid: str, **changes: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "schema": SCHEMA,
        "bundle_id": bid,
        "created_at": rfc3339(time.time()),
        "boot_id": "b",
        "uptime_s": 12.5,
        "clock_synced": True,
        "device": {"id": DEV, "site": "Store 12", "model": "m", "serial": "s"},
        "agent": {"version": "1", "config_digest": "d"},
        "trigger": {"kind": "fault", "key": "printer.paper_end", "severity": "critical"},
        "files": [],
        "redaction": {"ruleset": "1", "counts": {}, "screenshot": "skipped:none"},
    }
    m.update(changes)
    return m


def _bundle(manifest: dict[str, Any] | bytes, entries: dict[str, bytes] | None = None) -> bytes:
    """A zip with these manifest bytes (or dict) and entries, listed with their digests."""
    entries = entries or {}
    if isinstance(manifest, dict):
        manifest = dict(manifest)
        manifest["files"] = manifest.get("files") or [
            {"name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
            for n, d in entries.items()
        ]
        raw = json.dumps(manifest).encode()
    else:
        raw = manifest
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", raw)
        for n, d in entries.items():
            zf.writestr(n, d)
    return buf.getvalue()


def _raw_manifest(bid: str, field: str, raw_value: str) -> bytes:
    """Manifest bytes with one field's JSON text spliced in as is (NaN, 1e400, deep nesting)."""
    text = json.dumps(_manifest(bid, **{field: "@@"}))
    return text.replace('"@@"', raw_value).encode()


HOSTILE: dict[str, Any] = {
    "created_at a huge number": {"created_at": 1e300},
    "created_at not a time": {"created_at": "yesterday"},
    "trigger a string": {"trigger": "x"},
    "agent a number": {"agent": 5},
    "device a list": {"device": ["T-0001"]},
    "redaction a string": {"redaction": "none"},
    "a long string": {"x_extra": "a" * 300_000},
    "a long list": {"x_extra": list(range(5000))},
    "a huge integer": {"uptime_s": 10**30},
    "a negative size": {"files": [{"name": "a.txt", "size": -1, "sha256": "0" * 64}]},
    "a site too long": {"device": {"id": DEV, "site": "s" * 1000}},
    "readings not objects": {"trigger": {"kind": "fault", "key": "k", "readings": [1]}},
}
HOSTILE_RAW = {
    "nested 100,000 deep": ("x_extra", "[" * 100_000 + "]" * 100_000),
    "nested 40 deep": ("x_extra", "[" * 40 + "]" * 40),
    "uptime NaN": ("uptime_s", "NaN"),
    "uptime 1e400 (infinite)": ("uptime_s", "1e400"),
    "a reading value -Infinity": (
        "trigger",
        '{"kind": "fault", "key": "k", "readings": [{"v": -Infinity}]}',
    ),
}


def _every_answer(env: Env, bid: str | None) -> None:
    """Every page and API answer renders (no 5xx), the list and its filters included."""
    paths = ["/", "/bundles", "/?fault=k", "/bundles?site=Store+12", "/v1/bundles"]
    paths += ["/v1/bundles?severity=critical", "/incidents", "/v1/incidents", "/devices/" + DEV]
    if bid:
        base = f"/v1/bundles/{bid}"
        paths += [f"/bundles/{bid}", base, f"{base}/download", f"{base}/diagnostics"]
        paths += [f"{base}/timeline.json", f"{base}/report.txt"]
    for p in paths:
        r = env.http.get(env.url + p, timeout=10)
        assert r.status_code in (200, 404), (p, r.status_code, r.text[:300])
        own = p.startswith("/v1/") and not p.endswith(".json")  # entries are the device's bytes
        if own and r.status_code == 200 and "json" in r.headers["content-type"]:
            r.json()


def test_hostile_manifests_are_refused_with_422_and_every_page_still_renders(env: Env) -> None:
    ok = make_bundle(device=DEV, site="Store 12")
    assert env.upload(ok).status_code == 201
    cases = [(n, _bundle(_manifest(b := new_bundle_id(), **c)), b) for n, c in HOSTILE.items()]
    for n, (field, raw) in HOSTILE_RAW.items():
        b = new_bundle_id()
        cases.append((n, _bundle(_raw_manifest(b, field, raw)), b))
    for name, data, bid in cases:
        t0 = time.monotonic()
        r = env.put(data, bid)
        assert r.status_code == 422, (name, r.status_code, r.text[:300])
        reason = r.json()["error"]
        assert reason and "\n" not in reason and len(reason) < 300, (name, reason)
        assert time.monotonic() - t0 < 5, name
        _every_answer(env, ok.bundle_id)
    assert env.count() == 1


def test_hostile_entries_are_stored_and_shown_safely(env: Env) -> None:
    """The timeline and diagnostics are the device's word: non-numeric or infinite ts,
    readings not a list, NaN, nesting too deep for json, all render (200)."""
    timelines = [
        b'{"readings": [{"ts": "noon", "source": "a"}, {"ts": 1e300, "source": "b"}]}',
        b'{"readings": [{"ts": Infinity, "source": "a", "values": [1]}, {"ts": 5}]}',
        b'{"readings": 7}',
        b'{"readings": [{"ts": 1, "values": ' + b"[" * 5000 + b"]" * 5000 + b"}]}",
        b"[" * 100_000 + b"]" * 100_000,
        b"not json",
    ]
    for i, tl in enumerate(timelines):
        bid = new_bundle_id()
        entries = {
            "timeline.json": tl,
            "report.txt": b"r",
            "diagnostics/d.json": b'{"x": NaN, "y": ' + b"[" * 3000 + b"]" * 3000 + b"}",
        }
        r = env.put(_bundle(_manifest(bid), entries), bid)
        assert r.status_code == 201, (i, r.text)
        _every_answer(env, bid)
        page = env.http.get(f"{env.url}/bundles/{bid}", timeout=10).text
        assert "Timeline" in page
    assert env.count() == len(timelines)


def test_schema_check_accepts_what_the_agent_seals() -> None:
    check_manifest(make_bundle(device=DEV).manifest)
    with pytest.raises(ManifestError, match="device.id"):
        check_manifest(_manifest(new_bundle_id(), device={"id": 3}))


def test_site_comes_from_the_registration_not_the_manifest(env: Env) -> None:
    """Registered site: the record's; no registered site: none; the claim shows unverified."""
    b = make_bundle(device=DEV, site="Flagship (claimed)")
    assert env.upload(b).status_code == 201
    rec = env.http.get(f"{env.url}/v1/bundles", timeout=10).json()["bundles"][0]
    assert rec["site"] == ""
    env.token = add_device(env.cfg.tokens_file, DEV, rotate=True, site="Store 7")
    assert parse_registry(Path(env.cfg.tokens_file).read_text())[DEV][1] == "Store 7"
    b2 = make_bundle(device=DEV, site="Flagship (claimed)", seed=2)
    assert env.upload(b2).status_code == 201
    got = env.http.get(f"{env.url}/v1/bundles", params={"site": "Store 7"}, timeout=10).json()
    assert [x["bundle_id"] for x in got["bundles"]] == [b2.bundle_id]
    assert env.http.get(f"{env.url}/v1/bundles?site=Flagship+(claimed)").json()["total"] == 0
    page = env.http.get(f"{env.url}/bundles/{b2.bundle_id}", timeout=10).text
    assert "Store 7" in page and "claims Flagship (claimed): unverified" in page
    # --rotate keeps the site; a bad site is refused
    add_device(env.cfg.tokens_file, DEV, rotate=True)
    assert parse_registry(Path(env.cfg.tokens_file).read_text())[DEV][1] == "Store 7"
    with pytest.raises(ValueError):
        add_device(env.cfg.tokens_file, "T-9", site="a#b")


def test_trailing_slash_redirect_never_echoes_host(env: Env) -> None:
    status, headers = _raw_get(env, "/v1/bundles/", host="evil.example")
    assert status in (307, 308)
    assert headers["location"] == "/v1/bundles"
    status, headers = _raw_get(env, "//evil.example/v1/bundles/", host="evil.example")
    assert "evil" not in headers.get("location", "")


def _raw_get(env: Env, path: str, host: str) -> tuple[int, dict[str, str]]:
    with socket.create_connection(("127.0.0.1", env.server.port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    hdrs = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
    return int(head[0].split()[1]), hdrs


def _closed(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        while chunk := s.recv(65536):  # an answer before the close is read past
            del chunk
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_slow_and_idle_clients_are_cut_off_while_uploads_go_on(env: Env) -> None:
    """50 half-sent requests: the idle cap (20) closes the oldest at once, the header
    deadline (2 s) the rest; a body that stalls is cut at the body deadline and nothing is
    stored; uploads succeed meanwhile and after."""
    port = env.server.port
    half = []
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"PUT /v1/bundles/x HTTP/1.1\r\nHost: c\r\nContent-Type: app")
        half.append(s)
    silent = socket.create_connection(("127.0.0.1", port), timeout=5)
    bid = new_bundle_id()
    body = _bundle(_manifest(bid))
    stall = socket.create_connection(("127.0.0.1", port), timeout=5)
    stall.sendall(
        f"PUT /v1/bundles/{bid} HTTP/1.1\r\nHost: c\r\nContent-Type: application/zip\r\n"
        f"Authorization: Bearer {env.token}\r\nX-Posagent-Device: {DEV}\r\n"
        f"Content-Digest: {content_digest(body)}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:100]
    )
    t0 = time.monotonic()
    assert wait_until(lambda: sum(not _closed(s) for s in half) <= 20, timeout_s=2)
    during = make_bundle(device=DEV, seed=1)
    assert env.upload(during).status_code == 201
    socks = [*half, silent, stall]
    assert wait_until(lambda: all(_closed(s) for s in socks), timeout_s=8, step_s=0.1), [
        i for i, s in enumerate(socks) if not _closed(s)
    ]
    elapsed = time.monotonic() - t0
    assert 1.5 <= elapsed <= 6, elapsed
    after = make_bundle(device=DEV, seed=2)
    assert env.upload(after).status_code == 201
    assert env.http.get(f"{env.url}/v1/bundles/{bid}", timeout=10).status_code == 404
    assert env.count() == 2
    for s in socks:
        s.close()


def test_rows_stored_before_the_checks_still_list(env: Env) -> None:
    """An index row with created_at 1e300 or far out of range (stored before ingest checked it) shows
    '-' on the page and null in the API, and every filter still answers."""
    from dataclasses import replace

    store = env.server.server.config.app.state.collector.store
    good = make_bundle(device=DEV)
    assert env.upload(good).status_code == 201
    row = store.index.get(good.bundle_id)
    for ts in (1e300, 2.0**62, -1e18):
        store.index.add(replace(row, bundle_id=new_bundle_id(), created_at=ts))
    _every_answer(env, None)
    listed = env.http.get(f"{env.url}/v1/bundles", timeout=10).json()
    assert listed["total"] == 4
    assert sum(b["created_at"] is None for b in listed["bundles"]) == 3


@pytest.mark.parametrize("claimed", ["1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z"])
def test_a_terminal_with_a_wrong_clock_is_stored_at_arrival(env: Env, claimed: str) -> None:
    """A created_at no working clock writes (a flat RTC battery: 1970; years ahead) is not
    refused: the bundle is evidence, listed at the time it arrived, its manifest unchanged."""
    bid = new_bundle_id()
    before = time.time()
    r = env.put(_bundle(_manifest(bid, created_at=claimed)), bid)
    assert r.status_code == 201, r.text
    rows = env.http.get(env.url + "/v1/bundles").json()["bundles"]
    row = next(b for b in rows if b["bundle_id"] == bid)
    listed = parse_rfc3339(row["created_at"])
    assert before - 1 <= listed <= time.time() + 1
    manifest = env.http.get(env.url + f"/v1/bundles/{bid}").json()
    assert manifest["created_at"] == claimed
    _every_answer(env, bid)
