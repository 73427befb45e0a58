"""The failures a fleet collector must survive (issue 14), on the real servers: PostgreSQL
restarted mid-ingest, S3 stopped, slow, stalled or losing its acknowledgements, the disk
full under the embedded store and under SeaweedFS, and a body trickling past the body
deadline.

Uploads come from the agent's real spool and uploader (and from plain requests where the
answer itself is the point). During an outage an upload is answered 503 with Retry-After
(the agent waits as told), nothing is half-written (no index row without its blob, no
acknowledged bundle missing), reads go on where the failed engine is not needed, and after
recovery every bundle is stored exactly once: one index row and one blob, the agent's
bytes, nothing left in incoming/.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import select
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from agent.bundle.format import new_bundle_id
from bench.faults import fill, tmpfs
from collector.auth import add_device
from collector.storage.postgres import PostgresIndex, migrate
from tests.bundle.kit import small_bundle
from tests.collector.agents import AGENT_READ_TIMEOUT_S, Agent
from tests.collector.kit import upload_headers
from tests.collector.proxy import TcpProxy
from tests.collector.servers import S3_PORT, Postgres, Seaweed
from tests.collector.test_app import DEV, Env
from tests.conftest import is_root, wait_until

RETRY_S = 1  # unavailable_retry_after_s of these collectors: the agents come back soon
Bundle = tuple[str, bytes]


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    """The agents a test makes; their uploaders are stopped at its end."""
    made: list[Agent] = []
    yield made
    for a in made:
        a.uploader.stop()


def _env(tmp: Path, **overrides: object) -> Env:
    return Env(tmp, unavailable_retry_after_s=RETRY_S, rate_per_minute=100_000, **overrides)


def _put(env: Env, bundle_id: str, data: bytes) -> requests.Response:
    """One v1 upload, waiting as long as the agent would for its answer."""
    return env.http.put(
        f"{env.url}/v1/bundles/{bundle_id}",
        data=data,
        headers=upload_headers(bundle_id, data, env.token, DEV),
        timeout=AGENT_READ_TIMEOUT_S,
    )


def _bundle(note: str, size: int = 40_000) -> Bundle:
    b = small_bundle(note, size_bytes=size, device=DEV)
    return b.bundle_id, b.data


def _assert_unavailable(r: requests.Response, *, full: bool | None = None) -> None:
    """503 with the collectors' Retry-After and a one-line reason."""
    assert r.status_code == 503, (r.status_code, r.text[:300])
    assert r.headers.get("Retry-After") == str(RETRY_S)
    error = r.json()["error"]
    reasons = {True: ["storage full"], False: ["storage unavailable"]}.get(
        full, ["storage full", "storage unavailable"]
    )
    assert any(error.startswith(x) for x in reasons), error


def _healthy(env: Env) -> bool:
    try:
        return env.http.get(f"{env.url}/healthz", timeout=15).status_code == 200
    except requests.RequestException:
        return False


def _indexed(env: Env, bundle_id: str) -> bool:
    r = env.http.get(f"{env.url}/v1/bundles/{bundle_id}", timeout=30)
    assert r.status_code in (200, 404), r.status_code
    return r.status_code == 200


def _check_stored_once(env: Env, sent: dict[str, bytes], seaweed: Seaweed | None = None) -> None:
    """Exactly the sent bundles are indexed, once each, each with its blob holding the bytes
    sent; one blob per bundle (S3 or files); nothing left in incoming/."""
    listing = env.http.get(f"{env.url}/v1/bundles", params={"limit": 500}, timeout=30).json()
    assert listing["total"] == len(sent)
    assert sorted(b["bundle_id"] for b in listing["bundles"]) == sorted(sent)
    for bid, data in sent.items():
        r = env.http.get(f"{env.url}/v1/bundles/{bid}/download", timeout=30)
        assert r.status_code == 200 and r.content == data, (bid, r.status_code)
    if seaweed is not None:
        prefix = env.cfg.blob_url.removeprefix(f"s3://{seaweed.bucket}/") + "/"
        keys = seaweed.keys(prefix)
        assert sorted(keys) == sorted(
            f"{prefix}{bid}/{hashlib.sha256(data).hexdigest()}.zip" for bid, data in sent.items()
        )
    else:
        files = list((Path(env.cfg.data_dir) / "bundles").rglob("*.zip"))
        assert sorted(p.stem for p in files) == sorted(sent)
    incoming = Path(env.cfg.data_dir) / "incoming"
    assert wait_until(lambda: not list(incoming.iterdir()), 10), list(incoming.iterdir())


