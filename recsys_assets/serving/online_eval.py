"""Online evaluation from logs (seed 001): of the recommendations served, which were played within the window.

Computed on Spark (`online_evaluation_stage`, a stage of the Spark job: the day's impressions, the whole served
feed, and two days of raw events never reach the run process); `online_metrics` is the pandas reference the Spark
metrics equal (tests/serving/test_serving_units.py).

- impression CTR: served (user, item) impressions followed by a play of that item by that user within
  `window` after serving, over all impressions;
- user hit rate (seed 001's dashboard metric): share of served users who played at least one of their
  recommendations within the window.

Both per A/B arm and model version. Impressions: user_id, item_id, rank, model_version, arm, served_at (UTC
timestamp). Plays: the app's raw events (user_id, item_id, event_ts).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

IMPRESSION_COLUMNS = ["user_id", "item_id", "rank", "model_version", "arm", "served_at"]


def read_raw_plays(store, day: str) -> pd.DataFrame:
    """Plays (play_duration_s > 0) of the day's raw events: user_id, item_id, event_ts, play_duration_s."""
    from recsys_assets.core.raw_inputs import read_raw_table

    df = read_raw_table(store, "events", day, ["user_id", "item_id", "event_ts", "play_duration_s"]).to_pandas()
    return df[df["play_duration_s"].fillna(0) > 0].reset_index(drop=True)


def clicked_impressions(impressions: pd.DataFrame, plays: pd.DataFrame, window: pd.Timedelta) -> np.ndarray:
    """Boolean per impression row: a play of the same (user, item) in [served_at, served_at + window]."""
    missing = [c for c in IMPRESSION_COLUMNS if c not in impressions.columns]
    if missing:
        raise ValueError(f"impressions log lacks columns {missing}")
    imp = impressions.reset_index(drop=True).assign(_row=lambda d: np.arange(len(d)))
    m = imp[["_row", "user_id", "item_id", "served_at"]].merge(
        plays[["user_id", "item_id", "event_ts"]], on=["user_id", "item_id"], how="inner"
    )
    hit = (m["event_ts"] >= m["served_at"]) & (m["event_ts"] <= m["served_at"] + window)
    clicked = np.zeros(len(imp), dtype=bool)
    clicked[m.loc[hit, "_row"].to_numpy()] = True
    return clicked


def online_metrics(impressions: pd.DataFrame, plays: pd.DataFrame, window: pd.Timedelta) -> list[dict]:
    """One row per (arm, model_version): impressions, users, clicks, CTR, user hit rate, mean rank of clicks."""
    clicked = clicked_impressions(impressions, plays, window)
    df = impressions.reset_index(drop=True).assign(clicked=clicked)
    rows = []
    for (arm, version), g in df.groupby(["arm", "model_version"], sort=True):
        users = g.groupby("user_id")["clicked"].any()
        rows.append(
            {
                "arm": arm,
                "model_version": int(version),
                "impressions": int(len(g)),
                "users": int(len(users)),
                "clicks": int(g["clicked"].sum()),
                "ctr": float(g["clicked"].mean()) if len(g) else float("nan"),
                "user_hit_rate": float(users.mean()) if len(users) else float("nan"),
                "mean_clicked_rank": float(g.loc[g["clicked"], "rank"].mean()) if g["clicked"].any() else None,
            }
        )
    return rows


def online_evaluation_params(store, day: str, spec) -> dict:
    """The stage's parameters: the impressions log of the day (complete: its _SUCCESS marker) and the days of plays
    that have arrived (the next two days' raw events). Raises a Failure naming what is missing."""
    import datetime as dt

    from dagster import Failure

    from recsys_assets.serving.serving_config import complete_log_path

    complete_log_path(store, spec.impressions_log, day, "impressions log")
    d0 = dt.date.fromisoformat(day)
    play_days = [(d0 + dt.timedelta(days=i)).isoformat() for i in (1, 2)]
    present = [d for d in play_days if store.exists(store.raw_partition_path("events", d))]
    if not present:
        raise Failure(f"no raw events for {play_days[0]}: plays after the feed was served are not in yet")
    return {"impressions_log": spec.impressions_log, "play_days": present, "window_minutes": spec.plays_window_minutes}


