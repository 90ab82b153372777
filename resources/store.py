"""Partitioned dataset storage under one data root (local path, file:// or gs://) with atomic commits and gates.

Every derived partition is written to its own version directory `<dataset>/dt=<day>/v=<version>/` and made
visible by atomically replacing the `<dataset>/dt=<day>/_SUCCESS` pointer (a small JSON manifest). Readers
resolve the pointer, so they only ever see committed versions: a run killed mid-write leaves the previous
version readable, concurrent writers of one partition resolve to last-writer-wins, and reruns are idempotent.

A dataset protected by blocking checks is not committed by its writer: the writer *stages* the version
(`_CANDIDATE`), each blocking check records its verdict inside that version (`v=<version>/_checks/<check>.json`),
and the version is committed only when every required check has passed (`record_verdict` promotes it). A
version that failed a check is never pointed at by `_SUCCESS`, so no reader, in any run, ever sees it; the last
good version stays readable until a passing rerun replaces it.

The data root is a trust boundary: everything read back from it (manifests, candidates, verdicts) is validated
before any path is derived from it, and a malformed file is an error that names it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import posixpath
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs

SUCCESS_MARKER = "_SUCCESS"
CANDIDATE_MARKER = "_CANDIDATE"
VERDICTS_DIR = "_checks"
# Versions a model was trained on, pinned by it (one small JSON file per holder under <dataset>/dt=<day>/_pins/):
# a commit never deletes a pinned version, and retention keeps it while its holder is the model's live version.
PINS_DIR = "_pins"
# Previously committed versions kept after a commit, so a reader that resolved the old pointer a moment
# ago can still finish; older committed versions are deleted. Never-committed (in-progress or killed)
# versions are left to the retention job, since a concurrent writer may still be writing them.
KEEP_PREVIOUS_VERSIONS = 1


log = logging.getLogger("recsys.storage")

# What the platform itself writes: versions are "<UTC timestamp>-<run id prefix>", days are ISO dates, dataset and
# check names are identifiers. Anything read from the data root must match before a path is built from it.
VERSION_RE = re.compile(r"^\d{8}T\d{12}-[0-9A-Za-z]{1,32}$")
DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,99}$")
# Path segments the platform builds itself (tests and tools may use short version names like "v1").
_SEGMENT_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]{0,99}$")


class PartitionNotCommittedError(FileNotFoundError):
    pass


class InvalidManifestError(ValueError):
    """A `_SUCCESS`, `_CANDIDATE` or verdict file that is torn, not JSON, or names something the platform would
    never write (a version outside the partition, a path). The message names the file."""


def _segment(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SEGMENT_RE.match(value) or value in (".", ".."):
        raise ValueError(f"invalid {what} {value!r}: not a single path segment of letters, digits, '_', '.', '-'")
    return value


def _valid_version(value: object) -> bool:
    return isinstance(value, str) and bool(VERSION_RE.match(value))


@dataclass(frozen=True)
class GateState:
    """Where a partition stands with its blocking checks.

    `committed_version`: what readers see (None: nothing readable). `candidate_version`: the newest staged version
    when it is not the committed one. `state`: committed | pending (checks not all recorded) | withheld (a required
    check failed; readers keep the committed version, if any) | missing."""

    committed_version: str | None
    candidate_version: str | None = None
    required_checks: tuple[str, ...] = ()
    verdicts: dict[str, dict] = field(default_factory=dict)

    @property
    def failed_checks(self) -> list[str]:
        return [c for c in self.required_checks if c in self.verdicts and not self.verdicts[c]["passed"]]

    @property
    def pending_checks(self) -> list[str]:
        return [c for c in self.required_checks if c not in self.verdicts]

    @property
    def state(self) -> str:
        if self.candidate_version is None:
            return "committed" if self.committed_version else "missing"
        return "withheld" if self.failed_checks else "pending"

    def describe(self) -> str:
        readable = f"readers keep version {self.committed_version}" if self.committed_version else "nothing is readable"
        if self.state == "withheld":
            return f"version {self.candidate_version} withheld (failed {', '.join(self.failed_checks)}); {readable}"
        if self.state == "pending":
            return f"version {self.candidate_version} awaits {', '.join(self.pending_checks)}; {readable}"
        return f"version {self.committed_version} committed" if self.committed_version else "never materialized"


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
        return self.uri_of(self.path(*parts))

    def uri_of(self, path: str) -> str:
        """A path on this store's filesystem (`self.path`, or one outside the root) as a URI Spark understands."""
        if self.is_local:
            return path
        scheme = self.root_uri.split("://", 1)[0]
        return f"{scheme}://{path}"

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
        return self.path(_segment(dataset, "dataset"), f"dt={_segment(day, 'day')}")

    def new_version(self, run_id: str | None = None) -> str:
        ts = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        suffix = re.sub(r"[^0-9A-Za-z]", "", run_id or "")[:8] or uuid.uuid4().hex[:8]
        return f"{ts}-{suffix}"

    def version_path(self, dataset: str, day: str, version: str, *parts: str) -> str:
        return posixpath.join(self.partition_dir(dataset, day), f"v={_segment(version, 'version')}", *parts)

    def version_uri(self, dataset: str, day: str, version: str, *parts: str) -> str:
        return self.uri(dataset, f"dt={day}", f"v={_segment(version, 'version')}", *parts)

    def _marker(self, dataset: str, day: str, name: str) -> str:
        return posixpath.join(self.partition_dir(dataset, day), name)

    def _read_pointer(self, dataset: str, day: str, name: str) -> dict | None:
        """A partition's `_SUCCESS` or `_CANDIDATE`, validated: None if absent, InvalidManifestError (naming the
        file) if torn or hostile. Every version it names must be a version of this dataset partition."""
        marker = self._marker(dataset, day, name)
        try:
            with self.fs.open_input_stream(marker) as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        try:
            body = json.loads(raw.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InvalidManifestError(
                f"{marker} is not valid JSON ({len(raw)} bytes; torn write?): rematerialize {dataset} {day} to "
                "replace it"
            ) from None
        problem = None
        if not isinstance(body, dict):
            problem = "not a JSON object"
        elif not _valid_version(body.get("version")):
            problem = "missing or invalid 'version'"
        elif body.get("dataset", dataset) != dataset or body.get("partition", day) != day:
            problem = "written for another dataset or partition"
        elif not isinstance(body.get("previous_versions", []), list) or not all(
            _valid_version(v) for v in body.get("previous_versions", [])
        ):
            problem = "'previous_versions' holds something that is not a version of this partition"
        if problem:
            raise InvalidManifestError(f"{marker}: {problem}; rematerialize {dataset} {day} to replace it")
        return body

    def read_manifest(self, dataset: str, day: str) -> dict | None:
        """The committed manifest of a partition (None if nothing was ever committed)."""
        return self._read_pointer(dataset, day, SUCCESS_MARKER)

    def is_committed(self, dataset: str, day: str) -> bool:
        return self.read_manifest(dataset, day) is not None

    def committed_version(self, dataset: str, day: str) -> str:
        manifest = self.read_manifest(dataset, day)
        if manifest is None:
            state = self.gate_state(dataset, day)
            why = (
                f"its {state.describe()}; a version becomes readable only when its blocking checks pass"
                if state.candidate_version
                else "materialize it first"
            )
            raise PartitionNotCommittedError(
                f"{dataset} partition {day} has no committed version "
                f"({posixpath.join(self.partition_dir(dataset, day), SUCCESS_MARKER)} missing): {why}"
            )
        return manifest["version"]

    def committed_uri(self, dataset: str, day: str, *parts: str) -> str:
        return self.version_uri(dataset, day, self.committed_version(dataset, day), *parts)

    def committed_path(self, dataset: str, day: str, *parts: str) -> str:
        return self.version_path(dataset, day, self.committed_version(dataset, day), *parts)

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        """Replace `path` atomically: readers see the old or the new content, never a partial file."""
        with self.open_atomic(path) as f:
            f.write(data)

    @contextlib.contextmanager
    def open_atomic(self, path: str):
        """A stream that replaces `path` atomically when the block ends without error (a large file written as it is
        produced, never held whole in memory); on error nothing is replaced and the partial file is removed."""
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        if not self.is_local:
            # Object stores (GCS) make a single-object upload visible atomically on close; an upload abandoned by an
            # error is never finalised.
            with self.fs.open_output_stream(path) as f:
                yield f
            return
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            with self.fs.open_output_stream(tmp) as f:
                yield f
            self.fs.move(tmp, path)  # rename(2): atomic replace on POSIX
        except BaseException:
            with contextlib.suppress(OSError, FileNotFoundError):
                self.fs.delete_file(tmp)
            raise

    def write_json_atomic(self, path: str, obj: dict) -> None:
        self.write_bytes_atomic(path, json.dumps(obj, indent=2, default=str).encode())

    def read_json(self, path: str) -> dict:
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())

    def commit(self, dataset: str, day: str, version: str, **manifest: object) -> dict:
        """Make `version` the visible one for the partition, then delete superseded committed versions.

        A torn or hostile existing manifest does not stop a commit (a rerun is how it gets repaired): it is
        replaced, and nothing it names is deleted."""
        vdir = self.version_path(dataset, day, version)
        if not self.exists(vdir):
            raise FileNotFoundError(f"cannot commit {dataset} {day}: version directory {vdir} does not exist")
        try:
            previous = self.read_manifest(dataset, day)
        except InvalidManifestError as e:
            log.warning("replacing an invalid manifest (nothing it names is deleted): %s", e)
            previous = None
        history = []
        if previous is not None:
            history = [previous["version"], *previous.get("previous_versions", [])]
            history = [v for v in history if v != version]
        body = {
            "dataset": dataset,
            "partition": day,
            "version": version,
            "committed_at": dt.datetime.now(dt.UTC).isoformat(),
            "previous_versions": history[:KEEP_PREVIOUS_VERSIONS],
            **manifest,
        }
        self.write_json_atomic(posixpath.join(self.partition_dir(dataset, day), SUCCESS_MARKER), body)
        pinned = set(self.pinned_versions(dataset, day).values())
        for stale in history[KEEP_PREVIOUS_VERSIONS:]:
            if stale in pinned:  # a model was trained on it: retention releases it with the model
                continue
            stale_dir = self.version_path(dataset, day, stale)
            try:
                self.fs.delete_dir(stale_dir)
            except FileNotFoundError:  # already gone: a concurrent commit of this partition deleted it first
                pass
        return body

    # ---- pins: versions that a model was trained on ----
    def pin(self, dataset: str, day: str, version: str, holder: str) -> None:
        """Record that `holder` (a model version: "<model>.<day>.<version>") was built from `version` of the
        partition: commits will not delete it (retention releases the pin when the holder is gone)."""
        if not _valid_version(version):
            raise ValueError(f"invalid version {version!r} to pin")
        pinned_at = dt.datetime.now(dt.UTC).isoformat()
        self.write_json_atomic(
            self.pin_path(dataset, day, holder), {"version": version, "holder": holder, "pinned_at": pinned_at}
        )

    def pinned_versions(self, dataset: str, day: str) -> dict[str, str]:
        """holder -> version of every pin of the partition (files that are not valid pins are ignored)."""
        d = posixpath.join(self.partition_dir(dataset, day), PINS_DIR)
        out = {}
        for info in self.fs.get_file_info(pafs.FileSelector(d, allow_not_found=True)):
            if info.type != pafs.FileType.File or not info.base_name.endswith(".json"):
                continue
            try:
                body = self.read_json(info.path)
            except (OSError, ValueError):
                continue
            if isinstance(body, dict) and _valid_version(body.get("version")):
                out[info.base_name[: -len(".json")]] = body["version"]
        return out

    def pin_path(self, dataset: str, day: str, holder: str) -> str:
        return posixpath.join(self.partition_dir(dataset, day), PINS_DIR, f"{_segment(holder, 'pin holder')}.json")

    # ---- gates: stage -> verdicts -> promote ----
    def stage(self, dataset: str, day: str, version: str, required_checks: Sequence[str], **manifest: object) -> dict:
        """Offer `version` for commit once every check in `required_checks` has recorded a passing verdict
        (`record_verdict`). With no required checks it is committed at once. Returns the candidate (or manifest)."""
        if not required_checks:
            return self.commit(dataset, day, version, **manifest)
        vdir = self.version_path(dataset, day, version)
        if not self.exists(vdir):
            raise FileNotFoundError(f"cannot stage {dataset} {day}: version directory {vdir} does not exist")
        body = {
            "dataset": dataset,
            "partition": day,
            "version": version,
            "staged_at": dt.datetime.now(dt.UTC).isoformat(),
            "required_checks": sorted(_check_name(c) for c in required_checks),
            "manifest": manifest,
        }
        self.write_json_atomic(self._marker(dataset, day, CANDIDATE_MARKER), body)
        return body

    def read_candidate(self, dataset: str, day: str) -> dict | None:
        body = self._read_pointer(dataset, day, CANDIDATE_MARKER)
        if body is not None:
            checks = body.get("required_checks")
            if (
                not isinstance(checks, list)
                or not all(isinstance(c, str) and NAME_RE.match(c) for c in checks)
                or not isinstance(body.get("manifest", {}), dict)
            ):
                raise InvalidManifestError(
                    f"{self._marker(dataset, day, CANDIDATE_MARKER)}: invalid 'required_checks' or 'manifest'; "
                    f"rematerialize {dataset} {day} to replace it"
                )
        return body

    def verdicts(self, dataset: str, day: str, version: str) -> dict[str, dict]:
        """check name -> {"passed": bool, "description": str, "at": iso} recorded for a version."""
        d = self.version_path(dataset, day, version, VERDICTS_DIR)
        if not self.exists(d):
            return {}
        out = {}
        for info in self.fs.get_file_info(pafs.FileSelector(d)):
            name = info.base_name.removesuffix(".json")
            if info.type != pafs.FileType.File or not info.base_name.endswith(".json") or not NAME_RE.match(name):
                continue
            try:
                body = self.read_json(info.path)
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise InvalidManifestError(f"{info.path} is not valid JSON: rerun the check {name}") from None
            if not isinstance(body, dict) or not isinstance(body.get("passed"), bool):
                raise InvalidManifestError(f"{info.path}: missing boolean 'passed'; rerun the check {name}")
            out[name] = body
        return out

    def gate_state(self, dataset: str, day: str) -> GateState:
        manifest = self.read_manifest(dataset, day)
        committed = manifest["version"] if manifest else None
        candidate = self.read_candidate(dataset, day)
        # Versions start with their UTC creation time, so they order by age: a candidate no newer than what is
        # committed (promoted, or overtaken by a later writer) is history, not something awaiting checks.
        if candidate is None or (committed is not None and candidate["version"] <= committed):
            return GateState(committed)
        version = candidate["version"]
        return GateState(committed, version, tuple(candidate["required_checks"]), self.verdicts(dataset, day, version))

    def version_under_check(self, dataset: str, day: str) -> str:
        """The version a check of this partition judges: the staged candidate if there is one, else the committed
        version."""
        state = self.gate_state(dataset, day)
        version = state.candidate_version or state.committed_version
        if version is None:
            raise PartitionNotCommittedError(
                f"{dataset} partition {day} has no staged or committed version: materialize it first"
            )
        return version

    def record_verdict(
        self, dataset: str, day: str, version: str, check: str, passed: bool, description: str = ""
    ) -> GateState:
        """Record a check's verdict on a version, then commit the partition's candidate if that completed its
        required checks. Concurrent checks of one candidate are safe: each writes its own verdict file before
        looking at the others, so the last one to finish sees them all (a double commit of the same version is
        idempotent)."""
        if not self.exists(self.version_path(dataset, day, version)):
            raise FileNotFoundError(f"{dataset} {day}: version {version} does not exist")
        self.write_json_atomic(
            self.version_path(dataset, day, version, VERDICTS_DIR, f"{_check_name(check)}.json"),
            {
                "check": check,
                "passed": bool(passed),
                "description": description[:2000],
                "at": dt.datetime.now(dt.UTC).isoformat(),
            },
        )
        return self.promote_if_passed(dataset, day)

    def promote_if_passed(self, dataset: str, day: str) -> GateState:
        state = self.gate_state(dataset, day)
        if state.state == "pending" and not state.pending_checks:  # every required verdict is in, none failed
            candidate = self.read_candidate(dataset, day)
            if candidate is not None and candidate["version"] == state.candidate_version:
                self.commit(
                    dataset,
                    day,
                    state.candidate_version,
                    **candidate.get("manifest", {}),
                    checks={c: v["passed"] for c, v in state.verdicts.items()},
                )
                return self.gate_state(dataset, day)
        return state

    def delete_dir_if_empty(self, path: str) -> None:
        """Remove a directory left empty (e.g. a partition's checkpoint dir after its last run's was deleted)."""
        if self.exists(path) and not self.fs.get_file_info(pafs.FileSelector(path)):
            self.fs.delete_dir(path)

    def list_versions(self, dataset: str, day: str) -> list[str]:
        d = self.partition_dir(dataset, day)
        if not self.exists(d):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(d, recursive=False))
        return sorted(
            i.base_name[2:] for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("v=")
        )


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"invalid check name {name!r}")
    return name
