"""Check-ins written in groups (`collector.channel.writer`, `checkin.receive_many`) on
SQLite and a real PostgreSQL: a refused check-in leaves the others of its transaction
stored, a device's second check-in in a group sees its first, a group whose transaction
fails is written one by one so only the failing check-in fails, an answer comes after
its commit, and the writer's thread ends and starts again."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.bundle.sealed import public_pem
from collector.auth import hash_token
from collector.channel import checkin, devices, enroll
from collector.channel.errors import ChannelError
from collector.channel.writer import CheckinWriter
from collector.config import CollectorConfig
from collector.storage import open_store
from collector.storage.sql import STATEMENT_PARAMS, Database, database
from tests.conftest import wait_until

NOW = 1_800_000_000.0


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    url = ""
    if request.param == "postgres":
        from collector.storage.postgres import migrate

        url = request.getfixturevalue("pg_url")
        migrate(url)
    store = open_store(CollectorConfig(data_dir=str(tmp_path / "data"), index_url=url))
    try:
        yield database(store)
    finally:
        store.close()


def enrolled(db: Database, *devices: str) -> dict[str, str]:
    """device -> its device token."""
    token, _ = enroll.create_token(db, site="Store 1", uses=0, by="test", now=NOW)
    pem = public_pem(Ed25519PrivateKey.generate().public_key())
    out = {}
    for dev in devices:
        req = enroll.parse_request(
            {"enrollment_token": token, "device_id": dev, "ed25519_public_key": pem}
        )
        out[dev] = enroll.enroll(db, req, address="test", now=NOW).device_token
    return out


def incoming(
    token: str, device: str, body: dict[str, Any] | None = None, *, admit: Any = None
) -> checkin.Incoming:
    """A check-in as the handler hands it over (its body parsed; admitted as the handler does)."""
    body = body or {"boot_id": "b1", "agent_version": "1.0", "summary": {"battery_pct": 50}}
    ci = checkin.parse({"device_id": device, **body}, device)

    def admitted(dev: str, site: str) -> tuple[checkin.CheckIn, int]:
        if dev != device:
            raise ChannelError(403, "forbidden", "another device's id")
        return ci, 0

    return checkin.Incoming(
        checkin.Caller(token_hash=hash_token(token)),
        admit or admitted,
        reread=lambda: None,
        address="10.0.0.7",
        now=NOW + 60,
    )


def codes(out: list[checkin.Received | ChannelError]) -> list[int]:
    """Each outcome's HTTP status: 200, or the refusal's."""
    return [o.code if isinstance(o, ChannelError) else 200 for o in out]


def summary_of(db: Database, device: str) -> str | None:
    with db.transaction(write=False) as tx:
        row = tx.one("SELECT summary FROM devices WHERE id = ?", (device,))
    return None if row is None or row[0] is None else str(row[0])


def test_a_refused_checkin_leaves_the_others_of_its_transaction_stored(db: Database) -> None:
    tok = enrolled(db, "T-1", "T-2", "T-3")
    first = checkin.receive(db, incoming(tok["T-1"], "T-1"), silent_after=3)
    base = first[2].state
    out = checkin.receive_many(
        db,
        [
            incoming(tok["T-2"], "T-2"),
            incoming("no such token", "T-9"),  # 401
            incoming(tok["T-3"], "T-1"),  # 403: T-3's token, T-1's id
            incoming(tok["T-1"], "T-1", {"base": "0123456789abcdef"}),  # 409 resend
            incoming(tok["T-1"], "T-1", {"base": base, "summary": {"battery_pct": 7}}),
            # T-2 again, from the state its first check-in of this group stored
            incoming(tok["T-2"], "T-2", {"base": "", "boot_id": "b2"}),
        ],
        silent_after=3,
    )
    assert codes(out) == [
        200,
        401,
        403,
        409,
        200,
        200,
    ]
    assert '"battery_pct": 7' in (summary_of(db, "T-1") or "")
    assert summary_of(db, "T-2") is not None
    assert summary_of(db, "T-3") is None  # refused: nothing of it stored
    with db.transaction(write=False) as tx:
        row = tx.one("SELECT boot_id FROM devices WHERE id = 'T-2'")
    assert row is not None and row[0] == "b2"


def test_a_token_promoted_in_a_group_is_the_only_one_for_the_rest_of_it(db: Database) -> None:
    """The group's tokens are read at once; the first use of a rotated token promotes it,
    and the old one, read before, no longer opens the device later in the group."""
    tok = enrolled(db, "T-1", "T-2")
    with db.transaction() as tx:
        new = devices.rotate_token(tx, "T-1")
    out = checkin.receive_many(
        db,
        [
            incoming(tok["T-1"], "T-1"),  # the old token still works until the new is used
            incoming(tok["T-2"], "T-2"),
            incoming(new, "T-1", {"boot_id": "b2"}),  # promoted
            incoming(tok["T-1"], "T-1", {"boot_id": "b3"}),  # the old one: gone
            incoming(new, "T-1", {"boot_id": "b4"}),
        ],
        silent_after=3,
    )
    assert codes(out) == [
        200,
        200,
        200,
        401,
        200,
    ]
    with db.transaction(write=False) as tx:
        row = tx.one("SELECT token_hash, next_token_hash, boot_id FROM devices WHERE id = 'T-1'")
    assert row is not None and tuple(row) == (hash_token(new), None, "b4")


def test_a_large_group_is_read_and_written_in_statements_of_few_values(db: Database) -> None:
    """More devices than one statement's values (`STATEMENT_PARAMS`) hold: each stored."""
    names = [f"T-{i:02d}" for i in range(STATEMENT_PARAMS + 7)]
    tok = enrolled(db, *names)
    out = checkin.receive_many(
        db,
        [
            incoming(tok[d], d, {"boot_id": f"b-{d}", "summary": {"queue_depth": i}})
            for i, d in enumerate(names)
        ],
        silent_after=3,
    )
    assert [o[0] for o in out if not isinstance(o, ChannelError)] == names
    with db.transaction(write=False) as tx:
        rows = tx.all("SELECT id, boot_id, summary FROM devices ORDER BY id")
    assert [(r[0], r[1], json.loads(r[2])) for r in rows] == [
        (d, f"b-{d}", {"queue_depth": i}) for i, d in enumerate(names)
    ]


