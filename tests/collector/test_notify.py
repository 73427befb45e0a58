"""Notifications (collector.notify) on real SQLite and a real PostgreSQL: the transactional
outbox, signed webhooks to a loopback receiver the test runs (down for a while, the worker
and the collector restarted in between), backoff, retries of 4xx/5xx, independent hooks,
two workers on one database, email to a local aiosmtpd server, the secrets' refusal and
the delivery log's API. Time is driven through `run_once(now)` where it can be."""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.routing import Route

from agent.core.config import ConfigError
from agent.core.timefmt import rfc3339
from collector import notify
from collector.access import Principal, Role
from collector.config import (
    NOTIFY_EVENTS,
    CollectorConfig,
    NotifyConfig,
    WebhookConfig,
    parse_collector_config,
)
from collector.notify import Notifier, api, outbox
from collector.notify.channels import MIN_SECRET, Channels, Hook, Mail, load_channels
from collector.notify.outbox import RetryPolicy
from collector.notify.worker import DeliveryWorker
from collector.server import CollectorThread
from collector.storage import BundleStore, open_store
from collector.storage.sql import Database, database
from tests.collector.hookserver import Receiver, SmtpSink, free_port, self_signed, smtp_server
from tests.collector.kit import admin_token, bearer
from tests.conftest import posagent_argv, wait_until, write_config

T0 = 1_750_000_000.0
SECRET_A = b"a" * 16 + uuid.uuid4().hex.encode()
SECRET_B = b"b" * 16 + uuid.uuid4().hex.encode()


@dataclass
class Engine:
    """Opens (and reopens, as a restarted collector does) one index on one engine."""

    cfg: CollectorConfig
    opened: list[BundleStore] = field(default_factory=list)

    def store(self) -> BundleStore:
        s = open_store(self.cfg)
        self.opened.append(s)
        return s

    def db(self) -> Database:
        return database(self.store())

    def close(self) -> None:
        for s in self.opened:
            s.close()
        self.opened.clear()


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    over = {}
    if request.param == "postgres":
        from collector.storage.postgres import migrate

        over["index_url"] = request.getfixturevalue("pg_url")
        migrate(over["index_url"])
    e = Engine(
        CollectorConfig(
            data_dir=str(tmp_path / "data"), tokens_file=str(tmp_path / "tokens"), **over
        )
    )
    yield e
    e.close()


def incident(n: int, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": n,
        "device": "T-0001",
        "site": "Store 12",
        "fault_key": "printer.paper_end",
        "severity": "critical",
        "status": "open",
        "opened_at": rfc3339(T0),
        "cleared_at": None,
        "repeats": 0,
        "summary": "打印机缺纸: the receipt printer is out of paper",
        "url": f"https://collector.example/incidents/{n}",
    }
    doc.update(over)
    return doc


def hook(name: str, r: Receiver, events: tuple[str, ...] = NOTIFY_EVENTS, **kw: Any) -> Hook:
    return Hook(name, r.url, r.secret, frozenset(events), timeout_s=kw.pop("timeout_s", 5.0))


def put(db: Database, channels: Channels, event: str, payload: dict[str, Any], at: float) -> int:
    with db.transaction() as tx:
        return Notifier(channels).enqueue(tx, event, payload, at=at)


def rows(db: Database) -> list[tuple[Any, ...]]:
    with db.transaction(write=False) as tx:
        return tx.all(
            "SELECT delivery_id, channel, target, event, status, attempts, next_at, body "
            "FROM notify_outbox ORDER BY id"
        )


def pending(db: Database) -> int:
    return sum(1 for r in rows(db) if r[4] == "pending")


# --------------------------------------------------------------------------- the outbox


