"""The published feed: which users get one (stratified sampling) and whether a day's feed may replace the served
one. The PostgreSQL `feed` table it is written to: recsys_assets/serving/feed_table.py; the scoring itself (query
tower -> FAISS -> ranker): the model library's recsys_assets/ml/scoring.py."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd

from recsys_assets.serving.serving_config import arm_of_buckets, stable_hash, user_buckets


def active_users(store, day: str) -> pd.DataFrame:
    """Distinct users with events on the day and their latest attributes."""
    from recsys_assets.ml.loader import committed_events_dataset
    from recsys_assets.ml.scoring import USER_COLUMNS

    return latest_user_rows(
        committed_events_dataset(store, [day]).to_table(columns=[*USER_COLUMNS, "event_ts"]).to_pandas()
    )


def latest_user_rows(events: pd.DataFrame) -> pd.DataFrame:
    """One row per user_id: the user columns of its latest event (event_ts), sorted by user_id."""
    df = events.sort_values("event_ts", kind="stable")
    return (
        df.drop_duplicates("user_id", keep="last")
        .drop(columns="event_ts")
        .sort_values("user_id")
        .reset_index(drop=True)
    )


@dataclass(frozen=True)
class DayFeed:
    day: str
    rows: pd.DataFrame  # FEED_COLUMNS
    active_users: int
    scored_users: int
    per_arm: list[list]  # [arm, model version, users, rows]
    generate_seconds: float
    with_history: bool


def build_feed(store, day: str, spec, cfg: dict) -> DayFeed:
    """The day's feed in this process: its active users (stratified-sampled when serving.yaml says so) split into A/B
    arms by the served config, each arm scored with its release (recsys_assets/ml/scoring.py) and the users' history
    as of the day when one is committed. The reference the Spark stage (serving/feed_stage.py, what the feed asset
    runs) equals row for row, both scoring with ml/scoring.generate_feed; for a small day or a check."""
    from recsys_assets.core.datasets import USER_HISTORY
    from recsys_assets.core.days import window_of
    from recsys_assets.ml.release import load_release
    from recsys_assets.ml.scoring import generate_feed

    users = active_users(store, day)
    n_active = len(users)
    if spec.feed.sample_users_per_segment:
        users = stratified_users(users, spec.feed.stratify_by, spec.feed.sample_users_per_segment, spec.ab.salt)
    arms, versions = arm_of_buckets(
        user_buckets(users["user_id"].to_numpy(dtype=object), cfg["salt"], cfg["buckets"]), cfg
    )
    as_of = pd.Timestamp(window_of(day).end)
    history = None
    if store.is_committed(USER_HISTORY, day):  # each user's history as of the serving day
        from recsys_assets.core.readers import read_history_table

        history = read_history_table(store, day)
    parts, per_arm, t0 = [], [], time.perf_counter()
    for version in sorted(set(versions.tolist())):
        release = load_release(store, int(version))
        mask = versions == version
        rows = generate_feed(
            release,
            users[mask].reset_index(drop=True),
            spec.feed.k_retrieve,
            spec.feed.k_feed,
            spec.feed.task_weights,
            spec.feed.feed_source,
            as_of,
            history=history,
            history_day=day,
        )
        arm_by_user = pd.Series(arms[mask], index=users.loc[mask, "user_id"].to_numpy())
        rows = rows.assign(model_version=int(version), arm=rows["user_id"].map(arm_by_user))
        parts.append(rows)
        for arm in sorted(set(arms[mask].tolist())):
            per_arm.append([arm, int(version), int((arms[mask] == arm).sum()), int((rows["arm"] == arm).sum())])
    rows = pd.concat(parts, ignore_index=True).assign(strategy_name=spec.feed.strategy_name, dt=day)
    return DayFeed(day, rows, n_active, len(users), per_arm, time.perf_counter() - t0, history is not None)


def feed_row_chunks(store, day: str, version: str, batch_rows: int = 100_000):
    """The feed rows of a version scored on Spark (serving/feed_stage.py), as Arrow tables of at most `batch_rows`
    rows read one at a time from its Parquet files (what publish_feed streams into PostgreSQL; memory: one batch and
    its CSV, whatever the day's size; no pandas frame, whose Python strings were ~4x the batch)."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from recsys_assets.core.datasets import FEED_ROWS
    from recsys_assets.serving.feed_stage import FEED_ROWS_DIR

    path = store.version_path(FEED_ROWS, day, version, FEED_ROWS_DIR)
    infos = store.fs.get_file_info(pafs.FileSelector(path, recursive=False))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet"))
    for f in files:
        with store.fs.open_input_file(f) as handle:
            for b in pq.ParquetFile(handle, pre_buffer=False).iter_batches(batch_size=batch_rows):
                if b.num_rows:
                    yield pa.Table.from_batches([b])
                del b
                pa.default_memory_pool().release_unused()  # Arrow's pool would keep each batch's buffers cached


def feed_example(store, day: str, version: str, rows: int = 10) -> pd.DataFrame:
    """The first user's rows of a scored feed (the asset's example table)."""
    for table in feed_row_chunks(store, day, version, batch_rows=1_000):
        chunk = table.to_pandas()
        first = chunk[chunk["user_id"] == chunk["user_id"].iloc[0]]
        return first.sort_values("rank").head(rows)
    return pd.DataFrame(columns=["user_id", "rank", "item_id", "score"])


def feed_size_verdict(rows: int, previous_day: str | None, previous_rows: int, min_share: float) -> tuple[bool, str]:
    """Whether a day's feed of `rows` rows may replace what is served: not empty, and at least `min_share` of the
    previous published day's rows (a NaN weight, a broken release or an empty user set shows up as a collapse)."""
    if rows == 0:
        return False, "the feed has 0 rows"
    if previous_day is not None and rows < min_share * previous_rows:
        return False, f"{rows:,} rows < {min_share:.0%} of {previous_day}'s {previous_rows:,}"
    return True, f"{rows:,} rows" + (f" ({rows / previous_rows:.0%} of {previous_day}'s)" if previous_rows else "")


def stratified_users(users: pd.DataFrame, segment_column: str, per_segment: int, salt: str) -> pd.DataFrame:
    """At most `per_segment` users of each segment, chosen by a stable hash of user_id (same users on rerun)."""
    if segment_column not in users.columns:
        raise ValueError(f"feed stratify_by column {segment_column!r} is not a user column ({list(users.columns)})")
    ranked = users.assign(_h=stable_hash(users["user_id"].to_numpy(dtype=object), salt))
    ranked = ranked.sort_values([segment_column, "_h"], kind="stable")
    return (
        ranked.groupby(segment_column, sort=True, dropna=False)
        .head(per_segment)
        .drop(columns="_h")
        .reset_index(drop=True)
    )
