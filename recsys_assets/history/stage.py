"""The Spark side of user_history (recsys_assets/ml/history.py says what a partition holds): the positive
events of training_events, a history table back to entries, and the newest `keep` entries per user in a time
range, plus the stage function the Spark job runs for one day (in-process, spark-submit or Dataproc).

The asset decides what a day is built from (full rebuild or yesterday's history + yesterday's events) and passes
the exact versions to read, so a submitted job reads what the driver decided and a rerun reads the same inputs.
"""

from __future__ import annotations

import time

from recsys_assets.core.datasets import TRAINING_EVENTS, USER_HISTORY
from recsys_assets.core.days import US_PER_DAY, window_micros, window_of
from resources.store import DatasetStore

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


# An entry as a struct whose field order is the history's order: sorting an array of them descending orders by
# (event_ts, event_id) descending, newest first with the event id breaking ties, exactly as the history is defined.
_ENTRY = ("event_ts", "event_id", "item_id", "kind", "watch_ratio")


def _in_range(since_us: int, before_us: int):
    from pyspark.sql import functions as F

    return lambda ts: (F.unix_micros(ts) >= F.lit(since_us)) & (F.unix_micros(ts) < F.lit(before_us))


def _entry_arrays(entries, since_us: int, before_us: int):
    """(user_id, h): each user's entries in [since_us, before_us) as one array of _ENTRY structs."""
    from pyspark.sql import functions as F

    inside = entries.filter(_in_range(since_us, before_us)(F.col("event_ts")))
    return inside.groupBy("user_id").agg(F.collect_list(F.struct(*_ENTRY)).alias("h"))


def _stored_arrays(history):
    """A written history table as (user_id, h) with the same struct type as _entry_arrays (no explode)."""
    from pyspark.sql import functions as F

    h = F.arrays_zip(
        F.col("event_ts").alias("event_ts"),
        F.col("event_ids").alias("event_id"),
        F.col("item_ids").alias("item_id"),
        F.col("kinds").alias("kind"),
        F.col("watch_ratios").alias("watch_ratio"),
    )
    return history.select("user_id", h.alias("h"))


def _newest(grouped, since_us: int, before_us: int, keep: int):
    """The history table from (user_id, h): entries inside the range, sorted newest first, the first `keep`."""
    from pyspark.sql import functions as F

    inside = _in_range(since_us, before_us)
    h = F.slice(F.sort_array(F.filter("h", lambda e: inside(e["event_ts"])), asc=False), 1, keep)
    return (
        grouped.select("user_id", h.alias("h"))
        .filter(F.size("h") > 0)
        .select(
            "user_id",
            F.col("h.item_id").alias("item_ids"),
            F.col("h.event_ts").alias("event_ts"),
            F.col("h.kind").alias("kinds"),
            F.col("h.watch_ratio").alias("watch_ratios"),
            F.col("h.event_id").alias("event_ids"),
            F.size("h").alias("length"),
        )
    )


def build_user_history(entries, since_us: int, before_us: int, keep: int):
    """The history table of the day starting at `before_us` (UTC epoch micros) from candidate entries (the
    positive_events columns): entries in [since_us, before_us), the newest `keep` per user by (event_ts, event_id)
    descending, as arrays. One shuffle (a group-by with partial aggregation), no window function."""
    return _newest(_entry_arrays(entries, since_us, before_us), since_us, before_us, keep)


def extend_user_history(previous, new_entries, since_us: int, before_us: int, keep: int):
    """The same table from yesterday's history (a written history table) and new entries: yesterday's arrays are
    merged with the new entries' per user (a union of user-sized rows and one group-by), never exploded."""
    from pyspark.sql import functions as F

    both = _stored_arrays(previous).unionByName(_entry_arrays(new_entries, since_us, before_us))
    merged = both.groupBy("user_id").agg(F.flatten(F.collect_list("h")).alias("h"))
    return _newest(merged, since_us, before_us, keep)


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
    keep = int(params["keep"])
    previous = params.get("previous_version")
    parts, latest_events = [], None
    for d, v in sorted(params["event_versions"].items()):
        events = session.read.parquet(store.version_uri(TRAINING_EVENTS, d, v, "events"))
        parts.append(positive_events(events, float(params["min_watch_ratio"]), bool(params["on_engagement"])))
        latest_events = events
    entries = None
    for p in parts:
        entries = p if entries is None else entries.unionByName(p)
    if previous:
        history = session.read.parquet(store.version_uri(USER_HISTORY, params["previous_day"], previous, "history"))
        if entries is not None:
            history = extend_user_history(history, entries, since_us, start_us, keep)
        else:  # nothing new (yesterday missing or withheld): yesterday's entries still inside the lookback
            history = _newest(_stored_arrays(history), since_us, start_us, keep)
    elif entries is not None:
        history = build_user_history(entries, since_us, start_us, keep)
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
