"""The training window's counts, computed where the events are (a stage of the Spark job, as user_history is) so that
only the small result tables reach the run process: token counts per categorical feature (the vocabulary), the dense
features' sums (their moments), the validation day's token counts (its OOV rates), and per (day, item) the rows, the
retrieval positives (the two-tower's logQ and recent-popular counts) and the label sums of the ranker's training rows
(the item prior). One pass over the window's events and one over the validation day's; each is a group-by whose
output grows with tokens and items, never with events.

The stage writes into the vocab's version directory (`window_counts/` and `window_counts.json`) before the run
process merges the vocabulary; the model trainings and the cold-start index of the day read the same tables back
(`WindowCounts`) and use them only when the training_events versions match the ones they read, falling back to their
own pass over the events otherwise (e.g. a vocab written before this stage existed). Every number equals the
in-process computation it replaces (features.count_tokens / dense_moments / oov_rates, ranker.item_priors,
loader.item_day_frequencies, the cold-start window counts): tests/ml/test_window_counts.py.

No Dagster here: the stage runs in the Spark job (local, spark-submit or Dataproc), the readers in any process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from recsys_assets.config.training import RANKER_TASKS
from recsys_assets.core.datasets import TRAINING_EVENTS, VOCAB
from recsys_assets.ml.features import DENSE_FEATURES, NOT_WIDENED, NUM_RESERVED, OOV_ID, Vocab, moments_from_sums
from resources.store import DatasetStore

TOKENS = "window_counts/tokens"  # set ("window" | "validation"), feature, token, count
ITEMS = "window_counts/items"  # day, item_id, rows, positives, prior_rows, prior_<task>...
SUMMARY = "window_counts.json"  # rows, dense sums, versions, the parameters the counts depend on
HOLDOUT_BUCKETS = 10_000  # loader.holdout_user_ids: a user is held out when hash(user_id) % 10_000 < pct * 100


def window_counts_params(store: DatasetStore, window, spec, previous_vocab_day: str | None) -> dict:
    """The stage's parameters (JSON: a submitted job receives them on its command line): the exact training_events
    versions of the window and of the validation day, the previous vocab (whose user tokens stay in the vocab, so
    they can be held out), and the label and holdout settings the counts depend on."""
    previous = None
    if previous_vocab_day is not None:
        version = store.committed_version(VOCAB, previous_vocab_day)
        previous = store.version_uri(VOCAB, previous_vocab_day, version, "vocab.parquet")
    ranker = spec.ranker
    return {
        "event_versions": {d: window.versions[d] for d in window.train_days},
        "validation_day": window.validation_day,
        "validation_version": window.versions[window.validation_day],
        "features": list(spec.vocab.features),
        "min_count": spec.vocab.min_count,
        "previous_vocab": previous,
        "holdout_pct": float(ranker.holdout_pct) if ranker.early_stopping else 0.0,
        "watch_complete_min_ratio": spec.labels.watch_complete_min_ratio,
        "retrieval_positive_min_watch_ratio": spec.labels.retrieval_positive_min_watch_ratio,
        "retrieval_positive_on_engagement": spec.labels.retrieval_positive_on_engagement,
    }


# --- Spark side ---------------------------------------------------------------------------------------------------


def _day_rows(session, store: DatasetStore, day: str, version: str, columns: list[str]):
    """A committed training_events day as event rows widened with the day's item columns (the loader's view), with
    `day` and `_known` (false where the event's item has no row in the day's items table)."""
    from pyspark.sql import functions as F

    events = session.read.parquet(store.version_uri(TRAINING_EVENTS, day, version, "events"))
    items = session.read.parquet(store.version_uri(TRAINING_EVENTS, day, version, "items"))
    widened = [c for c in items.columns if c not in NOT_WIDENED and c not in events.columns and c in columns]
    items = items.select("item_id", *widened, F.lit(True).alias("_known"))
    rows = events.select(*[c for c in columns if c in events.columns]).join(F.broadcast(items), "item_id", "left")
    missing = [c for c in columns if c not in rows.columns]
    if missing:
        raise ValueError(f"training_events {day} ({version}) has no column(s) {missing}")
    return rows.select(F.lit(day).alias("day"), *columns, F.coalesce("_known", F.lit(False)).alias("_known"))


def _dense(name: str):
    """features.transform_dense in Spark: NaN/inf/null -> 0, then log1p(max(v, 0)) or identity."""
    from pyspark.sql import functions as F

    v = F.col(name).cast("double")
    v = F.when(v.isNull() | F.isnan(v) | (F.abs(v) == float("inf")), F.lit(0.0)).otherwise(v)
    return F.log1p(F.greatest(v, F.lit(0.0))) if DENSE_FEATURES[name] == "log1p" else v


def _flag(name: str):
    from pyspark.sql import functions as F

    return F.coalesce(F.col(name), F.lit(False))


def _holdout_users(session, window, params: dict):
    """(user_id, _held): the users the ranker holds out for early stopping, exactly as loader.holdout_user_ids picks
    them from the day's vocab: user tokens of the vocab (the previous vocab's, or >= min_count in the window) whose
    hash bucket is below holdout_pct * 100 (pandas' hash_array, the same function)."""
    from pyspark.sql import functions as F

    @F.pandas_udf("long")
    def bucket(tokens: pd.Series) -> pd.Series:
        h = pd.util.hash_array(tokens.astype(str).to_numpy(dtype=object), categorize=False)
        return pd.Series((h % HOLDOUT_BUCKETS).astype(np.int64))

    users = window.where(F.col("user_id").isNotNull()).groupBy(F.col("user_id").cast("string").alias("user_id"))
    users = users.agg(F.count(F.lit(1)).alias("n"))
    in_vocab = F.col("n") >= F.lit(int(params["min_count"]))
    if params.get("previous_vocab"):
        prev = session.read.parquet(params["previous_vocab"]).where(F.col("feature") == "user_id")
        prev = prev.select(F.col("token").alias("user_id"), F.lit(True).alias("_prev"))
        users = users.join(prev, "user_id", "left")
        in_vocab = in_vocab | F.coalesce(F.col("_prev"), F.lit(False))
    held = in_vocab & (bucket(F.col("user_id")) < F.lit(float(params["holdout_pct"]) * 100))
    return users.where(held).select("user_id", F.lit(True).alias("_held"))


def window_counts_stage(session, store: DatasetStore, day: str, version: str, params: dict) -> dict:
    """Write the window counts of vocab `day` into its version `version` (tables + summary); returns the summary."""
    from pyspark.sql import functions as F

    t0 = time.monotonic()
    features = list(params["features"])
    labels = ["liked", "shared", "followed", "watch_ratio"]
    columns = list(dict.fromkeys(["item_id", "user_id", *features, *DENSE_FEATURES, *labels]))
    versions = dict(sorted(params["event_versions"].items()))
    window = None
    for d, v in versions.items():
        rows = _day_rows(session, store, d, v, columns)
        window = rows if window is None else window.unionByName(rows)
    valid_day, valid_version = params["validation_day"], params["validation_version"]
    valid = _day_rows(session, store, valid_day, valid_version, columns)

    # Tokens of both sets in one group-by (the window's for the vocab, the validation day's for its OOV rates).
    both = window.withColumn("set", F.lit("window")).unionByName(valid.withColumn("set", F.lit("validation")))
    exploded = F.explode(
        F.array(*[F.struct(F.lit(f).alias("feature"), F.col(f).cast("string").alias("token")) for f in features])
    )
    tokens = (
        both.select("set", exploded.alias("t"))
        .select("set", "t.feature", "t.token")
        .where(F.col("token").isNotNull())
        .groupBy("set", "feature", "token")
        .agg(F.count(F.lit(1)).alias("count"))
    )
    tokens.write.mode("overwrite").parquet(store.version_uri(VOCAB, day, version, TOKENS))

    # Dense sums and row counts of the window (moments), and rows whose item is missing from its day's items.
    sums = [F.count(F.lit(1)).alias("rows"), F.sum((~F.col("_known")).cast("long")).alias("unknown_items")]
    for f in DENSE_FEATURES:
        x = _dense(f)
        sums += [F.sum(x).alias(f"sum_{f}"), F.sum(x * x).alias(f"sumsq_{f}")]
    agg = window.agg(*sums).first()
    unknown = int(agg["unknown_items"] or 0)
    if unknown:
        raise ValueError(f"training_events window of {day}: {unknown} event(s) whose item is not in its items table")

    # Per (day, item): rows, retrieval positives, and the ranker's label sums over its training rows (held-out users
    # excluded when it early-stops).
    min_watch = F.lit(float(params["retrieval_positive_min_watch_ratio"]))
    positive = F.coalesce(F.col("watch_ratio") >= min_watch, F.lit(False))
    if params["retrieval_positive_on_engagement"]:
        positive = positive | _flag("liked") | _flag("shared") | _flag("followed")
    if float(params["holdout_pct"]) > 0:
        held = _holdout_users(session, window, params)
        with_held = window.withColumn("user_id", F.col("user_id").cast("string")).join(held, "user_id", "left")
    else:
        with_held = window.withColumn("_held", F.lit(None).cast("boolean"))
    train = ~F.coalesce(F.col("_held"), F.lit(False))
    complete = F.coalesce(F.col("watch_ratio") >= F.lit(float(params["watch_complete_min_ratio"])), F.lit(False))
    task_flags = {"liked": _flag("liked"), "shared": _flag("shared"), "followed": _flag("followed")}
    task_flags["watch_complete"] = complete
    items = (
        with_held.unionByName(valid.withColumn("_held", F.lit(None).cast("boolean")))
        .where(F.col("item_id").isNotNull())
        .groupBy("day", "item_id")
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.sum(positive.cast("long")).alias("positives"),
            F.sum(train.cast("long")).alias("prior_rows"),
            *[F.sum((train & task_flags[t]).cast("long")).alias(f"prior_{t}") for t in RANKER_TASKS],
        )
    )
    items.write.mode("overwrite").parquet(store.version_uri(VOCAB, day, version, ITEMS))
    summary = {
        "window_rows": int(agg["rows"]),
        "dense_sums": {f: [float(agg[f"sum_{f}"] or 0.0), float(agg[f"sumsq_{f}"] or 0.0)] for f in DENSE_FEATURES},
        "event_versions": versions,
        "validation_day": valid_day,
        "validation_version": valid_version,
        "validation_rows": valid.count(),
        "features": features,
        "holdout_pct": float(params["holdout_pct"]),
        "labels": {k: params[k] for k in params if k.startswith(("watch_", "retrieval_"))},
        "run_time_s": round(time.monotonic() - t0, 2),
    }
    store.write_json_atomic(store.version_path(VOCAB, day, version, SUMMARY), summary)
    return summary


