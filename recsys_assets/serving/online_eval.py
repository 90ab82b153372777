"""Online evaluation from logs (seed 001): of the recommendations served, which were played within the window.

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


def day_online_report(store, day: str, spec) -> tuple[dict, int]:
    """The CTR report of the day's served feed (impressions log of the day, plays of the next two days' raw events
    that have arrived) and the number of impressions."""
    import datetime as dt

    from dagster import Failure

    from recsys_assets.serving.serving_config import read_log

    impressions = read_log(store, spec.impressions_log, day, "impressions log")
    d0 = dt.date.fromisoformat(day)
    play_days = [(d0 + dt.timedelta(days=i)).isoformat() for i in (1, 2)]
    present = [d for d in play_days if store.exists(store.raw_partition_path("events", d))]
    if not present:
        raise Failure(f"no raw events for {play_days[0]}: plays after the feed was served are not in yet")
    plays = pd.concat([read_raw_plays(store, d) for d in present], ignore_index=True)
    rows = online_metrics(impressions, plays, pd.Timedelta(minutes=spec.plays_window_minutes))
    report = {"day": day, "window_minutes": spec.plays_window_minutes, "play_days": present, "arms": rows}
    return report, len(impressions)
