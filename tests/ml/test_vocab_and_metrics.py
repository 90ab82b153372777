"""Vocabulary stability and encoding, dense moments, and the offline metrics against brute-force definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from recsys_assets.config.training import TrainingConfigError, load_training_spec
from recsys_assets.ml.features import (
    OOV_ID,
    Vocab,
    build_item_catalog,
    build_vocab,
    count_tokens,
    dense_moments,
    merge_vocab,
    oov_rates,
)
from recsys_assets.ml.metrics import exact_top_k, group_relevant, popularity_ranking, recall_ndcg_at_k, roc_auc


def batches_of(values: list, size: int, column: str = "f"):
    return [
        pa.RecordBatch.from_pydict({column: pa.array(values[i : i + size], pa.string())})
        for i in range(0, len(values), size)
    ]


def test_count_tokens_over_batches_equals_value_counts_and_skips_nulls():
    rng = np.random.default_rng(0)
    values = [None if x == 0 else f"t{x}" for x in rng.integers(0, 40, 5000)]
    counts = count_tokens(batches_of(values, 333), ["f"], compact_every=4)["f"]
    expected = pd.Series([v for v in values if v is not None]).value_counts()
    assert counts.sort_index().equals(expected.sort_index().astype("int64").rename(None).rename_axis(None))


def test_merge_vocab_keeps_old_ids_appends_new_tokens_by_count_and_drops_rare_new_ones():
    day1 = merge_vocab(None, pd.Series({"a": 5, "b": 9, "c": 1}), min_count=2)
    assert day1[["token", "index", "count"]].values.tolist() == [["b", 2, 9], ["a", 3, 5]]
    # Day 2: b unseen, c now frequent, d and e new (e too rare), a seen again.
    day2 = merge_vocab(day1, pd.Series({"a": 2, "c": 4, "d": 7, "e": 1}), min_count=2)
    assert day2[["token", "index", "count"]].values.tolist() == [["b", 2, 0], ["a", 3, 2], ["d", 4, 7], ["c", 5, 4]]


def test_unseen_tokens_retire_to_oov_and_new_tokens_reuse_their_ids():
    d1 = merge_vocab(None, pd.Series({"a": 5, "b": 9, "c": 3}), 2, "2024-01-01", retire_after_days=2)
    assert d1[["token", "index", "last_seen"]].values.tolist() == [
        ["b", 2, "2024-01-01"],
        ["a", 3, "2024-01-01"],
        ["c", 4, "2024-01-01"],
    ]
    # b unseen for 2 days: kept (not more than retire_after_days); a seen, c unseen.
    d3 = merge_vocab(d1, pd.Series({"a": 1}), 2, "2024-01-03", retire_after_days=2)
    assert d3[["token", "index", "count", "last_seen"]].values.tolist() == [
        ["b", 2, 0, "2024-01-01"],
        ["a", 3, 1, "2024-01-03"],
        ["c", 4, 0, "2024-01-01"],
    ]
    # Day 4: b and c unseen for 3 days retire; their ids go to the new tokens (most frequent first, lowest id
    # first), then new ids are appended. a keeps its id.
    d4 = merge_vocab(d3, pd.Series({"x": 4, "y": 8, "z": 2, "w": 1}), 2, "2024-01-04", retire_after_days=2)
    assert d4[["token", "index", "count", "last_seen"]].values.tolist() == [
        ["y", 2, 8, "2024-01-04"],
        ["a", 3, 0, "2024-01-03"],
        ["x", 4, 4, "2024-01-04"],
        ["z", 5, 2, "2024-01-04"],
    ]
    # Retired with no taker: the id stays free (token null) and the retired token encodes to OOV.
    d9 = merge_vocab(d4, pd.Series({"y": 3, "x": 1, "z": 2}), 2, "2024-01-09", retire_after_days=2)
    assert d9["token"].tolist() == ["y", None, "x", "z"]
    v = Vocab({"f": d9})
    assert v.encode("f", pa.array(["a", "y", "z", "x", None])).tolist() == [OOV_ID, 2, 5, 4, OOV_ID]
    assert v.cardinality("f") == 6 and v.retired("f") == 1 and sorted(v.live_tokens("f")) == ["x", "y", "z"]
    again = Vocab.from_table(v.to_table())
    assert again.encode("f", pa.array(["a", "y", "z"])).tolist() == [OOV_ID, 2, 5] and again.retired("f") == 1
    # Never retiring (null): the size only grows.
    assert merge_vocab(d3, pd.Series({"x": 4}), 2, "2024-02-01", retire_after_days=None)["token"].tolist() == [
        "b",
        "a",
        "c",
        "x",
    ]


def test_a_vocab_without_last_seen_is_carried_from_its_next_day():
    old = pd.DataFrame({"token": ["a", "b"], "index": [2, 3], "count": [4, 2]})  # written before last_seen existed
    v = merge_vocab(old, pd.Series({"a": 1}), 2, "2024-01-10", retire_after_days=1)
    assert v[["token", "last_seen"]].values.tolist() == [["a", "2024-01-10"], ["b", "2024-01-10"]]
    later = merge_vocab(v, pd.Series({"a": 1}), 2, "2024-01-12", retire_after_days=1)
    assert later["token"].tolist() == ["a", None]


def test_vocab_encodes_unknown_and_null_to_oov_and_round_trips_through_parquet_table():
    v = build_vocab(None, {"user_id": pd.Series({"u1": 3, "u2": 5}), "region": pd.Series({"r": 2})}, min_count=2)
    got = v.encode("user_id", pa.chunked_array([pa.array(["u2", "u1", "zz", None, "u2"])]))
    assert got.tolist() == [2, 3, OOV_ID, OOV_ID, 2]
    assert v.cardinality("user_id") == 4 and v.cardinality("region") == 3
    again = Vocab.from_table(v.to_table())
    assert again.encode("user_id", pa.array(["u1", "u2"])).tolist() == [3, 2]
    assert oov_rates(v, [pa.RecordBatch.from_pydict({"user_id": ["u1", "x", "y", "u2"], "region": ["r"] * 4})]) == {
        "user_id": 0.5,
        "region": 0.0,
    }


def test_vocab_rejects_non_contiguous_ids():
    with pytest.raises(ValueError, match="contiguous"):
        Vocab({"f": pd.DataFrame({"token": ["a", "b"], "index": [2, 4], "count": [1, 1]})})


def _items_day(ids: list[str], day: int, dim: int = 4) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "item_id": pa.array(ids, pa.string()),
            "item_author_id": [f"a{day}{i}" for i in range(n)],
            "item_category": ["c"] * n,
            "item_language": ["en"] * n,
            "item_video_length_s": [float(day * 10 + i) for i in range(n)],
            "item_created_at": pa.array([pd.Timestamp("2024-03-01", tz="UTC")] * n, pa.timestamp("us", tz="UTC")),
            "embedding": pa.array([[float(day), float(i), 0.5, -1.0][:dim] for i in range(n)], pa.list_(pa.float32())),
            "num_events": [1] * n,
        }
    )


def test_item_catalogue_keeps_each_items_latest_day_read_one_day_at_a_time():
    """features.build_item_catalog equals the concatenation of the days with each item's last row kept (what it
    computed before it read days newest first), reading one day's table at a time through readers."""
    days = [_items_day(["i1", "i2", "i3"], 1), _items_day(["i4", "i2", "i4"], 2), _items_day(["i5", "i1"], 3)]
    read: list[int] = []

    def reader(i: int):
        def read_day() -> pa.Table:
            read.append(i)
            return days[i]

        return read_day

    catalog = build_item_catalog([reader(i) for i in range(3)])
    assert read == [2, 1, 0]  # newest first
    naive = pa.concat_tables(days).to_pandas().drop_duplicates("item_id", keep="last").reset_index(drop=True)
    assert list(catalog.item_ids) == list(naive["item_id"]) == ["i3", "i2", "i4", "i5", "i1"]
    assert np.array_equal(catalog.embeddings, np.stack(naive["embedding"].to_numpy()).astype(np.float32))
    assert catalog.embeddings[catalog.rows(pa.array(["i4"]))[0]].tolist() == [2.0, 2.0, 0.5, -1.0]  # day 2's last
    expected = naive.drop(columns=["item_id", "embedding", "num_events"])
    pd.testing.assert_frame_equal(catalog.attributes, expected[catalog.attributes.columns])
    assert build_item_catalog(days).item_ids.tolist() == catalog.item_ids.tolist()  # tables as well as readers


