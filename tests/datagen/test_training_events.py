"""build_training_events against an independent pandas computation on a generated day: the item-sized join with
filtered_events' items table, the global moments pass and the nulls observed on the write give the same rows,
items, null counts, user count and normalisation as a direct computation over the widened events."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_assets.config.datagen import TrainingEventsSpec, load_datagen_spec
from recsys_assets.core.days import window_micros, window_of
from recsys_assets.core.raw_inputs import read_raw
from recsys_assets.core.schemas import RAW_ITEM_EMBEDDINGS, RAW_USERS
from recsys_assets.datagen.filter_chain import run_filter_chain
from recsys_assets.datagen.training_events import build_training_events, count_users
from resources.store import DatasetStore
from tests.helpers import DAYS

US_PER_DAY = 86_400_000_000


def _expected(filtered: pd.DataFrame, embeddings: pd.DataFrame, users: pd.DataFrame, spec: TrainingEventsSpec):
    # Embedding validity: null id, wrong length, non-finite; then, per item, the first valid row in lexicographic
    # order of the vector is kept and every other valid row is a duplicate (file order never matters).
    def invalid(row):
        if row.item_id is None:
            return "null_item_id"
        emb = row.embedding
        if emb is None or len(emb) != 128:
            return "wrong_length"
        if not np.all(np.isfinite(np.asarray(emb, dtype=np.float64))):
            return "non_finite_value"
        return None

    reasons = [invalid(r) for r in embeddings.itertuples()]
    ok = embeddings[[r is None for r in reasons]]
    key = ok.embedding.map(lambda e: tuple(float(x) for x in e))
    chosen = ok.assign(_key=key).sort_values("_key", kind="stable").drop_duplicates("item_id")
    reasons = [
        r if r is not None or i in chosen.index else "duplicate_item_id" for i, r in zip(embeddings.index, reasons)
    ]
    # One row per user: the most complete, then the smallest values in column order.
    cols = ["language", "region", "signup_ts"]
    users = (
        users.assign(_nulls=users[cols].isna().sum(axis=1))
        .sort_values(["_nulls", *cols], na_position="last", kind="stable")
        .drop_duplicates("user_id")
    )
    valid = set(embeddings.item_id[[r is None for r in reasons]])
    ev = filtered[filtered.item_id.isin(valid)].merge(
        users.rename(columns={"language": "user_language", "region": "user_region", "signup_ts": "user_signup_ts"})[
            ["user_id", "user_language", "user_region", "user_signup_ts"]
        ],
        on="user_id",
        how="left",
    )
    ev["user_tenure_days"] = (ev.event_ts - ev.user_signup_ts).dt.total_seconds() / 86400.0
    vl = ev.item_video_length_s
    ev["watch_ratio"] = np.where(vl > 0, ev.play_duration_s / vl.where(vl > 0), np.nan)
    ev = ev.drop(columns=["user_signup_ts"])
    norm = {}
    for c in spec.normalized_columns:
        x = ev[c].fillna(spec.float_fill).to_numpy(dtype=np.float64)
        if c in spec.log_columns:
            x = np.log1p(np.maximum(x, 0.0))
        norm[c] = (x.mean(), x.std())
    return ev, norm, reasons, chosen.set_index("item_id").embedding


def _build_from_filtered_day(
    spark, store: DatasetStore, day: str, tmp_path, spec: TrainingEventsSpec, items_transform=None
):
    """Run the filter chain on `day`, write its events and items tables (items through `items_transform`), and
    build training_events from them."""
    start_us, end_us = window_micros(window_of(day))
    chain = run_filter_chain(
        read_raw(spark, store, "events", day),
        read_raw(spark, store, "items", day),
        load_datagen_spec(),
        start_us,
        end_us,
    )
    try:
        chain.filtered_events.write.parquet(str(tmp_path / "filtered"))
        (items_transform or (lambda df: df))(chain.filtered_items).write.parquet(str(tmp_path / "filtered_items"))
    finally:
        chain.release()
    return build_training_events(
        spark.read.parquet(str(tmp_path / "filtered")),
        spark.read.parquet(str(tmp_path / "filtered_items")),
        read_raw(spark, store, "item_embeddings", day),
        read_raw(spark, store, "users", day),
        spec,
        chain.stats["num_unique_items_post_filters"],
    )


def _craft(store: DatasetStore, day: str) -> dict:
    """Rows that made which one survives depend on the data's layout, or poisoned the moments: a NaN embedding row
    before an item's valid one, a second valid embedding for an item, a user listed twice in the snapshot (once
    with a null region, once complete), another twice with different regions."""
    raw_events = pd.read_parquet(store.raw_partition_path("events", day))
    busy_items = raw_events.item_id.value_counts().index[:50]  # surely among the final items
    busy_users = raw_events.user_id.value_counts().index[:2]
    emb_path = f"{store.raw_partition_path('item_embeddings', day)}/part-00000.parquet"
    emb = pd.read_parquet(emb_path)
    valid = emb[
        emb.embedding.map(lambda e: e is not None and len(e) == 128 and np.isfinite(e).all())
        & emb.item_id.isin(busy_items)
    ]
    nan_first, two_valid = valid.item_id.iloc[0], valid.item_id.iloc[1]
    poisoned = valid.iloc[[0]].assign(embedding=[np.full(128, np.nan, np.float32)])
    smaller = valid.iloc[[1]].assign(embedding=[np.full(128, -1.0, np.float32)])
    pq.write_table(
        pa.Table.from_pandas(
            pd.concat([poisoned, emb, smaller], ignore_index=True), schema=RAW_ITEM_EMBEDDINGS, preserve_index=False
        ),
        emb_path,
    )
    users_path = f"{store.raw_partition_path('users', day)}/part-00000.parquet"
    users = pd.read_parquet(users_path)
    one = users[users.user_id == busy_users[0]].iloc[[0]]
    two = users[users.user_id == busy_users[1]].iloc[[0]]
    u1, u2 = one.user_id.iloc[0], two.user_id.iloc[0]
    extra = pd.concat([one.assign(region=None), two.assign(region="aaa-first")])
    pq.write_table(
        pa.Table.from_pandas(pd.concat([extra, users], ignore_index=True), schema=RAW_USERS, preserve_index=False),
        users_path,
    )
    return {
        "nan_first": nan_first,
        "two_valid": two_valid,
        "full_user": (u1, one.region.iloc[0]),
        "smaller_region_user": u2,
        "valid_embedding": np.asarray(valid.embedding.iloc[0]),
    }


@pytest.mark.parametrize("crafted", [False, True], ids=["generated", "crafted"])
def test_training_events_equal_a_direct_pandas_computation(spark, raw_root, data_root, tmp_path, crafted):
    from pyspark.sql import functions as F

    store = DatasetStore(str(data_root if crafted else raw_root))
    day = DAYS[1]
    spec = TrainingEventsSpec()
    craft = _craft(store, day) if crafted else None
    # Crafted: NaN video lengths on some items reach the moments (no range filter between them and here).
    nan_lengths = (
        (
            lambda df: df.withColumn(
                "item_video_length_s",
                F.when(F.abs(F.hash("item_id")) % 7 == 0, F.lit(float("nan"))).otherwise(F.col("item_video_length_s")),
            )
        )
        if crafted
        else None
    )
    result = _build_from_filtered_day(spark, store, day, tmp_path, spec, items_transform=nan_lengths)
    try:
        events = result.events.toPandas()
        result.finish_stats()  # the event-level null counts, observed by the action above
        items = result.items.toPandas()
    finally:
        result.release()

    filtered_items = pd.read_parquet(tmp_path / "filtered_items")
    # filtered_events widened with its items table: what the events were before the catalogue columns moved out.
    filtered = pd.read_parquet(tmp_path / "filtered").merge(
        filtered_items.drop(columns=["num_events", "item_age_days"]), on="item_id", how="left"
    )
    assert filtered.item_language.notna().all()  # every filtered event's item has a row in the items table
    embeddings = pd.read_parquet(store.raw_partition_path("item_embeddings", day))
    users = pd.read_parquet(store.raw_partition_path("users", day))
    ev, norm, reasons, kept_embedding = _expected(filtered, embeddings, users, spec)
    stats = result.stats
    for c, m in result.normalization.items():
        assert np.isfinite(m["mean"]) and np.isfinite(m["std"]), c
    assert np.isfinite(events.filter(like="_norm").to_numpy(dtype=np.float64)).all()
    assert np.isfinite(items.item_video_length_s_norm.to_numpy(dtype=np.float64)).all()
    if craft:
        assert filtered_items.item_video_length_s.isna().sum() > 0
        by_item = items.set_index("item_id")
        # A NaN row first in the file no longer drops the item; of two valid rows the smaller vector is kept.
        np.testing.assert_array_equal(by_item.embedding[craft["nan_first"]], craft["valid_embedding"])
        assert (np.asarray(by_item.embedding[craft["two_valid"]]) == -1.0).all()
        user, region = craft["full_user"]
        got_user = events[events.user_id == user]
        assert len(got_user) and (got_user.user_region == region).all()  # the complete row, not the null one
        other = events[events.user_id == craft["smaller_region_user"]]
        assert len(other) and (other.user_region == "aaa-first").all()
        assert stats["num_embeddings_rejected_duplicate_item_id"] >= 1

    assert stats["num_final_rows"] == len(events) == len(ev)
    assert set(events.event_id) == set(ev.event_id)
    assert count_users(result.events) == ev.user_id.nunique()
    assert stats["num_items_post_embed_join"] == len(items) == ev.item_id.nunique()
    assert stats["num_embeddings_rejected"] == sum(r is not None for r in reasons) > 0
    # Null counts of every filled column, including the catalogue columns counted from the per-item keys.
    for c in ("user_language", "user_region", "user_tenure_days", "watch_ratio", "item_category", "feed_source"):
        assert stats[f"num_nulls_filled_{c}"] == int(ev[c].isna().sum()), c
    assert stats["num_nulls_filled_user_language"] > 0  # users who signed up after the snapshot: really filled
    for c, (mean, std) in norm.items():
        assert result.normalization[c]["mean"] == pytest.approx(mean, rel=1e-9, abs=1e-12), c
        assert result.normalization[c]["std"] == pytest.approx(std, rel=1e-9), c
    # The written rows: filled, normalised with those moments.
    got = events.set_index("event_id").sort_index()
    want = ev.set_index("event_id").sort_index()
    assert (got.user_language == want.user_language.fillna(spec.string_fill)).all()
    x = np.log1p(np.maximum(want.play_duration_s.fillna(0.0).to_numpy(), 0.0))
    np.testing.assert_allclose(
        got.play_duration_s_norm, (x - norm["play_duration_s"][0]) / norm["play_duration_s"][1], rtol=1e-5, atol=1e-5
    )
    # Items: one row per final item with its event count, latest age and a 128-d embedding.
    per_item = ev.groupby("item_id").agg(n=("event_id", "size"), age=("item_age_days", "max"))
    it = items.set_index("item_id").sort_index()
    assert (it.num_events == per_item.n.loc[it.index]).all()
    np.testing.assert_allclose(it.item_age_days, per_item.age.loc[it.index].fillna(0.0))
    assert all(len(e) == 128 for e in it.embedding)
    # Catalogue columns are stored once per item: not on the events, in the items table with the day's fills and
    # the item-level normalised feature (event-weighted moments).
    assert not {"item_language", "item_category", "item_video_length_s", "item_video_length_s_norm"} & set(
        events.columns
    )
    attrs = ev.groupby("item_id")[["item_category", "item_video_length_s"]].first().loc[it.index]
    assert (it.item_category == attrs.item_category.fillna(spec.string_fill)).all()
    v = np.log1p(np.maximum(attrs.item_video_length_s.fillna(0.0).to_numpy(), 0.0))
    mean, std = norm["item_video_length_s"]
    np.testing.assert_allclose(it.item_video_length_s_norm, (v - mean) / std, rtol=1e-5, atol=1e-5)


def test_events_and_items_tables_that_disagree_fail_the_stage(spark, raw_root, tmp_path):
    """filtered_events' items table must count exactly the events its events table holds; a mismatch (a partial or
    mixed-version partition) stops training_events after the write, before anything is committed."""
    from pyspark.sql import functions as F

    result = _build_from_filtered_day(
        spark,
        DatasetStore(str(raw_root)),
        DAYS[1],
        tmp_path,
        TrainingEventsSpec(),
        items_transform=lambda df: df.withColumn("num_events", F.col("num_events") + 1),
    )
    try:
        result.events.write.format("noop").mode("overwrite").save()
        with pytest.raises(ValueError, match="events and items tables disagree"):
            result.finish_stats()
    finally:
        result.release()


def test_day_outputs_are_written_in_files_of_the_target_size(spark, tmp_path):
    """sized_write: at most target / bytes-per-row rows per file (a large partition is split), and with the row count
    known the partitions are coalesced (no shuffle) to about rows x bytes / target files."""
    import pyarrow.parquet as pq

    from recsys_assets.core.datasets import TRAINING_EVENTS
    from recsys_assets.datagen.stages import BYTES_PER_ROW, sized_write
    from resources.spark_conf import TARGET_FILE_BYTES_CONF

    rows_per_file = (1 << 20) // BYTES_PER_ROW[TRAINING_EVENTS]
    before = spark.conf.get(TARGET_FILE_BYTES_CONF)
    spark.conf.set(TARGET_FILE_BYTES_CONF, str(1 << 20))
    try:
        df = spark.range(50_000).selectExpr("id", "cast(id % 97 as string) AS item_id")
        sized_write(spark, df.repartition(2), TRAINING_EVENTS).parquet(str(tmp_path / "split"))
        sized_write(spark, df.repartition(8), TRAINING_EVENTS, expected_rows=50_000).parquet(str(tmp_path / "merged"))
    finally:
        spark.conf.set(TARGET_FILE_BYTES_CONF, before)

    def file_rows(name):
        return sorted(pq.ParquetFile(p).metadata.num_rows for p in (tmp_path / name).glob("*.parquet"))

    split, merged = file_rows("split"), file_rows("merged")
    assert sum(split) == sum(merged) == 50_000
    assert max(split) == rows_per_file and len(split) == 4  # two partitions of 25k, each cut at rows_per_file
    assert len(merged) == -(-50_000 // rows_per_file) == 4 and max(merged) <= rows_per_file