def _start_agents(
    agents: list[Agent], tmp: Path, env: Env, names: list[str], n: int, size: int = 40_000
) -> None:
    for name in names:
        a = Agent(tmp, name, add_device(env.cfg.tokens_file, name), env.url)
        a.add(n, size)
        agents.append(a)
    for a in agents:
        a.uploader.start()


def _all_sent(agents: list[Agent], *extra: dict[str, bytes]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for a in agents:
        out.update(a.sent)
    for e in extra:
        out.update(e)
    return out


# --------------------------------------------------------------------------- PostgreSQL


def test_postgresql_restarted_mid_ingest(
    tmp_path: Path,
    fleet: dict[str, str],
    postgres: Postgres,
    seaweed: Seaweed,
    agents: list[Agent],
) -> None:
    """Two agents upload while PostgreSQL stops (fast shutdown: every session cut) and
    starts again: 503 + Retry-After meanwhile, the pool recovers, every bundle stored
    once. Then an immediate restart (a crash, recovery on start) while they upload."""
    env = _env(tmp_path, **fleet)
    direct: dict[str, bytes] = {}
    try:
        _start_agents(agents, tmp_path, env, ["T-PG-1", "T-PG-2"], 25)
        acked = lambda: sum(len(a.acked()) for a in agents)  # noqa: E731
        assert wait_until(lambda: acked() >= 5, 60, 0.01), [a.uploader.status() for a in agents]
        postgres.stop()
        try:
            bid, data = _bundle("during the outage")
            _assert_unavailable(_put(env, bid, data), full=False)
            direct[bid] = data
            assert wait_until(lambda: any(a.saw(503) for a in agents), 60, 0.05), [
                a.uploader.status() for a in agents
            ]
            at_outage = acked()
            assert at_outage < 50
        finally:
            postgres.start()
        assert wait_until(lambda: _healthy(env), 60, 0.2), "the pool did not recover"
        assert _put(env, bid, data).status_code == 201  # not stored before: created now
        assert wait_until(lambda: acked() >= at_outage + 5, 60, 0.01)
        postgres.stop("immediate")
        postgres.start()
        assert wait_until(lambda: all(a.done() for a in agents), 120, 0.1), [
            a.uploader.status() for a in agents
        ]
        for a in agents:
            a.check_spool()
        _check_stored_once(env, _all_sent(agents, direct), seaweed)
    finally:
        env.close()


def test_the_index_pool_replaces_stale_connections_after_a_restart(
    pg_url: str, postgres: Postgres
) -> None:
    """Eight pooled connections, then PostgreSQL stopped (sessions cut) and started: every
    query after the restart succeeds, sequential or eight at once (none meets a stale
    connection), and the pool holds only live connections again."""
    migrate(pg_url)
    index = PostgresIndex(pg_url)
    try:
        with contextlib.ExitStack() as stack:
            for _ in range(8):
                stack.enter_context(index.pool.connection())
        assert wait_until(lambda: index.pool.get_stats()["pool_available"] >= 8, 10)
        postgres.stop()
        postgres.start()
        for _ in range(5):
            assert index.get(new_bundle_id()) is None
        with ThreadPoolExecutor(8) as ex:
            assert list(ex.map(lambda _: index.get(new_bundle_id()), range(40))) == [None] * 40
        with contextlib.ExitStack() as stack:
            conns = [stack.enter_context(index.pool.connection()) for _ in range(8)]
            assert all(c.execute("SELECT 1").fetchone() == (1,) for c in conns)
    finally:
        index.close()


# --------------------------------------------------------------------------- S3


def test_s3_stopped_then_back(
    tmp_path: Path, fleet: dict[str, str], seaweed: Seaweed, agents: list[Agent]
) -> None:
    """SeaweedFS stopped: uploads answer 503 + Retry-After (no row written), the index
    still lists; the agent keeps its bundles and waits; S3 back: all stored once."""
    env = _env(tmp_path, **fleet)
    direct: dict[str, bytes] = {}
    try:
        first = _bundle("before")
        assert _put(env, *first).status_code == 201
        direct[first[0]] = first[1]
        seaweed.stop()
        try:
            bid, data = _bundle("during")
            _assert_unavailable(_put(env, bid, data), full=False)
            direct[bid] = data
            assert not _indexed(env, bid)  # nothing half-written: no row without its blob
            listing = env.http.get(f"{env.url}/v1/bundles", timeout=30)
            assert listing.status_code == 200 and listing.json()["total"] == 1
            _start_agents(agents, tmp_path, env, ["T-S3-1"], 15)
            assert wait_until(lambda: agents[0].saw(503), 60, 0.05), agents[0].uploader.status()
            assert not agents[0].acked()
        finally:
            seaweed.start()
        assert _put(env, bid, data).status_code == 201
        assert wait_until(agents[0].done, 120, 0.1), agents[0].uploader.status()
        agents[0].check_spool()
        _check_stored_once(env, _all_sent(agents, direct), seaweed)
    finally:
        env.close()


def test_s3_slow_stalled_and_its_acknowledgements_lost(
    tmp_path: Path, fleet: dict[str, str], seaweed: Seaweed, agents: list[Agent]
) -> None:
    """S3 behind a proxy: slow (every chunk delayed): stored, later; stalled: 503 +
    Retry-After before the agent's read timeout, no row; its replies lost (the object is
    stored, the collector never hears it): 503, a blob without a row, stored once when sent
    again. An agent uploads through all of it."""
    with TcpProxy(S3_PORT) as proxy:
        env = _env(tmp_path, **{**fleet, "s3_endpoint_url": proxy.url})
        direct: dict[str, bytes] = {}
        try:
            proxy.set("delay", 0.3)
            slow = _bundle("slow")
            assert _put(env, *slow).status_code == 201
            direct[slow[0]] = slow[1]

            proxy.set("stall")
            _start_agents(agents, tmp_path, env, ["T-S3-2"], 10)
            stalled = _bundle("stalled")
            _assert_unavailable(_put(env, *stalled), full=False)  # within the read timeout
            direct[stalled[0]] = stalled[1]
            assert not _indexed(env, stalled[0])
            assert wait_until(lambda: agents[0].saw(503), 60, 0.05), agents[0].uploader.status()

            proxy.set("stall_replies")
            lost = _bundle("reply lost")
            _assert_unavailable(_put(env, *lost), full=False)
            direct[lost[0]] = lost[1]
            assert not _indexed(env, lost[0])
            prefix = env.cfg.blob_url.removeprefix(f"s3://{seaweed.bucket}/") + "/"
            assert any(lost[0] in k for k in seaweed.keys(prefix))  # stored, never acknowledged

            proxy.set("pass")
            for bid, data in (stalled, lost):
                assert _put(env, bid, data).status_code == 201
            assert wait_until(agents[0].done, 120, 0.1), agents[0].uploader.status()
            agents[0].check_spool()
            _check_stored_once(env, _all_sent(agents, direct), seaweed)
        finally:
            env.close()


# --------------------------------------------------------------------------- disks full


needs_root = pytest.mark.skipif(not is_root(), reason="mounting a tmpfs needs root")


@needs_root
def test_disk_full_under_the_embedded_store(tmp_path: Path, agents: list[Agent]) -> None:
    """data_dir (files + SQLite + incoming/) on a 16 MiB tmpfs, filled to 0..64 KiB of free
    space in 4 KiB steps, one upload at each: every answer is 201 or 503 "storage full"
    with Retry-After, whichever write ran out (staging, blob, index); reads go on; an
    agent uploading to the full disk keeps its bundles; space freed: everything sent again
    is stored once."""
    disk = tmp_path / "disk"
    with tmpfs(disk, "16M"):
        env = _env(tmp_path, data_dir=str(disk / "store"))
        filler = disk / "filler"
        direct: dict[str, bytes] = {}
        refused: dict[str, bytes] = {}
        statuses: dict[int, int] = {}
        try:
            first = _bundle("before", 30_000)
            assert _put(env, *first).status_code == 201
            direct[first[0]] = first[1]
            for pages in range(17):
                filler.unlink(missing_ok=True)
                fill(filler, pages * 4096)
                bid, data = _bundle(f"free {pages} pages", 30_000)
                r = _put(env, bid, data)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                direct[bid] = data
                if r.status_code != 201:
                    _assert_unavailable(r, full=True)
                    refused[bid] = data
                # the read side goes on: the list; a stored bundle's bytes are served only
                # with their audit entry written (no unrecorded view): or 503, storage full
                assert env.http.get(f"{env.url}/v1/bundles", timeout=30).status_code == 200
                dl = env.http.get(f"{env.url}/v1/bundles/{first[0]}/download", timeout=30)
                if dl.status_code == 200:
                    assert dl.content == first[1]
                else:
                    _assert_unavailable(dl, full=True)
            assert statuses.get(503, 0) >= 1, statuses

            filler.unlink()
            fill(filler)
            _start_agents(agents, tmp_path, env, ["T-FULL-1"], 8, 30_000)
            assert wait_until(lambda: agents[0].saw(503), 60, 0.05), agents[0].uploader.status()
            assert not agents[0].acked()

            filler.unlink()  # space freed
            for bid, data in refused.items():
                assert _put(env, bid, data).status_code in (200, 201)  # 200: the blob was kept
            assert wait_until(agents[0].done, 120, 0.1), agents[0].uploader.status()
            agents[0].check_spool()
            _check_stored_once(env, _all_sent(agents, direct))
        finally:
            env.close()


@needs_root
def test_disk_full_under_the_s3_server(
    tmp_path: Path, fleet: dict[str, str], seaweed: Seaweed, agents: list[Agent]
) -> None:
    """SeaweedFS on a 256 MiB tmpfs that is then filled: uploads answer 503 + Retry-After
    and write no row, the index lists and stored bundles download; an agent keeps its
    bundles; space freed: everything stored once. The session's SeaweedFS comes back after."""
    disk = tmp_path / "s3disk"
    seaweed.stop()
    try:
        with tmpfs(disk, "256M"):
            seaweed.start(data_dir=disk / "data")
            env = _env(tmp_path, **fleet)
            direct: dict[str, bytes] = {}
            filler = disk / "filler"
            try:
                first = _bundle("before")
                assert _put(env, *first).status_code == 201
                direct[first[0]] = first[1]
                fill(filler)
                bid, data = _bundle("while full")
                _assert_unavailable(_put(env, bid, data), full=False)  # S3 says InternalError
                direct[bid] = data
                assert not _indexed(env, bid)
                assert env.http.get(f"{env.url}/v1/bundles", timeout=30).json()["total"] == 1
                dl = env.http.get(f"{env.url}/v1/bundles/{first[0]}/download", timeout=30)
                assert dl.content == first[1]
                _start_agents(agents, tmp_path, env, ["T-S3FULL-1"], 8)
                assert wait_until(lambda: agents[0].saw(503), 60, 0.05), agents[0].uploader.status()
                assert not agents[0].acked()

                filler.unlink()
                assert _put(env, bid, data).status_code == 201
                assert wait_until(agents[0].done, 120, 0.1), agents[0].uploader.status()
                agents[0].check_spool()
                _check_stored_once(env, _all_sent(agents, direct), seaweed)
            finally:
                for a in agents:
                    a.uploader.stop()
                env.close()
                seaweed.stop()
    finally:
        assert seaweed.top is not None
        seaweed.start(data_dir=seaweed.top / "data")  # the session's server, on its own data


# --------------------------------------------------------------------------- body deadline


def _read_answer(s: socket.socket, trickle: bytes) -> bytes:
    """Send trickle one byte every 0.25 s until the server answers; return the answer."""
    sent = 0
    while True:
        ready, _, _ = select.select([s], [], [], 0.25)
        if ready:
            break
        if sent < len(trickle):
            try:
                s.sendall(trickle[sent : sent + 1])
                sent += 1
            except OSError:
                break
    data = b""
    s.settimeout(10)
    try:
        while chunk := s.recv(65536):
            data += chunk
    except OSError:
        pass
    return data


@pytest.mark.parametrize("trickle", [True, False], ids=["trickling", "silent"])
def test_a_body_past_the_deadline_is_answered_408_and_not_stored(
    tmp_path: Path, trickle: bool
) -> None:
    """Headers, then a body that trickles (or stops) past body_timeout_s: 408 with the
    protocol's JSON, the connection closed, nothing stored or left in incoming/; the next
    upload is stored."""
    env = Env(tmp_path, body_timeout_s=2)
    try:
        bid, data = _bundle("trickled")
        head = "".join(
            f"{k}: {v}\r\n" for k, v in upload_headers(bid, data, env.token, DEV).items()
        )
        with socket.create_connection(("127.0.0.1", env.server.port), timeout=10) as s:
            s.sendall(
                f"PUT /v1/bundles/{bid} HTTP/1.1\r\nHost: c\r\n{head}"
                f"Content-Length: {len(data)}\r\n\r\n".encode()
                + data[:100]
            )
            answer = _read_answer(s, data[100:] if trickle else b"")
        head_text, _, body = answer.partition(b"\r\n\r\n")
        assert head_text.startswith(b"HTTP/1.1 408 "), answer[:300]
        reply = json.loads(body)
        assert reply["status"] == "timeout" and "2 s" in reply["error"]
        assert not _indexed(env, bid)
        incoming = Path(env.cfg.data_dir) / "incoming"
        assert wait_until(lambda: not list(incoming.iterdir()), 10)
        assert _put(env, bid, data).status_code == 201
    finally:
        env.close()