# --- run-process side: the small result tables --------------------------------------------------------------------


@dataclass
class WindowCounts:
    """The counts a vocab version holds (what window_counts_stage wrote), read back as small tables."""

    summary: dict
    tokens: pd.DataFrame  # set, feature, token, count
    items: pd.DataFrame  # day, item_id, rows, positives, prior_rows, prior_<task>

    @classmethod
    def read(cls, store: DatasetStore, dataset_dir) -> WindowCounts | None:
        """The counts in a version directory (a PartitionVersion of vocab), None when it has none (written before the
        stage existed)."""
        if not store.exists(dataset_dir.path(SUMMARY)):
            return None

        def table(name: str) -> pd.DataFrame:
            return pads.dataset(dataset_dir.path(name), filesystem=store.fs, format="parquet").to_table().to_pandas()

        return cls(dataset_dir.read_json(SUMMARY), table(TOKENS), table(ITEMS))

    # The vocab asset: counts, moments, OOV rates.

    def token_counts(self) -> dict[str, pd.Series]:
        """features.count_tokens over the window: token -> occurrences, per feature (every feature, maybe empty)."""
        w = self.tokens[self.tokens["set"] == "window"]
        out = {f: pd.Series(dtype="int64") for f in self.summary["features"]}
        for f, g in w.groupby("feature", sort=False):
            out[f] = pd.Series(g["count"].to_numpy(np.int64), index=g["token"].to_numpy(dtype=object))
        return out

    def moments(self) -> dict[str, dict[str, float]]:
        """features.dense_moments of the window from its sums."""
        return moments_from_sums(self.summary["dense_sums"], self.summary["window_rows"])

    def oov_rates(self, vocab: Vocab) -> dict[str, float]:
        """features.oov_rates of the validation day: the share of its rows whose token (or null) is not in `vocab`."""
        n = self.summary["validation_rows"]
        v = self.tokens[self.tokens["set"] == "validation"]
        out = {}
        for f in vocab.features:
            g = v[v["feature"] == f]
            ids = vocab.encode(f, pa.array(g["token"].to_numpy(dtype=object), pa.string()))
            known = int(g["count"].to_numpy(np.int64)[ids != OOV_ID].sum())
            out[f] = (n - known) / n if n else 0.0
        return out

    # The models and the cold-start index: per-(day, item) counts, when the versions are the ones they read.

    def covers(self, versions: dict[str, str]) -> bool:
        """Whether every (day, version) of `versions` is a day these counts were computed from."""
        have = {**self.summary["event_versions"], self.summary["validation_day"]: self.summary["validation_version"]}
        return all(have.get(d) == v for d, v in versions.items())

    def _days(self, days: list[str]) -> pd.DataFrame:
        return self.items[self.items["day"].isin(days)]

    def item_day_positives(self, catalog, days: list[str]) -> dict[str, np.ndarray]:
        """loader.item_day_frequencies of the retrieval positives: day -> positives per catalogue row."""
        out = {}
        for d in days:
            g = self._days([d])
            rows = catalog.rows(pa.array(g["item_id"].to_numpy(dtype=object), pa.string()))
            counts = np.zeros(len(catalog), np.int64)
            np.add.at(counts, rows[rows >= 0], g["positives"].to_numpy(np.int64)[rows >= 0])
            out[d] = counts
        return out

    def item_rows(self, days: list[str]) -> pd.Series:
        """item_id -> events over `days` (the cold-start index's window counts)."""
        g = self._days(days)
        return g.groupby("item_id", sort=False)["rows"].sum().astype("int64")

    def item_priors(self, encoder, days: list[str], smoothing: float, holdout_pct: float, clip: float = 1e-4):
        """ranker.item_priors of the window's training rows from the label sums, or None when these counts were
        taken with another holdout than the ranker's."""
        from recsys_assets.ml.baselines import rates_from_sums
        from recsys_assets.ml.ranker import ItemPriors

        if float(self.summary["holdout_pct"]) != float(holdout_pct):
            return None
        g = self._days(days)
        ids = encoder.vocab.encode("item_id", pa.array(g["item_id"].to_numpy(dtype=object), pa.string()))
        rows = encoder.catalog.rows(pa.array(g["item_id"].to_numpy(dtype=object), pa.string()))
        if (rows < 0).any():
            missing = g["item_id"].to_numpy(dtype=object)[rows < 0][0]
            raise ValueError(f"training_events item {missing} has no row in the item catalogue (items table)")
        num_ids, num_rows = encoder.vocab.cardinality("item_id"), len(encoder.catalog)
        n = g["prior_rows"].to_numpy(np.float64)
        pos = np.stack([g[f"prior_{t}"].to_numpy(np.float64) for t in RANKER_TASKS], axis=1)
        keys = np.concatenate([ids, num_ids + rows])
        size = num_ids + num_rows
        n_all = np.bincount(keys, weights=np.concatenate([n, n]), minlength=size)
        pos_all = np.stack(
            [np.bincount(keys, weights=np.concatenate([pos[:, t]] * 2), minlength=size) for t in range(pos.shape[1])],
            axis=1,
        )
        rate = rates_from_sums(pos_all, n_all, smoothing)
        by_id = np.clip(rate[:num_ids], clip, 1 - clip)
        return ItemPriors(np.log(by_id / (1 - by_id)).astype(np.float32), rate[num_ids:])


assert NUM_RESERVED == 2 and OOV_ID == 1, "WindowCounts.oov_rates relies on Vocab.encode's reserved ids"