def test_enqueue_writes_in_the_callers_transaction(engine: Engine) -> None:
    """One row per subscribed hook and email recipient, each with its own delivery id and
    the JSON envelope; a rolled-back transaction leaves none; bad input writes nothing."""
    db = engine.db()
    r = Receiver(SECRET_A)
    mail = Mail(
        "127.0.0.1", 25, "posagent@example.com", ("ops@example.com", "desk@example.com"),
        frozenset({"incident.opened"}),
    )  # fmt: skip
    channels = Channels((hook("all", r), hook("resolved-only", r, ("incident.resolved",))), mail)
    assert put(db, channels, "incident.opened", incident(7), T0) == 3
    with pytest.raises(RuntimeError), db.transaction() as tx:
        assert Notifier(channels).enqueue(tx, "incident.resolved", incident(7), at=T0 + 1) == 2
        raise RuntimeError("the incident change failed")
    assert len(rows(db)) == 3
    assert put(db, channels, "incident.resolved", incident(7, status="resolved"), T0 + 2) == 2
    got = rows(db)
    assert [(c, t, e) for _, c, t, e, *_ in got] == [
        ("webhook", "all", "incident.opened"),
        ("email", "ops@example.com", "incident.opened"),
        ("email", "desk@example.com", "incident.opened"),
        ("webhook", "all", "incident.resolved"),
        ("webhook", "resolved-only", "incident.resolved"),
    ]
    ids = [row[0] for row in got]
    assert len(set(ids)) == 5 and all(str(uuid.UUID(i)) == i for i in ids)
    for did, _, _, event, status, attempts, next_at, body in got:
        doc = json.loads(body)
        assert doc["schema"] == "posagent.notify/1" and doc["event"] == event
        assert doc["delivery_id"] == did and doc["incident"]["id"] == 7
        assert status == "pending" and attempts == 0 and next_at >= T0
    for event, payload in [
        ("incident.deleted", incident(8)),
        ("incident.opened", {k: v for k, v in incident(8).items() if k != "url"}),
        ("incident.opened", incident(8, id=True)),
        ("incident.opened", incident(8, extra="x")),
    ]:
        with pytest.raises(ValueError), db.transaction() as tx:
            Notifier(channels).enqueue(tx, event, payload, at=T0)
    assert len(rows(db)) == 5
    with db.transaction() as tx:  # no channel: nothing written, nothing refused
        assert Notifier(Channels()).enqueue(tx, "incident.opened", incident(9), at=T0) == 0


def test_claims_are_bounded_disjoint_and_leased(engine: Engine) -> None:
    """A claim leases at most its limit, oldest first; another worker's claim gets other
    rows; a lease expires (its rows claimable again), a release frees them at once."""
    db1, db2 = engine.db(), engine.db()
    channels = Channels((hook("h", Receiver(SECRET_A)),))
    for i in range(10):
        put(db1, channels, "incident.opened", incident(i), T0 + i)
    first = outbox.claim(db1, "webhook", "h", now=T0 + 20, worker="w1", limit=3, lease_s=60)
    second = outbox.claim(db2, "webhook", "h", now=T0 + 20, worker="w2", limit=3, lease_s=60)
    assert len(first) == len(second) == 3
    assert [json.loads(c.body)["incident"]["id"] for c in first] == [0, 1, 2]
    assert not {c.id for c in first} & {c.id for c in second}
    rest = outbox.claim(db2, "webhook", "h", now=T0 + 21, worker="w2", limit=50, lease_s=60)
    assert len(rest) == 4
    assert outbox.claim(db1, "webhook", "h", now=T0 + 79, worker="w3", limit=50, lease_s=60) == []
    again = outbox.claim(db1, "webhook", "h", now=T0 + 80, worker="w3", limit=50, lease_s=60)
    assert {c.id for c in again} == {c.id for c in first + second}  # expired leases
    assert outbox.release(db1, "w2") == 4  # rest (w3 holds the others now)
    assert (
        len(outbox.claim(db2, "webhook", "h", now=T0 + 81, worker="w4", limit=50, lease_s=9)) == 4
    )


def test_retry_policy_waits_grow_with_jitter_up_to_the_cap() -> None:
    """Equal jitter: the wait after attempt n is in [d/2, d], d = base * 2^(n-1) capped."""
    p = RetryPolicy(base_s=10, max_s=300, max_attempts=5, max_age_s=3600)
    rng = random.Random(3)
    for n in range(1, 12):
        d = min(300.0, 10.0 * 2 ** (n - 1))
        for _ in range(50):
            assert d / 2 <= p.delay(n, rng) <= d
    assert p.gives_up(5, 0) and p.gives_up(1, 3600) and not p.gives_up(4, 3599)


# --------------------------------------------------------------------------- webhooks


