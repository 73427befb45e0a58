"""Incidents from bundles (`collector.incidents.grouping`, `service`) on both index engines
(SQLite and a real PostgreSQL): episodes, reopening within the window, manual and startup
bundles, the notifications grouping writes, idempotent and concurrent grouping, the
catch-up pass, auto-resolve and
escalation driven by a clock, and status changes by people."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.bundle.format import new_bundle_id
from agent.bundle.trigger import TriggerKind
from agent.core.timefmt import rfc3339
from collector import notify
from collector.access import Principal, Role
from collector.config import NOTIFY_EVENTS, CollectorConfig
from collector.incidents.grouping import SETTLE_S, Settings, Signal
from collector.incidents.model import (
    Channel,
    EventKind,
    Forbidden,
    IncidentFilter,
    InvalidTransition,
    NotFound,
    Source,
    Status,
)
from collector.incidents.service import Incidents, IncidentWorker
from collector.notify.channels import Channels, Hook
from collector.storage import BundleRecord, BundleStore, Query, open_store
from collector.storage.sql import database
from tests.conftest import wait_until

DEV = "T-0001"
T0 = 1_767_000_000.0  # the terminal's and the collector's clock at the start of a test
ADMIN = Principal("ana", Role.ADMIN)
SUPPORT = Principal("sam", Role.SUPPORT, frozenset({"Store 12"}))
MERCHANT = Principal("mia", Role.MERCHANT, frozenset({"Store 12"}))
OTHER = Principal("oscar", Role.SUPPORT, frozenset({"Store 99"}))


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def open_engine(kind: str, tmp: Path, request: pytest.FixtureRequest) -> BundleStore:
    over = {}
    if kind == "postgres":
        from collector.storage.postgres import migrate

        url = request.getfixturevalue("pg_url")
        migrate(url)
        over["index_url"] = url
    return open_store(CollectorConfig(data_dir=str(tmp / "data"), **over))


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield request.param


@pytest.fixture
def store(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BundleStore]:
    s = open_engine(engine, tmp_path, request)
    yield s
    s.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def inc(store: BundleStore, clock: Clock) -> Incidents:
    return Incidents(database(store), Settings(3600.0, 86400.0, 1800.0), clock)


def rec(
    kind: str,
    at: float,
    *,
    key: str = "printer.paper_end",
    device: str = DEV,
    site: str = "Store 12",
    severity: str = "error",
    received: float | None = None,
    summary: str = "",
) -> BundleRecord:
    return BundleRecord(
        bundle_id=new_bundle_id(int(at * 1000)),
        device=device,
        site=site,
        fault_key=key,
        severity=severity,
        trigger_kind=kind,
        summary=summary or f"{key} {kind}",
        created_at=at,
        received_at=at + 5 if received is None else received,
        size_bytes=100,
        sha256="0" * 64,
        screenshot="captured",
        signature_checked=True,
    )


def ingest(store: BundleStore, inc: Incidents, r: BundleRecord) -> int:
    """What ingest and the incident worker do: the index row, then its grouping."""
    assert store.index.add(r)
    found = inc.group(r)
    assert found is not None
    return found


def kinds(inc: Incidents, incident_id: int) -> list[str]:
    return [e.kind.value for e in inc.detail(incident_id, ADMIN).events]


def test_raise_then_clear_is_one_episode_with_its_duration(
    store: BundleStore, inc: Incidents
) -> None:
    a = ingest(store, inc, rec("fault", T0, severity="critical"))
    b = ingest(store, inc, rec("fault", T0 + 10))  # a repeat capture of the same episode
    c = ingest(store, inc, rec("cleared", T0 + 95))
    assert a == b == c
    got = inc.get(a, ADMIN)
    assert not got.active and got.cleared_at == T0 + 95
    assert got.duration_s == pytest.approx(95.0)
    assert got.severity == "critical"  # the highest of its bundles
    assert got.bundles == 3 and got.repeats == 0 and got.status is Status.OPEN
    assert kinds(inc, a) == ["opened", "bundle", "bundle", "cleared", "bundle"]
    d = inc.detail(a, ADMIN)
    assert [b.trigger_kind for b in d.bundles] == ["cleared", "fault", "fault"]  # newest first
    assert all(b.record is not None for b in d.bundles)


def test_recurrence_within_the_window_reopens_after_it_a_new_incident(
    store: BundleStore, inc: Incidents
) -> None:
    first = ingest(store, inc, rec("fault", T0))
    ingest(store, inc, rec("cleared", T0 + 60))
    inc.set_status(first, ADMIN, Status.RESOLVED)
    again = ingest(store, inc, rec("fault", T0 + 60 + 3000))  # within the 3600 s window
    assert again == first
    got = inc.get(first, ADMIN)
    assert got.active and got.repeats == 1 and got.status is Status.OPEN  # reopened
    assert got.resolved_at is None
    ingest(store, inc, rec("cleared", T0 + 3060 + 40))
    assert inc.get(first, ADMIN).duration_s == pytest.approx(100.0)  # 60 + 40
    assert kinds(inc, first).count("reopened") == 1
    later = ingest(store, inc, rec("fault", T0 + 3100 + 3601))  # past the window
    assert later != first
    assert inc.get(later, ADMIN).repeats == 0
    items, total = inc.page(IncidentFilter(Query(device=DEV)), ADMIN)
    assert total == 2 and [i.id for i in items] == [later, first]


def test_notifications_carry_the_incident_as_grouping_left_it(
    store: BundleStore, inc: Incidents
) -> None:
    """The outbox rows grouping writes (opened, reopened: their payload taken from what
    grouping knows of the incident, no read after its write) hold the incident as it then
    is in the index."""
    hook = Hook("h", "http://127.0.0.1:9/", b"s" * 32, frozenset(NOTIFY_EVENTS))
    before = notify.installed()
    notify.install(notify.Notifier(Channels((hook,))))
    try:
        a = ingest(store, inc, rec("fault", T0, severity="critical", summary="paper out"))
        opened = inc.get(a, ADMIN)
        ingest(store, inc, rec("cleared", T0 + 60))
        inc.set_status(a, ADMIN, Status.RESOLVED)
        assert ingest(store, inc, rec("fault", T0 + 600, summary="paper out again")) == a
        reopened = inc.get(a, ADMIN)
    finally:
        notify.install(before)
    with database(store).transaction(write=False) as tx:
        rows = tx.all("SELECT event, body FROM notify_outbox ORDER BY id")
    got = [(str(e), json.loads(str(b))["incident"]) for e, b in rows]
    assert [e for e, _ in got] == ["incident.opened", "incident.resolved", "incident.reopened"]
    for (_, doc), want in ((got[0], opened), (got[2], reopened)):
        assert doc["id"] == a and doc["device"] == DEV and doc["site"] == "Store 12"
        assert doc["fault_key"] == "printer.paper_end" and doc["severity"] == "critical"
        assert doc["status"] == want.status.value == "open"
        assert doc["repeats"] == want.repeats and doc["summary"] == want.summary
        assert doc["cleared_at"] is None and want.cleared_at is None
        assert doc["opened_at"] == rfc3339(want.raised_at)
    assert got[2][1]["repeats"] == 1 and got[2][1]["summary"] == "paper out again"
    assert got[1][1]["status"] == "resolved" and got[1][1]["cleared_at"] == rfc3339(T0 + 60)


def test_clear_without_raise_late_bundles_and_other_keys(
    store: BundleStore, inc: Incidents
) -> None:
    orphan = ingest(store, inc, rec("cleared", T0, key="network.link_down"))
    got = inc.get(orphan, ADMIN)
    assert not got.active and got.cleared_at == T0 and got.duration_s == 0
    assert kinds(inc, orphan) == ["opened", "cleared", "bundle"]
    a = ingest(store, inc, rec("fault", T0 + 100))
    ingest(store, inc, rec("cleared", T0 + 200))
    late = ingest(store, inc, rec("fault", T0 + 150))  # uploaded late: still the same episode
    assert late == a
    got = inc.get(a, ADMIN)
    assert not got.active and got.repeats == 0 and got.duration_s == pytest.approx(100.0)
    other = ingest(store, inc, rec("fault", T0 + 120, device="T-0002"))
    assert other not in (a, orphan)


def test_manual_reports_and_startup_bundles(store: BundleStore, inc: Incidents) -> None:
    fault = ingest(store, inc, rec("fault", T0, key="power.ac_lost", severity="critical"))
    m1 = ingest(store, inc, rec("manual", T0 + 30, key="manual.report"))
    assert m1 != fault  # a merchant's report is its own line
    m2 = ingest(store, inc, rec("manual", T0 + 600, key="manual.report"))
    assert m2 == m1 and inc.get(m1, ADMIN).repeats == 1  # within the window
    # the terminal died during the power fault: the unclean shutdown joins that incident
    s1 = ingest(store, inc, rec("startup", T0 + 900, key="power.unclean_shutdown"))
    assert s1 == fault
    assert inc.get(fault, ADMIN).bundles == 2
    ingest(store, inc, rec("cleared", T0 + 1000, key="power.ac_lost"))
    s2 = ingest(store, inc, rec("startup", T0 + 2000, key="power.unclean_shutdown"))
    assert s2 not in (fault, m1)  # nothing raised any more: its own incident
    got = inc.get(s2, ADMIN)
    assert got.fault_key == "power.unclean_shutdown" and not got.active
    m3 = ingest(store, inc, rec("manual", T0 + 600 + 3601, key="manual.report"))
    assert m3 not in (m1, s2)


def test_grouping_is_idempotent_and_catch_up_groups_what_ingest_missed(
    store: BundleStore, inc: Incidents, clock: Clock
) -> None:
    r1 = rec("fault", T0)
    a = ingest(store, inc, r1)
    assert inc.group(r1) == a  # again: nothing changes
    got = inc.get(a, ADMIN)
    assert got.bundles == 1 and kinds(inc, a) == ["opened", "bundle"]
    # stored but never grouped (an instance killed between the two)
    missed = [rec("cleared", T0 + 50), rec("fault", T0 + 20, key="cover.open")]
    for r in missed:
        assert store.index.add(r)
    clock.now = T0 + 100
    assert inc.catch_up() == 2
    assert inc.catch_up() == 0  # nothing left; nothing done twice
    assert inc.get(a, ADMIN).bundles == 2 and not inc.get(a, ADMIN).active
    items, total = inc.page(IncidentFilter(), ADMIN)
    assert total == 2 and sum(i.bundles for i in items) == 3
    # a bundle received before the cursor's position but committed late is still found
    clock.now = T0 + 2 * SETTLE_S
    late = rec("fault", T0 + 60, key="drawer.open", received=T0 + 2 * SETTLE_S - 30)
    inc.catch_up()
    assert store.index.add(late)
    assert inc.catch_up() == 1
    assert inc.page(IncidentFilter(Query(fault="drawer.open")), ADMIN)[1] == 1


def test_instances_racing_on_one_device_and_key_make_one_incident(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Two instances (each its own connections to the same index) group 40 bundles of one
    device and key at once, raise and clear interleaved: one incident, every bundle once."""
    stores = [open_engine(engine, tmp_path, request) for _ in range(2)]
    try:
        instances = [Incidents(database(s), Settings(), Clock()) for s in stores]
        records = [rec("fault" if i % 2 == 0 else "cleared", T0 + i) for i in range(40)]
        for r in records:
            assert stores[0].index.add(r)
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def run(n: int) -> None:
            try:
                barrier.wait()
                mine = records if n == 0 else list(reversed(records))
                for r in mine:
                    assert instances[n].group(r) is not None
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors
        items, total = instances[0].page(IncidentFilter(), ADMIN)
        assert total == 1
        assert items[0].bundles == 40
        d = instances[1].detail(items[0].id, ADMIN)
        assert d.bundle_total == 40
        assert sum(1 for e in d.events if e.kind is EventKind.BUNDLE) == 40
    finally:
        for s in stores:
            s.close()


