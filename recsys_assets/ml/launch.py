"""Starting a day's data-parallel training where its resource says: `torchrun` workers on this host, or Spark's
TorchDistributor on the Spark cluster's executors (the Dataproc GPU path). Both run the same worker
(ml/worker.py) and hand back rank 0's result; the caller (the model asset) publishes the version rank 0 wrote.

The run process only waits: it streams the workers' log lines and holds no training data.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable

from recsys_assets.ml.worker import TrainingJob

Log = Callable[[str], None]


class TrainingWorkersFailed(RuntimeError):
    pass


def torchrun_command(job_path: str, processes: int) -> list[str]:
    """torchrun on one host, on a free rendezvous port (--standalone)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "--max-restarts=0",
        "-m",
        "recsys_assets.ml.worker",
        job_path,
    ]


def run_torchrun(job: TrainingJob, processes: int, restarts: int, log: Log, env: dict | None = None) -> dict:
    """Run the job's workers under torchrun and return rank 0's result. A failed rank fails the group; the group is
    then started again (up to `restarts` times, each a fresh torchrun on a fresh port: torchrun's own in-place
    restarts can hang re-connecting gloo), and resumes from the last epoch checkpoint. TrainingWorkersFailed with
    the workers' last output lines when the last attempt fails."""
    with tempfile.TemporaryDirectory(prefix="recsys-train-") as tmp:
        job_path = os.path.join(tmp, "job.json")
        job = TrainingJob(**{**job.to_dict(), "result_path": os.path.join(tmp, "result.json")})
        with open(job_path, "w") as f:
            json.dump(job.to_dict(), f)
        for attempt in range(restarts + 1):
            rc, last = _run_once(torchrun_command(job_path, processes), log, env)
            if rc == 0 and os.path.exists(job.result_path):
                with open(job.result_path) as f:
                    return json.load(f)
            if attempt < restarts:
                log(
                    f"{job.model} {job.day}: {processes} worker(s) failed (exit {rc}); starting them again "
                    f"({attempt + 1}/{restarts}), from the last epoch checkpoint"
                )
        tail = "\n".join(last)
        raise TrainingWorkersFailed(
            f"{job.model} {job.day}: {processes} torchrun worker(s) failed (exit {rc}) after {restarts} restart(s); "
            f"last output:\n{tail}"
        )


def _run_once(command: list[str], log: Log, env: dict | None) -> tuple[int, collections.deque]:
    """One torchrun: rank 0's lines and any error line go to `log`; (exit code, the last 40 lines)."""
    last: collections.deque = collections.deque(maxlen=40)
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            last.append(line)
            if line.startswith("[rank 0/") or "error" in line.lower():
                log(line)
        return proc.wait(), last
    finally:
        if proc.poll() is None:  # the run process is being stopped: take the workers with it
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_torch_distributor(job: TrainingJob, processes: int, spark, use_gpu: bool, log: Log) -> dict:
    """Run the job's workers as a barrier stage of `processes` tasks on the Spark cluster's executors
    (pyspark.ml.torch.distributor.TorchDistributor, local_mode=False: one task per worker, GPUs from the executors'
    resource profile when `use_gpu`); returns rank 0's result. The data root must be one every executor reads and
    writes (gs:// on Dataproc)."""
    from pyspark.ml.torch.distributor import TorchDistributor

    from recsys_assets.ml.worker import run_job

    log(f"{job.model} {job.day}: {processes} TorchDistributor worker(s) on {spark.sparkContext.master}")
    distributor = TorchDistributor(num_processes=processes, local_mode=False, use_gpu=use_gpu)
    result = distributor.run(run_job, job.to_dict())
    if not isinstance(result, dict):
        raise TrainingWorkersFailed(f"{job.model} {job.day}: rank 0 returned no result ({result!r})")
    return result


def training_stage(session, store, day: str, version: str, params: dict) -> dict:
    """A model training as a Spark stage (core/spark_stages.py): the same job in-process (the session's master: a
    standalone or YARN cluster, or local), as a spark-submit or as a Dataproc job (its driver runs TorchDistributor
    on the cluster's executors and hands rank 0's result back through Pipes). params: {"job": TrainingJob fields
    other than data root, day and version, "processes": N, "use_gpu": bool}."""
    job = TrainingJob(**{**params["job"], "data_root": store.root_uri, "day": day, "version": version})
    return run_torch_distributor(job, int(params["processes"]), session, bool(params["use_gpu"]), print)
