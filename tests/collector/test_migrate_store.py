"""`posagent collector migrate-store` carries the operators' tables (collector.storage.tables)
with the bundles, on real SQLite, PostgreSQL and SeaweedFS: a store filled through the
real services (users, tenant, site, an enrolled terminal with a check-in and a queued
command, a bundle grouped into an incident with a note, the webhook's delivery, a hold,
the audit entries all of that wrote) is moved to PostgreSQL + S3 and back, and each time a
collector started on the target is read as its users would; a copy killed half-way
through the audit log resumes; a target holding other rows is refused with nothing
written."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from agent.bundle.sealed import add_ed25519, load_public_key
from collector import audit
from collector.access import Role
from collector.accounts import users
from collector.accounts.users import place_site
from collector.config import CollectorConfig, NotifyConfig, WebhookConfig
from collector.server import CollectorThread
from collector.storage import BundleRecord, open_store
from collector.storage.postgres import migrate
from collector.storage.retention import retention_index
from collector.storage.sql import Database, database
from collector.storage.sqlite import SqliteIndex
from collector.storage.tables import NOT_COPIED, TABLES, copy_tables
from tests.bundle.kit import make_bundle
from tests.collector.hookserver import Receiver
from tests.collector.kit import bearer, login, upload_headers
from tests.collector.servers import Seaweed
from tests.collector.test_channel import SITE, Fleet, Terminal, _manifest
from tests.conftest import ROOT, posagent_argv, wait_until, write_config

SECRET = b"m" * 40
TENANT = "Acme Retail"
MERCHANT = "ana.merchant"
MERCHANT_PASSWORD = "merchant-password-12"
NOTE = "Merchant loaded a new roll, printer back"


def _cli(conf: Path, *opts: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    argv = posagent_argv("collector", "migrate-store", "--config", str(conf), *opts)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def _config(tmp: Path, cfg: CollectorConfig) -> Path:
    """An agent config file whose [collector] names cfg's store (the CLI's source)."""
    lines = [f'data_dir = "{cfg.data_dir}"']
    for name in ("index_url", "blob_url", "s3_endpoint_url"):
        if getattr(cfg, name):
            lines.append(f'{name} = "{getattr(cfg, name)}"')
    return write_config(tmp, "[collector]\n" + "\n".join(lines) + "\n")


def _rows(db: Database, table: str) -> list[tuple[Any, ...]]:
    t = next(t for t in TABLES if t.name == table)
    with db.transaction(write=False) as tx:
        rows = tx.all(f"SELECT {', '.join(t.columns)} FROM {table} ORDER BY {', '.join(t.key)}")
    return [tuple(int(v) if isinstance(v, bool) else v for v in r) for r in rows]


def _snapshot(cfg: CollectorConfig) -> dict[str, list[tuple[Any, ...]]]:
    """Every copied table's rows, as the engine gives them back."""
    store = open_store(cfg)
    try:
        return {t.name: _rows(database(store), t.name) for t in TABLES}
    finally:
        store.close()


@dataclass
class Source:
    """What the populated store holds, as its users saw it."""

    cfg: CollectorConfig
    admin_token: str
    terminal: Terminal
    incident: int
    command: str
    bundle_id: str
    bundle: bytes
    audit: list[dict[str, Any]]
    device: dict[str, Any]
    deliveries: dict[str, Any]