def _story(device: str, t0: float) -> list[BundleRecord]:
    """A device's mixed day: two keys raised and cleared, a late upload, a recurrence, a
    manual report and an unclean shutdown during a raised fault."""
    return [
        rec("fault", t0, device=device, severity="critical"),
        rec("fault", t0 + 5, device=device, key="cover.open"),
        rec("cleared", t0 + 60, device=device),
        rec("startup", t0 + 70, device=device, key="power.unclean_shutdown"),
        rec("fault", t0 + 30, device=device),  # late: the same episode
        rec("manual", t0 + 80, device=device, key="manual.report"),
        rec("cleared", t0 + 90, device=device, key="cover.open"),
        rec("fault", t0 + 600, device=device),  # a recurrence within the window
        rec("cleared", t0 + 660, device=device),
        rec("cleared", t0 + 700, device=device, key="network.link_down"),  # no raise seen
    ]


def _shape(inc: Incidents, device: str) -> list[tuple[object, ...]]:
    """A device's incidents as grouping left them (no ids, times or names of devices)."""
    items, _ = inc.page(IncidentFilter(Query(device=device)), ADMIN)
    return sorted(
        (i.fault_key, i.bundles, i.repeats, i.active, i.duration_s, i.status.value, i.severity)
        + tuple(kinds(inc, i.id))
        for i in items
    )


