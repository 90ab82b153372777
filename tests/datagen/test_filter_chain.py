"""The one-pass stage stats equal a naive step-by-step count, on generated data with dirty rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from pyspark.sql import functions as F

from recsys_assets.config.datagen import DEFAULT_CONFIG_PATH, load_datagen_spec, parse_datagen_spec
from recsys_assets.core.days import window_micros, window_of
from recsys_assets.core.raw_inputs import read_raw
from recsys_assets.core.schemas import RAW_EVENTS, RAW_ITEMS
from recsys_assets.datagen.filter_chain import deduplicate, run_filter_chain, sample_predicate
from resources.store import DatasetStore
from tests.datagen.naive_chain import naive_chain
from tests.helpers import DAYS


def _reordered_spec():
    """item_events moved before item_age: an item-level stage followed by a row stage (config-only change)."""
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    names = [f["name"] for f in raw["filters"]]
    item_events = raw["filters"].pop(names.index("item_events"))
    raw["filters"].insert(names.index("item_age"), item_events)
    return parse_datagen_spec(raw)


@pytest.mark.parametrize("spec_name", ["default", "reordered"])
def test_one_pass_stats_equal_naive_counts(spark, raw_root, spec_name):
    spec = load_datagen_spec() if spec_name == "default" else _reordered_spec()
    store = DatasetStore(str(raw_root))
    day = DAYS[1]
    start_us, end_us = window_micros(window_of(day))
    events = read_raw(spark, store, "events", day)
    items = read_raw(spark, store, "items", day)
    result = run_filter_chain(events, items, spec, start_us, end_us)
    try:
        filtered_ids = {r.event_id for r in result.filtered_events.select("event_id").collect()}
        filtered_items = result.filtered_items.toPandas().set_index("item_id").sort_index()
        quarantined = result.quarantined_events.groupBy("quarantine_reason").count().collect()
    finally:
        result.release()

    sampled = {
        r.event_id
        for r in events.filter(F.col("event_id").isNotNull())
        .filter(sample_predicate(spec.sample.fraction, spec.sample.seed))
        .select("event_id")
        .collect()
    }
    ev_pd = pd.read_parquet(store.raw_partition_path("events", day))
    it_pd = pd.read_parquet(store.raw_partition_path("items", day))
    expected, survivors = naive_chain(ev_pd, it_pd, spec, start_us, end_us, sampled)

    # The generated day really has dirty rows of every kind the generator makes.
    for reason in (
        "null_event_id",
        "null_item_id",
        "invalid_play_duration",
        "event_ts_outside_day",
        "duplicate_event_id",
    ):
        assert expected[f"num_quarantined_{reason}"] > 0, reason
    got = {k: v for k, v in result.stats.items() if k in expected}
    assert got == expected
    assert result.stats["stage_order"] == ["quarantine", "language", "sample", *[f.name for f in spec.filters]]
    # The written survivors are exactly the naive survivors, and the quarantine output has every reason's rows.
    assert filtered_ids == set(survivors["event_id"])
    # The items table: one row per surviving item, its survivor count, oldest age and catalogue columns.
    per_item = (
        survivors.groupby("item_id")
        .agg(
            n=("event_id", "size"),
            age=("item_age_days", "max"),
            category=("item_category", "first"),
            length=("item_video_length_s", "first"),
        )
        .sort_index()
    )
    assert list(filtered_items.index) == list(per_item.index)
    assert (filtered_items.num_events == per_item.n).all()
    np.testing.assert_allclose(filtered_items.item_age_days, per_item.age)
    assert (filtered_items.item_category.fillna("<null>") == per_item.category.fillna("<null>")).all()
    np.testing.assert_allclose(filtered_items.item_video_length_s, per_item.length)
    assert {r["quarantine_reason"]: r["count"] for r in quarantined} == {
        k.removeprefix("num_quarantined_"): v
        for k, v in expected.items()
        if k.startswith("num_quarantined_") and k != "num_quarantined_events" and v
    }


def test_reordering_filters_changes_stage_order_not_row_filter_results(spark, raw_root):
    """Row filters commute: moving item_events earlier changes per-stage counts and typically the survivors,
    but the stage order in stats follows the config exactly."""
    store = DatasetStore(str(raw_root))
    day = DAYS[0]
    start_us, end_us = window_micros(window_of(day))
    ev, it = read_raw(spark, store, "events", day), read_raw(spark, store, "items", day)
    default = run_filter_chain(ev, it, load_datagen_spec(), start_us, end_us)
    reordered = run_filter_chain(ev, it, _reordered_spec(), start_us, end_us)
    try:
        assert default.stats["stage_order"].index("item_events") > default.stats["stage_order"].index("item_age")
        assert reordered.stats["stage_order"].index("item_events") < reordered.stats["stage_order"].index("item_age")
        # Row stages before both are unaffected by the move.
        for stage in ("quarantine", "language", "sample", "play_duration"):
            assert (
                default.stats[f"num_events_post_filter_{stage}"] == reordered.stats[f"num_events_post_filter_{stage}"]
            )
        # Filtering by min events before the age filter keeps items that the default order drops.
        assert reordered.stats["num_unique_items_post_filters"] != default.stats["num_unique_items_post_filters"]
    finally:
        default.release()
        reordered.release()


def test_sample_is_deterministic_and_close_to_fraction(spark):
    df = spark.range(200_000).select(F.concat(F.lit("e"), F.col("id").cast("string")).alias("event_id"))
    a = df.filter(sample_predicate(0.7, 17)).count()
    b = df.repartition(7).filter(sample_predicate(0.7, 17)).count()
    other_seed = df.filter(sample_predicate(0.7, 18)).count()
    assert a == b  # independent of partitioning (the same rows on any cluster)
    assert abs(a / 200_000 - 0.7) < 0.005
    assert other_seed != a


def _dup_rows(df):
    return sorted(
        (repr(tuple(r[c] for c in df.columns if c != "is_duplicate")), r["is_duplicate"]) for r in df.collect()
    )


def test_deduplicate_marks_the_same_rows_as_the_full_window(spark, raw_root):
    """The hash-candidate path (window over repeated ids only) and the whole-day window agree row for row, on a
    generated day with re-sent batches and null ids."""
    store = DatasetStore(str(raw_root))
    events = read_raw(spark, store, "events", DAYS[1])
    fast = deduplicate(events)
    full = deduplicate(events, broadcast_limit=0)
    try:
        assert fast.cached and not full.cached  # the candidates fit a broadcast; limit 0 forces the whole-day window
        assert fast.duplicate_candidates == full.duplicate_candidates > 0
        marked = fast.events.filter("is_duplicate").count()
        assert marked > 0
        assert _dup_rows(fast.events) == _dup_rows(full.events)
        assert fast.events.count() == events.count()
    finally:
        for df in fast.cached:
            df.unpersist()


def test_deduplicate_keeps_one_copy_by_time_then_columns(spark):
    ts = pd.Timestamp("2024-03-01 10:00:00", tz="UTC")
    rows = [
        # Three identical copies: exactly two are duplicates.
        ("e1", "u1", "i1", ts, 5.0),
        ("e1", "u1", "i1", ts, 5.0),
        ("e1", "u1", "i1", ts, 5.0),
        # Same id, later time: the earlier one is kept whatever the order in the input.
        ("e2", "u1", "i2", ts + pd.Timedelta(seconds=1), 1.0),
        ("e2", "u1", "i2", ts, 9.0),
        # Tie on time and item: the remaining columns decide (smaller play duration kept), not the input order.
        ("e3", "u1", "i3", ts, 7.0),
        ("e3", "u1", "i3", ts, 2.0),
        # Null ids are never duplicates of each other (they are quarantined as null_event_id instead).
        (None, "u2", "i1", ts, 1.0),
        (None, "u2", "i1", ts, 1.0),
        ("e4", "u3", "i4", ts, 3.0),
    ]
    df = spark.createDataFrame(
        pd.DataFrame(rows, columns=["event_id", "user_id", "item_id", "event_ts", "play_duration_s"])
    ).repartition(3)
    for limit in (1_000, 0):
        result = deduplicate(df, broadcast_limit=limit)
        got = [
            (r.event_id, r.play_duration_s, r.is_duplicate)
            for r in result.events.orderBy("event_id", "play_duration_s", "is_duplicate").collect()
        ]
        assert got == [
            (None, 1.0, False),
            (None, 1.0, False),
            ("e1", 5.0, False),
            ("e1", 5.0, True),
            ("e1", 5.0, True),
            ("e2", 1.0, True),
            ("e2", 9.0, False),
            ("e3", 2.0, False),
            ("e3", 7.0, True),
            ("e4", 3.0, False),
        ], limit
        for cached in result.cached:
            cached.unpersist()


def _hostile_day(store, day):
    """The generated day plus rows that poisoned or leaked through the chain before: +-inf and absurd durations,
    ids the feed table cannot store, and a late copy of an event that arrives (and sorts) before its valid copy."""
    path = store.raw_partition_path("events", day)
    events = pd.read_parquet(path)
    start = pd.Timestamp(day, tz="Asia/Kolkata").tz_convert("UTC")
    base = events.dropna(subset=["event_id", "user_id", "item_id", "event_ts"]).iloc[:12].copy()
    base["play_duration_s"] = 10.0
    base["event_ts"] = start + pd.Timedelta(hours=6)
    hostile = base.copy()
    hostile["event_id"] = [f"hostile-{i}" for i in range(len(hostile))]
    hostile.iloc[0, hostile.columns.get_loc("play_duration_s")] = np.inf
    hostile.iloc[1, hostile.columns.get_loc("play_duration_s")] = -np.inf
    hostile.iloc[2, hostile.columns.get_loc("play_duration_s")] = 2 * 86_400.0
    hostile.iloc[3, hostile.columns.get_loc("user_id")] = ""
    hostile.iloc[4, hostile.columns.get_loc("user_id")] = "u\x00x"
    hostile.iloc[5, hostile.columns.get_loc("item_id")] = "i" * 300
    hostile.iloc[6, hostile.columns.get_loc("event_id")] = ""
    # Outside the id alphabet: control characters (CR broke the feed table's COPY), a Unicode line separator; an id
    # of other Unicode text is valid.
    hostile.iloc[8, hostile.columns.get_loc("user_id")] = "u\rx"
    hostile.iloc[9, hostile.columns.get_loc("item_id")] = "i\nx"
    hostile.iloc[10, hostile.columns.get_loc("user_id")] = "u\u2028x"
    hostile.iloc[11, hostile.columns.get_loc("user_id")] = 'ユーザー-é,"quoted"'
    # A late copy outside the day that sorts first by time, then the valid in-day copy of the same event.
    late = hostile.iloc[[7]].assign(event_ts=start - pd.Timedelta(hours=1))
    valid = hostile.iloc[[7]]
    out = pd.concat([events, hostile.iloc[:7], hostile.iloc[8:], late, valid], ignore_index=True)
    out["event_ts"] = pd.to_datetime(out["event_ts"], utc=True).astype(events["event_ts"].dtype)
    pq.write_table(pa.Table.from_pandas(out, schema=RAW_EVENTS, preserve_index=False), f"{path}/part-00000.parquet")
    # The catalogue: a row without an item id, an approved item listed again as rejected (moderation must fail closed),
    # and an item listed again with a NaN length (NaN is missing when the most complete row is chosen).
    items_path = store.raw_partition_path("items", day)
    items = pd.read_parquet(items_path)
    approved = items[items.moderation_status == "approved"]
    seen = approved[approved.item_id.isin(set(events.item_id))]
    conflicting, nan_length = seen.iloc[[0]].copy(), seen.iloc[[1]].copy()
    conflicting["moderation_status"] = "rejected"
    nan_length["video_length_s"] = np.nan
    nameless = seen.iloc[[2]].assign(item_id=None)
    items = pd.concat([items, conflicting, nan_length, nameless], ignore_index=True)
    pq.write_table(
        pa.Table.from_pandas(items, schema=RAW_ITEMS, preserve_index=False), f"{items_path}/part-00000.parquet"
    )
    return out, valid["event_id"].iloc[0], conflicting.item_id.iloc[0]


def test_hostile_rows_are_quarantined_by_reason_and_a_late_copy_never_displaces_the_valid_one(spark, data_root):
    store = DatasetStore(str(data_root))
    day = DAYS[1]
    spec = load_datagen_spec()
    ev_pd, kept_id, conflicting_item = _hostile_day(store, day)
    start_us, end_us = window_micros(window_of(day))
    events = read_raw(spark, store, "events", day)
    result = run_filter_chain(events, read_raw(spark, store, "items", day), spec, start_us, end_us)
    try:
        stats = result.stats
        kept = result.filtered_events.filter(F.col("event_id") == kept_id).count()
        quarantined = {
            r.event_id: r.quarantine_reason
            for r in result.quarantined_events.filter(
                F.col("event_id").startswith("hostile-") | (F.col("event_id") == "")
            ).collect()
        }
        survivors = [r.item_id for r in result.filtered_items.select("item_id").collect()]
        sampled = {
            r.event_id
            for r in events.filter(F.col("event_id").isNotNull())
            .filter(sample_predicate(spec.sample.fraction, spec.sample.seed))
            .select("event_id")
            .collect()
        }
    finally:
        result.release()
    expected, _ = naive_chain(
        ev_pd, pd.read_parquet(store.raw_partition_path("items", day)), spec, start_us, end_us, sampled
    )
    assert {k: v for k, v in stats.items() if k in expected} == expected
    assert quarantined == {
        "hostile-0": "invalid_play_duration",
        "hostile-1": "invalid_play_duration",
        "hostile-2": "play_duration_over_max",
        "hostile-3": "invalid_user_id",
        "hostile-4": "invalid_user_id",
        "hostile-5": "invalid_item_id",
        "hostile-8": "invalid_user_id",
        "hostile-9": "invalid_item_id",
        "hostile-10": "invalid_user_id",
        "": "invalid_event_id",
        kept_id: "event_ts_outside_day",
    }
    # The valid copy is kept as the event (if the sample keeps it), the late copy is quarantined with its own reason.
    assert stats["num_quarantined_duplicate_event_id"] == expected["num_quarantined_duplicate_event_id"]
    assert kept == (1 if kept_id in sampled else 0)
    # The catalogue's rows are all accounted for; the item listed approved and rejected is not trained on.
    assert stats["num_catalogue_rows_without_item_id"] == 1 and stats["num_items_conflicting_moderation"] == 1
    assert stats["num_duplicate_catalogue_rows"] == 2
    assert conflicting_item not in set(survivors)
