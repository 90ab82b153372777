"""A small day to train data-parallel workers on without Spark: the populated training_events of tests/helpers.py,
the validation day's vocab committed, and a training spec without user_history (which needs the Spark stage)."""

from __future__ import annotations

from pathlib import Path

from recsys_assets.config.training import TrainingSpec, load_training_spec
from recsys_assets.core.datasets import RANKER_MODEL
from recsys_assets.core.store_dirs import PartitionVersion
from recsys_assets.ml.train import build_day_vocab
from recsys_assets.ml.worker import TrainingJob
from resources.store import DatasetStore
from tests.helpers import TRAIN_DAYS, VALID_DAY, populate, training_yaml


def prepared_store(root: Path, sections: dict | None = None) -> tuple[DatasetStore, TrainingSpec]:
    root.mkdir(parents=True)
    store = DatasetStore(str(root))
    populate(store, [*TRAIN_DAYS, VALID_DAY])
    spec = load_training_spec(training_yaml(root.parent, history={"enabled": False}, sections=sections))
    vocab = build_day_vocab(store, VALID_DAY, spec)
    out = PartitionVersion.new(store, "vocab", VALID_DAY, "test")
    out.publish(**(vocab.write(out) or {}))
    return store, spec


def job_for(store: DatasetStore, spec: TrainingSpec, version: str, model: str = RANKER_MODEL) -> TrainingJob:
    return TrainingJob(
        model=model,
        day=VALID_DAY,
        data_root=store.root_uri,
        spec=spec.model_dump(mode="json"),
        runtime={"device": "cpu", "mixed_precision": "off", "num_threads": 1, "seed": 7},
        run_id="test",
        version=version,
        timeout_s=300,
    )