def test_a_batch_groups_as_one_at_a_time_would(store: BundleStore, inc: Incidents) -> None:
    """The incident worker's batches (locks in name order, a startup signal in a
    transaction of its own, links, events and notifications written as multi-row
    INSERTs) leave each device's incidents, and its notifications, as grouping them one
    by one; a bundle twice in a batch is grouped once."""
    one, batch = _story("T-0001", T0), _story("T-0002", T0)
    mixed = [r for pair in zip(one, batch, strict=True) for r in pair]
    for r in mixed:
        assert store.index.add(r)
    hook = Hook("h", "http://127.0.0.1:9/", b"s" * 32, frozenset(NOTIFY_EVENTS))
    before = notify.installed()
    notify.install(notify.Notifier(Channels((hook,))))
    try:
        for r in one:
            assert inc.group(r) is not None
        ids = inc.group_many([*batch, batch[0]])
    finally:
        notify.install(before)
    assert None not in ids and ids[-1] == ids[0]
    assert _shape(inc, "T-0002") == _shape(inc, "T-0001")
    with database(store).transaction(write=False) as tx:
        rows = tx.all("SELECT event, body FROM notify_outbox ORDER BY id")
    sent: dict[str, list[tuple[str, str, int]]] = {"T-0001": [], "T-0002": []}
    for event, body in rows:
        doc = json.loads(str(body))["incident"]
        sent[doc["device"]].append((str(event), doc["fault_key"], doc["repeats"]))
    by_key = {d: sorted(v, key=lambda n: n[1]) for d, v in sent.items()}  # stable: per key
    assert by_key["T-0002"] == by_key["T-0001"] and len(sent["T-0001"]) == 5  # in its order
    shape = _shape(inc, "T-0001")  # the unclean shutdown joined cover.open, raised then
    assert [(k, n, rep) for k, n, rep, *_ in shape] == [
        ("cover.open", 3, 0),
        ("manual.report", 1, 0),
        ("network.link_down", 1, 0),
        ("printer.paper_end", 5, 1),
    ]
    assert inc.group_many(mixed) == inc.group_many(mixed)  # again: nothing changes
    items, total = inc.page(IncidentFilter(), ADMIN)
    assert total == 8 and sum(i.bundles for i in items) == 20


