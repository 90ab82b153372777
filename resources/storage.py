"""Partitioned dataset storage under one data root (local path, file:// or gs://) with atomic commits.

Every derived partition is written to its own version directory `<dataset>/dt=<day>/v=<version>/` and made
visible by atomically replacing the `<dataset>/dt=<day>/_SUCCESS` pointer (a small JSON manifest). Readers
resolve the pointer, so they only ever see committed versions: a run killed mid-write leaves the previous
version readable, concurrent writers of one partition resolve to last-writer-wins, and reruns are idempotent.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

SUCCESS_MARKER = "_SUCCESS"
# Previously committed versions kept after a commit, so a reader that resolved the old pointer a moment
# ago can still finish; older committed versions are deleted. Never-committed (in-progress or killed)
# versions are left to the retention job, since a concurrent writer may still be writing them.
KEEP_PREVIOUS_VERSIONS = 1


class PartitionNotCommittedError(FileNotFoundError):
    pass


@dataclass(frozen=True)
class DatasetStore:
    """Paths and commit protocol for every dataset under `root_uri`."""

    root_uri: str

    @functools.cached_property
    def _fs_and_base(self) -> tuple[pafs.FileSystem, str]:
        # Resolved once per store: on gs:// each resolution builds a GcsFileSystem (and looks up credentials).
        uri = self.root_uri
        if "://" not in uri:
            uri = str(Path(uri).expanduser().resolve())
            return pafs.LocalFileSystem(), uri
        fs, base = pafs.FileSystem.from_uri(uri)
        return fs, base.rstrip("/")

    @property
    def fs(self) -> pafs.FileSystem:
        return self._fs_and_base[0]

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        """A filesystem path (for `self.fs`) under the root."""
        return posixpath.join(self._fs_and_base[1], *parts)

    def uri(self, *parts: str) -> str:
        """The same location as a URI Spark understands (absolute local path, or gs://bucket/...)."""
        p = self.path(*parts)
        if self.is_local:
            return p
        scheme = self.root_uri.split("://", 1)[0]
        return f"{scheme}://{p}"

    # ---- raw inputs (written by upstream, read-only here) ----
    def raw_partition_uri(self, table: str, day: str) -> str:
        return self.uri("raw", table, f"dt={day}")

    def raw_partition_path(self, table: str, day: str) -> str:
        return self.path("raw", table, f"dt={day}")

    def success_files_dir(self) -> str:
        return self.path("raw", "daily_success_files")

    def raw_success_file(self, day: str) -> str:
        return posixpath.join(self.success_files_dir(), day)

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def list_success_files(self) -> list[pafs.FileInfo]:
        d = self.success_files_dir()
        if not self.exists(d):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(d, recursive=False))
        return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.base_name)

    def raw_days(self, table: str) -> list[str]:
        """Days present under raw/<table>/ (directories named dt=YYYY-MM-DD), sorted."""
        d = self.path("raw", table)
        if not self.exists(d):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(d, recursive=False))
        return sorted(
            i.base_name[3:] for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("dt=")
        )

    # ---- derived, versioned partitions ----
    def partition_dir(self, dataset: str, day: str) -> str:
        return self.path(dataset, f"dt={day}")

    def new_version(self, run_id: str | None = None) -> str:
        ts = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        return f"{ts}-{(run_id or uuid.uuid4().hex)[:8]}"

    def version_path(self, dataset: str, day: str, version: str, *parts: str) -> str:
        return posixpath.join(self.partition_dir(dataset, day), f"v={version}", *parts)

    def version_uri(self, dataset: str, day: str, version: str, *parts: str) -> str:
        return self.uri(dataset, f"dt={day}", f"v={version}", *parts)

    def read_manifest(self, dataset: str, day: str) -> dict | None:
        marker = posixpath.join(self.partition_dir(dataset, day), SUCCESS_MARKER)
        try:
            with self.fs.open_input_stream(marker) as f:
                return json.loads(f.read().decode())
        except FileNotFoundError:
            return None

    def committed_version(self, dataset: str, day: str) -> str:
        manifest = self.read_manifest(dataset, day)
        if manifest is None:
            raise PartitionNotCommittedError(
                f"{dataset} partition {day} has no committed version "
                f"({posixpath.join(self.partition_dir(dataset, day), SUCCESS_MARKER)} missing): materialize it first"
            )
        return manifest["version"]

    def committed_uri(self, dataset: str, day: str, *parts: str) -> str:
        return self.version_uri(dataset, day, self.committed_version(dataset, day), *parts)

    def committed_path(self, dataset: str, day: str, *parts: str) -> str:
        return self.version_path(dataset, day, self.committed_version(dataset, day), *parts)

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        """Replace `path` atomically: readers see the old or the new content, never a partial file."""
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        if self.is_local:
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, path)  # rename(2): atomic replace on POSIX
        else:
            # Object stores (GCS) make a single-object upload visible atomically on close.
            with self.fs.open_output_stream(path) as f:
                f.write(data)

    def write_json_atomic(self, path: str, obj: dict) -> None:
        self.write_bytes_atomic(path, json.dumps(obj, indent=2, default=str).encode())

    def read_json(self, path: str) -> dict:
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())

    def commit(self, dataset: str, day: str, version: str, **manifest: object) -> dict:
        """Make `version` the visible one for the partition, then delete superseded committed versions."""
        vdir = self.version_path(dataset, day, version)
        if not self.exists(vdir):
            raise FileNotFoundError(f"cannot commit {dataset} {day}: version directory {vdir} does not exist")
        previous = self.read_manifest(dataset, day)
        history = []
        if previous is not None:
            history = [previous["version"], *previous.get("previous_versions", [])]
            history = [v for v in history if v != version]
        body = {
            "dataset": dataset,
            "partition": day,
            "version": version,
            "committed_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "previous_versions": history[:KEEP_PREVIOUS_VERSIONS],
            **manifest,
        }
        self.write_json_atomic(posixpath.join(self.partition_dir(dataset, day), SUCCESS_MARKER), body)
        for stale in history[KEEP_PREVIOUS_VERSIONS:]:
            stale_dir = self.version_path(dataset, day, stale)
            if self.exists(stale_dir):
                self.fs.delete_dir(stale_dir)
        return body

    def delete_dir_if_empty(self, path: str) -> None:
        """Remove a directory left empty (e.g. a partition's checkpoint dir after its last run's was deleted)."""
        if self.exists(path) and not self.fs.get_file_info(pafs.FileSelector(path)):
            self.fs.delete_dir(path)

    def list_versions(self, dataset: str, day: str) -> list[str]:
        d = self.partition_dir(dataset, day)
        if not self.exists(d):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(d, recursive=False))
        return sorted(i.base_name[2:] for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("v="))


class StorageResource(ConfigurableResource):
    """Where all data lives: raw inputs (upstream contract) and derived, committed partitions."""

    data_root: str = Field(
        default="./data",
        description="Root URI of all data: a local path, file:///abs/path, or gs://bucket/prefix in production.",
    )
    _store: DatasetStore | None = PrivateAttr(default=None)

    @property
    def store(self) -> DatasetStore:
        if self._store is None:
            self._store = DatasetStore(self.data_root)
        return self._store