def test_receiver_down_and_worker_restarted_each_event_delivered_once(engine: Engine) -> None:
    """Both receivers down for three passes, the worker (and its index) closed and opened
    again, the receivers up: every event reaches both hooks, signed, each delivery id once;
    the log keeps the failed attempts and the 200."""
    a, b = Receiver(SECRET_A), Receiver(SECRET_B)
    channels = Channels((hook("a", a), hook("b", b)))
    db = engine.db()
    for i, event in enumerate(NOTIFY_EVENTS):
        assert put(db, channels, event, incident(i + 1), T0 + i) == 2
    cfg = NotifyConfig(backoff_base_s=10, backoff_max_s=600, batch_size=3)
    w = DeliveryWorker(db, channels, cfg, worker_id="w1", rng=random.Random(1))
    t = T0 + 10
    for _ in range(3):  # down: one failed attempt per hook per pass, the batch released
        assert w.run_once(t) == 2
        t += 700
    w.stop()
    engine.close()  # the collector stops
    assert a.log == [] and b.log == []
    a.up()
    b.up()
    try:
        db = engine.db()  # ... and starts again
        w = DeliveryWorker(db, channels, cfg, worker_id="w2", rng=random.Random(2))
        for _ in range(20):
            if not pending(db):
                break
            w.run_once(t)
            t += 700
        w.stop()
        assert pending(db) == 0
        for r, name in ((a, "a"), (b, "b")):
            got = r.accepted()
            assert len(got) == len(r.log) == 4  # nothing sent twice
            assert len({d.delivery_id for d in got}) == 4
            assert all(d.signature_ok for d in got)
            assert sorted(d.event for d in got) == sorted(NOTIFY_EVENTS)
            assert all(d.body["delivery_id"] == d.delivery_id for d in got)
            assert all(d.body["event"] == d.event for d in got)
            log = outbox.deliveries(db, "webhook", name)
            assert {d["status"] for d in log} == {"delivered"}
            tries = [t for d in log for t in d["log"]]
            failed = [t for t in tries if t["status_code"] is None]
            assert len(failed) == 3 and all("Connection" in t["error"] for t in failed)
            assert [t["status_code"] for t in tries].count(200) == 4
            assert {t["worker"] for t in tries} == {"w1", "w2"}
        assert not {d.delivery_id for d in a.log} & {d.delivery_id for d in b.log}
    finally:
        a.down()
        b.down()


def test_backoff_grows_until_the_cap_then_the_delivery_fails(engine: Engine) -> None:
    """A receiver answering 503: each attempt waits longer than the one before (until the
    cap), never before its time, the same delivery id every time; after max_attempts the
    row is failed, kept in the log, and not tried again."""
    r = Receiver(SECRET_A).up()
    r.status = 503
    try:
        channels = Channels((hook("h", r),))
        db = engine.db()
        put(db, channels, "incident.escalated", incident(3), T0)
        cfg = NotifyConfig(backoff_base_s=10, backoff_max_s=160, max_attempts=8, max_age_s=1e6)
        other = Channels((hook("another", r),))  # an instance without this hook leaves it be
        assert DeliveryWorker(db, other, cfg).run_once(T0) == 0 and r.log == []
        w = DeliveryWorker(db, channels, cfg, rng=random.Random(7))
        t, waits = T0, []
        for n in range(1, 9):
            assert w.run_once(t) == 1
            (row,) = rows(db)
            if n < 8:
                assert row[4] == "pending" and row[5] == n
                waits.append(row[6] - t)
                assert w.run_once(row[6] - 0.5) == 0  # not before its time
                t = row[6]
        assert rows(db)[0][4:6] == ("failed", 8)
        assert w.run_once(t + 1e5) == 0
        caps = [min(160.0, 10.0 * 2**k) for k in range(7)]
        assert all(c / 2 <= wait <= c for c, wait in zip(caps, waits, strict=True))
        assert waits[:5] == sorted(waits[:5]) and waits[4] > waits[0] * 4
        assert len(r.log) == 8 and len({d.delivery_id for d in r.log}) == 1
        (d,) = outbox.deliveries(db, "webhook", "h")
        assert d["status"] == "failed" and d["attempts"] == 8 and d["next_at"] is None
        assert [t["status_code"] for t in d["log"]] == [503] * 8
        assert d["last_error"] == "HTTP 503 Service Unavailable: receiver says no second line"
    finally:
        r.down()


