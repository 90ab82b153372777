"""user_history: point-in-time correctness, incremental == full rebuild, a brute-force equality, the padded
reader, and the asset through Dagster (staged until its blocking point-in-time check passes)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from dagster import DagsterInstance

from recsys_assets.core.datasets import TRAINING_EVENTS, USER_HISTORY
from recsys_assets.core.days import US_PER_DAY, window_micros, window_of
from recsys_assets.history.stage import build_user_history, extend_user_history, positive_events
from recsys_assets.ml.features import Vocab, build_item_catalog
from recsys_assets.ml.history import history_arrays, padded
from resources.storage import StorageResource
from resources.store import DatasetStore
from tests.helpers import DAYS, run_job

KEEP = 3


def _events(spark, rows):
    """rows: (user, item, iso time, watch_ratio, liked, event_id)."""
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "watch_ratio", "liked", "event_id"])
    df["event_ts"] = pd.to_datetime(df["ts"], utc=True)
    df["shared"] = False
    df["followed"] = df["event_id"].str.endswith("f")
    return spark.createDataFrame(df.drop(columns=["ts"]))


def _bounds(day: str, lookback: int) -> tuple[int, int]:
    start, _ = window_micros(window_of(day))
    return start - lookback * US_PER_DAY, start


def _as_frame(history) -> pd.DataFrame:
    pdf = history.toPandas().sort_values("user_id").reset_index(drop=True)
    for c in ("item_ids", "event_ids", "kinds"):
        pdf[c] = pdf[c].map(list)
    pdf["event_ts"] = pdf["event_ts"].map(lambda v: [pd.Timestamp(x).value // 1000 for x in v])
    return pdf[["user_id", "item_ids", "event_ts", "kinds", "event_ids", "length"]]


# Days are Asia/Kolkata: 2024-03-02 starts at 2024-03-01T18:30Z.
CRAFTED = [
    ("u1", "a", "2024-02-28T10:00:00Z", 0.9, False, "e1"),
    ("u1", "b", "2024-03-01T09:00:00Z", 0.1, True, "e2"),  # like
    ("u1", "c", "2024-03-01T09:00:00Z", 0.7, False, "e3f"),  # same time: event id breaks the tie; a follow
    ("u1", "x", "2024-03-01T10:00:00Z", 0.1, False, "e4"),  # not positive
    ("u1", "d", "2024-03-01T18:29:59Z", 0.8, False, "e5"),  # last second of 2024-03-01 (IST)
    ("u1", "late", "2024-03-01T18:30:00Z", 0.9, True, "e6"),  # first second of 2024-03-02: never in its history
    ("u2", "a", "2024-02-10T00:00:00Z", 0.9, False, "e7"),  # older than the lookback
    ("u2", "e", "2024-02-29T12:00:00Z", 0.6, False, "e8"),
]


def test_history_is_point_in_time_newest_first_and_bounded(spark):
    since, before = _bounds("2024-03-02", lookback=7)
    h = _as_frame(build_user_history(positive_events(_events(spark, CRAFTED), 0.5, True), since, before, KEEP))
    u1 = h[h.user_id == "u1"].iloc[0]
    assert u1.item_ids == ["d", "c", "b"]  # newest first; e3f before e2 at the same time; x (negative) and a cut
    assert u1.kinds == ["watch", "follow", "like"]
    assert max(u1.event_ts) < before
    assert h[h.user_id == "u2"].iloc[0].item_ids == ["e"]


def test_incremental_equals_full_rebuild_and_a_brute_force_computation(spark):
    rng = np.random.default_rng(3)
    rows = []
    for k in range(600):
        t = pd.Timestamp("2024-02-20T00:00:00Z") + pd.Timedelta(seconds=int(rng.integers(0, 14 * 86_400)))
        rows.append(
            (
                f"u{rng.integers(0, 25)}",
                f"i{rng.integers(0, 40)}",
                t.isoformat(),
                float(rng.uniform()),
                bool(rng.uniform() < 0.2),
                f"e{k:04d}",
            )
        )
    events = _events(spark, rows)
    lookback, day, yesterday = 5, "2024-03-04", "2024-03-03"
    positives = positive_events(events, 0.5, True)
    full = build_user_history(positives, *_bounds(day, lookback), KEEP)
    prev = build_user_history(positives, *_bounds(yesterday, lookback), KEEP)
    y_start, y_end = window_micros(window_of(yesterday))
    from pyspark.sql import functions as F

    yesterdays = positives.filter((F.unix_micros("event_ts") >= y_start) & (F.unix_micros("event_ts") < y_end))
    incremental = extend_user_history(prev, yesterdays, *_bounds(day, lookback), KEEP)
    a, b = _as_frame(full), _as_frame(incremental)
    pd.testing.assert_frame_equal(a, b)

    # brute force: per user, positives in [since, before), sorted by (time, event id) descending, first KEEP
    since, before = _bounds(day, lookback)
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "watch_ratio", "liked", "event_id"])
    df["us"] = pd.to_datetime(df["ts"], utc=True).map(lambda t: t.value // 1000)
    df = df[((df.watch_ratio >= 0.5) | df.liked) & (df.us >= since) & (df.us < before)]
    expected = {
        u: list(g.sort_values(["us", "event_id"], ascending=False)["item_id"][:KEEP]) for u, g in df.groupby("user_id")
    }
    assert dict(zip(a.user_id, a.item_ids)) == expected
    assert len(expected) > 10


def test_padded_history_equals_the_raw_lists():
    lists = pa.array([["a", "b", "c"], [], ["b"], ["c", "zz", "a", "b"]], pa.list_(pa.string()))
    table = pa.table({"user_id": ["u1", "u2", "u3", "u4"], "item_ids": lists})
    vocab = Vocab({"item_id": pd.DataFrame({"token": ["a", "b", "c"], "index": [2, 3, 4], "count": [1, 1, 1]})})
    emb = np.zeros(128, np.float32)
    catalog_table = pa.table(
        {
            "item_id": ["c", "a"],
            "item_author_id": ["x", "y"],
            "item_category": ["k", "k"],
            "item_language": ["hi", "hi"],
            "item_video_length_s": [1.0, 2.0],
            "item_created_at": pa.array([dt.datetime(2024, 1, 1, tzinfo=dt.UTC)] * 2, pa.timestamp("us", tz="UTC")),
            "embedding": [emb.tolist(), emb.tolist()],
        }
    )
    catalog = build_item_catalog([catalog_table])
    h = history_arrays(table, 3, vocab, catalog)
    ids, rows, ages = h.lookup(pa.array(["u4", "nobody", "u1", "u2"]))
    assert ages is None  # read without event_ts
    assert ids.tolist() == [[4, 1, 2], [0, 0, 0], [2, 3, 4], [0, 0, 0]]  # zz is OOV (1); max_len 3 cuts u4's 4th
    assert rows.tolist() == [[0, -1, 1], [-1, -1, -1], [1, -1, 0], [-1, -1, -1]]
    sliced = lists.slice(1, 3)
    assert padded(sliced, 2, np.arange(len(pa.compute.list_flatten(sliced))), -1).tolist() == [
        [-1, -1],
        [0, -1],
        [1, 2],
    ]


def test_entry_ages_are_hours_before_the_historys_day_and_refuse_times_that_are_not_before_it():
    """The history's time gaps (ml/history.entry_ages): hours from each entry to the local midnight its day starts at,
    whatever unit the Parquet's timestamps have; a missing time or one at/after the day's start is refused."""
    from recsys_assets.ml.history import entry_ages

    start = window_of("2024-03-05").start  # local midnight (Asia/Kolkata): 2024-03-04 18:30 UTC
    times = [
        [start - dt.timedelta(hours=1), start - dt.timedelta(days=2, minutes=30)],
        [],
        [start - dt.timedelta(0, 1)],
    ]
    for unit in ("s", "ms", "us", "ns"):
        lists = pa.array(times, pa.list_(pa.timestamp(unit, tz="UTC")))
        ages = entry_ages(lists, 3, "2024-03-05")
        assert ages.dtype == np.float32
        np.testing.assert_allclose(ages, [[1.0, 48.5, 0.0], [0.0, 0.0, 0.0], [1 / 3600, 0.0, 0.0]], rtol=1e-6)
    at_start = pa.array([[start]], pa.list_(pa.timestamp("us", tz="UTC")))
    with pytest.raises(ValueError, match="at or after the start of 2024-03-05"):
        entry_ages(at_start, 3, "2024-03-05", "2024-03-05 (version v1)")
    missing = pa.array([[start - dt.timedelta(hours=1), None]], pa.list_(pa.timestamp("us", tz="UTC")))
    with pytest.raises(ValueError, match="1 history entries have no event_ts"):
        entry_ages(missing, 3, "2024-03-05")
    with pytest.raises(ValueError, match="not timestamps"):
        entry_ages(pa.array([["x"]], pa.list_(pa.string())), 3, "2024-03-05")


def _history_rows(store: DatasetStore, day: str) -> pd.DataFrame:
    path = store.committed_path(USER_HISTORY, day, "history")
    t = pads.dataset(path, filesystem=store.fs, format="parquet").to_table().to_pandas()
    t = t.sort_values("user_id").reset_index(drop=True)
    return t.assign(item_ids=t.item_ids.map(list), event_ids=t.event_ids.map(list))[
        ["user_id", "item_ids", "event_ids"]
    ]


@pytest.mark.slow
def test_asset_builds_incrementally_gates_on_point_in_time_and_equals_a_full_rebuild(
    datagen_root, spark_resource, tmp_path, monkeypatch
):
    root = tmp_path / "data"
    shutil.copytree(datagen_root, root)
    store = DatasetStore(str(root))
    res = {"spark": spark_resource, "storage": StorageResource(data_root=str(root))}
    instance = DagsterInstance.ephemeral()
    modes = {}
    for day in DAYS:
        r = run_job("user_history_job", day, instance, res)
        assert r.success, day
        checks = {e.check_name: e.passed for e in r.get_asset_check_evaluations()}
        assert checks == {"user_history_point_in_time": True, "user_history_coverage": True}
        meta = r.get_asset_materialization_events()[0].step_materialization_data.materialization.metadata
        modes[day] = meta["mode"].value
        assert store.is_committed(USER_HISTORY, day)
    assert modes == {DAYS[0]: "full", DAYS[1]: "incremental", DAYS[2]: "incremental"}
    assert _history_rows(store, DAYS[0]).empty  # nothing before the first day
    incremental = _history_rows(store, DAYS[2])
    # every entry of DAYS[2]'s history is an event of the days before it
    earlier = set()
    for d in DAYS[:2]:
        path = store.committed_path(TRAINING_EVENTS, d, "events")
        earlier |= set(
            pads.dataset(path, filesystem=store.fs, format="parquet").to_table(["event_id"])["event_id"].to_pylist()
        )
    assert set(np.concatenate(incremental.event_ids.to_numpy())) <= earlier
    assert incremental.item_ids.map(len).max() <= 50 and len(incremental) > 50

    # A day recommitted after yesterday's history read it (a backfill, a fix): yesterday's history is stale, so the
    # day is rebuilt in full from the committed versions (here with the same content: the same rows).
    old = store.committed_version(TRAINING_EVENTS, DAYS[0])
    new = store.new_version()
    shutil.copytree(
        root / TRAINING_EVENTS / f"dt={DAYS[0]}" / f"v={old}", root / TRAINING_EVENTS / f"dt={DAYS[0]}" / f"v={new}"
    )
    store.commit(TRAINING_EVENTS, DAYS[0], new)
    r = run_job("user_history_job", DAYS[2], instance, res)
    meta = r.get_asset_materialization_events()[0].step_materialization_data.materialization.metadata
    assert meta["mode"].value == "full"
    assert store.read_manifest(USER_HISTORY, DAYS[2])["sources"][DAYS[0]] == new
    pd.testing.assert_frame_equal(_history_rows(store, DAYS[2]), incremental)

    # A full rebuild (yesterday's history gone) gives the same rows.
    shutil.rmtree(root / USER_HISTORY / f"dt={DAYS[1]}")
    r = run_job("user_history_job", DAYS[2], instance, res)
    assert (
        r.get_asset_materialization_events()[0].step_materialization_data.materialization.metadata["mode"].value
        == "full"
    )
    pd.testing.assert_frame_equal(_history_rows(store, DAYS[2]), incremental)

    # A stage that leaks the day itself (a bug, a changed job) writes entries of D: the blocking check fails, the
    # version is withheld, and readers keep the committed one.
    committed = store.committed_version(USER_HISTORY, DAYS[2])
    from recsys_assets.history import assets as history_assets
    from recsys_assets.history import stage as stage_module

    honest_inputs, honest_build = history_assets.history_sources, stage_module.build_user_history

    def leaky_inputs(store_, day, spec):
        out = honest_inputs(store_, day, spec)
        leaked = {**out.event_versions, day: store_.committed_version(TRAINING_EVENTS, day)}
        return dataclasses.replace(out, event_versions=leaked)

    monkeypatch.setattr(history_assets, "history_sources", leaky_inputs)
    monkeypatch.setattr(
        stage_module,
        "build_user_history",
        lambda e, since, before, keep: honest_build(e, since, before + US_PER_DAY, keep),
    )
    r = run_job("user_history_job", DAYS[2], instance, res)
    evaluation = {e.check_name: e for e in r.get_asset_check_evaluations()}["user_history_point_in_time"]
    assert not evaluation.passed and "at or after day" in evaluation.description
    assert store.committed_version(USER_HISTORY, DAYS[2]) == committed
    assert store.gate_state(USER_HISTORY, DAYS[2]).state == "withheld"


def _recommit_with_fewer_positives(store: DatasetStore, day: str, share: float = 0.5) -> set[str]:
    """Upstream re-delivers `day` with corrected labels: `share` of its positive events stop being positives (a new
    committed training_events version). Returns the event ids that stopped being positives."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    old = store.committed_version(TRAINING_EVENTS, day)
    new = store.new_version()
    src, dst = store.version_path(TRAINING_EVENTS, day, old), store.version_path(TRAINING_EVENTS, day, new)
    shutil.copytree(f"{src}/items", f"{dst}/items")
    events = pads.dataset(f"{src}/events", format="parquet").to_table()
    positive = pc.or_(
        pc.greater_equal(events["watch_ratio"], 0.5),
        pc.or_(pc.fill_null(events["liked"], False), pc.fill_null(events["followed"], False)),
    ).to_numpy(zero_copy_only=False)
    positive |= pc.fill_null(events["shared"], False).to_numpy(zero_copy_only=False)
    rng = np.random.default_rng(11)
    flip = positive & (rng.random(len(positive)) < share)
    df = events.to_pandas()
    df.loc[flip, "watch_ratio"] = 0.1
    df.loc[flip, ["liked", "shared", "followed"]] = False
    os.makedirs(f"{dst}/events")
    pq.write_table(pa.Table.from_pandas(df, schema=events.schema, preserve_index=False), f"{dst}/events/part-0.parquet")
    store.commit(TRAINING_EVENTS, day, new)
    return set(df.loc[flip, "event_id"])


