"""Incidents over HTTP on a real collector (uvicorn on loopback; SQLite, or a real
PostgreSQL index): bundles uploaded become incidents at ingest, the API's filters, notes
and status changes in JSON and as forms, strict input checks, the fleet's faults, the
dispute export's zip, the pages with hostile data, ingest that never fails for grouping,
and the read side narrowed by the principal (handlers driven with Principals built here)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import signal
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from collector import audit
from collector.access import Principal, Role
from collector.auth import add_device
from collector.channel import views as channel_views
from collector.config import CollectorConfig
from collector.incidents import api, views
from collector.incidents.api import Handler
from collector.incidents.model import lock_name
from collector.server import CollectorThread, bind
from collector.storage.sql import database
from tests.bundle.kit import KEY, make_bundle
from tests.collector.hookserver import free_port
from tests.collector.kit import ADMIN, admin_token, bearer, upload_headers
from tests.conftest import posagent_argv, wait_until, write_config

DEVICES = {"T-0001": "Store 12", "T-0002": "Store 12", "T-0003": "Store 99"}
EVIL = "<script>alert(1)</script>"


class Fleet:
    """A running collector with three registered devices in two sites."""

    def __init__(self, tmp: Path, **overrides: Any) -> None:
        (tmp / "keys").mkdir(exist_ok=True)
        self.cfg = replace(
            CollectorConfig(
                data_dir=str(tmp / "store"),
                tokens_file=str(tmp / "etc" / "tokens"),
                device_keys_dir=str(tmp / "keys"),
                max_body_mib=4,
                rate_per_minute=100_000,
            ),
            **overrides,
        )
        self.tokens = {}
        for dev, site in DEVICES.items():
            self.tokens[dev] = add_device(self.cfg.tokens_file, dev, site=site)
            (tmp / "keys" / f"{dev}.key").write_bytes(KEY)
        self.server = CollectorThread(self.cfg).start()
        self.url = self.server.url
        self.http = requests.Session()  # reads and writes as the admin (personal token)
        self.http.headers.update(bearer(admin_token(self.cfg)))
        self.uploaded: dict[str, bytes] = {}

    @property
    def app(self) -> Any:
        return self.server.server.config.app

    def upload(self, device: str = "T-0001", *, wait_grouped: bool = True, **kw: Any) -> str:
        """A bundle uploaded (201), then, unless told not to, grouped (`grouped`)."""
        b = make_bundle(device=device, site=DEVICES[device], **kw)
        h = upload_headers(b.bundle_id, b.data, self.tokens[device], device)
        r = self.http.put(
            f"{self.url}/v1/bundles/{b.bundle_id}", data=b.data, headers=h, timeout=30
        )
        assert r.status_code == 201, r.text
        self.uploaded[b.bundle_id] = b.data
        if wait_grouped:
            self.grouped()
        return b.bundle_id

    def grouped(self) -> None:
        """Wait until the incident worker has grouped every bundle handed to it (the
        upload is answered before its grouping)."""
        backlog = self.app.state.collector.incidents.backlog
        assert wait_until(lambda: backlog.pending == 0, timeout_s=60)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.http.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.http.post(self.url + path, timeout=30, allow_redirects=False, **kw)

    def incidents(self, **params: Any) -> list[dict[str, Any]]:
        r = self.get("/v1/incidents", params=params)
        assert r.status_code == 200, r.text
        out: list[dict[str, Any]] = r.json()["incidents"]
        return out

    def close(self) -> None:
        self.http.close()
        self.server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    over: dict[str, Any] = {}
    if request.param == "postgres":
        from collector.storage.postgres import migrate

        url = request.getfixturevalue("pg_url")
        migrate(url)
        over["index_url"] = url
    f = Fleet(tmp_path, **over)
    yield f
    f.close()


def test_uploads_become_incidents_and_the_list_filters(fleet: Fleet) -> None:
    t0 = 1_767_000_000.0
    fleet.upload(created_at=t0, severity="critical")
    fleet.upload(created_at=t0 + 90, kind="cleared", severity="critical")
    fleet.upload("T-0002", created_at=t0 + 30, fault="network.link_down", severity="error")
    fleet.upload("T-0003", created_at=t0 + 40, fault="printer.paper_end", severity="warning")
    rows = fleet.incidents()
    assert [(r["device"], r["fault_key"]) for r in rows] == [
        ("T-0001", "printer.paper_end"),  # cleared at t0 + 90
        ("T-0003", "printer.paper_end"),
        ("T-0002", "network.link_down"),
    ]  # newest activity first
    paper = rows[0]
    assert paper["bundles"] == 2 and paper["active"] is False
    assert paper["duration_s"] == pytest.approx(90.0)
    assert paper["site"] == "Store 12" and paper["status"] == "open"

    def ids(**params: Any) -> list[str]:
        return [r["device"] for r in fleet.incidents(**params)]

    assert ids(device="T-0002") == ["T-0002"]
    assert ids(site="Store 12") == ["T-0001", "T-0002"]
    assert ids(fault="printer.paper_end") == ["T-0001", "T-0003"]
    assert ids(severity="warning") == ["T-0003"]
    assert ids(status="unresolved") == ["T-0001", "T-0003", "T-0002"]
    assert ids(status="resolved") == []
    assert ids(assignee="") == ["T-0001", "T-0003", "T-0002"]
    assert ids(since=str(t0 + 35)) == ["T-0001", "T-0003"]  # active at or after since
    assert ids(until="2025-01-01T00:00:00Z") == []
    page = fleet.get("/v1/incidents", params={"limit": 2, "offset": 2}).json()
    assert page["total"] == 3 and len(page["incidents"]) == 1
    for bad in (
        {"status": "closed"},
        {"severity": "fatal"},
        {"limit": "-1"},
        {"since": "yesterday"},
        {"assignee": "a\x00b"},
    ):
        r = fleet.get("/v1/incidents", params=bad)
        assert r.status_code == 400 and r.json()["error"], bad


def test_one_incident_notes_and_status_in_json(fleet: Fleet) -> None:
    b1 = fleet.upload(created_at=1_767_000_000.0)
    iid = fleet.incidents()[0]["id"]
    d = fleet.get(f"/v1/incidents/{iid}").json()
    assert [b["bundle_id"] for b in d["bundle_list"]] == [b1]
    assert d["bundle_list"][0]["signature_checked"] is True
    assert [e["kind"] for e in d["events"]] == ["opened", "bundle"]
    assert d["links"]["export"] == f"/v1/incidents/{iid}/export"
    assert fleet.get("/v1/incidents/999999").status_code == 404
    assert fleet.get("/v1/incidents/abc").status_code == 400

    r = fleet.post(
        f"/v1/incidents/{iid}/notes",
        json={"channel": "phone", "text": "Merchant will load a new roll", "contact": "Li"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["detail"]["channel"] == "phone" and r.json()["actor"] == ADMIN
    r = fleet.post(
        f"/v1/incidents/{iid}/status", json={"status": "acknowledged", "assignee": "sam"}
    )
    assert r.status_code == 200 and r.json()["status"] == "acknowledged"
    assert r.json()["assignee"] == "sam"
    assert [x["device"] for x in fleet.incidents(assignee="sam")] == ["T-0001"]
    r = fleet.post(f"/v1/incidents/{iid}/status", json={"status": "open"})
    assert r.status_code == 409 and "not allowed" in r.json()["error"]
    r = fleet.post(f"/v1/incidents/{iid}/status", json={"status": "acknowledged"})
    assert r.status_code == 409 and "already" in r.json()["error"]
    assert fleet.post(f"/v1/incidents/{iid}/status", json={"status": "resolved"}).status_code == 200
    assert fleet.post("/v1/incidents/999999/status", json={"status": "resolved"}).status_code == 404
    d = fleet.get(f"/v1/incidents/{iid}").json()
    assert d["status"] == "resolved" and d["resolved_at"]
    assert [n["detail"]["text"] for n in d["notes"]] == ["Merchant will load a new roll"]
    assert [e["kind"] for e in d["events"]][2:] == ["note", "acknowledged", "assigned", "resolved"]

    base = f"/v1/incidents/{iid}"
    bad_bodies: list[tuple[str, Any, int]] = [
        ("notes", {"channel": "pigeon", "text": "x"}, 400),
        ("notes", {"channel": "phone"}, 400),
        ("notes", {"channel": "phone", "text": "   "}, 400),
        ("notes", {"channel": "phone", "text": "x" * 4001}, 400),
        ("notes", {"channel": "phone", "text": "x", "at": "2999-01-01T00:00:00Z"}, 400),
        ("notes", {"channel": "phone", "text": "x", "at": True}, 400),
        ("notes", {"channel": "phone", "text": "x", "mood": "calm"}, 400),
        ("notes", ["phone", "x"], 400),
        ("status", {}, 400),
        ("status", {"status": "closed"}, 400),
        ("status", {"assignee": "x" * 101}, 400),
        ("status", {"status": 3}, 400),
    ]
    for what, body, code in bad_bodies:
        r = fleet.post(f"{base}/{what}", json=body)
        assert r.status_code == code and r.json()["error"], (what, body, r.text)
    r = fleet.post(f"{base}/notes", data=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    r = fleet.post(f"{base}/notes", data=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400
    r = fleet.post(f"{base}/notes", json={"channel": "phone", "text": "x" * 20000})
    assert r.status_code == 413
    d = fleet.get(base).json()
    assert len(d["notes"]) == 1 and d["event_total"] == 6  # nothing bad was written


def test_the_page_forms_post_to_the_api(fleet: Fleet) -> None:
    fleet.upload(created_at=1_767_000_000.0)
    iid = fleet.incidents()[0]["id"]
    page = fleet.get(f"/incidents/{iid}").text
    assert f"action='/v1/incidents/{iid}/notes'" in page
    assert f"action='/v1/incidents/{iid}/status'" in page and "id='to-acknowledged'" in page
    r = fleet.post(
        f"/v1/incidents/{iid}/notes",
        data={
            "channel": "visit",
            "text": "Technician replaced the cable",
            "at": "2026-01-01T09:30",
            "csrf_token": "ignored-here",
        },
    )
    assert r.status_code == 303 and r.headers["location"] == f"/incidents/{iid}"
    r = fleet.post(f"/v1/incidents/{iid}/status", data={"status": "resolved"})
    assert r.status_code == 303
    r = fleet.post(f"/v1/incidents/{iid}/status", data={"status": "resolved"})
    assert r.status_code == 409 and "already resolved" in r.text and "<h1>" in r.text
    r = fleet.post(f"/v1/incidents/{iid}/notes", data={"channel": "phone", "text": ""})
    assert r.status_code == 400 and "text is required" in r.text
    kept = {"channel": "email", "text": EVIL + "\nsecond line", "contact": EVIL, "at": "'><b>k"}
    r = fleet.post(f"/v1/incidents/{iid}/notes", data=kept)  # refused: shown again, escaped
    assert r.status_code == 400 and "at: not a time" in r.text
    assert "<script>" not in r.text and "<b>k" not in r.text
    assert "<option value='email' selected>" in r.text
    assert "value='&lt;script&gt;alert(1)&lt;/script&gt;'" in r.text  # the contact
    assert ">&lt;script&gt;alert(1)&lt;/script&gt;\nsecond line</textarea>" in r.text
    page = fleet.get(f"/incidents/{iid}").text
    assert "Technician replaced the cable" in page and "2026-01-01 09:30:00Z" in page
    assert "id='to-open'" in page  # resolved: the button reopens
    d = fleet.get(f"/v1/incidents/{iid}").json()
    assert d["status"] == "resolved" and len(d["notes"]) == 1


def test_fleet_faults_over_a_window(fleet: Fleet) -> None:
    now = time.time()
    for dev in DEVICES:
        fleet.upload(dev, created_at=now - 3600, fault="printer.paper_end")
    fleet.upload("T-0001", created_at=now - 600, fault="network.link_down", severity="error")
    fleet.upload("T-0002", created_at=now - 10 * 86400, fault="cover.open", severity="warning")
    week = fleet.get("/v1/fleet/faults", params={"days": 7}).json()
    assert [
        (f["fault_key"], f["incidents"], f["terminals"], f["sites"]) for f in week["faults"]
    ] == [
        ("printer.paper_end", 3, 3, 2),
        ("network.link_down", 1, 1, 1),
    ]
    assert week["faults"][0]["text"] == "printer.paper_end at 3 terminals in 2 sites"
    month = fleet.get("/v1/fleet/faults", params={"days": 30}).json()
    assert {f["fault_key"] for f in month["faults"]} == {
        "printer.paper_end",
        "network.link_down",
        "cover.open",
    }
    for bad in ("0", "367", "x", "-1"):
        assert fleet.get("/v1/fleet/faults", params={"days": bad}).status_code == 400


def test_dispute_export_is_one_self_contained_zip(fleet: Fleet) -> None:
    t0 = 1_767_000_000.0
    b1 = fleet.upload(created_at=t0, summary="Paper ran out mid-receipt")
    b2 = fleet.upload(created_at=t0 + 60, kind="cleared")
    iid = fleet.incidents()[0]["id"]
    fleet.post(f"/v1/incidents/{iid}/notes", json={"channel": "phone", "text": "Refund agreed"})
    r = fleet.get(f"/v1/incidents/{iid}/export")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert f"incident-{iid}-" in r.headers["content-disposition"]
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    top = f"incident-{iid}/"
    names = set(zf.namelist())
    for bid in (b1, b2):
        assert zf.read(f"{top}bundles/{bid}.zip") == fleet.uploaded[bid]  # the originals
        assert f"{top}bundles/{bid}/report.txt" in names
        assert f"{top}bundles/{bid}/screenshot.png" in names
        assert f"{top}bundles/{bid}/timeline.json" in names
    html = zf.read(f"{top}index.html").decode()
    assert "Refund agreed" in html and "Paper ran out mid-receipt" in html
    assert html.count("data:image/png;base64,") == 2 and html.count("<svg") == 2
    for bid in (b1, b2):
        assert hashlib.sha256(fleet.uploaded[bid]).hexdigest() in html
    assert html.count("verified with the device&#x27;s key on file") == 2
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", html) and "<script" not in html
    facts = json.loads(zf.read(f"{top}incident.json"))
    assert facts["id"] == iid and facts["notes"][0]["detail"]["text"] == "Refund agreed"
    checks = {c["bundle_id"]: c for c in facts["bundle_checks"]}
    assert all(c["digest_matches"] and c["signature_ok"] for c in checks.values())
    sums = zf.read(f"{top}SHA256SUMS").decode().splitlines()
    assert len(sums) == len(names) - 1
    for line in sums:
        digest, name = line.split("  ", 1)
        assert hashlib.sha256(zf.read(top + name)).hexdigest() == digest
    assert fleet.get("/v1/incidents/999999/export").status_code == 404


def test_pages_render_hostile_data_escaped(fleet: Fleet) -> None:
    """Fault keys, summaries, assignees and notes with markup show as text on every page."""
    now = time.time()
    fleet.upload(created_at=now - 100, fault=EVIL, summary=EVIL, severity="critical")
    fleet.upload("T-0003", created_at=now - 90, fault="x'><b>k</b>", summary="\"'<i>")
    iid = fleet.incidents(device="T-0001")[0]["id"]
    fleet.post(f"/v1/incidents/{iid}/status", json={"assignee": EVIL})
    fleet.post(
        f"/v1/incidents/{iid}/notes", json={"channel": "chat", "text": EVIL, "contact": EVIL}
    )
    for path in (
        "/",
        "/incidents",
        f"/incidents/{iid}",
        "/devices/T-0001",
        "/incidents?fault=" + EVIL,
        "/incidents?status=" + EVIL,
        "/incidents?taken=" + EVIL,
        "/devices/" + EVIL,
        "/devices/<b>k",
    ):
        r = fleet.get(path)
        assert r.status_code in (200, 400, 404), path
        assert "<script>" not in r.text and "<b>k</b>" not in r.text and "<i>" not in r.text, path
        assert "default-src 'none'" in r.headers["content-security-policy"]
    home = fleet.get("/").text
    chart = home[home.index("id='top-7'") :]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in chart  # the fault key, in the chart
    assert "id='tile-critical'" in home and "<table class='bars'" in chart
    assert fleet.get("/incidents?status=closed").status_code == 400
    assert fleet.get("/incidents/0").status_code == 400
    assert fleet.get("/devices/<b>k").status_code == 400


def test_home_device_and_bundle_list_pages(fleet: Fleet) -> None:
    t0 = 1_767_000_000.0
    fleet.upload(created_at=t0, fault="power.ac_lost", severity="critical")
    fleet.upload("T-0002", created_at=t0 + 1, fault="printer.paper_end", severity="error")
    fleet.upload("T-0002", created_at=t0 + 2, fault="printer.paper_end", kind="cleared")
    home = fleet.get("/").text
    assert "The fleet at a glance" in home
    assert ">T-0001</a>" in home and "power.ac_lost" in home
    assert "2 site(s)" not in home and "1 site(s) and 2 terminal(s)" in home
    dev = fleet.get("/devices/T-0002").text
    assert dev.count("data-incident=") == 1 and dev.count("data-bundle=") == 2
    r = fleet.get("/?device=T-0002", allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/bundles?device=T-0002"
    listing = fleet.get("/bundles?device=T-0002").text
    assert listing.count("data-bundle=") == 2
    assert fleet.get("/incidents?status=unresolved").text.count("data-incident=") == 2


def test_ingest_never_fails_for_grouping_and_catch_up_groups_later(tmp_path: Path) -> None:
    """The incident tables unusable at ingest: uploads are stored (201) all the same; the
    pass at the next start groups them."""
    f = Fleet(tmp_path)
    try:
        index = f.app.state.collector.store.index
        index._conn().execute("ALTER TABLE incident_events RENAME TO incident_events_away")
        b = f.upload(created_at=1_767_000_000.0)
        assert f.get(f"/v1/bundles/{b}").status_code == 200
        index._conn().execute("ALTER TABLE incident_events_away RENAME TO incident_events")
        assert f.incidents() == []
    finally:
        f.close()
    g = Fleet.__new__(Fleet)
    g.cfg, g.http, g.uploaded = f.cfg, requests.Session(), {}
    g.http.headers.update(bearer(admin_token(f.cfg)))
    g.server = CollectorThread(f.cfg).start()
    g.url = g.server.url
    try:
        assert wait_until(lambda: len(g.incidents()) == 1, timeout_s=60)
        assert g.incidents()[0]["bundles"] == 1
    finally:
        g.close()


# ------------------------------------------------------- grouping after the answer (PostgreSQL)
# The test's own session holds the advisory lock grouping takes for (device, fault key):
# grouping waits for it, and the test sees it waiting in pg_locks.

PAPER = ("T-0001", "printer.paper_end")


@contextlib.contextmanager
def _holding(url: str, device: str, key: str) -> Iterator[None]:
    import psycopg  # lazy: the fleet extra

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (lock_name(device, key),))
        yield  # released with the session


def _grouping_waits(url: str) -> bool:
    import psycopg  # lazy: the fleet extra

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
    return row is not None and int(row[0]) >= 1


def _grouped(url: str) -> tuple[int, int, int, int]:
    """(incidents, their bundles, incident_bundles rows, bundle events) in the index."""
    import psycopg  # lazy: the fleet extra

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT COUNT(*) FROM incidents), (SELECT COALESCE(SUM(bundles), 0) FROM "
            "incidents), (SELECT COUNT(*) FROM incident_bundles), (SELECT COUNT(*) FROM "
            "incident_events WHERE kind = 'bundle')"
        ).fetchone()
    assert row is not None
    return (int(row[0]), int(row[1]), int(row[2]), int(row[3]))


def test_an_upload_is_answered_before_its_grouping(pg_url: str, tmp_path: Path) -> None:
    """Grouping held up (its lock taken by another session): the upload is stored and
    answered 201 all the same; the incident appears once grouping can go on."""
    from collector.storage.postgres import migrate  # lazy: the fleet extra

    migrate(pg_url)
    f = Fleet(tmp_path, index_url=pg_url)
    try:
        with _holding(pg_url, *PAPER):
            bid = f.upload(created_at=1_767_000_000.0, wait_grouped=False)
            assert wait_until(lambda: _grouping_waits(pg_url), timeout_s=60)
            assert f.get(f"/v1/bundles/{bid}").status_code == 200
            assert f.incidents() == []
            assert f.app.state.collector.incidents.backlog.pending == 1
        assert wait_until(lambda: len(f.incidents()) == 1, timeout_s=60)
        assert f.incidents()[0]["bundles"] == 1
    finally:
        f.close()


def test_a_collector_killed_before_grouping_groups_the_bundle_at_its_next_start(
    pg_url: str, tmp_path: Path
) -> None:
    """`collector serve` stores and answers an upload, and is killed (SIGKILL) while its
    grouping waits for a lock: nothing of the grouping is committed. Started again, its
    start-up pass groups the bundle: one incident, the bundle in it once, also after the
    terminal sends the same bundle again."""
    from collector.storage.postgres import migrate  # lazy: the fleet extra

    migrate(pg_url)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "T-0001.key").write_bytes(KEY)
    token = add_device(tmp_path / "tokens", "T-0001", site="Store 12")
    port = free_port()
    conf = write_config(
        tmp_path,
        f'[collector]\nlisten = "127.0.0.1:{port}"\ndata_dir = "{tmp_path / "data"}"\n'
        f'tokens_file = "{tmp_path / "tokens"}"\ndevice_keys_dir = "{tmp_path / "keys"}"\n'
        f'index_url = "{pg_url}"\n',
    )
    url = f"http://127.0.0.1:{port}"
    b = make_bundle(device="T-0001", site="Store 12", created_at=1_767_000_000.0)
    h = upload_headers(b.bundle_id, b.data, token, "T-0001")

    def serve(n: int) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"serve-{n}.log").open("wb")
        proc = subprocess.Popen(
            posagent_argv("collector", "serve", "--config", str(conf)), stdout=log, stderr=log
        )

        def up() -> bool:
            assert proc.poll() is None, (tmp_path / f"serve-{n}.log").read_text()
            with contextlib.suppress(requests.ConnectionError):
                return requests.get(url + "/healthz", timeout=5).status_code == 200
            return False

        assert wait_until(up, timeout_s=60)
        return proc

    first = serve(1)
    try:
        with _holding(pg_url, *PAPER):
            r = requests.put(f"{url}/v1/bundles/{b.bundle_id}", data=b.data, headers=h, timeout=30)
            assert r.status_code == 201, r.text
            assert wait_until(lambda: _grouping_waits(pg_url), timeout_s=60)
            first.kill()
            first.wait(30)
        assert _grouped(pg_url) == (0, 0, 0, 0)  # the bundle is stored, not grouped
    finally:
        if first.poll() is None:
            first.kill()
    second = serve(2)
    try:
        assert wait_until(lambda: _grouped(pg_url) == (1, 1, 1, 1), timeout_s=60)
        r = requests.put(f"{url}/v1/bundles/{b.bundle_id}", data=b.data, headers=h, timeout=30)
        assert r.status_code == 200 and r.json()["status"] == "already_stored"
    finally:
        second.send_signal(signal.SIGTERM)  # the worker groups what it holds, then ends
        second.wait(60)
    assert second.returncode == 0
    assert _grouped(pg_url) == (1, 1, 1, 1)


# --------------------------------------------------------------------------- scoping

SUPPORT_12 = Principal("sam", Role.SUPPORT, frozenset({"Store 12"}))
MERCHANT_12 = Principal("mia", Role.MERCHANT, frozenset({"Store 12"}))
SUPPORT_99 = Principal("oscar", Role.SUPPORT, frozenset({"Store 99"}))
PEOPLE = {p.name: p for p in (SUPPORT_12, MERCHANT_12, SUPPORT_99)}


def _as(handler: Handler) -> Handler:
    """The handler with the principal named by X-Test-Principal (what the gate resolves)."""

    async def inner(request: Request) -> Response:
        request.state.principal = PEOPLE[request.headers["x-test-principal"]]
        return await handler(request)

    return inner


@contextlib.contextmanager
def _serving(app: Starlette) -> Iterator[str]:
    """app on uvicorn at a free loopback port, in a thread."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    try:
        assert wait_until(lambda: server.started, timeout_s=30)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        t.join(30)
        sock.close()