def test_4xx_and_5xx_are_retried_and_a_failing_hook_blocks_no_other(engine: Engine) -> None:
    """A hook answering 400, then 500, then 200 gets every event in the end; the other hook
    gets each of its events at the first pass, once."""
    bad, good = Receiver(SECRET_A).up(), Receiver(SECRET_B).up()
    bad.status = 400
    try:
        channels = Channels((hook("bad", bad), hook("good", good)))
        db = engine.db()
        for i in range(3):
            put(db, channels, "incident.opened", incident(i + 1), T0)
        w = DeliveryWorker(db, channels, NotifyConfig(batch_size=10), rng=random.Random(5))
        assert w.run_once(T0 + 1) == 4  # good: 3 delivered; bad: 1 failed, 2 released
        assert len(good.ids()) == 3 and [d.status for d in bad.log] == [400]
        bad.status = 500
        assert w.run_once(T0 + 10_000) == 1
        assert [d.status for d in bad.log] == [400, 500]
        bad.status = 200
        t = T0 + 20_000
        while pending(db):
            w.run_once(t)
            t += 10_000
        assert len(set(bad.ids())) == len(bad.ids()) == 3
        assert len(good.log) == 3 and len(set(good.ids())) == 3
        log = {d["delivery_id"]: d for d in outbox.deliveries(db, "webhook", "bad")}
        first = log[bad.log[0].delivery_id]
        assert [t["status_code"] for t in first["log"]][:2] == [400, 500]
        assert first["status"] == "delivered" and first["last_status"] == 200
    finally:
        bad.down()
        good.down()


def test_a_hanging_hook_does_not_delay_the_others(engine: Engine) -> None:
    """The worker's own thread: while one receiver holds its request open, the other hook
    gets each new event; the held one is delivered when released."""
    slow, fast = Receiver(SECRET_A).up(), Receiver(SECRET_B).up()
    slow.hold.clear()
    channels = Channels((hook("slow", slow, timeout_s=60), hook("fast", fast)))
    db = engine.db()
    w = DeliveryWorker(db, channels, NotifyConfig(interval_s=0.05)).start()
    try:
        put(db, channels, "incident.opened", incident(1), T0)
        assert wait_until(lambda: slow.held == 1 and len(fast.ids()) == 1, timeout_s=30)
        put(db, channels, "incident.escalated", incident(1), T0 + 1)
        put(db, channels, "incident.resolved", incident(1), T0 + 2)
        assert wait_until(lambda: len(fast.ids()) == 3, timeout_s=30)
        assert slow.held == 1 and slow.log == []
        slow.hold.set()
        assert wait_until(lambda: len(slow.ids()) == 3, timeout_s=30)
    finally:
        slow.hold.set()
        w.stop()
        slow.down()
        fast.down()
    assert len(set(slow.ids())) == 3 and len(set(fast.ids())) == 3
    assert pending(db) == 0


def test_two_workers_on_one_database_never_send_a_row_twice(engine: Engine) -> None:
    """Two workers, each on its own connection (pool) to one index, as two instances are,
    racing over 120 rows of three hooks: every row sent exactly once, both did work."""
    receivers = [Receiver(s).up() for s in (SECRET_A, SECRET_B, SECRET_A)]
    for r in receivers:
        r.delay_s = 0.05  # sends overlap: each worker finds rows the other has not leased
    channels = Channels(tuple(hook(f"h{i}", r) for i, r in enumerate(receivers)))
    db1, db2 = engine.db(), engine.db()
    with db1.transaction() as tx:
        for i in range(40):
            assert Notifier(channels).enqueue(tx, "incident.opened", incident(i), at=T0) == 3
    cfg = NotifyConfig(interval_s=0.01, batch_size=4)
    workers = [
        DeliveryWorker(db, channels, cfg, worker_id=f"w{i}").start()
        for i, db in enumerate((db1, db2))
    ]
    try:
        assert wait_until(lambda: pending(db1) == 0, timeout_s=180, step_s=0.2)
    finally:
        for w in workers:
            w.stop()
        for r in receivers:
            r.down()
    for r in receivers:
        assert len(r.log) == 40 and len(set(r.ids())) == 40
    with db1.transaction(write=False) as tx:
        by_worker = dict(tx.all("SELECT worker, COUNT(*) FROM notify_attempts GROUP BY worker"))
    assert sum(by_worker.values()) == 120 and set(by_worker) == {"w0", "w1"}, by_worker


