"""The library's day-level entry points without Dagster: a day's vocab, ranker, two-tower and retrieval index from
committed training_events, written through the same partition writer the assets use."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_assets.config.training import TrainingSpec
from recsys_assets.core.datasets import RANKER_MODEL, RETRIEVAL_INDEX, RETRIEVAL_MODEL, VOCAB
from recsys_assets.core.days import shift_day
from recsys_assets.core.store_dirs import PartitionVersion
from recsys_assets.ml.artifacts import ArtifactDir
from recsys_assets.ml.faiss_index import IndexSpec
from recsys_assets.ml.indexing import IndexSettings, build_retrieval_index
from recsys_assets.ml.loader import committed_events_dataset, item_day_frequencies, retrieval_positive_filter
from recsys_assets.ml.train import ModelInputs, build_day_vocab, train_day_ranker, train_day_retrieval
from recsys_assets.ml.trend import raw_trend, trend_rows
from resources.store import DatasetStore
from tests.helpers import TRAIN_DAYS, VALID_DAY, populate

RUNTIME = {"device": "cpu", "mixed_precision": False, "num_threads": 2, "seed": 7}


def write(store: DatasetStore, dataset: str, day: str, result) -> PartitionVersion:
    """What DayRun.write does for an asset: a new version, the result's files, one publish."""
    out = PartitionVersion.new(store, dataset, day, "test")
    out.publish(**(result.write(out) or {}))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    store = DatasetStore(str(tmp_path_factory.mktemp("entry_points")))
    populate(store, [*TRAIN_DAYS, VALID_DAY], events_per_day=4000)
    spec = TrainingSpec.model_validate(
        {
            "window_days": 3,
            "min_window_days": 3,
            "history": {"enabled": False},
            "ranker": {"epochs": 2, "batch_size": 512, "item_trend": True},
            "retrieval": {"epochs": 2, "batch_size": 512},
            "checks": {"retrieval_k": 10},
        }
    )
    return store, spec


def test_vocab_ranker_two_tower_and_index_of_a_day(world):
    store, spec = world
    vocab = build_day_vocab(store, VALID_DAY, spec)
    assert vocab.window.train_days == TRAIN_DAYS
    assert vocab.stats["warm_start_from"] is None  # the first vocab of this store
    write(store, VOCAB, VALID_DAY, vocab)
    read_back, _ = ArtifactDir.committed(store, VOCAB, VALID_DAY).read_vocab()
    assert read_back.cardinality("user_id") == vocab.stats["cardinality"]["user_id"] > 2

    logs: list[str] = []
    inputs = ModelInputs.resolve(store, VALID_DAY, spec, logs.append)
    assert inputs.history_len == 0 and inputs.encoder.history is None

    ranker = train_day_ranker(inputs, RUNTIME, "run-1", logs.append)
    assert ranker.metrics["validation_day"] == VALID_DAY and ranker.metrics["previous_model_day"] is None
    assert ranker.metrics["auc"]["liked"] > 0.6  # labels depend on user x content affinity in this world
    assert ranker.metrics["auc_history_free"] == {}  # no history: no comparison model
    # the epoch count the holdout fit chose on the window's last day (at most the configured 2)
    fitted = ranker.training_info["holdout_fit"]
    assert fitted["holdout_day"] == TRAIN_DAYS[-1] and ranker.metrics["epochs"] == fitted["epochs"] in (1, 2)
    assert [h["epoch"] for h in ranker.training_info["history"]] == list(range(fitted["epochs"]))
    assert ranker.training_info["settings"]["batch_size"] == 512 and ranker.settings.seed == 7
    out = write(store, RANKER_MODEL, VALID_DAY, ranker)
    ranker.published()
    assert not store.exists(ranker.checkpoints.directory)
    # Staged for its blocking gate (ranker_auc_gate), not committed: the writer never commits a gated model.
    assert store.gate_state(RANKER_MODEL, VALID_DAY).state == "pending"
    for name in ("model.pt", "ranker.pt2", "vocab.parquet", "metrics.json", "training.json"):
        assert store.exists(out.path(name)), name
    # Trend inputs (ranker.item_trend, on here): 3 dense features + 2; the artifact carries the inputs of the day the
    # release serves (the day after VALID_DAY: VALID_DAY and the two days before it), counted here from the events.
    assert ranker.model_config["num_dense"] == 5 and ranker.metrics["item_trend"] is True
    catalog = inputs.encoder.catalog
    counted = item_day_frequencies(
        committed_events_dataset(store, [*TRAIN_DAYS, VALID_DAY]), catalog, retrieval_positive_filter(spec.labels)
    )
    want = raw_trend(counted, shift_day(VALID_DAY, 1), len(catalog))
    assert want[:, 0].any()
    np.testing.assert_allclose(trend_rows(out.read_table("item_trend.parquet"), catalog), want, rtol=1e-6)

    retrieval = train_day_retrieval(inputs, RUNTIME, "run-1", logs.append)
    methods = retrieval.metrics["methods"]
    # item-kNN needs histories; the blend with the recency prior is there when the holdout fit chose a weight > 0
    served = retrieval.metrics["primary_method"]
    prior = retrieval.metrics["recency_prior"]
    assert served == ("two-tower + recency prior" if prior else "two-tower")
    assert set(methods) == {"two-tower", "most-popular", "recent-popular"} | {served}
    assert retrieval.training_info["holdout_fit"]["holdout_day"] == TRAIN_DAYS[-1]
    assert methods["two-tower"]["recall@10"] > methods["most-popular"]["recall@10"]
    assert retrieval.metrics["model_recall@10"] == methods[served]["recall@10"]
    retrieval_out = write(store, RETRIEVAL_MODEL, VALID_DAY, retrieval)
    store.record_verdict(RETRIEVAL_MODEL, VALID_DAY, retrieval_out.version, "retrieval_recall_gate", True)

    index = build_retrieval_index(store, VALID_DAY, spec, IndexSettings(IndexSpec(), recall_k=10))
    assert index.desc["type"] == "IndexFlatIP" and index.desc["recall_vs_exact"] == 1.0
    assert index.items.num_rows == len(inputs.encoder.catalog) == index.desc["num_vectors"]
    write(store, RETRIEVAL_INDEX, VALID_DAY, index)