def test_item_catalogue_names_a_row_whose_embedding_has_another_length():
    bad = _items_day(["i1", "i2"], 1).set_column(6, "embedding", pa.array([[1.0, 2.0], [1.0]], pa.list_(pa.float32())))
    with pytest.raises(ValueError, match="embedding of row 1 has 1 values, expected 2"):
        build_item_catalog([bad])


def test_dense_moments_match_numpy_over_batches():
    rng = np.random.default_rng(1)
    cols = {
        "item_video_length_s": rng.uniform(1, 100, 1000),
        "item_age_days": rng.uniform(0, 30, 1000),
        "user_tenure_days": rng.uniform(0, 900, 1000),
    }
    tbl = pa.table(cols)
    m = dense_moments(tbl.to_batches(max_chunksize=128))
    assert m["item_video_length_s"]["mean"] == pytest.approx(np.log1p(cols["item_video_length_s"]).mean())
    assert m["item_age_days"]["std"] == pytest.approx(cols["item_age_days"].std())
    assert m["user_tenure_days"]["transform"] == "log1p"


def brute_auc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    return np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)])


def test_roc_auc_equals_pairwise_definition_with_ties():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(y * 0.7, 1.0), 1)  # rounding makes many ties
    assert roc_auc(y, s) == pytest.approx(brute_auc(y, s))
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert np.isnan(roc_auc(np.ones(5), np.arange(5)))


