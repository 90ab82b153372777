"""The day's feed scored on Spark: a stage of the Spark job (local, spark-submit, standalone cluster or Dataproc), so
the Dagster run process never holds the day's users or feed rows.

    training_events of the day -> active users (latest attributes per user)      groupBy on the executors
      -> stratified sample (serving.yaml; a window over the segment by hash)
      -> A/B arm and model version per user (the served config's buckets)
      -> + the user's history as of the day (join with user_history)
      -> hash-partitioned by user_id -> mapInPandas: each Python worker loads a release once (query tower, FAISS
         index, ranker, item table: `release_for`) and scores its users with ml/scoring.generate_feed, the function
         the in-process feed (serving/feed.build_feed) calls
      -> Parquet rows (FEED_COLUMNS) in the feed's version directory, + per-arm counts in the stats

The run process then streams the Parquet into the partitioned Postgres table (serving/feed_table.publish_feed).
Equal to the in-process feed row for row on the same day (tests/serving/test_serving_assets.py). No Dagster here.
"""

from __future__ import annotations

import time

from recsys_assets.core.datasets import FEED_ROWS, TRAINING_EVENTS, USER_HISTORY
from resources.store import DatasetStore

FEED_ROWS_DIR = "rows"  # the feed version's Parquet rows (FEED_COLUMNS)

_RELEASES: dict[tuple[str, int], object] = {}  # per Python worker: (data root, version) -> LoadedRelease


def release_for(root_uri: str, version: int):
    """The release, loaded (and its checksums verified) once per Python worker process."""
    key = (root_uri, int(version))
    if key not in _RELEASES:
        from recsys_assets.ml.release import load_release

        _RELEASES[key] = load_release(DatasetStore(root_uri), int(version))
    return _RELEASES[key]


def feed_params(spec, cfg: dict) -> dict:
    """The stage's parameters (JSON): serving.yaml's feed and A/B settings and the served config's arms."""
    f = spec.feed
    return {
        "strategy_name": f.strategy_name,
        "k_retrieve": f.k_retrieve,
        "k_feed": f.k_feed,
        "task_weights": f.task_weights,
        "feed_source": f.feed_source,
        "stratify_by": f.stratify_by,
        "sample_users_per_segment": f.sample_users_per_segment,
        "sample_salt": spec.ab.salt,
        "config": {"salt": cfg["salt"], "buckets": cfg["buckets"], "arms": cfg["arms"]},
    }


def score_users(batches, root_uri: str, day: str, params: dict, with_history: bool, timed=None):
    """mapInPandas body: each batch of users (user columns, arm, model_version[, item_ids, event_us]) scored with its
    arm's release; yields feed rows. `timed(kind, seconds)`, when given, receives the seconds spent loading releases
    ("load") and scoring ("score": ml/scoring.generate_feed), e.g. into Spark accumulators."""
    import pandas as pd
    import pyarrow as pa
    import torch

    from recsys_assets.core.days import window_of
    from recsys_assets.ml.memory import SCORING_TRIM_THRESHOLD, bound_heap_growth
    from recsys_assets.ml.scoring import USER_COLUMNS, generate_feed

    torch.set_num_threads(1)  # one Spark task = one core
    bound_heap_growth(trim_threshold=SCORING_TRIM_THRESHOLD)
    as_of = pd.Timestamp(window_of(day).end)
    for users in batches:
        for version in sorted(set(users["model_version"].tolist())):
            part = users[users["model_version"] == version].reset_index(drop=True)
            history = None
            if with_history:
                has = part["item_ids"].notna()
                history = pa.table(
                    {
                        "user_id": pa.array(part.loc[has, "user_id"].tolist(), pa.string()),
                        "item_ids": pa.array([list(x) for x in part.loc[has, "item_ids"]], pa.list_(pa.string())),
                        "event_ts": pa.array([list(x) for x in part.loc[has, "event_us"]], pa.list_(pa.int64())).cast(
                            pa.list_(pa.timestamp("us", tz="UTC"))
                        ),
                    }
                )
            t0 = time.perf_counter()
            release = release_for(root_uri, int(version))
            t1 = time.perf_counter()
            rows = generate_feed(
                release,
                part[USER_COLUMNS],
                params["k_retrieve"],
                params["k_feed"],
                params["task_weights"],
                params["feed_source"],
                as_of,
                history=history,
                history_day=day,
            )
            if timed is not None:
                timed("load", t1 - t0)
                timed("score", time.perf_counter() - t1)
            arm = pd.Series(part["arm"].to_numpy(), index=part["user_id"].to_numpy())
            yield pd.DataFrame(
                {
                    "strategy_name": params["strategy_name"],
                    "dt": day,
                    "user_id": rows["user_id"].astype(object),
                    "rank": rows["rank"].astype("int32"),
                    "item_id": rows["item_id"].astype(object),
                    "score": rows["score"].astype("float64"),
                    "model_version": int(version),
                    "arm": rows["user_id"].map(arm).astype(object),
                }
            )