# --------------------------------------------------------------------------- email


def test_email_through_smtp_with_starttls_and_login(engine: Engine, tmp_path: Path) -> None:
    """Each recipient gets the events it subscribed to, over STARTTLS with a login, the
    subject naming the event, the fault and the site; a server that is down is retried."""
    sink = SmtpSink()
    cert, key = self_signed(tmp_path)
    port = free_port()
    mail = Mail(
        "127.0.0.1", port, "posagent@example.com", ("ops@example.com", "desk@example.com"),
        frozenset({"incident.opened", "incident.escalated"}), starttls=True,
        ca_file=str(cert), username="posagent", password="pw-" + "x" * 20, timeout_s=10,
    )  # fmt: skip
    channels = Channels((), mail)
    db = engine.db()
    assert put(db, channels, "incident.opened", incident(5), T0) == 2
    assert put(db, channels, "incident.resolved", incident(5), T0 + 1) == 0
    w = DeliveryWorker(db, channels, rng=random.Random(1))
    assert w.run_once(T0 + 2) == 2  # the server is down: one failed attempt each
    log = outbox.deliveries(db, "email", "ops@example.com")
    assert log[0]["status"] == "pending" and "Connection" in log[0]["log"][0]["error"]
    with smtp_server(sink, port=port, tls=(cert, key), login=("posagent", mail.password)):
        assert w.run_once(T0 + 10_000) == 2
    assert pending(db) == 0
    by_rcpt = {rcpt[0]: (frm, msg) for frm, rcpt, msg in sink.messages}
    assert sorted(by_rcpt) == ["desk@example.com", "ops@example.com"]
    ids = {r[2]: r[0] for r in rows(db)}
    for to, (frm, msg) in by_rcpt.items():
        assert frm == "posagent@example.com" and msg["To"] == to
        assert msg["Subject"] == "[posagent] Opened: printer.paper_end at Store 12 (T-0001)"
        assert msg["Message-ID"] == f"<{ids[to]}@posagent>"
        text = msg.get_content()
        assert "https://collector.example/incidents/5" in text and "Store 12" in text


def test_email_without_tls_and_a_refused_login_is_a_failed_attempt(engine: Engine) -> None:
    """Plain SMTP delivers; a wrong password is a failed attempt with the server's code."""
    sink = SmtpSink()
    with smtp_server(sink) as port:
        mail = Mail(
            "127.0.0.1", port, "p@example.com", ("ops@example.com",), frozenset(NOTIFY_EVENTS)
        )
        db = engine.db()
        put(db, Channels((), mail), "incident.reopened", incident(2, site=""), T0)
        put(db, Channels((), mail), "incident.opened", incident(3, site="上海 12号店"), T0)
        assert DeliveryWorker(db, Channels((), mail)).run_once(T0) == 2
    assert [m["Subject"] for _, _, m in sink.messages] == [
        "[posagent] Reopened: printer.paper_end at no site (T-0001)",
        "[posagent] Opened: printer.paper_end at 上海 12号店 (T-0001)",
    ]
    assert "打印机缺纸" in sink.messages[1][2].get_content()
    with smtp_server(SmtpSink(), login=("u", "right")) as port:
        mail = replace(mail, port=port, username="u", password="wrong")
        put(db, Channels((), mail), "incident.resolved", incident(2), T0)
        assert DeliveryWorker(db, Channels((), mail)).run_once(T0 + 1) == 1
    last = outbox.deliveries(db, "email", "ops@example.com")[0]
    assert last["status"] == "pending" and last["last_status"] == 535


