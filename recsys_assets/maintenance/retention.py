"""Retention planning: which derived partitions, uncommitted version directories, temp files and abandoned
checkpoints are old enough to delete, never touching what a current model was trained on.

Seed 003's tables expired after 30 days whether or not something still needed them, and seed 004's temp objects
grew without bound. Here the plan is explicit (and printable as a dry run), protected data is derived from the
models' own lineage (`training.json` lists the training_events versions each model used), and only the store's
own layout is touched: raw inputs belong to upstream and are never deleted.
"""

from __future__ import annotations

import datetime as dt
import posixpath
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from recsys_assets.core.datasets import DATASETS, datasets_with
from recsys_assets.core.days import shift_day
from resources.store import DatasetStore, InvalidManifestError

# What each dataset's partitions are for, and so what protects them, is declared once in core/datasets.py.
DERIVED_DATASETS = tuple(DATASETS)
MODEL_DATASETS = datasets_with("model")
TRAINING_DATA = datasets_with("training_data")
# Datasets of a protected model day that belong with the model (its vocab and indexes) and so are kept with it.
MODEL_COMPANIONS = (*datasets_with("model_companion"), *MODEL_DATASETS)


@dataclass(frozen=True)
class RetentionPolicy:
    max_partition_age_days: int = 30
    staging_max_age_hours: float = 24.0  # uncommitted versions / temp files / checkpoints older than this
    protect_latest_models: int = 2  # the current model and the one a rollback would restore


@dataclass
class Action:
    kind: str  # expired_partition | stale_version | temp_file | abandoned_checkpoint
    path: str
    bytes: int
    reason: str