@pytest.mark.slow
def test_a_rewritten_day_makes_every_later_history_stale_until_automation_rebuilds_them_in_order(
    datagen_root, spark_resource, tmp_path
):
    """Re-delivering DAYS[0] with corrected labels: the committed histories of DAYS[1] and DAYS[2] folded in the old
    version, so they are stale (never trained on); automation rebuilds DAYS[1], then DAYS[2] (a day's history rebuild
    starts the next day's), and the rebuilt DAYS[2] holds none of the removed positives and equals a full rebuild."""
    from dagster import AssetKey, AssetMaterialization, AssetSelection, evaluate_automation_conditions

    from recsys_assets.ml.windows import NoTrainingDataError, stale_history, training_window, with_user_history
    from tests.helpers import defs_with

    root = tmp_path / "data"
    shutil.copytree(datagen_root, root)
    store = DatasetStore(str(root))
    res = {"spark": spark_resource, "storage": StorageResource(data_root=str(root))}
    before = set(np.concatenate(_history_rows(store, DAYS[2]).event_ids.to_numpy()))
    removed = _recommit_with_fewer_positives(store, DAYS[0])
    assert len(removed & before) > 20  # the committed DAYS[2] history holds positives that no longer are

    for day in DAYS[1:]:
        (reason,) = stale_history(store, day)
        assert reason.startswith(f"training_events {DAYS[0]} recommitted")
    assert stale_history(store, DAYS[0]) == []
    with pytest.raises(NoTrainingDataError, match=f"{DAYS[2]}: stale user_history"):
        with_user_history(store, training_window(store, DAYS[2], 2, 1), 1)

    defs, instance = defs_with(res), DagsterInstance.ephemeral()
    history = AssetSelection.assets(USER_HISTORY)
    now = dt.datetime(2024, 3, 4, 12, tzinfo=dt.UTC)
    idle = evaluate_automation_conditions(defs, instance, asset_selection=history, evaluation_time=now)
    instance.report_runless_asset_event(AssetMaterialization(AssetKey(TRAINING_EVENTS), partition=DAYS[0]))
    tick = evaluate_automation_conditions(
        defs, instance, asset_selection=history, evaluation_time=now, cursor=idle.cursor
    )
    assert tick.get_requested_partitions(AssetKey(USER_HISTORY)) == {DAYS[1]}
    assert run_job("user_history_job", DAYS[1], instance, res).success
    tick = evaluate_automation_conditions(
        defs, instance, asset_selection=history, evaluation_time=now, cursor=tick.cursor
    )
    assert tick.get_requested_partitions(AssetKey(USER_HISTORY)) == {DAYS[2]}
    assert run_job("user_history_job", DAYS[2], instance, res).success
    tick = evaluate_automation_conditions(
        defs, instance, asset_selection=history, evaluation_time=now, cursor=tick.cursor
    )
    assert tick.total_requested == 0 or tick.get_requested_partitions(AssetKey(USER_HISTORY)) == {"2024-03-04"}

    assert all(stale_history(store, d) == [] for d in DAYS)
    rebuilt = _history_rows(store, DAYS[2])
    assert not removed & set(np.concatenate(rebuilt.event_ids.to_numpy()))
    shutil.rmtree(root / USER_HISTORY / f"dt={DAYS[1]}")  # a full rebuild from the lookback gives the same rows
    assert run_job("user_history_job", DAYS[2], instance, res).success
    pd.testing.assert_frame_equal(_history_rows(store, DAYS[2]), rebuilt)