class Gate:
    """An admit that holds the writer's group (after `entered`) until `behind` more
    check-ins are queued behind it: the next group is then exactly those."""

    def __init__(self, writer: CheckinWriter, behind: int) -> None:
        self.writer, self.behind = writer, behind
        self.entered = threading.Event()

    def __call__(self, dev: str, site: str) -> tuple[checkin.CheckIn, int]:
        self.entered.set()
        wait_until(lambda: self.writer._queue.qsize() >= self.behind, timeout_s=60)
        return checkin.parse({"device_id": dev, "boot_id": "gate"}, dev), 0


def test_a_group_whose_transaction_fails_is_written_one_by_one(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    tok = enrolled(db, "T-0", "T-1", "T-2", "T-3")
    writer = CheckinWriter(db, silent_after=3)
    asked: list[str] = []

    def broken(dev: str, site: str) -> tuple[checkin.CheckIn, int]:
        asked.append(dev)
        raise RuntimeError("a bug in one check-in's checks")

    held = Gate(writer, 3)

    async def main() -> list[Any]:
        first = asyncio.ensure_future(writer.submit(incoming(tok["T-0"], "T-0", admit=held)))
        assert await asyncio.to_thread(held.entered.wait, 60)
        rest = await asyncio.gather(
            writer.submit(incoming(tok["T-1"], "T-1")),
            writer.submit(incoming(tok["T-2"], "T-2", admit=broken)),
            writer.submit(incoming(tok["T-3"], "T-3")),
            return_exceptions=True,
        )
        return [await first, *rest]

    try:
        out = asyncio.run(main())
    finally:
        writer.stop()
    assert writer.groups == 2  # the gate alone, then the three together (and again alone)
    assert [o[0] for o in (out[0], out[1], out[3])] == ["T-0", "T-1", "T-3"]
    assert isinstance(out[2], RuntimeError)
    assert asked == ["T-2", "T-2"]  # in the group, then alone
    assert summary_of(db, "T-1") is not None and summary_of(db, "T-3") is not None
    assert summary_of(db, "T-2") is None


def test_an_answer_comes_after_its_commit_and_refusals_are_asked_once(db: Database) -> None:
    tok = enrolled(db, "T-1", "T-2")
    writer = CheckinWriter(db, silent_after=3)
    refusals: list[str] = []

    def limited(dev: str, site: str) -> tuple[checkin.CheckIn, int]:
        refusals.append(dev)
        raise ChannelError(429, "rate_limited", "too many check-ins", 5)

    async def main() -> None:
        device, wait, reply = await writer.submit(incoming(tok["T-1"], "T-1"))
        assert (device, wait) == ("T-1", 0) and reply.state
        # answered: another connection of the store sees it
        seen: list[str | None] = []
        t = threading.Thread(target=lambda: seen.append(summary_of(db, "T-1")))
        t.start()
        t.join()
        assert seen[0] is not None
        with pytest.raises(ChannelError) as refused:
            await writer.submit(incoming(tok["T-2"], "T-2", admit=limited))
        assert refused.value.code == 429 and refused.value.retry_after_s == 5

    try:
        asyncio.run(main())
    finally:
        writer.stop()
    assert refusals == ["T-2"]
    assert summary_of(db, "T-2") is None


def test_the_writer_stops_after_answering_and_starts_again(db: Database) -> None:
    tok = enrolled(db, "T-1", "T-2")
    writer = CheckinWriter(db, silent_after=3)
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        held = Gate(writer, 2)  # T-2 and the stop
        first = asyncio.run_coroutine_threadsafe(
            writer.submit(incoming(tok["T-1"], "T-1", admit=held)), loop
        )
        assert held.entered.wait(60)
        queued = [
            first,
            asyncio.run_coroutine_threadsafe(writer.submit(incoming(tok["T-2"], "T-2")), loop),
        ]
        assert wait_until(lambda: writer._queue.qsize() >= 1, timeout_s=60)  # T-2 behind the gate
        writer.stop(timeout_s=60)  # answers both first
        assert [f.result(timeout=30)[0] for f in queued] == ["T-1", "T-2"]
        assert writer._thread is None
        again = asyncio.run_coroutine_threadsafe(
            writer.submit(incoming(tok["T-1"], "T-1", {"boot_id": "b9"})), loop
        )
        assert again.result(timeout=30)[0] == "T-1"
        writer.stop(timeout_s=60)
        assert writer._thread is None
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
        loop.close()