def _populate(tmp: Path, receiver: Receiver) -> Source:
    secret = tmp / "hook.secret"
    secret.write_bytes(SECRET + b"\n")
    os.chmod(secret, 0o600)
    hooks = [WebhookConfig(name="helpdesk", url=receiver.url, secret_file=str(secret), timeout_s=5)]
    f = Fleet(
        tmp / "src",
        webhooks=hooks,
        notify=NotifyConfig(interval_s=0.05, backoff_base_s=0.1, backoff_max_s=0.5),
    )
    try:
        with f.db.transaction() as tx:
            place_site(tx, SITE, TENANT)
        users.add_user(
            f.db,
            MERCHANT,
            Role.MERCHANT,
            password=MERCHANT_PASSWORD,
            tenants_=[TENANT],
            actor="test",
            address="local",
        )
        t = f.terminal("T-0001")
        assert f.checkin(t).status_code == 200
        signed = add_ed25519(make_bundle(device="T-0001", seed=3).data, t.key)
        bid = json.loads(_manifest(signed))["bundle_id"]
        h = upload_headers(bid, signed, t.token, "T-0001")
        r = f.wire.put(f"{f.url}/v1/bundles/{bid}", data=signed, headers=h, timeout=10)
        assert r.status_code == 201, r.text
        assert wait_until(lambda: len(receiver.log) >= 1, timeout_s=60)
        (inc,) = f.incidents()
        note = {"channel": "phone", "text": NOTE, "contact": "Ana"}
        assert f.http.post(f"{f.url}/v1/incidents/{inc['id']}/notes", json=note).status_code == 201
        q = f.command("T-0001", "selftest", expires_in_s=86_400)
        assert q.status_code == 201, q.text
        held = f.http.post(
            f"{f.url}/v1/holds", json={"device": "T-0001", "reason": "dispute 7"}, timeout=10
        )
        assert held.status_code in (200, 201), held.text
        web = requests.Session()
        assert login(web, f.url, MERCHANT, MERCHANT_PASSWORD).status_code == 303
        assert f.checkin(t).status_code == 200  # the command delivered once, no result yet
        return Source(
            cfg=f.cfg,
            admin_token=f.admin_token,
            terminal=t,
            incident=int(inc["id"]),
            command=q.json()["command"]["command_id"],
            bundle_id=bid,
            bundle=signed,
            audit=_audit(f.http, f.url),
            device=f.http.get(f"{f.url}/v1/devices/T-0001", timeout=10).json(),
            deliveries=_deliveries(f.http, f.url),
        )
    finally:
        f.close()


def _audit(http: requests.Session, url: str) -> list[dict[str, Any]]:
    r = http.get(f"{url}/v1/audit", timeout=10)
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines()]