def test_every_read_and_write_is_narrowed_by_the_principal(fleet: Fleet) -> None:
    fleet.upload("T-0001", created_at=time.time() - 60)
    fleet.upload("T-0003", created_at=time.time() - 50)
    by_dev = {r["device"]: r["id"] for r in fleet.incidents()}
    mine, theirs = by_dev["T-0001"], by_dev["T-0003"]
    routes = [Route(p, _as(h), methods=[m]) for m, p, h in api.ROUTES] + [
        Route("/", _as(views.home)),
        Route("/incidents", _as(views.incident_list)),
        Route("/incidents/{incident_id}", _as(views.incident_page)),
        Route("/devices/{device_id}", _as(channel_views.device_page)),
    ]
    app = Starlette(routes=routes)
    app.state.collector = fleet.app.state.collector
    with _serving(app) as url, requests.Session() as c:

        def get(who: str, path: str, **kw: Any) -> Any:
            return c.get(url + path, headers={"x-test-principal": who}, timeout=30, **kw)

        def post(who: str, path: str, body: dict[str, Any]) -> Any:
            return c.post(url + path, json=body, headers={"x-test-principal": who}, timeout=30)

        for who in ("sam", "mia"):
            rows = get(who, "/v1/incidents").json()
            assert [r["device"] for r in rows["incidents"]] == ["T-0001"] and rows["total"] == 1
            assert get(who, f"/v1/incidents/{theirs}").status_code == 404
            assert get(who, f"/v1/incidents/{theirs}/export").status_code == 404
            assert get(who, f"/v1/incidents/{mine}/export").status_code == 200
            assert get(who, f"/incidents/{theirs}").status_code == 404
            assert get(who, "/v1/incidents", params={"site": "Store 99"}).json()["total"] == 0
            faults = get(who, "/v1/fleet/faults").json()["faults"]
            assert faults[0]["terminals"] == 1 and faults[0]["sites"] == 1
            assert "T-0003" not in get(who, "/").text
            assert get(who, "/devices/T-0003").status_code == 404  # out of reach: none of it
        # a merchant only reads: 403 on their own incident, 404 on another tenant's
        note, resolve = {"channel": "phone", "text": "x"}, {"status": "resolved"}
        assert post("mia", f"/v1/incidents/{mine}/notes", note).status_code == 403
        assert post("mia", f"/v1/incidents/{mine}/status", resolve).status_code == 403
        assert post("mia", f"/v1/incidents/{theirs}/status", resolve).status_code == 404
        assert "id='note-form'" not in get("mia", f"/incidents/{mine}").text
        # support writes within their tenants only
        assert post("sam", f"/v1/incidents/{theirs}/status", resolve).status_code == 404
        r = post("oscar", f"/v1/incidents/{theirs}/status", {"status": "acknowledged"})
        assert r.status_code == 200 and r.json()["status"] == "acknowledged"
        ev = get("oscar", f"/v1/incidents/{theirs}").json()["events"][-1]
        assert ev["actor"] == "oscar" and ev["kind"] == "acknowledged"
        assert "id='note-form'" in get("sam", f"/incidents/{mine}").text
        # each ask for an incident out of reach is in the audit log (answered 404 all the
        # same); an id that exists nowhere is only a 404
        assert get("mia", "/v1/incidents/999999").status_code == 404
    denied = audit.entries(database(fleet.app.state.collector.store), action="incident.denied")
    asked = sorted((e.actor, e.target, e.detail["asked"]) for e in denied if e.detail)
    reads = [f"GET /v1/incidents/{theirs}", f"GET /v1/incidents/{theirs}/export"]
    reads += [f"GET /incidents/{theirs}", f"POST /v1/incidents/{theirs}/status"]
    assert asked == sorted((who, str(theirs), r) for who in ("sam", "mia") for r in reads)