def test_email_in_the_channels_language(engine: Engine) -> None:
    """`language = "zh-Hans"`: the subject, the labels and the words in Simplified Chinese;
    the fault key, ids, times and the link as they are."""
    sink = SmtpSink()
    with smtp_server(sink) as port:
        mail = Mail(
            "127.0.0.1", port, "p@example.com", ("ops@example.com",), frozenset(NOTIFY_EVENTS),
            language="zh-Hans",
        )  # fmt: skip
        db = engine.db()
        put(db, Channels((), mail), "incident.opened", incident(3, site="上海 12号店"), T0)
        put(db, Channels((), mail), "incident.resolved", incident(3, site=""), T0)
        assert DeliveryWorker(db, Channels((), mail)).run_once(T0) == 2
    subjects = [m["Subject"] for _, _, m in sink.messages]
    assert subjects == [
        "[posagent] 新事件：上海 12号店（T-0001）的 printer.paper_end",
        "[posagent] 已解决：未登记门店（T-0001）的 printer.paper_end",
    ]
    text = sink.messages[0][2].get_content()
    assert text.startswith("新事件 3：printer.paper_end（严重）")
    assert "门店：上海 12号店" in text and "设备：T-0001" in text and "状态：未处理" in text
    assert "https://collector.example/incidents/3" in text


# --------------------------------------------------------------------------- config


def _secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    os.chmod(path, mode)
    return path


