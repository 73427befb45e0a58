"""The embedded blob store: bundles as files under ``data_dir/bundles`` (one instance)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from agent.bundle.format import is_bundle_id
from agent.core.files import fsync_dir
from collector.storage.base import StorageError, Timed, os_error, timed


class FsBlobStore(Timed):
    """Bundles as files: ``root/<last two hex digits of the id>/<id>.zip``.

    Only canonical UUID ids are accepted, so no name can leave the root. `put`
    fsyncs the staged file, renames it into place and fsyncs the directory:
    a blob is either absent or complete. The staged file must be on the same
    filesystem (the collector stages under ``data_dir/incoming``). Keyed by id
    alone (the sha256 arguments are ignored): not shared between instances.
    """

    engine = "files"
    shared = False

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._shards: set[str] = set()

    def path(self, bundle_id: str) -> Path:
        """The file a bundle id maps to (ValueError for anything but a canonical UUID)."""
        if not is_bundle_id(bundle_id):
            raise ValueError(f"not a bundle id: {bundle_id!r}")
        return self.root / bundle_id[-2:] / f"{bundle_id}.zip"

    @timed("blob_put")
    def put(self, bundle_id: str, src: Path, sha256: str | None = None) -> None:
        dest = self.path(bundle_id)
        try:
            if dest.parent.name not in self._shards:
                dest.parent.mkdir(exist_ok=True)
                fsync_dir(self.root)
                self._shards.add(dest.parent.name)
            fd = os.open(src, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(src, dest)
            fsync_dir(dest.parent)
        except OSError as e:
            raise os_error(f"cannot store {bundle_id}", e) from e

    @timed("blob_get")
    def get(self, bundle_id: str, sha256: str | None = None) -> bytes:
        try:
            return self.path(bundle_id).read_bytes()
        except FileNotFoundError:
            raise KeyError(bundle_id) from None
        except OSError as e:
            raise StorageError(f"cannot read {bundle_id}: {e.strerror or e}") from e

    def exists(self, bundle_id: str, sha256: str | None = None) -> bool:
        return self.path(bundle_id).is_file()

    @timed("blob_delete")
    def delete(self, bundle_id: str, sha256: str | None = None) -> None:
        try:
            self.path(bundle_id).unlink()
        except FileNotFoundError:
            pass

    def ids(self, modified_since: float | None = None) -> Iterator[str]:
        for shard in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not shard.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(shard.path):
                name = entry.name
                if not name.endswith(".zip") or not is_bundle_id(name[:-4]):
                    continue
                if modified_since is not None:
                    try:
                        if entry.stat(follow_symlinks=False).st_mtime < modified_since:
                            continue
                    except FileNotFoundError:
                        continue
                yield name[:-4]

    def entries(self, modified_since: float | None = None) -> Iterator[tuple[str, str | None]]:
        for bid in self.ids(modified_since):
            yield bid, None
