"""Checks on user_history: point-in-time correctness (blocking: a history that holds anything at or after its day
would leak the label into training, so such a version is never committed), and coverage of active users (WARN).
"""

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from recsys_assets.config.files import ConfigFilesResource
from recsys_assets.core.datasets import USER_HISTORY
from recsys_assets.core.days import US_PER_DAY, shift_day, window_micros, window_of
from recsys_assets.core.gating import gate, judged_version
from recsys_assets.core.metadata import md_table
from recsys_assets.core.partitions import daily_partitions
from recsys_assets.history.assets import user_history
from resources.storage import StorageResource


def history_time_violations(store, day: str, version: str, lookback_days: int) -> dict:
    """Scan a written user_history version (record batches, memory flat in its size): entries at or after the start
    of `day`, entries older than the lookback, lists longer than `keep` or not newest first."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    start_us, _ = window_micros(window_of(day))
    since_us = start_us - lookback_days * US_PER_DAY
    data = pads.dataset(
        store.version_path(USER_HISTORY, day, version, "history"), filesystem=store.fs, format="parquet"
    )
    out = {"users": 0, "entries": 0, "at_or_after_day": 0, "before_lookback": 0, "not_newest_first": 0, "newest": None}
    for b in data.to_batches(columns=["event_ts"]):
        lists = b.column("event_ts")
        flat = pc.list_flatten(lists).cast("int64").to_numpy(zero_copy_only=False)
        out["users"] += b.num_rows
        out["entries"] += len(flat)
        if not len(flat):
            continue
        out["at_or_after_day"] += int((flat >= start_us).sum())
        out["before_lookback"] += int((flat < since_us).sum())
        parent = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
        same_user = parent[1:] == parent[:-1]
        out["not_newest_first"] += int((same_user & (flat[1:] > flat[:-1])).sum())
        newest = int(flat.max())
        out["newest"] = newest if out["newest"] is None else max(out["newest"], newest)
    out["day_start_us"] = start_us
    return out


@asset_check(
    asset=user_history,
    partitions_def=daily_partitions,
    blocking=True,
    description="No history entry at or after the start of the day (point-in-time), none older than the lookback, "
    "every list newest first. Blocking: a failing version is never committed.",
)
def user_history_point_in_time(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    import datetime as dt

    day, store = context.partition_key, storage.store
    version = judged_version(store, USER_HISTORY, day)
    stats = store.read_json(store.version_path(USER_HISTORY, day, version, "stats.json"))
    v = history_time_violations(store, day, version, int(stats["lookback_days"]))
    problems = {k: v[k] for k in ("at_or_after_day", "before_lookback", "not_newest_first") if v[k]}
    newest = dt.datetime.fromtimestamp(v["newest"] / 1e6, dt.UTC).isoformat() if v["newest"] is not None else "none"
    return gate(
        store,
        USER_HISTORY,
        day,
        version,
        "user_history_point_in_time",
        AssetCheckResult(
            passed=not problems,
            severity=AssetCheckSeverity.ERROR,
            description=(
                "; ".join(f"{n:,} entries {k.replace('_', ' ')}" for k, n in problems.items())
                if problems
                else f"{v['entries']:,} entries of {v['users']:,} users all before {day} (newest {newest})"
            ),
            metadata={
                "violations": md_table(["kind", "entries"], [[k, v[k]] for k in problems] or [["none", 0]]),
                "entries": MetadataValue.int(v["entries"]),
                "entries_at_or_after_day": MetadataValue.int(v["at_or_after_day"]),
                "newest_entry": newest,
            },
        ),
    )


@asset_check(
    asset=user_history,
    partitions_def=daily_partitions,
    blocking=False,
    description="Share of the latest folded day's active users that have a history does not drop by more than "
    "history.max_coverage_drop against the day before.",
)
def user_history_coverage(
    context: AssetCheckExecutionContext, storage: StorageResource, config_files: ConfigFilesResource
) -> AssetCheckResult:
    day, store = context.partition_key, storage.store
    max_drop = config_files.training_spec().history.max_coverage_drop
    version = judged_version(store, USER_HISTORY, day)
    today = store.read_json(store.version_path(USER_HISTORY, day, version, "stats.json")).get("coverage")
    before = (store.read_manifest(USER_HISTORY, shift_day(day, -1)) or {}).get("coverage")
    if today is None or before is None:
        return AssetCheckResult(
            passed=True,
            severity=AssetCheckSeverity.WARN,
            description=f"no comparison (coverage {today}, day before {before})",
            metadata={"coverage": MetadataValue.float(float(today)) if today is not None else -1.0},
        )
    drop = before - today
    return AssetCheckResult(
        passed=bool(drop <= max_drop),
        severity=AssetCheckSeverity.WARN,
        description=f"coverage {today:.2%} vs {before:.2%} the day before (drop {drop:+.2%}, max {max_drop:.0%})",
        metadata={
            "coverage": MetadataValue.float(float(today)),
            "coverage_day_before": MetadataValue.float(float(before)),
            "drop": MetadataValue.float(float(drop)),
        },
    )


history_checks = [user_history_point_in_time, user_history_coverage]