def _episodes(device: str, t0: float) -> list[BundleRecord]:
    """Many signals of the same (device, key) in a row, and of a second key between them:
    raise, repeat, clear, a late raise and a repeated clear, a reopen, a repeat raising
    the severity, a clear, a raise past the window (a new incident), its clear; a clear
    whose raise never came, then its reopen; two manual reports (the second reopens)."""
    cover = "printer.cover_open"
    return [
        rec("fault", t0, device=device, summary="paper out"),
        rec("cleared", t0 + 1, device=device, key=cover),  # no raise seen
        rec("fault", t0 + 10, device=device, summary="still out"),
        rec("cleared", t0 + 60, device=device),
        rec("fault", t0 + 30, device=device),  # late: the same episode
        rec("fault", t0 + 40, device=device, key=cover),  # reopens the cleared one
        rec("cleared", t0 + 70, device=device),  # a repeated clear
        rec("fault", t0 + 600, device=device, summary="out again"),  # reopened
        rec("manual", t0 + 601, device=device, key="manual.report"),
        rec("fault", t0 + 620, device=device, severity="critical", summary="worse"),
        rec("cleared", t0 + 700, device=device),
        rec("manual", t0 + 900, device=device, key="manual.report"),  # reopens the report
        rec("cleared", t0 + 905, device=device, key=cover),
        rec("fault", t0 + 700 + 3601, device=device, summary="new day"),  # a new incident
        rec("cleared", t0 + 700 + 3700, device=device),
    ]