def _deliveries(http: requests.Session, url: str) -> dict[str, Any]:
    r = http.get(f"{url}/v1/webhooks/deliveries", params={"hook": "helpdesk"}, timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _check_target(
    cfg: CollectorConfig,
    src: Source,
    seen_audit: list[dict[str, Any]],
    seen_device: dict[str, Any],
    new_user: str,
) -> None:
    """A collector on the target, read as its users would: the same password signs in,
    the incident shows its note, the audit log holds every earlier entry (and takes new
    ones under new ids), the terminal's page and credentials, its queued command, the
    webhook's delivery log, the hold, the bundle's bytes."""
    admin = requests.Session()
    admin.headers.update(bearer(src.admin_token))  # the admin's API token moved too
    with CollectorThread(cfg) as c:
        web = requests.Session()
        assert login(web, c.url, MERCHANT, MERCHANT_PASSWORD).status_code == 303
        assert login(requests.Session(), c.url, MERCHANT, "wrong-password-123").status_code != 303
        page = web.get(f"{c.url}/incidents/{src.incident}", timeout=10)
        assert page.status_code == 200 and NOTE in page.text, page.status_code
        inc = admin.get(f"{c.url}/v1/incidents/{src.incident}", timeout=10).json()
        assert NOTE in json.dumps(inc["notes"])

        after = _audit(admin, c.url)
        assert after[: len(seen_audit)] == seen_audit
        new = after[len(seen_audit) :]
        assert any(e["action"] == "login.ok" and e["actor"] == MERCHANT for e in new), new
        assert all(e["id"] > seen_audit[-1]["id"] for e in new)

        device = admin.get(f"{c.url}/v1/devices/T-0001", timeout=10).json()
        assert {k: device[k] for k in ("site", "last_seen", "summary", "enrolled_at")} == {
            k: seen_device[k] for k in ("site", "last_seen", "summary", "enrolled_at")
        }
        assert "T-0001" in web.get(f"{c.url}/devices/T-0001", timeout=10).text
        t = src.terminal
        body: dict[str, Any] = {
            "device_id": t.device,
            "sent_at": "2026-12-06T09:00:00Z",
            "boot_id": "boot-1",
            "agent_version": "0.1.0",
            "config_digest": "",
            "interval_s": 60,
            "results": [],
        }
        r = requests.post(
            f"{c.url}/v1/checkins",
            json=body,
            headers={"Authorization": f"Bearer {t.token}", "X-Posagent-Device": t.device},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        (wire,) = r.json()["commands"]
        data = base64.b64decode(wire["envelope"])
        load_public_key(t.collector_key.encode()).verify(base64.b64decode(wire["signature"]), data)
        assert json.loads(data)["id"] == src.command

        got = _deliveries(admin, c.url)
        assert [d["delivery_id"] for d in got["deliveries"]] == [
            d["delivery_id"] for d in src.deliveries["deliveries"]
        ]
        assert got["deliveries"][0]["status"] == "delivered" and got["deliveries"][0]["log"]
        holds = admin.get(f"{c.url}/v1/holds", timeout=10).json()["holds"]
        assert [(h["scope"], h["value"], h["reason"]) for h in holds] == [
            ("device", "T-0001", "dispute 7")
        ]
        dl = admin.get(f"{c.url}/v1/bundles/{src.bundle_id}/download", timeout=10)
        assert dl.content == src.bundle

        # new rows take new ids: a user and a note after the copied ones
        store = open_store(cfg)
        try:
            db = database(store)
            top = max(r[0] for r in _rows(db, "users"))
            u = users.add_user(
                db, new_user, Role.SUPPORT, password="support-password-12",
                all_tenants=True, actor="test", address="local",
            )  # fmt: skip
            assert u.id > top
            note = {"channel": "email", "text": "followed up", "contact": "Ana"}
            r = admin.post(f"{c.url}/v1/incidents/{src.incident}/notes", json=note, timeout=10)
            assert r.status_code == 201, r.text
            with pytest.raises(Exception, match="append-only"), db.transaction() as tx:
                tx.execute("UPDATE audit_log SET actor = 'x' WHERE id = ?", (seen_audit[0]["id"],))
        finally:
            store.close()


def test_migrate_store_carries_the_operators_tables_to_postgres_and_back(
    tmp_path: Path, pg_url: str, s3_url: str, seaweed: Seaweed
) -> None:
    carry_there_and_back(tmp_path, pg_url, s3_url, seaweed.endpoint)


def carry_there_and_back(tmp_path: Path, pg_url: str, s3_url: str, endpoint: str) -> None:
    """The populated store to PostgreSQL + S3 (files in data_dir with s3_url "") and back."""
    receiver = Receiver(SECRET).up()
    try:
        src = _populate(tmp_path, receiver)
    finally:
        receiver.down()
    before = _snapshot(src.cfg)
    assert all(before[t] for t in ("users", "audit_log", "incident_events", "notify_outbox"))
    assert all(before[t] for t in ("notify_attempts", "devices", "device_commands", "holds"))
    with sqlite3.connect(Path(src.cfg.data_dir) / "index.sqlite3") as conn:
        assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] >= 1

    pg = replace(
        src.cfg,
        index_url=pg_url,
        blob_url=s3_url,
        s3_endpoint_url=endpoint,
        data_dir=str(tmp_path / "pg"),
    )
    opts = ["--to-index", pg_url, "--to-data-dir", pg.data_dir]
    if pg.blob_url:
        opts += ["--to-blob", pg.blob_url, "--s3-endpoint-url", pg.s3_endpoint_url]
    r = _cli(_config(tmp_path / "cli", src.cfg), *opts)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "copied 1, skipped 0 (already there), failed 0" in r.stdout
    assert f"table\taudit_log\tcopied {len(before['audit_log'])}\tskipped 0" in r.stdout
    assert "not copied\tsessions\tdropped on purpose" in r.stdout
    assert _snapshot(pg) == before  # every row, id and key as it was
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM sessions").fetchone() == (0,)
    _check_target(pg, src, src.audit, src.device, "support.one")

    # and back: PostgreSQL + S3 (which took new rows meanwhile) into a new embedded store
    admin = requests.Session()
    admin.headers.update(bearer(src.admin_token))
    with CollectorThread(pg) as c:
        pg_audit = _audit(admin, c.url)
        pg_device = admin.get(f"{c.url}/v1/devices/T-0001", timeout=10).json()
    on_pg = _snapshot(pg)
    back = replace(src.cfg, data_dir=str(tmp_path / "back"))
    r = _cli(_config(tmp_path / "cli-pg", pg), "--to-data-dir", back.data_dir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "copied 1, skipped 0 (already there), failed 0" in r.stdout
    assert _snapshot(back) == on_pg
    _check_target(back, src, pg_audit, pg_device, "support.two")


def test_migrate_store_killed_in_the_audit_log_resumes(tmp_path: Path, pg_url: str) -> None:
    """12,000 audit entries into PostgreSQL (its blobs as files in --to-data-dir): the copy
    is killed once the target holds some of them, run again: the rest copied, the first
    ones skipped, the log the same row for row."""
    cfg = CollectorConfig(data_dir=str(tmp_path / "src"))
    store = open_store(cfg)
    try:
        db = database(store)
        users.add_user(
            db, "op", Role.ADMIN, password="operator-password-1", actor="test", address="local"
        )
        with db.transaction() as tx:
            for i in range(12_000):
                audit.record(tx, "op", "bundle.read", f"bundle-{i:05d}", "10.0.0.1")
    finally:
        store.close()
    before = _snapshot(cfg)
    conf = _config(tmp_path / "cli", cfg)
    opts = ("--to-index", pg_url, "--to-data-dir", str(tmp_path / "t"))
    argv = posagent_argv("collector", "migrate-store", "--config", str(conf), *opts)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: _pg_audit(pg_url) >= 1_000 or proc.poll() is not None, 120, 0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    copied = _pg_audit(pg_url)
    assert 1_000 <= copied < 12_001, copied
    r = _cli(conf, *opts)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"table\taudit_log\tcopied {12_001 - copied}\tskipped {copied}" in r.stdout
    assert _snapshot(replace(cfg, index_url=pg_url, data_dir=str(tmp_path / "t"))) == before
    r = _cli(conf, *opts)
    assert r.returncode == 0 and "table\taudit_log\tcopied 0\tskipped 12001" in r.stdout


def _pg_audit(url: str) -> int:
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*) FROM audit_log").fetchone()
    except psycopg.Error:
        return 0
    return int(row[0]) if row else 0


def test_migrate_store_refuses_a_target_with_other_rows_and_writes_nothing(
    tmp_path: Path, pg_url: str
) -> None:
    """The target already served: its own admin (id 1, another password) and audit entry.
    The copy names the conflicts, exits 1 and leaves the target as it was."""
    cfg = CollectorConfig(data_dir=str(tmp_path / "src"))
    store = open_store(cfg)
    try:
        db = database(store)
        users.add_user(
            db, "op", Role.ADMIN, password="operator-password-1", actor="test", address="local"
        )
    finally:
        store.close()
    migrate(pg_url)
    target = CollectorConfig(data_dir=str(tmp_path / "t"), index_url=pg_url)
    tstore = open_store(target)
    try:
        users.add_user(
            database(tstore), "root", Role.ADMIN, password="another-password-12",
            actor="test", address="local",
        )  # fmt: skip
    finally:
        tstore.close()
    before = _snapshot(target)
    r = _cli(_config(tmp_path / "cli", cfg), "--to-index", pg_url, "--to-data-dir", target.data_dir)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "conflict\tusers id=1: the target holds another row" in r.stderr, r.stderr
    assert "conflict\taudit_log id=1: the target holds another row" in r.stderr
    assert "nothing was overwritten" in r.stderr
    assert _snapshot(target) == before


def test_every_table_is_copied_or_left_with_a_reason(tmp_path: Path, pg_url: str) -> None:
    """The schema of both engines at the latest version against TABLES and NOT_COPIED:
    a new table (or column) must be decided here before migrate-store ships."""
    idx = SqliteIndex(tmp_path / "index.sqlite3")
    idx.close()
    with sqlite3.connect(tmp_path / "index.sqlite3") as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        lite = {
            n: [r[1] for r in conn.execute(f"PRAGMA table_info({n})")]
            for n in names
            if n != "sqlite_sequence"
        }
    migrate(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
        ).fetchall()
    pg: dict[str, list[str]] = {}
    for table, column in rows:
        pg.setdefault(table, []).append(column)
    decided = {t.name for t in TABLES} | set(NOT_COPIED)
    assert set(pg) <= decided and set(lite) <= decided, (set(pg) | set(lite)) - decided
    for t in TABLES:
        assert list(t.columns) == lite[t.name] == pg[t.name], t.name


def test_help_and_readme_name_what_is_not_copied_and_the_same_store_is_refused(
    tmp_path: Path,
) -> None:
    r = subprocess.run(
        posagent_argv("collector", "migrate-store", "--help"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    readme = (ROOT / "collector" / "README.md").read_text(encoding="utf-8")
    for name in set(NOT_COPIED) - {"bundles", "sessions"}:  # bundles are copied apart
        assert name in text and f"`{name}`" in readme, name
    assert "login sessions (on purpose" in text and "Not copied (" in readme
    cfg = CollectorConfig(data_dir=str(tmp_path / "src"))
    open_store(cfg).close()
    conf = _config(tmp_path / "cli", cfg)
    same = _cli(conf, "--to-data-dir", str(tmp_path / "src" / "."))
    assert same.returncode == 64 and "the target is the source's own index" in same.stderr
    bad = _cli(conf, "--to-index", "mysql://x")
    assert bad.returncode == 64 and "--to-index postgresql://" in bad.stderr


def test_bundles_only_while_serving_then_a_changed_source_row_is_a_conflict(
    tmp_path: Path, pg_url: str
) -> None:
    """--bundles-only copies no table; the full run then copies them; a source row changed
    after that run (the source served again) is named as a conflict and not overwritten."""
    src = CollectorConfig(data_dir=str(tmp_path / "src"), tokens_file=str(tmp_path / "tokens"))
    store = open_store(src)
    try:
        db = database(store)
        users.add_user(
            db, "op", Role.ADMIN, password="operator-password-1", actor="test", address="local"
        )
        b = make_bundle(device="T-0009", seed=9)
        rec = BundleRecord(
            bundle_id=b.bundle_id, device="T-0009", site="S", fault_key="f.k",
            severity="error", trigger_kind="fault", summary="", created_at=1.0,
            received_at=2.0, size_bytes=len(b.data), sha256=hashlib.sha256(b.data).hexdigest(),
            screenshot="captured", signature_checked=False,
        )  # fmt: skip
        staged = store.staging_dir / "x.part"
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_bytes(b.data)
        assert store.commit(rec, staged) == "created"
    finally:
        store.close()
    conf = _config(tmp_path / "cli", src)
    target = replace(src, index_url=pg_url, data_dir=str(tmp_path / "t"))
    opts = ("--to-index", pg_url, "--to-data-dir", target.data_dir)
    r = _cli(conf, *opts, "--bundles-only")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "copied 1, skipped 0" in r.stdout and "no table (--bundles-only)" in r.stdout
    assert _snapshot(target)["users"] == []
    r = _cli(conf, *opts)
    assert r.returncode == 0 and "copied 0, skipped 1" in r.stdout, r.stdout + r.stderr
    assert "table\tusers\tcopied 1\tskipped 0" in r.stdout
    store = open_store(src)
    try:
        users.set_disabled(database(store), "op", True, actor="test", address="local")
    finally:
        store.close()
    before = _snapshot(target)
    r = _cli(conf, *opts)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "conflict\tusers id=1: the target holds another row (differs in disabled)" in r.stderr
    assert _snapshot(target) == before


def test_small_batches_walk_composite_keys_both_ways(tmp_path: Path, pg_url: str) -> None:
    """Batches of 2 rows: composite keys (holds, user_tenants) paged by row values on both
    engines, SQLite -> PostgreSQL -> SQLite, then a re-run that only skips."""
    lite = CollectorConfig(data_dir=str(tmp_path / "a"))
    store = open_store(lite)
    try:
        db = database(store)
        for i in range(5):
            users.add_user(
                db, f"m{i}", Role.MERCHANT, password="merchant-password-12",
                tenants_=[f"T{j}" for j in range(i + 1)], actor="test", address="local",
            )  # fmt: skip
        for scope in ("site", "device"):
            for i in range(3):
                retention_index(store).add_hold(scope, f"{scope}-{i}", "case 1")
    finally:
        store.close()
    migrate(pg_url)
    pg = CollectorConfig(data_dir=str(tmp_path / "b"), index_url=pg_url)
    back = CollectorConfig(data_dir=str(tmp_path / "c"))
    for a, b in ((lite, pg), (pg, back)):
        sa, sb = open_store(a), open_store(b)
        try:
            first = copy_tables(database(sa), database(sb), batch=2)
            again = copy_tables(database(sa), database(sb), batch=2)
        finally:
            sa.close()
            sb.close()
        assert first.copied["user_tenants"] == 15 and first.copied["holds"] == 6
        assert sum(again.copied.values()) == 0 and again.skipped == first.copied
        assert _snapshot(b) == _snapshot(lite)
