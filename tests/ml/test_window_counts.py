"""The training window's counts on Spark (ml/window_counts.py) equal the in-process computations they replace, on the
datagen output of the demo's generator: token counts and the vocabulary merged from them (previous tokens kept),
dense moments, validation-day OOV rates, the ranker's item priors over its training rows (held-out users excluded,
including users the vocab keeps from the previous day), the two-tower's per-day positives and the cold-start window
counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys_assets.config.training import TrainingSpec
from recsys_assets.core.datasets import VOCAB
from recsys_assets.core.readers import read_final_items
from recsys_assets.core.store_dirs import PartitionVersion
from recsys_assets.ml.features import DENSE_FEATURES, build_item_catalog, count_tokens, dense_moments, oov_rates
from recsys_assets.ml.loader import (
    BatchEncoder,
    committed_events_dataset,
    holdout_user_ids,
    item_day_frequencies,
    retrieval_positive_filter,
    split_holdout,
)
from recsys_assets.ml.ranker import item_priors
from recsys_assets.ml.train import build_day_vocab, vocab_inputs
from recsys_assets.ml.window_counts import WindowCounts, window_counts_params, window_counts_stage
from resources.store import DatasetStore
from tests.helpers import DAYS

SPEC = {
    "window_days": 2,
    "min_window_days": 1,
    "vocab": {"min_count": 2},
    "ranker": {"early_stopping": True, "holdout_pct": 30.0},
}


def counted(spark, store: DatasetStore, day: str, spec: TrainingSpec) -> tuple[WindowCounts, PartitionVersion]:
    window, previous = vocab_inputs(store, day, spec)
    out = PartitionVersion.new(store, VOCAB, day, "spark")
    summary = window_counts_stage(spark, store, day, out.version, window_counts_params(store, window, spec, previous))
    assert summary["window_rows"] == committed_events_dataset(store, window.train_days).count_rows()
    return WindowCounts.read(store, out), out


@pytest.fixture(scope="module")
def world(spark, datagen_root, tmp_path_factory):
    import shutil

    root = tmp_path_factory.mktemp("window_counts") / "data"
    shutil.copytree(datagen_root, root)
    store = DatasetStore(str(root))
    # The previous day's vocab keeps users seen once (min_count 1): the next vocab keeps them, so the ranker may hold
    # them out although they are rare in its window.
    first = TrainingSpec.model_validate({**SPEC, "vocab": {"min_count": 1}})
    prev = build_day_vocab(store, DAYS[1], first)
    out = PartitionVersion.new(store, VOCAB, DAYS[1], "prev")
    prev.write(out)
    store.commit(VOCAB, DAYS[1], out.version, row_count=prev.stats["num_tokens"])
    spec = TrainingSpec.model_validate(SPEC)
    counts, _ = counted(spark, store, DAYS[2], spec)
    return store, spec, counts


def test_vocab_moments_and_oov_equal_the_python_pass(world):
    store, spec, counts = world
    day = DAYS[2]
    window, _ = vocab_inputs(store, day, spec)
    train = committed_events_dataset(store, window.train_days)
    features = spec.vocab.features
    python = count_tokens(train.to_batches(columns=features), features)
    spark = counts.token_counts()
    for f in features:
        a, b = python[f].sort_index(), spark[f].sort_index()
        assert len(a) > 0, f
        assert list(a.index.astype(str)) == list(b.index) and a.to_numpy().tolist() == b.to_numpy().tolist(), f

    py_moments = dense_moments(train.to_batches(columns=list(DENSE_FEATURES)))
    for f, m in counts.moments().items():
        assert m["mean"] == pytest.approx(py_moments[f]["mean"], rel=1e-9, abs=1e-12), f
        assert m["std"] == pytest.approx(py_moments[f]["std"], rel=1e-9), f

    from_spark, in_process = build_day_vocab(store, day, spec, counts), build_day_vocab(store, day, spec)
    assert from_spark.stats["warm_start_from"] == DAYS[1] and from_spark.stats["counted_on"] == "spark"
    for f in features:
        pd.testing.assert_frame_equal(from_spark.vocab.tables[f], in_process.vocab.tables[f], check_dtype=False)
    # The previous vocab's rare users are kept (count below min_count in this window).
    users = from_spark.vocab.tables["user_id"]
    assert (users["count"] < 2).any()
    py_oov = oov_rates(from_spark.vocab, committed_events_dataset(store, [day]).to_batches(columns=features))
    assert counts.oov_rates(from_spark.vocab) == pytest.approx(py_oov, abs=1e-12)
    assert from_spark.stats["oov_rate_validation_day"] == pytest.approx(in_process.stats["oov_rate_validation_day"])
    assert max(py_oov.values()) > 0  # the validation day has tokens the window has not


def test_item_priors_day_positives_and_cold_start_counts_equal_the_python_pass(world):
    store, spec, counts = world
    day = DAYS[2]
    window, _ = vocab_inputs(store, day, spec)
    vocab = build_day_vocab(store, day, spec, counts)
    catalog = build_item_catalog([read_final_items(store, d) for d in [*window.train_days, day]])
    encoder = BatchEncoder(vocab.vocab, vocab.moments, catalog, spec.labels)
    train = committed_events_dataset(store, window.train_days)

    held = holdout_user_ids(vocab.vocab, spec.ranker.holdout_pct)
    assert 0 < len(held) < vocab.vocab.cardinality("user_id")
    rows, _ = split_holdout(None, held)
    python = item_priors(train, encoder, 5.0, rows)
    spark = counts.item_priors(encoder, window.train_days, 5.0, spec.ranker.holdout_pct)
    np.testing.assert_allclose(spark.bias_logits, python.bias_logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(spark.catalog_rates, python.catalog_rates, rtol=1e-12, atol=1e-15)
    # Counted with the whole window (no holdout) they differ: the holdout mattered, and another pct is refused.
    assert not np.allclose(item_priors(train, encoder, 5.0).catalog_rates, python.catalog_rates)
    assert counts.item_priors(encoder, window.train_days, 5.0, 10.0) is None

    positives = item_day_frequencies(train, catalog, retrieval_positive_filter(spec.labels))
    from_counts = counts.item_day_positives(catalog, window.train_days)
    assert sorted(from_counts) == sorted(positives) == window.train_days
    for d in window.train_days:
        assert from_counts[d].sum() > 0 and np.array_equal(from_counts[d], positives[d]), d

    days = [*window.train_days, day]
    events = committed_events_dataset(store, days)
    cold = count_tokens(events.to_batches(columns=["item_id"]), ["item_id"])["item_id"].sort_index()
    assert counts.item_rows(days).sort_index().to_dict() == cold.to_dict()
    assert counts.covers(window.versions)
    assert not counts.covers({**window.versions, day: "another-version"})
