"""The fleet blob store: any S3-compatible server through boto3.

Blobs are keyed by bundle id AND digest, ``<prefix>/<bundle id>/<sha256>.zip``: two
instances storing two bodies under one id never overwrite each other, so the index's
primary key alone decides which was first (`collector.storage.base.BundleStore`). Every
read is checked against the digest in its key.

Timeouts (`CONNECT_TIMEOUT_S`, `READ_TIMEOUT_S`, `ATTEMPTS`): an unreachable or stalled
server is given up within about ATTEMPTS x READ_TIMEOUT_S plus boto3's backoff (~35 s), well
inside the agent's read timeout (60 s by default), so the upload is answered 503 with
Retry-After instead of timing out at the agent; every failure is a `StorageError`.

Credentials come only from the standard AWS sources (environment variables, shared
credentials and config files, instance roles), never from the posagent config. Needs the
fleet extra (``pip install 'posagent[fleet]'``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from agent.bundle.format import is_bundle_id
from collector.storage.base import StorageError, Timed, timed

_SHA = re.compile(r"^[0-9a-f]{64}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_MISSING = {"404", "NoSuchKey", "NotFound"}
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 10.0  # per socket operation; a PUT's reply comes well within it
ATTEMPTS = 3  # in all (boto3's standard retry mode: 5xx, throttling, connection errors)


def parse_s3_url(url: str) -> tuple[str, str]:
    """'s3://bucket/some/prefix' -> ('bucket', 'some/prefix/'); ValueError when malformed."""
    if not url.startswith("s3://"):
        raise ValueError(f"blob_url must be s3://bucket[/prefix], not {url!r}")
    bucket, _, prefix = url[5:].partition("/")
    if not _BUCKET.match(bucket):
        raise ValueError(f"not an S3 bucket name: {bucket!r}")
    prefix = prefix.strip("/")
    return bucket, (prefix + "/" if prefix else "")


def _sha_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class S3BlobStore(Timed):
    """Bundle zips as S3 objects; shared by any number of instances."""

    engine = "s3"
    shared = True

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str = "",
        region: str = "us-east-1",
        max_connections: int = 32,
        client: Any = None,
    ):
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = url
        self.client = client or boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region,
            config=BotoConfig(
                connect_timeout=CONNECT_TIMEOUT_S,
                read_timeout=READ_TIMEOUT_S,
                retries={"total_max_attempts": ATTEMPTS, "mode": "standard"},
                max_pool_connections=max_connections,
                s3={"addressing_style": "path"} if endpoint_url else {},
            ),
        )
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as e:
            raise StorageError(f"{url}: bucket not reachable: {e}") from e

    def key(self, bundle_id: str, sha256: str) -> str:
        """The object key (ValueError for anything but a canonical id and a hex digest)."""
        if not is_bundle_id(bundle_id):
            raise ValueError(f"not a bundle id: {bundle_id!r}")
        if not _SHA.match(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return f"{self.prefix}{bundle_id}/{sha256}.zip"

    def _digests(self, bundle_id: str) -> list[str]:
        if not is_bundle_id(bundle_id):
            raise ValueError(f"not a bundle id: {bundle_id!r}")
        base = f"{self.prefix}{bundle_id}/"
        try:
            resp = self.client.list_objects_v2(Bucket=self.bucket, Prefix=base)
        except (BotoCoreError, ClientError) as e:
            raise StorageError(f"cannot list {bundle_id}: {e}") from e
        out = []
        for obj in resp.get("Contents", []):
            name = str(obj["Key"])[len(base) :]
            if name.endswith(".zip") and _SHA.match(name[:-4]):
                out.append(name[:-4])
        return out

    @timed("blob_put")
    def put(self, bundle_id: str, src: Path, sha256: str | None = None) -> None:
        sha = sha256 or _sha_of(src)
        key = self.key(bundle_id, sha)
        try:
            with src.open("rb") as f:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=f,
                    ContentType="application/zip",
                    Metadata={"sha256": sha},
                )
        except (BotoCoreError, ClientError, OSError) as e:
            raise StorageError(f"cannot store {bundle_id}: {e}") from e
        src.unlink(missing_ok=True)

    @timed("blob_get")
    def get(self, bundle_id: str, sha256: str | None = None) -> bytes:
        if sha256 is None:
            found = self._digests(bundle_id)
            if not found:
                raise KeyError(bundle_id)
            if len(found) > 1:
                raise StorageError(f"{bundle_id}: several bodies stored, name the digest")
            sha256 = found[0]
        key = self.key(bundle_id, sha256)
        try:
            data: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) in _MISSING:
                raise KeyError(bundle_id) from None
            raise StorageError(f"cannot read {bundle_id}: {e}") from e
        except BotoCoreError as e:
            raise StorageError(f"cannot read {bundle_id}: {e}") from e
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StorageError(f"stored blob of {bundle_id} does not match its digest")
        return data

    def exists(self, bundle_id: str, sha256: str | None = None) -> bool:
        if sha256 is None:
            return bool(self._digests(bundle_id))
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(bundle_id, sha256))
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) in _MISSING:
                return False
            raise StorageError(f"cannot look up {bundle_id}: {e}") from e
        except BotoCoreError as e:
            raise StorageError(f"cannot look up {bundle_id}: {e}") from e
        return True

    @timed("blob_delete")
    def delete(self, bundle_id: str, sha256: str | None = None) -> None:
        digests = [sha256] if sha256 is not None else self._digests(bundle_id)
        for sha in digests:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=self.key(bundle_id, sha))
            except (BotoCoreError, ClientError) as e:
                raise StorageError(f"cannot delete {bundle_id}: {e}") from e

    @timed("blob_delete_many")
    def delete_many(self, items: list[tuple[str, str]]) -> None:
        """Delete (bundle id, sha256) blobs, up to 1000 per request; absent is not an error."""
        keys = [self.key(b, s) for b, s in items]
        for i in range(0, len(keys), 1000):
            chunk = keys[i : i + 1000]
            try:
                resp = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
                )
            except (BotoCoreError, ClientError) as e:
                raise StorageError(f"cannot delete {len(chunk)} blobs: {e}") from e
            errors = [er for er in resp.get("Errors", []) if str(er.get("Code")) not in _MISSING]
            if errors:
                raise StorageError(f"cannot delete {errors[0].get('Key')}: {errors[0]}")

    def entries(self, modified_since: float | None = None) -> Iterator[tuple[str, str | None]]:
        """Every (id, sha256) under the prefix (one listing; modified_since filters by
        LastModified)."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    bid, _, name = str(obj["Key"])[len(self.prefix) :].partition("/")
                    if not is_bundle_id(bid) or not name.endswith(".zip"):
                        continue
                    sha = name[:-4]
                    if not _SHA.match(sha):
                        continue
                    if (
                        modified_since is not None
                        and obj["LastModified"].timestamp() < modified_since
                    ):
                        continue
                    yield bid, sha
        except (BotoCoreError, ClientError) as e:
            raise StorageError(f"cannot list {self.url}: {e}") from e

    def ids(self, modified_since: float | None = None) -> Iterator[str]:
        seen: set[str] = set()
        for bid, _ in self.entries(modified_since):
            if bid not in seen:
                seen.add(bid)
                yield bid

    def close(self) -> None:
        self.client.close()