@dataclass
class RetentionPlan:
    actions: list[Action] = field(default_factory=list)
    protected: dict[str, list[str]] = field(default_factory=dict)  # dataset -> days kept because a model needs them
    problems: list[str] = field(default_factory=list)  # partitions skipped: their manifest could not be trusted

    @property
    def total_bytes(self) -> int:
        return sum(a.bytes for a in self.actions)

    def by_kind(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for a in self.actions:
            n, b = out.get(a.kind, (0, 0))
            out[a.kind] = (n + 1, b + a.bytes)
        return out


def _dirs(store: DatasetStore, path: str, prefix: str) -> list[pafs.FileInfo]:
    if not store.exists(path):
        return []
    return sorted(
        (
            i
            for i in store.fs.get_file_info(pafs.FileSelector(path))
            if i.type == pafs.FileType.Directory and i.base_name.startswith(prefix)
        ),
        key=lambda i: i.base_name,
    )


def _size_and_newest_mtime(store: DatasetStore, path: str) -> tuple[int, dt.datetime | None]:
    infos = store.fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = [i for i in infos if i.type == pafs.FileType.File]
    newest = max((i.mtime for i in files if i.mtime is not None), default=None)
    if newest is None:
        newest = store.fs.get_file_info(path).mtime
    return sum(i.size or 0 for i in files), newest


def protected_partitions(store: DatasetStore, keep_latest: int) -> dict[str, set[str]]:
    """Days per dataset that the latest `keep_latest` committed partitions of each model depend on."""
    keep: dict[str, set[str]] = {}
    for model in MODEL_DATASETS:
        days = [
            d.base_name[3:]
            for d in _dirs(store, store.path(model), "dt=")
            if store.read_manifest(model, d.base_name[3:])
        ]
        for day in days[-keep_latest:] if keep_latest else []:
            info = store.read_json(store.committed_path(model, day, "training.json"))
            for data_day in info.get("data_versions", {}):
                for ds in TRAINING_DATA:
                    keep.setdefault(ds, set()).add(data_day)
            for ds in MODEL_COMPANIONS:
                keep.setdefault(ds, set()).add(day)
    return keep


def holder_is_live(store: DatasetStore, holder: str) -> bool:
    """Whether a pin's holder ("<model>.<day>.<version>") is still a version readers or its gate may use: committed,
    kept as previous, or staged for its checks. An unreadable holder or manifest counts as live (keep the data)."""
    try:
        model, day, version = holder.split(".", 2)
        manifest = store.read_manifest(model, day)
        candidate = store.read_candidate(model, day)
    except (ValueError, InvalidManifestError):
        return True
    live = {manifest["version"], *manifest.get("previous_versions", [])} if manifest else set()
    return version in live or (candidate is not None and candidate["version"] == version)


def plan_retention(store: DatasetStore, policy: RetentionPolicy, now: dt.datetime) -> RetentionPlan:
    today = now.date().isoformat()
    cutoff_day = shift_day(today, -policy.max_partition_age_days)
    staging_cutoff = now - dt.timedelta(hours=policy.staging_max_age_hours)
    protected = protected_partitions(store, policy.protect_latest_models)
    plan = RetentionPlan(protected={ds: sorted(days) for ds, days in protected.items()})

    for ds in DERIVED_DATASETS:
        for part in _dirs(store, store.path(ds), "dt="):
            day = part.base_name[3:]
            if day < cutoff_day and day not in protected.get(ds, set()):
                size, _ = _size_and_newest_mtime(store, part.path)
                plan.actions.append(
                    Action(
                        "expired_partition",
                        part.path,
                        size,
                        f"{ds} {day} older than {policy.max_partition_age_days} days",
                    )
                )
                continue
            try:
                manifest = store.read_manifest(ds, day)
                candidate = store.read_candidate(ds, day)
            except InvalidManifestError as e:  # nothing in a partition with an untrusted manifest is touched
                plan.problems.append(str(e))
                continue
            live = {manifest["version"], *manifest.get("previous_versions", [])} if manifest else set()
            # Versions a live model version was trained on (the same pins a commit consults before deleting).
            for holder, version in store.pinned_versions(ds, day).items():
                if holder_is_live(store, holder):
                    live.add(version)
                else:
                    path = store.pin_path(ds, day, holder)
                    plan.actions.append(Action("released_pin", path, 0, f"{holder} is no longer a live model version"))
            if candidate is not None:  # staged (awaiting checks) or withheld: the UI and its checks point at it
                live.add(candidate["version"])
            for v in _dirs(store, part.path, "v="):
                if v.base_name[2:] in live:
                    continue
                size, newest = _size_and_newest_mtime(store, v.path)
                # A version still being written has fresh files: only long-untouched ones are abandoned.
                if newest is not None and newest < staging_cutoff:
                    plan.actions.append(
                        Action(
                            "stale_version",
                            v.path,
                            size,
                            f"{ds} {day} version never committed or superseded, untouched since "
                            f"{newest:%Y-%m-%d %H:%M}",
                        )
                    )
            for f in store.fs.get_file_info(pafs.FileSelector(part.path)):
                if f.type == pafs.FileType.File and ".tmp-" in f.base_name and f.mtime and f.mtime < staging_cutoff:
                    plan.actions.append(Action("temp_file", f.path, f.size or 0, "torn atomic write"))

    ckpt_root = store.path("_checkpoints")
    for model_dir in _dirs(store, ckpt_root, ""):
        for part in _dirs(store, model_dir.path, "dt="):
            for run in _dirs(store, part.path, ""):
                size, newest = _size_and_newest_mtime(store, run.path)
                if newest is not None and newest < staging_cutoff:
                    plan.actions.append(
                        Action(
                            "abandoned_checkpoint",
                            run.path,
                            size,
                            f"{model_dir.base_name} {part.base_name[3:]} checkpoints untouched since "
                            f"{newest:%Y-%m-%d %H:%M}",
                        )
                    )
    return plan


def apply_retention(store: DatasetStore, plan: RetentionPlan) -> int:
    """Delete what the plan lists; returns the number of paths deleted (missing ones are skipped)."""
    deleted = 0
    for a in plan.actions:
        info = store.fs.get_file_info(a.path)
        if info.type == pafs.FileType.Directory:
            store.fs.delete_dir(a.path)
        elif info.type == pafs.FileType.File:
            store.fs.delete_file(a.path)
        else:
            continue
        deleted += 1
        if a.kind == "abandoned_checkpoint":
            store.delete_dir_if_empty(posixpath.dirname(a.path))
    return deleted