def day_users(events, params: dict):
    """The day's users with their latest attributes (the in-process serving/feed.active_users), at most
    `sample_users_per_segment` of each `stratify_by` segment by stable hash when set (serving/feed.stratified_users)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from recsys_assets.ml.scoring import USER_COLUMNS
    from recsys_assets.serving.serving_config import stable_hash

    attrs = [c for c in USER_COLUMNS if c != "user_id"]
    users = (
        events.groupBy("user_id")
        .agg(F.max_by(F.struct(*attrs), "event_ts").alias("u"))
        .select("user_id", *[F.col(f"u.{c}").alias(c) for c in attrs])
    )
    per_segment, segment = params["sample_users_per_segment"], params["stratify_by"]
    if not per_segment:
        return users
    if segment not in USER_COLUMNS:
        raise ValueError(f"feed stratify_by column {segment!r} is not a user column ({USER_COLUMNS})")
    salt = params["sample_salt"]

    def with_hash(batches):  # stable_hash as 16 hex digits: string order = numeric (uint64) order
        for b in batches:
            yield b.assign(_h=[f"{h:016x}" for h in stable_hash(b["user_id"].to_numpy(dtype=object), salt)])

    users = users.mapInPandas(with_hash, T.StructType([*users.schema.fields, T.StructField("_h", T.StringType())]))
    order = Window.partitionBy(segment).orderBy("_h", "user_id")
    return users.withColumn("_n", F.row_number().over(order)).where(F.col("_n") <= per_segment).drop("_n", "_h")


def feed_stage(session, store: DatasetStore, day: str, version: str, params: dict) -> dict:
    """Score the day's feed on the executors and write it as Parquet into `version` (module docstring)."""
    import numpy as np
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from recsys_assets.serving.serving_config import arm_of_buckets, user_buckets

    t0 = time.monotonic()
    events = session.read.parquet(store.committed_uri(TRAINING_EVENTS, day, "events"))
    users = day_users(events, params)
    cfg = params["config"]

    def arms(batches):
        for b in batches:
            names, versions = arm_of_buckets(
                user_buckets(b["user_id"].to_numpy(dtype=object), cfg["salt"], cfg["buckets"]), cfg
            )
            yield b.assign(arm=names.astype(object), model_version=versions.astype(np.int64))

    with_arm = T.StructType(
        [*users.schema.fields, T.StructField("arm", T.StringType()), T.StructField("model_version", T.LongType())]
    )
    users = users.mapInPandas(arms, with_arm)
    with_history = store.is_committed(USER_HISTORY, day)
    if with_history:
        # The entries' times as epoch microseconds (a plain long array crosses into the Python workers unchanged;
        # nested timestamps would be converted through the session's time zone).
        history = session.read.parquet(store.committed_uri(USER_HISTORY, day, "history")).select(
            "user_id", "item_ids", F.transform("event_ts", lambda t: F.unix_micros(t)).alias("event_us")
        )
        users = users.join(history, "user_id", "left")
    partitions = int(session.conf.get("spark.sql.shuffle.partitions"))
    root = store.root_uri

    # Seconds the Python workers spend loading releases and scoring, summed over tasks: the steady-state rate per
    # core (users per task-second) is what a cluster's size is worked out from (docs/scale.md).
    spent = {"load": session.sparkContext.accumulator(0.0), "score": session.sparkContext.accumulator(0.0)}

    def score(batches):
        yield from score_users(batches, root, day, params, with_history, lambda kind, s: spent[kind].add(s))

    schema = (
        "strategy_name string, dt string, user_id string, rank int, item_id string, score double, "
        "model_version bigint, arm string"
    )
    rows_uri = store.version_uri(FEED_ROWS, day, version, FEED_ROWS_DIR)
    users.repartition(partitions, "user_id").mapInPandas(score, schema).write.mode("overwrite").parquet(rows_uri)
    written = session.read.parquet(rows_uri)
    per_arm = (
        written.groupBy("arm", "model_version")
        .agg(F.countDistinct("user_id").alias("users"), F.count("*").alias("rows"))
        .orderBy("arm", "model_version")
        .collect()  # one row per arm
    )
    stats = {
        "rows": int(sum(r["rows"] for r in per_arm)),
        "active_users": int(events.select("user_id").distinct().count()),
        "scored_users": int(sum(r["users"] for r in per_arm)),
        "per_arm": [[r["arm"], int(r["model_version"]), int(r["users"]), int(r["rows"])] for r in per_arm],
        "with_history": with_history,
        "generate_seconds": round(time.monotonic() - t0, 2),
        "release_load_task_seconds": round(spent["load"].value, 2),
        "scoring_task_seconds": round(spent["score"].value, 2),
    }
    stats["users_per_task_second"] = round(stats["scored_users"] / max(stats["scoring_task_seconds"], 1e-9), 1)
    store.write_json_atomic(store.version_path(FEED_ROWS, day, version, "stats.json"), stats)
    return stats
