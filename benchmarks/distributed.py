"""Data-parallel training throughput: both models of one day trained by 1 and by N torchrun worker processes (gloo
on CPU, NCCL on GPUs) on a committed data root (e.g. the demo's), one epoch each, with the quality each reached.
Prints JSON (samples/s in total and per rank, seconds, AUC / recall@10).

    .venv/bin/python benchmarks/distributed.py --data-root data --day 2024-03-08 [--processes 1,2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time

import torch

from recsys_assets.config.training import load_training_spec
from recsys_assets.core.datasets import RANKER_MODEL, RETRIEVAL_MODEL
from recsys_assets.ml.launch import run_torchrun
from recsys_assets.ml.trainer import CheckpointStore
from recsys_assets.ml.worker import TrainingJob
from resources.store import DatasetStore


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-root", required=True)
    p.add_argument("--day", required=True)
    p.add_argument("--processes", default="1,2")
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, default=1)
    a = p.parse_args()
    store = DatasetStore(a.data_root)
    spec = load_training_spec()
    one_epoch = {"epochs": a.epochs}
    spec = spec.model_copy(
        update={
            "ranker": spec.ranker.model_copy(update=one_epoch),
            "retrieval": spec.retrieval.model_copy(update=one_epoch),
            "history": spec.history.model_copy(update={"compare_history_free": "never"}),
        }
    )
    out = {
        "benchmark": "distributed",
        "device": a.device,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "day": a.day,
        "epochs": a.epochs,
        "runs": [],
    }
    for model in (RANKER_MODEL, RETRIEVAL_MODEL):
        for n in [int(x) for x in a.processes.split(",")]:
            version = f"bench-{model[:4]}-{n}-{int(time.time())}"
            job = TrainingJob(
                model=model,
                day=a.day,
                data_root=store.root_uri,
                spec=spec.model_dump(mode="json"),
                runtime={"device": a.device, "mixed_precision": "auto", "num_threads": 0, "seed": 7},
                run_id="bench",
                version=version,
            )
            t0 = time.perf_counter()
            result = run_torchrun(job, n, 0, lambda m: None)
            wall = time.perf_counter() - t0
            CheckpointStore(store, result["checkpoints"]).clear()
            shutil.rmtree(store.version_path(model, a.day, version), ignore_errors=True)
            last = result["training_info"]["history"][-1]
            metrics = result["metrics"]
            quality = {"auc": metrics["auc"]} if model == RANKER_MODEL else {"recall@10": metrics["model_recall@10"]}
            row = {
                "model": model,
                "processes": n,
                "samples": last["samples"],
                "epoch_seconds": last["seconds"],
                "samples_per_s": last["samples_per_s"],
                "rank_samples_per_s": last.get("rank_samples_per_s", [last["samples_per_s"]]),
                "wall_seconds": round(wall, 1),
                **quality,
            }
            out["runs"].append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
