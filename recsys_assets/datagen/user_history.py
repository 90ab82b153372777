"""The Spark side of user_history (recsys_assets/training/history.py says what a partition holds): the positive
events of training_events, a history table back to entries, and the newest `keep` entries per user in a time
range, plus the stage function the Spark job runs for one day (in-process, spark-submit or Dataproc).

The asset decides what a day is built from (full rebuild or yesterday's history + yesterday's events) and passes
the exact versions to read, so a submitted job reads what the driver decided and a rerun reads the same inputs.
"""

from __future__ import annotations

import time

from recsys_assets.core.datasets import TRAINING_EVENTS, USER_HISTORY
from recsys_assets.core.partitions import US_PER_DAY, window_micros, window_of
from resources.storage import DatasetStore

# Strongest positive first: an event that was followed and liked is recorded as a follow.
POSITIVE_KINDS = ("follow", "share", "like", "watch")
HISTORY_COLUMNS = ["user_id", "item_ids", "event_ts", "kinds", "watch_ratios", "event_ids", "length"]


def positive_events(events, min_watch_ratio: float, on_engagement: bool):
    """(user_id, item_id, event_ts, kind, watch_ratio, event_id) of the retrieval-positive events (the same rule as
    the two-tower's training pairs, training.yaml labels)."""
    from pyspark.sql import functions as F

    engaged = F.coalesce(F.col("liked"), F.lit(False)) | F.coalesce(F.col("shared"), F.lit(False))
    engaged = engaged | F.coalesce(F.col("followed"), F.lit(False))
    positive = F.col("watch_ratio") >= F.lit(min_watch_ratio)
    if on_engagement:
        positive = positive | engaged
    kind = (
        F.when(F.coalesce(F.col("followed"), F.lit(False)), "follow")
        .when(F.coalesce(F.col("shared"), F.lit(False)), "share")
        .when(F.coalesce(F.col("liked"), F.lit(False)), "like")
        .otherwise("watch")
    )
    return events.filter(positive & F.col("user_id").isNotNull() & F.col("item_id").isNotNull()).select(
        "user_id",
        "item_id",
        "event_ts",
        kind.alias("kind"),
        F.col("watch_ratio").cast("float").alias("watch_ratio"),
        "event_id",
    )


def history_entries(history):
    """A user_history table back to one row per entry (the positive_events columns)."""
    from pyspark.sql import functions as F

    zipped = F.arrays_zip(
        F.col("item_ids").alias("item_id"),
        F.col("event_ts").alias("event_ts"),
        F.col("kinds").alias("kind"),
        F.col("watch_ratios").alias("watch_ratio"),
        F.col("event_ids").alias("event_id"),
    )
    return history.select("user_id", F.explode(zipped).alias("e")).select(
        "user_id", "e.item_id", "e.event_ts", "e.kind", "e.watch_ratio", "e.event_id"
    )