def online_metrics_spark(impressions, plays, window_minutes: int) -> list[dict]:
    """online_metrics on Spark DataFrames (impressions: IMPRESSION_COLUMNS; plays: user_id, item_id, event_ts): an
    impression row is clicked when a left-semi join finds a play of its (user, item) in [served_at, served_at +
    window]; one row per (arm, model_version), collected (a row per arm)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    missing = [c for c in IMPRESSION_COLUMNS if c not in impressions.columns]
    if missing:
        raise ValueError(f"impressions log lacks columns {missing}")

    def nanos(df, column: str):  # a timestamp, or nanoseconds since the epoch (a log written at ns precision)
        if isinstance(df.schema[column].dataType, T.LongType):
            return F.col(column)
        return F.unix_micros(F.col(column)) * F.lit(1000)

    i = impressions.withColumn("_served_ns", nanos(impressions, "served_at")).alias("i")
    p = plays.select("user_id", "item_id", nanos(plays, "event_ts").alias("_event_ns")).alias("p")
    window_ns = int(window_minutes) * 60 * 1_000_000_000
    clicked = i.join(
        p,
        (F.col("i.user_id") == F.col("p.user_id"))
        & (F.col("i.item_id") == F.col("p.item_id"))
        & (F.col("p._event_ns") >= F.col("i._served_ns"))
        & (F.col("p._event_ns") <= F.col("i._served_ns") + F.lit(window_ns)),
        "left_semi",
    )
    keys = ["arm", "model_version"]
    served = impressions.groupBy(*keys).agg(
        F.count("*").alias("impressions"), F.countDistinct("user_id").alias("users")
    )
    hits = clicked.groupBy(*keys).agg(
        F.count("*").alias("clicks"),
        F.countDistinct("user_id").alias("hit_users"),
        F.avg("rank").alias("mean_clicked_rank"),
    )
    rows = []
    for r in served.join(hits, keys, "left").orderBy(*keys).collect():
        clicks, hit_users = int(r["clicks"] or 0), int(r["hit_users"] or 0)
        rows.append(
            {
                "arm": r["arm"],
                "model_version": int(r["model_version"]),
                "impressions": int(r["impressions"]),
                "users": int(r["users"]),
                "clicks": clicks,
                "ctr": clicks / r["impressions"],
                "user_hit_rate": hit_users / r["users"],
                "mean_clicked_rank": float(r["mean_clicked_rank"]) if clicks else None,
            }
        )
    return rows


def online_evaluation_stage(session, store, day: str, version: str, params: dict) -> dict:
    """The day's CTR report on Spark (impressions log of the day, plays of the play days' raw events), written as
    report.json into the online_evaluation `version`. Returns the report and the impression count."""
    from recsys_assets.core.datasets import ONLINE_EVALUATION
    from recsys_assets.serving.serving_config import log_path

    # The serving side may write served_at at nanosecond precision (pandas does), which Spark reads only as a long.
    nanos_as_long = "spark.sql.legacy.parquet.nanosAsLong"
    before = session.conf.get(nanos_as_long, "false")
    session.conf.set(nanos_as_long, "true")
    try:
        impressions = session.read.parquet(store.uri_of(log_path(params["impressions_log"], store, day)))
        rows = _day_metrics(session, store, impressions, params)
    finally:
        session.conf.set(nanos_as_long, before)
    report = {"day": day, "window_minutes": params["window_minutes"], "play_days": params["play_days"], "arms": rows}
    store.write_json_atomic(store.version_path(ONLINE_EVALUATION, day, version, "report.json"), report)
    return {"report": report, "impressions": sum(r["impressions"] for r in rows)}


def _day_metrics(session, store, impressions, params: dict) -> list[dict]:
    from functools import reduce

    from pyspark.sql import functions as F

    from recsys_assets.core.raw_inputs import read_raw

    plays = reduce(
        lambda a, b: a.unionByName(b),
        [
            read_raw(session, store, "events", d)
            # read_raw_plays' fillna(0) > 0: null and NaN are no play (Spark orders NaN above every number)
            .where(F.nanvl(F.coalesce(F.col("play_duration_s"), F.lit(0.0)), F.lit(0.0)) > 0)
            .select("user_id", "item_id", "event_ts")
            for d in params["play_days"]
        ],
    )
    return online_metrics_spark(impressions, plays, params["window_minutes"])