def test_config_tables_and_secrets(tmp_path: Path) -> None:
    """[[collector.webhooks]], [collector.email] and [collector.notify] parse and load;
    a secret readable by group or others, short or missing is refused naming the file."""
    good = _secret(tmp_path / "hook.secret", "k" * MIN_SECRET)
    pw = _secret(tmp_path / "smtp.pw", "hunter2")
    text = f"""
[collector]
[[collector.webhooks]]
name = "ops"
url = "https://hooks.example/posagent"
secret_file = "{good}"
events = ["incident.opened", "incident.resolved"]
timeout_s = 3.0
[collector.email]
smtp_host = "mail.example"
smtp_port = 587
starttls = true
username = "posagent"
password_file = "{pw}"
mail_from = "posagent@example.com"
to = ["ops@example.com"]
[collector.notify]
backoff_base_s = 5.0
"""
    cfg = parse_collector_config(text, "c.toml")
    ch = load_channels(cfg)
    assert ch.hooks[0].secret == b"k" * MIN_SECRET and ch.hooks[0].timeout_s == 3.0
    assert ch.hooks[0].events == {"incident.opened", "incident.resolved"}
    assert ch.mail is not None and ch.mail.password == "hunter2" and ch.mail.port == 587
    assert ch.mail.language == "en"
    chinese = text.replace(
        'to = ["ops@example.com"]', 'to = ["ops@example.com"]\nlanguage = "zh-Hans"'
    )
    zh = load_channels(parse_collector_config(chinese, "c.toml")).mail
    assert zh is not None and zh.language == "zh-Hans"
    assert cfg.notify.backoff_base_s == 5.0
    for mode, content, says in [
        (0o640, "k" * MIN_SECRET, "readable by group or others"),
        (0o604, "k" * MIN_SECRET, "readable by group or others"),
        (0o600, "k" * (MIN_SECRET - 1), f"shorter than {MIN_SECRET} characters"),
    ]:
        bad = _secret(tmp_path / "bad.secret", content, mode)
        with pytest.raises(ConfigError) as e:
            load_channels(parse_collector_config(text.replace(str(good), str(bad)), "c.toml"))
        assert str(bad) in str(e.value) and says in str(e.value)
    with pytest.raises(ConfigError, match="not found"):
        load_channels(parse_collector_config(text.replace(str(good), "/nonexistent/s"), "c"))
    for broken, key in [
        (text.replace('"incident.resolved"]', '"incident.closed"]'), "webhooks[0].events"),
        (text.replace('name = "ops"', 'name = "no spaces"'), "webhooks[0].name"),
        (text.replace('to = ["ops@example.com"]', "to = []"), "email.to"),
        (chinese.replace('"zh-Hans"', '"zh-TW"'), "email.language"),
        (text + '[[collector.webhooks]]\nname = "ops"\nurl = "http://x/"\nsecret_file = "/s"\n',
         "webhooks[1].name"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            parse_collector_config(broken, "c.toml")


def test_serve_refuses_a_readable_secret_with_exit_78(tmp_path: Path) -> None:
    """`posagent collector serve` with a world-readable webhook secret: exit 78, the file named."""
    secret = _secret(tmp_path / "hook.secret", "k" * 64, 0o644)
    conf = write_config(
        tmp_path,
        f'[collector]\nlisten = "127.0.0.1:{free_port()}"\ndata_dir = "{tmp_path / "data"}"\n'
        f'tokens_file = "{tmp_path / "tokens"}"\n[[collector.webhooks]]\nname = "ops"\n'
        f'url = "http://127.0.0.1:9/"\nsecret_file = "{secret}"\n',
    )
    r = subprocess.run(
        posagent_argv("collector", "serve", "--config", str(conf)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 78, r.stderr
    assert f"{secret} is readable by group or others" in r.stderr


# --------------------------------------------------------------------------- the app


def test_collector_delivers_across_its_restart_and_serves_the_log(
    engine: Engine, tmp_path: Path
) -> None:
    """`collector serve`'s own worker (the app's lifespan): events enqueued through
    `notify.enqueue` while the receiver is down, the collector stopped and started again,
    the receiver up: each event delivered once; GET /v1/webhooks/deliveries shows it."""
    r = Receiver(SECRET_A)
    secret = _secret(tmp_path / "hook.secret", SECRET_A.decode())
    cfg = replace(
        engine.cfg,
        webhooks=[WebhookConfig(name="ops", url=r.url, secret_file=str(secret), timeout_s=5)],
        notify=NotifyConfig(interval_s=0.05, backoff_base_s=0.1, backoff_max_s=0.5),
    )
    auth = bearer(admin_token(cfg))
    c = CollectorThread(cfg).start()
    try:
        db = database(c.server.config.app.state.collector.store)
        with db.transaction() as tx:
            now = time.time()  # the worker runs on the real clock here
            assert notify.enqueue(tx, "incident.opened", incident(1), at=now) == 1
            assert notify.enqueue(tx, "incident.escalated", incident(1), at=now + 0.001) == 1

        def tried() -> bool:
            got = requests.get(
                f"{c.url}/v1/webhooks/deliveries?hook=ops", timeout=10, headers=auth
            ).json()
            return len(got["deliveries"]) == 2 and all(d["attempts"] for d in got["deliveries"])

        assert wait_until(tried, timeout_s=30, step_s=0.1)
    finally:
        c.stop()
    r.up()
    c = CollectorThread(cfg).start()
    try:
        assert wait_until(lambda: len(r.ids()) == 2, timeout_s=30)

        def delivered() -> list[dict[str, Any]]:
            got = requests.get(f"{c.url}/v1/webhooks/deliveries?hook=ops", timeout=10, headers=auth)
            assert got.status_code == 200
            log: list[dict[str, Any]] = got.json()["deliveries"]
            return log if {d["status"] for d in log} == {"delivered"} else []

        log = wait_until(delivered, timeout_s=30)  # the 2xx is recorded just after the POST
        assert [d["event"] for d in log] == ["incident.escalated", "incident.opened"]
        assert sorted(r.ids()) == sorted(d["delivery_id"] for d in log)
        for d in log:
            assert d["log"][0]["status_code"] is None and d["log"][-1]["status_code"] == 200
        for query in ("", "?hook=no%20spaces", "?hook=ops&email=a@b", "?hook=ops&limit=0"):
            bad = requests.get(f"{c.url}/v1/webhooks/deliveries{query}", timeout=10, headers=auth)
            assert bad.status_code == 400, query
        other = requests.get(f"{c.url}/v1/webhooks/deliveries?hook=other", timeout=10, headers=auth)
        assert other.json()["deliveries"] == []
    finally:
        c.stop()
        r.down()
    assert len(r.log) == 2 and all(d.signature_ok for d in r.log)


def test_the_delivery_log_is_for_admins_only(engine: Engine) -> None:
    """A support or merchant principal gets 403, an admin the log."""
    store = engine.store()
    who: dict[str, Principal] = {}

    class SetPrincipal(BaseHTTPMiddleware):
        async def dispatch(self, request: Any, call_next: Any) -> Any:
            request.state.principal = who["p"]
            return await call_next(request)

    app = Starlette(routes=[Route("/d", api.list_deliveries)])
    app.add_middleware(SetPrincipal)
    app.state.collector = type("Col", (), {"store": store})()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: server.started, timeout_s=30)
        for role, code in ((Role.MERCHANT, 403), (Role.SUPPORT, 403), (Role.ADMIN, 200)):
            who["p"] = Principal("someone", role, frozenset({"Store 12"}))
            got = requests.get(f"http://127.0.0.1:{port}/d?hook=ops", timeout=10)
            assert got.status_code == code, role
    finally:
        server.should_exit = True
        thread.join(timeout=30)