def _tables(store: BundleStore) -> dict[str, list[tuple[object, ...]]]:
    """Every row grouping writes (the outbox's: its event and incident, not the random
    delivery id)."""
    with database(store).transaction(write=False) as tx:
        out = {
            t: [tuple(r) for r in tx.all(f"SELECT * FROM {t} ORDER BY {key}")]
            for t, key in (
                ("incidents", "id"),
                ("incident_events", "id"),
                ("incident_bundles", "bundle_id"),
            )
        }
        rows = tx.all("SELECT id, event, ref, body, created_at FROM notify_outbox ORDER BY id")
    out["notify_outbox"] = [
        (i, e, ref, json.loads(str(b))["incident"], at) for i, e, ref, b, at in rows
    ]
    return out


def test_a_batch_of_one_key_s_episodes_writes_what_one_by_one_writes(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Two indexes given the same bundles: one groups them one at a time, the other in one
    batch (each signal of a (device, key) seeing the ones before it in the batch, every
    changed incident written once at its end). Their incidents, events, links and
    notifications are the same, row for row, ids and times included (the one-by-one side
    takes the bundles in the batch's order, by lock name: keys are independent)."""
    hook = Hook("h", "http://127.0.0.1:9/", b"s" * 32, frozenset(NOTIFY_EVENTS))
    before = notify.installed()
    notify.install(notify.Notifier(Channels((hook,))))
    stores: list[BundleStore] = []
    try:
        for n in range(2):
            if engine == "postgres":
                from collector.storage.postgres import migrate  # lazy: the fleet extra

                url = request.getfixturevalue("postgres").create_database()
                migrate(url)
                over = {"index_url": url}
            else:
                over = {}
            cfg = CollectorConfig(data_dir=str(tmp_path / f"{n}" / "data"), **over)
            stores.append(open_store(cfg))
        clock = Clock(T0 + 10_000)
        instances = [
            Incidents(database(s), Settings(3600.0, 86400.0, 1800.0), clock) for s in stores
        ]
        earlier = [rec("fault", T0 - 500, summary="before"), rec("cleared", T0 - 400)]
        records = _episodes(DEV, T0)
        for s, i in zip(stores, instances, strict=True):
            assert s.index.add(earlier[0]) and s.index.add(earlier[1])
            resolved = i.group(earlier[0])
            assert resolved is not None and i.group(earlier[1]) == resolved
            i.set_status(resolved, ADMIN, Status.RESOLVED)  # reopened by the batch
            for r in records:
                assert s.index.add(r)
        ordered = sorted(records, key=lambda r: f"{r.device}:{r.fault_key}")
        one = [instances[0].group(r) for r in ordered]
        batch = instances[1].group_many([*ordered, earlier[0]])  # one grouped before
        assert None not in one and one == batch[:-1] and batch[-1] == resolved
        got, want = _tables(stores[1]), _tables(stores[0])
        assert got == want
        kinds_of = [str(r[2]) for r in got["incident_events"]]
        assert kinds_of.count("reopened") == 4 and kinds_of.count("cleared") == 6
        paper = [r for r in got["incidents"] if r[3] == "printer.paper_end"]
        assert len(paper) == 2 and len(got["notify_outbox"]) == 9
    finally:
        notify.install(before)
        for s in stores:
            s.close()


def test_a_bad_bundle_in_a_batch_costs_only_itself(store: BundleStore, inc: Incidents) -> None:
    """One bundle whose grouping fails (its event would exceed the detail limit): the
    batch's transaction is rolled back and the others grouped one by one; it is not."""
    good = [rec("fault", T0 + i, device=f"T-000{i}") for i in range(1, 5)]
    bad = rec("fault", T0, device="T-0009", summary="x" * 20_000)
    batch = [*good[:2], bad, *good[2:]]
    for r in batch:
        assert store.index.add(r)
    ids = inc.group_many(batch)
    assert ids[2] is None and None not in ids[:2] + ids[3:]
    assert len(set(ids)) == 5
    assert inc.page(IncidentFilter(Query(device="T-0009")), ADMIN)[1] == 0
    assert inc.page(IncidentFilter(), ADMIN)[1] == 4


def test_instances_grouping_the_same_backlog_in_batches_group_each_bundle_once(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Two instances (their own connections to one index) group the same 120 bundles of
    six devices at once, in batches (one forwards, one backwards), then both run the
    catch-up pass: no batch fails (no lock cycle), every bundle in one incident once."""
    stores = [open_engine(engine, tmp_path, request) for _ in range(2)]
    try:
        instances = [Incidents(database(s), Settings(), Clock(T0 + 3600)) for s in stores]
        records = [r for d in range(6) for r in _story(f"T-00{d:02d}", T0 + d)]
        records += [
            rec(k, T0 + 900 + i, device=f"T-00{i % 6:02d}", key=f"key.{i % 5}")
            for i, k in enumerate(["fault", "cleared"] * 30)
        ]
        for r in records:
            assert stores[0].index.add(r)
        barrier = threading.Barrier(2)
        results: list[list[int | None]] = [[], []]
        errors: list[BaseException] = []

        def run(n: int) -> None:
            try:
                barrier.wait()
                mine = records if n == 0 else list(reversed(records))
                for k in range(0, len(mine), 30):
                    results[n] += instances[n].group_many(mine[k : k + 30])
                barrier.wait()
                instances[n].catch_up()
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert not errors
        assert None not in results[0] + results[1]
        with database(stores[0]).transaction(write=False) as tx:
            links = tx.one("SELECT COUNT(*), COUNT(DISTINCT bundle_id) FROM incident_bundles")
            ev = tx.one("SELECT COUNT(*) FROM incident_events WHERE kind = 'bundle'")
            total = tx.one("SELECT SUM(bundles) FROM incidents")
        assert links == (120, 120) and ev == (120,) and total is not None
        assert int(total[0]) == 120
    finally:
        for s in stores:
            s.close()


def _worker(inc: Incidents) -> IncidentWorker:
    w = IncidentWorker(inc, interval_s=0).start()  # the pass at start only
    assert wait_until(lambda: w.passes == 1, timeout_s=60)
    return w


def test_the_worker_groups_what_ingest_hands_over_and_drains_when_stopped(
    store: BundleStore, inc: Incidents
) -> None:
    w = _worker(inc)
    try:
        first = [rec("fault" if i % 2 == 0 else "cleared", T0 + i) for i in range(30)]
        for r in first:
            assert store.index.add(r)
            inc.on_stored(r)  # answered at once: grouped by the worker
        assert wait_until(lambda: inc.backlog.pending == 0, timeout_s=60)
        assert w.grouped == 30 and w.failed == 0
        (only,), _ = inc.page(IncidentFilter(), ADMIN)
        assert only.bundles == 30 and only.repeats == 14
        last = [rec("fault", T0 + 100 + i, device=f"T-1{i:03d}") for i in range(20)]
        for r in last:
            assert store.index.add(r)
            inc.on_stored(r)
    finally:
        w.stop()  # groups what is still handed over, then ends
    assert inc.backlog.pending == 0 and w.grouped == 50
    assert inc.page(IncidentFilter(), ADMIN)[1] == 21


def test_a_full_backlog_leaves_the_bundle_to_the_catch_up_pass(
    store: BundleStore, inc: Incidents
) -> None:
    """The hand-over refuses a bundle (the backlog full): the worker runs the catch-up
    pass at once, which groups it."""
    inc.backlog.limit = 0
    w = _worker(inc)
    try:
        r = rec("fault", T0)
        assert store.index.add(r)
        inc.on_stored(r)
        assert inc.backlog.dropped == 1 and inc.backlog.pending == 0
        assert wait_until(lambda: w.passes == 2, timeout_s=60)
        assert wait_until(lambda: inc.page(IncidentFilter(), ADMIN)[1] == 1, timeout_s=60)
    finally:
        w.stop()
    assert w.grouped == 0  # none by the hand-over


def test_auto_resolve_and_escalation_follow_the_clock(
    store: BundleStore, inc: Incidents, clock: Clock
) -> None:
    crit = ingest(store, inc, rec("fault", T0, severity="critical", received=T0))
    warn = ingest(
        store, inc, rec("fault", T0, key="paper.near_end", severity="warning", received=T0)
    )
    acked = ingest(store, inc, rec("fault", T0, key="cover.open", severity="critical", received=T0))
    inc.set_status(acked, SUPPORT, Status.ACKNOWLEDGED)
    clock.now = T0 + 1799
    assert inc.escalate() == []
    clock.now = T0 + 1801
    assert inc.escalate() == [crit]  # critical, raised, nobody acknowledged it
    assert inc.escalate() == []  # once
    assert kinds(inc, crit).count("escalated") == 1
    assert inc.get(crit, ADMIN).escalated_at == T0 + 1801
    # cleared, then quiet: resolved by the collector after auto_resolve_after_s
    ingest(
        store,
        inc,
        rec("cleared", T0 + 2000, key="paper.near_end", severity="warning", received=T0 + 2000),
    )
    clock.now = T0 + 2000 + 86399
    assert inc.auto_resolve() == []
    clock.now = T0 + 2000 + 86401
    assert inc.auto_resolve() == [warn]  # the raised ones stay
    got = inc.get(warn, ADMIN)
    assert got.status is Status.RESOLVED and got.resolved_at == clock.now
    ev = inc.detail(warn, ADMIN).events[-1]
    assert ev.kind is EventKind.RESOLVED and ev.actor == "system" and ev.detail["auto"] is True
    assert inc.sweep() == {"grouped": 0, "resolved": 0, "escalated": 0}


def test_status_changes_assignee_and_notes(
    store: BundleStore, inc: Incidents, clock: Clock
) -> None:
    a = ingest(store, inc, rec("fault", T0))
    with pytest.raises(InvalidTransition):
        inc.set_status(a, SUPPORT, Status.OPEN)  # already open
    after, evs = inc.set_status(a, SUPPORT, Status.ACKNOWLEDGED, assignee="sam")
    assert after.status is Status.ACKNOWLEDGED and after.assignee == "sam"
    assert [e.kind for e in evs] == [EventKind.ACKNOWLEDGED, EventKind.ASSIGNED]
    assert all(e.actor == "sam" for e in evs)
    with pytest.raises(InvalidTransition):
        inc.set_status(a, SUPPORT, Status.OPEN)  # acknowledged -> open is not a transition
    clock.now = T0 + 500
    note = inc.add_note(a, SUPPORT, Channel.PHONE, "will load a new roll", contact="Li (manager)")
    assert note.detail == {
        "channel": "phone",
        "contact": "Li (manager)",
        "text": "will load a new roll",
        "contact_at": T0 + 500,
    }
    inc.set_status(a, ADMIN, Status.RESOLVED)
    reopened, _ = inc.set_status(a, ADMIN, Status.OPEN)
    assert reopened.status is Status.OPEN and reopened.resolved_at is None
    d = inc.detail(a, ADMIN)
    assert [n.detail["text"] for n in d.notes] == ["will load a new roll"]
    assert [e.kind.value for e in d.events][-5:] == [
        "acknowledged",
        "assigned",
        "note",
        "resolved",
        "reopened",
    ]
    # merchants read only; people of another tenant do not see it at all
    with pytest.raises(Forbidden):
        inc.add_note(a, MERCHANT, Channel.EMAIL, "x")
    with pytest.raises(NotFound):
        inc.set_status(a, OTHER, Status.RESOLVED)
    with pytest.raises(NotFound):
        inc.get(a, OTHER)
    assert inc.get(a, MERCHANT).id == a


def test_a_fleet_side_fault_without_bundle_is_an_incident(
    store: BundleStore, inc: Incidents
) -> None:
    """Issue 16's device.silent: raised and cleared by the collector, no bundle."""

    def silent(kind: TriggerKind, at: float) -> Signal:
        return Signal(
            DEV,
            "Store 12",
            "device.silent",
            kind,
            "critical",
            "no check-in",
            at,
            at,
            source=Source.FLEET,
        )

    a = inc.observe(silent(TriggerKind.FAULT, T0))
    assert inc.observe(silent(TriggerKind.CLEARED, T0 + 900)) == a
    got = inc.get(a, ADMIN)
    assert got.source == "fleet" and got.bundles == 0 and got.duration_s == 900
    assert kinds(inc, a) == ["opened", "cleared"]
    # the unclean-shutdown bundle the terminal uploads when it is back joins nothing cleared
    s = ingest(store, inc, rec("startup", T0 + 910, key="power.unclean_shutdown"))
    assert s != a
