"""A data-parallel training worker: one rank of a day's ranker or two-tower training.

    python -m torch.distributed.run --standalone --nproc-per-node N -m recsys_assets.ml.worker JOB.json

or `run_job(job)` as the function Spark's TorchDistributor runs on the cluster's executors. Every rank resolves the
day's inputs, trains on its share of the window (ml/distributed.py); rank 0 then evaluates on the validation day,
writes the model's files into the version directory the asset named (not committed: the asset publishes it, so its
gates still decide what downstream reads), and hands back the result: returned (TorchDistributor gives the driver
rank 0's return value) and written to the job's `result_path` when it has one (torchrun).

The job is a plain JSON object (`TrainingJob.to_dict`): the training YAML is passed parsed, as the asset read it
(one read time per setting), and the runtime unresolved, so `auto` picks the device on the host the rank runs on.
No Dagster here.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass

from recsys_assets.core.datasets import RANKER_MODEL, RETRIEVAL_MODEL


@dataclass(frozen=True)
class TrainingJob:
    model: str  # RANKER_MODEL | RETRIEVAL_MODEL
    day: str
    data_root: str
    spec: dict  # TrainingSpec.model_dump(mode="json")
    runtime: dict  # TrainingResource.worker_runtime(): device, mixed_precision, num_threads, seed (unresolved)
    run_id: str
    version: str  # the version directory rank 0 writes the model's files into
    timeout_s: float = 1800.0
    result_path: str = ""  # local file rank 0 writes its result to (torchrun); "" = only returned

    def __post_init__(self):
        if self.model not in (RANKER_MODEL, RETRIEVAL_MODEL):
            raise ValueError(f"training job for unknown model {self.model!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def run_job(job: dict) -> dict | None:
    """Train this rank's share; on rank 0 also evaluate and write the model. Returns rank 0's result, else None."""
    import torch.distributed as dist

    from recsys_assets.config.training import TrainingSpec
    from recsys_assets.core.store_dirs import PartitionVersion
    from recsys_assets.ml.distributed import init_process_group, local_device
    from recsys_assets.ml.memory import bound_heap_growth
    from recsys_assets.ml.train import ModelInputs, train_day_ranker, train_day_retrieval
    from resources.devices import runtime_of
    from resources.store import DatasetStore

    bound_heap_growth()  # freed temporaries go back to the system (ml/memory.py)
    spec_job = TrainingJob(**job)
    rt = spec_job.runtime
    runtime = runtime_of(local_device(rt["device"]), rt["mixed_precision"], rt["num_threads"], rt["seed"])
    rank = init_process_group(runtime["device"], spec_job.timeout_s)
    t0 = time.perf_counter()

    def log(message: str) -> None:
        if rank.is_main:
            print(f"[rank 0/{rank.world_size}] {message}", flush=True)

    try:
        store = DatasetStore(spec_job.data_root)
        inputs = ModelInputs.resolve(store, spec_job.day, TrainingSpec.model_validate(spec_job.spec), log)
        train = train_day_ranker if spec_job.model == RANKER_MODEL else train_day_retrieval
        runtime |= {"rank": rank.rank, "world_size": rank.world_size}
        trained = train(inputs, runtime, spec_job.run_id, log)
        if trained is None:  # not rank 0: its share is trained
            return None
        out = PartitionVersion(store, spec_job.model, spec_job.day, spec_job.version)
        result = {
            "manifest": trained.write(out),
            "metrics": trained.metrics,
            "training_info": trained.training_info,
            "window": trained.window.as_dict(),
            "device": trained.settings.device,
            "checkpoints": trained.checkpoints.directory,
            "trained_samples": trained.fit.trained_samples,
            "world_size": rank.world_size,
            "worker_seconds": round(time.perf_counter() - t0, 2),
        }
        if spec_job.result_path:
            tmp = spec_job.result_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(result, f)
            os.replace(tmp, spec_job.result_path)
        return result
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m recsys_assets.ml.worker JOB.json", file=sys.stderr)
        return 2
    with open(args[0]) as f:
        run_job(json.load(f))
    return 0


if __name__ == "__main__":
    sys.exit(main())
