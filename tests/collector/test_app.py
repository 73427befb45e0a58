"""Collector: upload protocol v1 on a real uvicorn, hostile uploads, rate limit, read API, CLI."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import signal
import socket
import stat
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from PIL import Image

from agent.upload.protocol import content_digest
from collector.app import parse_content_digest, parse_time
from collector.auth import TokenStore, add_device, hash_token
from collector.config import CollectorConfig
from collector.ratelimit import RateLimiter
from collector.server import CollectorThread, parse_listen
from collector.storage import (
    BlobStore,
    BundleRecord,
    FsBlobStore,
    Index,
    Query,
    SqliteIndex,
    open_default,
)
from tests.bundle.kit import KEY, make_bundle
from tests.collector.kit import (
    ADMIN,
    ADMIN_PASSWORD,
    admin_token,
    bearer,
    form_csrf,
    login,
    upload_headers,
)
from tests.conftest import posagent_argv, write_config

DEV = "T-0001"


class Env:
    """A running collector with one registered device, under tmp."""

    def __init__(self, tmp: Path, **overrides: object):
        self.tmp = tmp
        (tmp / "keys").mkdir(exist_ok=True)
        self.cfg = replace(
            CollectorConfig(
                data_dir=str(tmp / "store"),
                tokens_file=str(tmp / "etc" / "tokens"),
                device_keys_dir=str(tmp / "keys"),
                max_body_mib=1,
                rate_per_minute=1000,
            ),
            **overrides,  # type: ignore[arg-type]
        )
        self.token = add_device(self.cfg.tokens_file, DEV)
        self.admin_token = admin_token(self.cfg)
        self.server = CollectorThread(self.cfg).start()
        self.url = self.server.url
        self.http = requests.Session()  # reads as the admin (the read side is closed)
        self.http.headers.update(bearer(self.admin_token))

    def put(self, data: bytes, bundle_id: str, token: str | None = None, **headers: str):
        """PUT a body with v1 headers (overridable)."""
        h = upload_headers(bundle_id, data, self.token if token is None else token, DEV)
        h.update({k.replace("_", "-"): v for k, v in headers.items()})
        return self.http.put(f"{self.url}/v1/bundles/{bundle_id}", data=data, headers=h, timeout=10)

    def upload(self, bundle, token: str | None = None, device: str = DEV):
        """PUT a sealed bundle with correct headers."""
        h = upload_headers(bundle.bundle_id, bundle.data, token or self.token, device)
        return self.http.put(
            f"{self.url}/v1/bundles/{bundle.bundle_id}", data=bundle.data, headers=h, timeout=10
        )

    def raw(self, method: str, path: str, headers: dict[str, str], body: bytes = b""):
        """A request with an unnormalised path, straight on the socket."""
        host, port = self.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for k, v in headers.items():
                conn.putheader(k, v)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def tree(self) -> dict[str, int]:
        """Every file under tmp with its size (the SQLite files are compared by row count)."""
        out = {}
        for p in self.tmp.rglob("*"):
            if p.is_file() and "index.sqlite3" not in p.name:
                out[str(p.relative_to(self.tmp))] = p.stat().st_size
        return out

    def count(self) -> int:
        """Bundles in the index, through the read API."""
        return int(self.http.get(f"{self.url}/v1/bundles", timeout=10).json()["total"])

    def close(self) -> None:
        self.http.close()
        self.server.stop()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """A collector on uvicorn at 127.0.0.1:<free port>, 1 MiB body limit."""
    e = Env(tmp_path)
    yield e
    e.close()


def zip_with(base: bytes, extra: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    """Copy a bundle zip and append entries (names or prepared ZipInfos)."""
    src = zipfile.ZipFile(io.BytesIO(base))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        for name, payload in extra:
            dst.writestr(name, payload)
    return buf.getvalue()


# --------------------------------------------------------------------------- ingest


def test_ingest_created_then_repeat_then_conflict(env: Env) -> None:
    """A new bundle is 201, the same bytes again 200, another bundle under the same id 409."""
    b = make_bundle(device=DEV)
    r = env.upload(b)
    assert r.status_code == 201
    assert r.json() == {"status": "created", "bundle_id": b.bundle_id, "error": None}
    r = env.upload(b)
    assert r.status_code == 200
    assert r.json()["status"] == "already_stored"
    other = make_bundle(device=DEV, summary="another capture", bundle_id=b.bundle_id)
    assert other.data != b.data
    r = env.upload(other)
    assert r.status_code == 409
    assert r.json()["status"] == "conflict"
    stored = env.http.get(f"{env.url}/v1/bundles/{b.bundle_id}/download", timeout=10)
    assert stored.content == b.data
    files = list((env.tmp / "store" / "bundles").rglob("*.zip"))
    assert [f.name for f in files] == [f"{b.bundle_id}.zip"]
    assert list((env.tmp / "store" / "incoming").iterdir()) == []


def test_concurrent_uploads_of_one_bundle_store_it_once(env: Env) -> None:
    """Eight clients racing with the same bundle get one 201 and seven 200."""
    b = make_bundle(device=DEV)
    codes: list[int] = []

    def go() -> None:
        h = upload_headers(b.bundle_id, b.data, env.token, DEV)
        codes.append(
            requests.put(f"{env.url}/v1/bundles/{b.bundle_id}", data=b.data, headers=h).status_code
        )

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] * 7 + [201]
    assert env.count() == 1


def test_hmac_checked_when_the_device_key_is_known(env: Env) -> None:
    """With keys/<device>.key present, a bundle signed with that key is stored as HMAC-checked."""
    (env.tmp / "keys" / f"{DEV}.key").write_bytes(KEY + b"\n")
    b = make_bundle(device=DEV)
    assert env.upload(b).status_code == 201
    listed = env.http.get(f"{env.url}/v1/bundles", timeout=10).json()["bundles"]
    assert listed[0]["signature_checked"] is True


def test_token_changes_apply_without_restart(env: Env) -> None:
    """A device added while running uploads at once; a rotated token stops within a second."""
    token = add_device(env.cfg.tokens_file, "T-0002")
    b = make_bundle(device="T-0002")
    assert env.upload(b, token=token, device="T-0002").status_code == 201
    assert env.upload(make_bundle(device=DEV, seed=1)).status_code == 201
    new = add_device(env.cfg.tokens_file, DEV, rotate=True)
    time.sleep(1.1)
    assert env.upload(make_bundle(device=DEV, seed=2)).status_code == 401
    assert env.upload(make_bundle(device=DEV, seed=3), token=new).status_code == 201


def test_broken_tokens_file_answers_503_with_retry_after(env: Env) -> None:
    """A malformed tokens file makes ingest retryable (503 + Retry-After), never open."""
    Path(env.cfg.tokens_file).write_text("T-0001 not-a-hash\n")
    time.sleep(1.1)  # the file is re-checked at most once a second while tokens match
    r = env.upload(make_bundle(device=DEV))
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "60"
    assert r.json()["status"] == "unavailable"
    assert env.count() == 0


def test_start_up_reindexes_blobs_the_index_lost(tmp_path: Path) -> None:
    """A stored blob without an index row (power cut between the two) is indexed at start-up."""
    lost = make_bundle(device=DEV)
    blobs = FsBlobStore(tmp_path / "store" / "bundles")
    staged = tmp_path / "staged.zip"
    staged.write_bytes(lost.data)
    blobs.put(lost.bundle_id, staged)
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    blobs.put("01900000-0000-7000-8000-000000000001", junk)
    e = Env(tmp_path)
    try:
        deadline = time.monotonic() + 10
        while e.count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        listed = e.http.get(f"{e.url}/v1/bundles", timeout=10).json()["bundles"]
        assert [b["bundle_id"] for b in listed] == [lost.bundle_id]
        assert listed[0]["sha256"] == hashlib.sha256(lost.data).hexdigest()
        assert e.upload(lost).status_code == 200
    finally:
        e.close()


# --------------------------------------------------------------------------- hostile uploads


def test_manifest_of_another_device_is_a_per_bundle_refusal(env: Env) -> None:
    """A manifest naming another device with this device's good credentials: 422
    device_mismatch (the bundle, not the credentials), not stored; the device's next
    bundle is stored; a wrong X-Posagent-Device is still 403 (the credentials)."""
    from agent.upload.protocol import refuses_bundle_only

    foreign = make_bundle(device="T-RENAMED")
    r = env.upload(foreign)
    assert r.status_code == 422
    doc = r.json()
    assert doc["status"] == "device_mismatch" and doc["bundle_id"] == foreign.bundle_id
    assert "T-RENAMED" in doc["error"] and refuses_bundle_only(r.text)
    assert env.upload(make_bundle(device=DEV)).status_code == 201
    b = make_bundle(device=DEV)
    wrong = env.put(b.data, b.bundle_id, X_Posagent_Device="T-0009")
    assert wrong.status_code == 403 and not refuses_bundle_only(wrong.text)
    assert env.count() == 1


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_hostile_uploads_are_refused_and_write_nothing(env: Env) -> None:
    """Every hostile request gets its status and leaves the data dir as it was."""
    (env.tmp / "keys" / "T-KEYED.key").write_text("the-real-device-key-for-T-KEYED\n")
    keyed_token = add_device(env.cfg.tokens_file, "T-KEYED")
    other_token = add_device(env.cfg.tokens_file, "T-0009")
    good = make_bundle(device=DEV)
    assert env.upload(good).status_code == 201
    before = env.tree()
    bid = make_bundle(device=DEV).bundle_id

    def fresh(**kw: object):
        return make_bundle(device=DEV, **kw)  # type: ignore[arg-type]

    cases: list[tuple[str, int, object]] = []
    b = fresh()
    h = upload_headers(b.bundle_id, b.data, env.token, DEV)
    del h["Authorization"]
    cases.append(
        (
            "no token",
            401,
            env.http.put(f"{env.url}/v1/bundles/{b.bundle_id}", data=b.data, headers=h),
        )
    )
    cases.append(("wrong token", 401, env.upload(b, token="not-a-token")))
    cases.append(("other device's token", 403, env.upload(b, token=other_token)))
    foreign = make_bundle(device="T-0009")
    cases.append(("manifest of another device", 422, env.upload(foreign)))
    cases.append(
        ("wrong digest", 400, env.put(b.data, b.bundle_id, Content_Digest=content_digest(b"x")))
    )
    cases.append(("no digest", 400, env.put(b.data, b.bundle_id, Content_Digest="md5=:AAAA:")))
    cases.append(("id mismatch", 400, env.put(b.data, bid)))
    cases.append(
        ("idempotency key mismatch", 400, env.put(b.data, b.bundle_id, Idempotency_Key=bid))
    )
    cases.append(("content type", 415, env.put(b.data, b.bundle_id, Content_Type="text/html")))
    cases.append(("garbage", 422, env.put(os.urandom(5000), bid)))
    cases.append(("empty", 422, env.put(b"", bid)))
    bomb = zip_with(fresh().data, [("diagnostics/bomb.txt", b"\0" * (8 << 20))])
    assert len(bomb) < 1 << 20
    cases.append(("zip bomb", 422, env.put(bomb, bid)))
    big_entry = zip_with(fresh().data, [("diagnostics/huge.txt", b"\0" * (40 << 20))])
    cases.append(("entry over 32 MiB", 422, env.put(big_entry, bid)))
    link = zipfile.ZipInfo("diagnostics/passwd")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    cases.append(
        ("symlink entry", 422, env.put(zip_with(fresh().data, [(link, b"/etc/passwd")]), bid))
    )
    for name in (
        "../../../evil.txt",
        "/tmp/evil.txt",
        "diagnostics/../../evil.txt",
        "a\\..\\evil.txt",
    ):
        cases.append(
            (f"entry {name}", 422, env.put(zip_with(fresh().data, [(name, b"pwned")]), bid))
        )
    dup = zip_with(fresh().data, [("report.txt", b"second copy")])
    cases.append(("duplicate entry", 422, env.put(dup, bid)))
    src = zipfile.ZipFile(io.BytesIO(fresh().data))
    edited = io.BytesIO()
    with zipfile.ZipFile(edited, "w") as z:
        for info in src.infolist():
            payload = src.read(info)
            if info.filename == "report.txt":
                payload = payload.replace(b"report", b"REPORT")
            z.writestr(info, payload)
    cases.append(("edited entry", 422, env.put(edited.getvalue(), bid)))
    keyed = make_bundle(device="T-KEYED")  # signed with KEY, not the key on file
    cases.append(("wrong HMAC", 422, env.upload(keyed, token=keyed_token, device="T-KEYED")))
    for label, want, resp in cases:
        assert resp.status_code == want, (label, resp.status_code, resp.text)  # type: ignore[attr-defined]
        body = resp.json()  # type: ignore[attr-defined]
        assert body["status"] not in ("created", "already_stored"), label
        assert body["error"], label
    assert "HMAC" in cases[-1][2].json()["error"]  # type: ignore[attr-defined]
    assert env.tree() == before
    assert env.count() == 1
    assert not list(env.tmp.rglob("evil.txt"))
    assert not Path("/tmp/evil.txt").exists()


def test_traversal_ids_in_the_path_are_refused(env: Env) -> None:
    """Paths that are not a canonical UUID never reach the store (400 or 404)."""
    b = make_bundle(device=DEV)
    before = env.tree()
    headers = upload_headers(b.bundle_id, b.data, env.token, DEV)
    for path, allowed in (
        ("/v1/bundles/../../../etc/passwd", {400, 404}),
        ("/v1/bundles/..%2F..%2F..%2Fetc%2Fpasswd", {400, 404}),
        ("/v1/bundles/%2e%2e", {400, 404}),
        ("/v1/bundles/..", {400, 404}),
        ("/v1/bundles/" + b.bundle_id.upper(), {400}),
        ("/v1/bundles/" + b.bundle_id + "%00", {400}),
        ("/v1/bundles/" + b.bundle_id.replace("-", ""), {400}),
        ("/v1/bundles/not-a-uuid", {400}),
    ):
        status, _ = env.raw("PUT", path, headers, b.data)
        assert status in allowed, path
        status, _ = env.raw("GET", path, bearer(env.admin_token))
        assert status in allowed, path
    assert env.tree() == before
    assert env.count() == 0


def test_oversized_declared_body_is_refused_before_reading(env: Env) -> None:
    """A Content-Length over max_body_mib gets 413 without the body being sent."""
    host, port = env.url.removeprefix("http://").split(":")
    b = make_bundle(device=DEV)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("PUT", f"/v1/bundles/{b.bundle_id}")
    for k, v in upload_headers(b.bundle_id, b.data, env.token, DEV).items():
        conn.putheader(k, v)
    conn.putheader("Content-Length", str(2 << 20))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413
    assert json.loads(resp.read())["status"] == "too_large"
    conn.close()
    assert list((env.tmp / "store" / "incoming").iterdir()) == []


def test_oversized_streamed_body_is_cut_off_while_streaming(env: Env) -> None:
    """A chunked body is refused with 413 once it passes the limit, before it ends."""
    host, port = env.url.removeprefix("http://").split(":")
    b = make_bundle(device=DEV)
    before = env.tree()
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = [
        f"PUT /v1/bundles/{b.bundle_id} HTTP/1.1",
        f"Host: {host}",
        "Transfer-Encoding: chunked",
    ]
    head += [f"{k}: {v}" for k, v in upload_headers(b.bundle_id, b.data, env.token, DEV).items()]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    chunk = os.urandom(64 * 1024)
    for _ in range(17):  # 1.06 MiB, never terminated: the server must answer mid-stream
        sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
    reply = b""
    while b"\r\n\r\n" not in reply:
        data = sock.recv(4096)
        if not data:
            break
        reply += data
    sock.close()
    assert reply.startswith(b"HTTP/1.1 413"), reply[:80]
    assert env.tree() == before


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    """Past rate_per_minute uploads in a burst, the device gets 429 and a Retry-After in seconds."""
    e = Env(tmp_path, rate_per_minute=3)
    try:
        codes = [e.upload(make_bundle(device=DEV, seed=i)) for i in range(5)]
        assert [r.status_code for r in codes] == [201, 201, 201, 429, 429]
        retry = codes[3].headers["Retry-After"]
        assert retry.isdigit() and 1 <= int(retry) <= 20
        assert codes[3].json()["status"] == "rate_limited"
        other = add_device(e.cfg.tokens_file, "T-0002")
        assert (
            e.upload(make_bundle(device="T-0002"), token=other, device="T-0002").status_code == 201
        )
    finally:
        e.close()


def test_token_bucket_refills_at_the_configured_rate() -> None:
    """A bucket of 60/min refills one token per second and reports the wait."""
    now = [100.0]
    rl = RateLimiter(60, clock=lambda: now[0])
    assert all(rl.take("d") == 0 for _ in range(60))
    assert rl.take("d") == 1.0
    now[0] += 1.0
    assert rl.take("d") == 0
    assert rl.take("d") == 1.0
    assert rl.take("other") == 0


# --------------------------------------------------------------------------- read side


def _seed(env: Env) -> dict[str, object]:
    """Upload six bundles, created out of upload order, across devices, sites and faults."""
    # the sites are the registered ones (add-device --site), the same as the manifests claim
    env.token = add_device(env.cfg.tokens_file, DEV, rotate=True, site="Store 12")
    t_add = add_device(env.cfg.tokens_file, "T-0002", site="Store 7")
    base = 1_750_000_000.0
    specs = [
        (DEV, "Store 12", "printer.paper_end", "critical", base + 50),
        (DEV, "Store 12", "network.link_down", "critical", base + 10),
        ("T-0002", "Store 7", "printer.paper_end", "critical", base + 40),
        ("T-0002", "Store 7", "power.battery_low", "warning", base + 30),
        (DEV, "Store 12", "printer.paper_end", "critical", base + 20),
        ("T-0002", "Store 7", "system.disk_low", "error", base + 60),
    ]
    made = {}
    for i, (dev, site, fault, sev, ts) in enumerate(specs):
        b = make_bundle(device=dev, site=site, fault=fault, severity=sev, created_at=ts, seed=i)
        r = env.upload(b, token=env.token if dev == DEV else t_add, device=dev)
        assert r.status_code == 201
        made[b.bundle_id] = (dev, site, fault, sev, ts, b)
    return made


def test_read_api_filters_and_orders_newest_first(env: Env) -> None:
    """GET /v1/bundles sorts by creation time, newest first, and every filter narrows it."""
    made = _seed(env)

    def ids(**params: object) -> list[str]:
        r = env.http.get(f"{env.url}/v1/bundles", params=params, timeout=10)
        assert r.status_code == 200, r.text
        return [b["bundle_id"] for b in r.json()["bundles"]]

    def expect(pred) -> list[str]:  # type: ignore[no-untyped-def]
        rows = [(v[4], k) for k, v in made.items() if pred(v)]
        return [k for _, k in sorted(rows, reverse=True)]

    assert ids() == expect(lambda v: True)
    assert ids(device="T-0002") == expect(lambda v: v[0] == "T-0002")
    assert ids(site="Store 12") == expect(lambda v: v[1] == "Store 12")
    assert ids(fault="printer.paper_end") == expect(lambda v: v[2] == "printer.paper_end")
    assert ids(severity="warning") == expect(lambda v: v[3] == "warning")
    assert ids(fault="printer.paper_end", device=DEV) == expect(
        lambda v: v[2] == "printer.paper_end" and v[0] == DEV
    )
    base = 1_750_000_000.0
    assert ids(since=base + 30) == expect(lambda v: v[4] >= base + 30)
    assert ids(since="2025-06-15T15:07:00Z", until=base + 45) == expect(
        lambda v: base + 20 <= v[4] <= base + 45
    )
    assert ids(until="2025-06-15T17:07:00+02:00") == expect(lambda v: v[4] <= base + 20)
    everything = ids()
    assert ids(limit=2) == everything[:2]
    assert ids(limit=2, offset=2) == everything[2:4]
    body = env.http.get(
        f"{env.url}/v1/bundles", params={"device": DEV, "limit": 1}, timeout=10
    ).json()
    assert body["total"] == 3
    assert body["counts_by_fault"] == {"printer.paper_end": 2, "network.link_down": 1}
    first = body["bundles"][0]
    assert first["created_at"] == "2025-06-15T15:07:30.000Z"
    assert first["device"] == DEV and first["site"] == "Store 12"
    assert first["size_bytes"] == len(made[first["bundle_id"]][5].data)  # type: ignore[index]
    assert first["sha256"] == hashlib.sha256(made[first["bundle_id"]][5].data).hexdigest()  # type: ignore[index]
    assert first["screenshot"] == "captured"
    for bad in ({"since": "yesterday"}, {"severity": "fatal"}, {"limit": "-1"}):
        r = env.http.get(f"{env.url}/v1/bundles", params=bad, timeout=10)
        assert r.status_code == 400 and r.json()["error"]


def test_per_bundle_endpoints_serve_the_stored_entries(env: Env) -> None:
    """Manifest, download, screenshot, report, timeline, diagnostics and entries match the bundle."""
    b = make_bundle(device=DEV)
    env.upload(b)
    base = f"{env.url}/v1/bundles/{b.bundle_id}"
    g = env.http.get
    m = g(base, timeout=10).json()
    assert m == b.manifest
    dl = g(f"{base}/download", timeout=10)
    assert dl.content == b.data
    assert dl.headers["content-type"] == "application/zip"
    assert b.bundle_id in dl.headers["content-disposition"]
    shot = g(f"{base}/screenshot.png", timeout=10)
    assert shot.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(shot.content)).size == (480, 320)
    assert g(f"{base}/report.txt", timeout=10).text.startswith("posagent report")
    assert len(g(f"{base}/timeline.json", timeout=10).json()["readings"]) == 120
    diag = g(f"{base}/diagnostics", timeout=10).json()
    assert diag["diagnostics/printer.json"]["status"] == {"paper_end": True}
    assert "usb 1-1" in diag["diagnostics/dmesg.txt"]
    entry = g(f"{base}/entries/diagnostics/printer.json", timeout=10)
    assert entry.json()["port"] == "/dev/ttyS0"
    assert entry.headers["x-content-type-options"] == "nosniff"
    assert g(f"{base}/entries/diagnostics/nope.txt", timeout=10).status_code == 404
    unknown = "01900000-0000-7000-8000-000000000000"
    assert g(f"{env.url}/v1/bundles/{unknown}", timeout=10).status_code == 404
    assert g(f"{env.url}/v1/bundles/{unknown}/download", timeout=10).status_code == 404
    assert g(f"{env.url}/v1/bundles/xyz/report.txt", timeout=10).status_code == 400
    assert g(f"{env.url}/healthz", timeout=10).json() == {"status": "ok"}


def test_page_escapes_everything_from_the_bundle(env: Env) -> None:
    """Markup in a manifest or entry is shown as text on the list and bundle pages."""
    evil = "<script>alert(1)</script>"
    b = make_bundle(device=DEV, site='Shop "<b>7</b>', summary=evil, fault="app.log_error")
    assert env.upload(b).status_code == 201
    for path in ("/bundles", f"/bundles/{b.bundle_id}", "/?site=" + evil, "/bundles?site=" + evil):
        r = env.http.get(env.url + path, timeout=10)
        assert r.status_code == 200
        assert "<script>" not in r.text and "<b>7</b>" not in r.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text
        assert "default-src 'none'" in r.headers["content-security-policy"]
    page = env.http.get(f"{env.url}/bundles/{b.bundle_id}", timeout=10).text
    assert f"/v1/bundles/{b.bundle_id}/screenshot.png" in page
    assert f"/v1/bundles/{b.bundle_id}/download" in page
    assert "<svg" in page and "printer:receipt" in page
    assert "diagnostics/printer.json" in page


# --------------------------------------------------------------------------- closed read side


def test_the_read_side_is_closed_by_default(env: Env) -> None:
    """Without credentials every read answers 401 (API) or goes to the login (pages); ingest
    and /healthz need none; a login with the admin's password opens the pages and the log
    out closes them (tests/collector/test_accounts.py covers the rest)."""
    b = make_bundle(device=DEV)
    assert env.upload(b).status_code == 201
    s = requests.Session()
    for path in (
        "/v1/bundles",
        f"/v1/bundles/{b.bundle_id}",
        f"/v1/bundles/{b.bundle_id}/download",
        f"/v1/bundles/{b.bundle_id}/screenshot.png",
        f"/v1/bundles/{b.bundle_id}/diagnostics",
        "/v1/holds",
        "/v1/audit",
        "/v1/users",
        "/metrics",
    ):
        r = s.get(env.url + path, timeout=10)
        assert r.status_code == 401 and "Bearer" in r.headers["www-authenticate"], path
    for path in ("/", f"/bundles/{b.bundle_id}", "/admin", "/audit"):
        page = s.get(env.url + path, allow_redirects=False, timeout=10)
        assert page.status_code == 303, path
        assert page.headers["location"] == f"/login?next={path}"
    bad = s.get(f"{env.url}/v1/bundles", headers=bearer("pat_guess"), timeout=10)
    assert bad.status_code == 401
    ok = login(s, env.url, ADMIN, ADMIN_PASSWORD, "//evil.example/")
    assert ok.status_code == 303 and ok.headers["location"] == "/"
    assert s.get(f"{env.url}/bundles/{b.bundle_id}", timeout=10).status_code == 200
    assert s.get(f"{env.url}/v1/bundles", timeout=10).json()["total"] == 1
    s.post(f"{env.url}/logout", data={"csrf": form_csrf(s.get(env.url + "/", timeout=10).text)})
    assert s.get(f"{env.url}/v1/bundles", timeout=10).status_code == 401
    assert requests.get(f"{env.url}/healthz", timeout=10).status_code == 200


# --------------------------------------------------------------------------- units


def test_content_digest_and_time_parsing() -> None:
    """Content-Digest takes the sha-256 member; since/until take RFC 3339, naive ISO or epoch."""
    digest = hashlib.sha256(b"abc").digest()
    b64 = base64.b64encode(digest).decode()
    assert parse_content_digest(f"sha-256=:{b64}:") == digest
    assert parse_content_digest(f"sha-512=:AAAA:, sha-256=:{b64}:") == digest
    assert parse_content_digest("sha-256=:AAAA:") is None
    assert parse_content_digest("sha-256=:not base64!:") is None
    assert parse_content_digest("") is None
    assert parse_time("1750000000") == 1750000000.0
    assert parse_time("2025-06-15T15:06:40Z") == 1750000000.0
    assert parse_time("2025-06-15T17:06:40+02:00") == 1750000000.0
    assert parse_time("2025-06-15T15:06:40") == 1750000000.0
    assert parse_time("") is None
    for bad in ("nan", "inf", "tomorrow", "2025-13-01"):
        with pytest.raises(ValueError):
            parse_time(bad)
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    with pytest.raises(ValueError):
        parse_listen("8080")


def test_storage_implements_the_interfaces_and_commits_once(tmp_path: Path) -> None:
    """FsBlobStore and SqliteIndex satisfy the protocols; commit is 201/200/409-shaped."""
    store = open_default(tmp_path / "d")
    assert isinstance(store.blobs, BlobStore) and isinstance(store.blobs, FsBlobStore)
    assert isinstance(store.index, Index) and isinstance(store.index, SqliteIndex)
    mode = store.index._conn().execute("PRAGMA journal_mode").fetchone()[0]  # type: ignore[attr-defined]
    assert mode == "wal"
    b = make_bundle(device=DEV)
    rec = BundleRecord(
        bundle_id=b.bundle_id,
        device=DEV,
        site="S",
        fault_key="f.k",
        severity="error",
        trigger_kind="fault",
        summary="",
        created_at=1.0,
        received_at=2.0,
        size_bytes=len(b.data),
        sha256=hashlib.sha256(b.data).hexdigest(),
        screenshot="captured",
        signature_checked=False,
    )
    staged = store.staging_dir / "x.part"
    staged.write_bytes(b.data)
    assert store.commit(rec, staged) == "created"
    assert not staged.exists()
    assert store.blobs.get(b.bundle_id) == b.data
    staged.write_bytes(b.data)
    assert store.commit(rec, staged) == "exists"
    assert store.commit(replace(rec, sha256="0" * 64), staged) == "conflict"
    assert store.index.get(b.bundle_id) == rec
    assert store.index.query(Query(fault="f.k")) == [rec]
    assert store.index.counts(Query()) == {"f.k": 1}
    assert store.index.latest_received_at() == 2.0
    other = make_bundle(device=DEV, seed=7)
    orphan = replace(rec, bundle_id=other.bundle_id, sha256=hashlib.sha256(other.data).hexdigest())
    staged.write_bytes(other.data)
    store.blobs.put(other.bundle_id, staged)  # blob stored, index row lost
    staged.write_bytes(other.data)
    assert store.commit(replace(orphan, sha256="1" * 64), staged) == "conflict"
    assert store.index.get(other.bundle_id) is None
    assert store.commit(orphan, staged) == "exists"
    assert store.index.get(other.bundle_id) == orphan
    assert sorted(store.blobs.ids()) == sorted([b.bundle_id, other.bundle_id])
    with pytest.raises(ValueError):
        store.blobs.path("../../etc/passwd")  # type: ignore[attr-defined]
    with pytest.raises(KeyError):
        store.blobs.get("01900000-0000-7000-8000-000000000000")
    store.close()


# --------------------------------------------------------------------------- CLI


def test_add_device_prints_the_token_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    """`posagent collector add-device` prints a token, keeps its SHA-256, refuses a repeat without --rotate."""
    tokens = tmp_path / "etc" / "collector-tokens"
    cfg = write_config(
        tmp_path, f'[collector]\ntokens_file = "{tokens}"\ndata_dir = "{tmp_path / "c"}"\n'
    )
    r = subprocess.run(
        posagent_argv("collector", "add-device", "T-0042", "--config", str(cfg)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert len(token) >= 40 and "\n" not in token
    text = tokens.read_text()
    assert token not in text
    assert f"T-0042 {hash_token(token)}" in text
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    assert TokenStore(tokens).device_for(token) == "T-0042"
    again = subprocess.run(
        posagent_argv("collector", "add-device", "T-0042", "--config", str(cfg)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert again.returncode == 73 and again.stdout == "" and "--rotate" in again.stderr
    rotated = subprocess.run(
        posagent_argv("collector", "add-device", "T-0042", "--rotate", "--config", str(cfg)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert rotated.returncode == 0
    store = TokenStore(tokens)
    assert store.device_for(rotated.stdout.strip()) == "T-0042"
    assert store.device_for(token) is None
    bad = subprocess.run(
        posagent_argv("collector", "add-device", "..", "--config", str(cfg)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_command_runs_uvicorn_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`posagent collector serve` answers /healthz and an upload, and exits 0 on SIGTERM."""
    port = _free_port()
    tokens = tmp_path / "tokens"
    cfg = write_config(
        tmp_path,
        f'[collector]\nlisten = "127.0.0.1:{port}"\ntokens_file = "{tokens}"\n'
        f'data_dir = "{tmp_path / "c"}"\n',
    )
    token = add_device(tokens, DEV)
    proc = subprocess.Popen(
        posagent_argv("collector", "serve", "--config", str(cfg)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        b = make_bundle(device=DEV)
        h = upload_headers(b.bundle_id, b.data, token, DEV)
        assert (
            requests.put(
                f"{url}/v1/bundles/{b.bundle_id}", data=b.data, headers=h, timeout=10
            ).status_code
            == 201
        )
        busy = subprocess.run(
            posagent_argv("collector", "serve", "--config", str(cfg)),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert busy.returncode == 69 and "cannot listen" in busy.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    assert any(ev.get("event") == "bundle_stored" for ev in events)
