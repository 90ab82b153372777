"""Where a model asset's training runs, by the training resource's `launcher`: in the run process (one process:
the demo's default), or data-parallel workers that write the version the asset then publishes: `torchrun` on this
host, or `spark` (TorchDistributor on the Spark resource's cluster, the same Spark stage path as datagen: in-process
session, spark-submit or Dataproc). The asset's code is the same either way; only the resource config differs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from recsys_assets.config.training import TrainingSpec
from recsys_assets.core.runs import DayRun
from recsys_assets.core.spark_stages import stage_job
from recsys_assets.core.store_dirs import PartitionVersion
from recsys_assets.ml.launch import run_torchrun
from recsys_assets.ml.memory import bound_heap_growth, release_memory
from recsys_assets.ml.train import ModelInputs, TrainedModel
from recsys_assets.ml.trainer import CheckpointStore
from recsys_assets.ml.worker import TrainingJob


@dataclass(frozen=True)
class ModelRun:
    """A published model version and what it reports."""

    out: PartitionVersion
    metrics: dict
    training_info: dict
    launcher: str
    processes: int


def train_model(
    run: DayRun,
    name: str,
    train: Callable[..., TrainedModel],
    spec: TrainingSpec,
    training,
    spark=None,
    context=None,
) -> ModelRun:
    launch = training.launch()
    if launch["launcher"] == "in_process":
        bound_heap_growth()  # this run process trains: freed temporaries go back to the system (ml/memory.py)
        release_memory()  # what an earlier step of this process freed (its steps run one after another)
        try:
            inputs = ModelInputs.resolve(run.store, run.day, spec, run.log)
            trained = train(inputs, training.runtime(), run.run_id, run.log)
            out = run.write(name, trained.write)
            trained.published()
            return ModelRun(out, trained.metrics, trained.training_info, "in_process", 1)
        finally:
            inputs = trained = None
            release_memory()
    out = run.new_version(name)
    job = TrainingJob(
        model=name,
        day=run.day,
        data_root=run.store.root_uri,
        spec=spec.model_dump(mode="json"),
        runtime=training.worker_runtime(),
        run_id=run.run_id,
        version=out.version,
        timeout_s=launch["timeout_s"],
    )
    if launch["launcher"] == "torchrun":
        result = run_torchrun(job, launch["processes"], launch["restarts"], run.log)
    else:
        fields = {k: v for k, v in job.to_dict().items() if k not in ("data_root", "day", "version", "result_path")}
        params = {"job": fields, "processes": launch["processes"], "use_gpu": launch["use_gpu"]}
        result = spark.run_job(context, stage_job(name, run.store, run.day, out.version, params))
    out.publish(**result["manifest"])
    CheckpointStore(run.store, result["checkpoints"]).clear()  # the model is committed (or staged for its gate)
    return ModelRun(out, result["metrics"], result["training_info"], launch["launcher"], launch["processes"])
