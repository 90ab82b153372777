"""Simulated serving logs for the demo and tests (the production serving system writes these for real):

- online feature sample for day D: a hash-sample of day D's training_events rows as the serving side would
  have logged them (same schema). `transform` lets a test inject a skew (a unit bug, a stale feature).
- impressions for feed day D: each feed user who opens the app on D+1 is served their published feed at their
  first event of D+1 (served_at = that event's time minus one second). What they then play comes from the
  synthetic world's own D+1 events, which do not react to the feed: the CTR measured on these logs says how well
  the models predict what users watch next, not a causal lift.

Both are written with a `_SUCCESS` marker last, as the upstream log exporters would.
"""

from __future__ import annotations

import datetime as dt
import io
import posixpath
from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_assets.ml.loader import committed_events_dataset
from recsys_assets.serving.online_eval import IMPRESSION_COLUMNS, read_raw_plays
from recsys_assets.serving.serving_config import log_path
from resources.store import DatasetStore


def _write(store: DatasetStore, folder: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    store.write_bytes_atomic(posixpath.join(folder, "part-00000.parquet"), buf.getvalue())
    store.write_bytes_atomic(posixpath.join(folder, "_SUCCESS"), b"")


def write_online_feature_sample(
    store: DatasetStore,
    day: str,
    template: str,
    fraction: float = 0.1,
    transform: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> int:
    events = committed_events_dataset(store, [day]).to_table().to_pandas()
    keep = (
        pd.util.hash_array(events["user_id"].to_numpy(dtype=object) + "|" + events["item_id"].to_numpy(dtype=object))
        % 10_000
        < fraction * 10_000
    )
    sample = events[keep].reset_index(drop=True)
    if store.is_committed("user_history", day):  # what the server logs: the history length it fed the models
        from recsys_assets.ml.history import history_lengths
        from recsys_assets.serving.skew import HISTORY_LENGTH

        sample[HISTORY_LENGTH] = history_lengths(store, day, pa.array(sample["user_id"], pa.string()))
    if transform is not None:
        sample = transform(sample)
    _write(store, log_path(template, store, day), pa.Table.from_pandas(sample, preserve_index=False))
    return len(sample)


def simulate_impressions(store: DatasetStore, feed: pd.DataFrame, feed_day: str, template: str) -> int:
    """feed: user_id, item_id, rank, model_version, arm for dt = feed_day. Served on feed_day + 1."""
    next_day = (dt.date.fromisoformat(feed_day) + dt.timedelta(days=1)).isoformat()
    plays = read_raw_plays(store, next_day)
    first_seen = plays.groupby("user_id")["event_ts"].min() - pd.Timedelta(seconds=1)
    served = feed[feed["user_id"].isin(first_seen.index)].copy()
    served["served_at"] = served["user_id"].map(first_seen)
    served = served[IMPRESSION_COLUMNS].reset_index(drop=True)
    served["rank"] = served["rank"].astype(np.int32)
    served["model_version"] = served["model_version"].astype(np.int64)
    _write(store, log_path(template, store, feed_day), pa.Table.from_pandas(served, preserve_index=False))
    return len(served)