def build_user_history(entries, since_us: int, before_us: int, keep: int):
    """The history table of the day starting at `before_us` (UTC epoch micros) from candidate entries: entries in
    [since_us, before_us), the newest `keep` per user by (event_ts, event_id) descending, as arrays."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ts = F.unix_micros("event_ts")
    inside = entries.filter((ts >= F.lit(since_us)) & (ts < F.lit(before_us)))
    newest = Window.partitionBy("user_id").orderBy(F.col("event_ts").desc(), F.col("event_id").desc())
    ranked = inside.withColumn("rank", F.row_number().over(newest)).filter(F.col("rank") <= keep)
    grouped = ranked.groupBy("user_id").agg(
        F.sort_array(F.collect_list(F.struct("rank", "item_id", "event_ts", "kind", "watch_ratio", "event_id"))).alias(
            "h"
        )
    )
    return grouped.select(
        "user_id",
        F.col("h.item_id").alias("item_ids"),
        F.col("h.event_ts").alias("event_ts"),
        F.col("h.kind").alias("kinds"),
        F.col("h.watch_ratio").alias("watch_ratios"),
        F.col("h.event_id").alias("event_ids"),
        F.size("h").alias("length"),
    )


def history_stats(history, active_users) -> dict:
    """Users with history, entries, length distribution, newest entry, and the share of `active_users` (a one-column
    user_id DataFrame, e.g. the latest folded day's users) that has one: one aggregation pass each."""
    from pyspark.sql import functions as F

    row = history.agg(
        F.count(F.lit(1)).alias("users"),
        F.sum("length").alias("entries"),
        F.avg("length").alias("mean_length"),
        F.percentile_approx("length", [0.5, 0.9, 0.99]).alias("pct"),
        F.max(F.array_max("event_ts")).alias("newest"),
    ).first()
    out = {
        "users_with_history": int(row["users"]),
        "entries": int(row["entries"] or 0),
        "mean_length": float(row["mean_length"] or 0.0),
        "length_p50": int(row["pct"][0]) if row["pct"] else 0,
        "length_p90": int(row["pct"][1]) if row["pct"] else 0,
        "length_p99": int(row["pct"][2]) if row["pct"] else 0,
        "newest_entry": row["newest"].isoformat() if row["newest"] is not None else None,
    }
    if active_users is not None:
        active = active_users.select("user_id").distinct()
        n_active = active.count()
        covered = active.join(history.select("user_id"), "user_id", "left_semi").count()
        out |= {
            "active_users": int(n_active),
            "active_users_with_history": int(covered),
            "coverage": covered / n_active if n_active else None,
        }
    return out


def user_history_stage(session, store: DatasetStore, day: str, version: str, params: dict) -> dict:
    """Write user_history `day` into `version`: `previous_version` (user_history of the day before, or None for a
    full rebuild) plus the training_events `event_versions` ({day: version}); returns the stats."""
    t0 = time.monotonic()
    start_us, _ = window_micros(window_of(day))
    since_us = start_us - int(params["lookback_days"]) * US_PER_DAY
    parts = []
    previous = params.get("previous_version")
    if previous:
        parts.append(
            history_entries(
                session.read.parquet(store.version_uri(USER_HISTORY, params["previous_day"], previous, "history"))
            )
        )
    latest_events = None
    for d, v in sorted(params["event_versions"].items()):
        events = session.read.parquet(store.version_uri(TRAINING_EVENTS, d, v, "events"))
        parts.append(positive_events(events, float(params["min_watch_ratio"]), bool(params["on_engagement"])))
        latest_events = events
    if parts:
        entries = parts[0]
        for p in parts[1:]:
            entries = entries.unionByName(p)
        history = build_user_history(entries, since_us, start_us, int(params["keep"]))
    else:
        history = session.createDataFrame([], _history_schema())
    uri = store.version_uri(USER_HISTORY, day, version, "history")
    history.write.mode("overwrite").parquet(uri)
    written = session.read.parquet(uri)
    stats = history_stats(written, latest_events.select("user_id") if latest_events is not None else None)
    stats |= {
        "mode": "incremental" if previous else "full",
        "previous_version": previous,
        "event_versions": params["event_versions"],
        "keep": int(params["keep"]),
        "lookback_days": int(params["lookback_days"]),
        "run_time_s": round(time.monotonic() - t0, 2),
    }
    store.write_json_atomic(store.version_path(USER_HISTORY, day, version, "stats.json"), stats)
    return stats


def _history_schema():
    from pyspark.sql import types as T

    return T.StructType(
        [
            T.StructField("user_id", T.StringType()),
            T.StructField("item_ids", T.ArrayType(T.StringType())),
            T.StructField("event_ts", T.ArrayType(T.TimestampType())),
            T.StructField("kinds", T.ArrayType(T.StringType())),
            T.StructField("watch_ratios", T.ArrayType(T.FloatType())),
            T.StructField("event_ids", T.ArrayType(T.StringType())),
            T.StructField("length", T.IntegerType()),
        ]
    )