def test_recall_and_ndcg_at_k_on_a_hand_computed_case():
    ranked = np.array([[3, 1, 7, 9], [2, 4, 6, 8]])
    relevant = [np.array([1, 9]), np.array([5])]
    m = recall_ndcg_at_k(ranked, relevant, [2, 4])
    assert m["recall@2"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["recall@4"] == pytest.approx((1.0 + 0.0) / 2)
    ndcg_q1 = (1 / np.log2(3) + 1 / np.log2(5)) / (1 + 1 / np.log2(3))
    assert m["ndcg@4"] == pytest.approx(ndcg_q1 / 2)


def test_exact_top_k_popularity_and_grouping():
    rng = np.random.default_rng(3)
    q, c = rng.normal(size=(20, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    assert (exact_top_k(q, c, 5, chunk=7) == np.argsort(-(q @ c.T), axis=1)[:, :5]).all()
    assert popularity_ranking(np.array([3, 9, 9, 1]), 3).tolist() == [1, 2, 0]
    groups = group_relevant(np.array([1, 0, 1, 1]), np.array([4, 2, 4, 3]), 3)
    assert [g.tolist() for g in groups] == [[2], [3, 4], []]


def test_training_yaml_errors_name_the_key(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("window_days: 7\nvocab:\n  features: [user_id, colour]\n")
    with pytest.raises(TrainingConfigError, match="vocab"):
        load_training_spec(str(bad))
    bad.write_text("checks:\n  ranker_min_auc: {clicked: 0.6}\n")
    with pytest.raises(TrainingConfigError, match="clicked"):
        load_training_spec(str(bad))
    assert load_training_spec().window_days == 7
