"""Both model assets trained by data-parallel workers through a real Dagster run: two gloo processes under torchrun,
and the cluster path (Spark's TorchDistributor, here on the local Spark session) - beside the same day trained in the
run process."""

from __future__ import annotations

import shutil

import pytest
from dagster import AssetKey

from recsys_assets.config.files import ConfigFilesResource
from recsys_assets.ml.artifacts import ArtifactDir
from resources.storage import StorageResource
from resources.store import DatasetStore
from resources.training import TrainingResource
from tests.helpers import DAYS, LENIENT, run_job, training_yaml

pytestmark = pytest.mark.slow

MODELS = [AssetKey("vocab"), AssetKey("ranker_model"), AssetKey("retrieval_model")]
MODEL_NAMES = ["ranker_model", "retrieval_model"]


def _train(instance, root, config_path, training: TrainingResource, extra: dict | None = None, selection=MODELS):
    resources = {
        "storage": StorageResource(data_root=str(root)),
        "training": training,
        "config_files": ConfigFilesResource(training=config_path),
        **(extra or {}),
    }
    return run_job("training_job", DAYS[2], instance, resources, asset_selection=selection)


def _materialization(instance, key: str):
    return instance.fetch_materializations(AssetKey(key), limit=1).records[0].asset_materialization


def test_two_gloo_workers_train_both_models_like_one_process(instance, trained_root, tmp_path):
    config = training_yaml(tmp_path, **LENIENT)
    one_root = tmp_path / "one"
    shutil.copytree(trained_root, one_root)
    one = _train(instance, one_root, config, TrainingResource(device="cpu", num_threads=2))
    assert one.success
    single = {m: ArtifactDir.committed(DatasetStore(str(one_root)), m, DAYS[2]) for m in MODEL_NAMES}

    two = _train(instance, trained_root, config, TrainingResource(device="cpu", launcher="torchrun", processes=2))
    assert two.success
    store = DatasetStore(str(trained_root))
    for name in MODEL_NAMES:
        mat = _materialization(instance, name)
        assert mat.metadata["launcher"].value == "torchrun" and mat.metadata["processes"].value == 2
        per_rank = mat.metadata["samples_per_s_per_rank"].value["last_epoch"]
        assert len(per_rank) == 2 and all(r > 0 for r in per_rank)
        info = ArtifactDir.committed(store, name, DAYS[2]).read_json("training.json")
        assert info["settings"]["world_size"] == 2
        # every row of the window once per epoch, split over the two ranks (the two-tower drops each rank's last
        # partial batch, as one process drops its last one)
        samples = [h["samples"] for h in info["history"]]
        single_samples = [h["samples"] for h in single[name].read_json("training.json")["history"]]
        if name == "ranker_model":
            assert samples[0] == single_samples[0]
        else:
            assert abs(samples[0] - single_samples[0]) < 512
        assert not store.exists(store.path("_checkpoints", name, f"dt={DAYS[2]}"))  # cleared after commit

    # Quality within the test world's noise of the one-process model (3 days x 30k events: the same config's AUC and
    # recall move by about this much between batch orders).
    auc_one = single["ranker_model"].read_json("metrics.json")["auc"]
    auc_two = ArtifactDir.committed(store, "ranker_model", DAYS[2]).read_json("metrics.json")["auc"]
    for task in auc_one:
        assert abs(auc_one[task] - auc_two[task]) < 0.03, (task, auc_one[task], auc_two[task])
    recall_one = single["retrieval_model"].read_json("metrics.json")["model_recall@10"]
    recall_two = ArtifactDir.committed(store, "retrieval_model", DAYS[2]).read_json("metrics.json")["model_recall@10"]
    assert abs(recall_one - recall_two) < 0.05, (recall_one, recall_two)


@pytest.mark.spark
def test_the_cluster_path_trains_through_torch_distributor_on_spark(instance, trained_root, tmp_path, spark_resource):
    config = training_yaml(tmp_path, **LENIENT)
    result = _train(
        instance,
        trained_root,
        config,
        TrainingResource(device="cpu", launcher="spark", processes=2),
        {"spark": spark_resource},
        selection=MODELS[:2],
    )
    assert result.success
    mat = _materialization(instance, "ranker_model")
    assert mat.metadata["launcher"].value == "spark" and mat.metadata["processes"].value == 2
    info = ArtifactDir.committed(DatasetStore(str(trained_root)), "ranker_model", DAYS[2]).read_json("training.json")
    assert info["settings"]["world_size"] == 2 and len(info["history"][-1]["rank_samples_per_s"]) == 2
