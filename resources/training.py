"""Training device resource: where and how a training runs (device, bf16, threads, seed), the same training code
on CPU here and on a GPU node in production.

Only the resource values differ between environments (RECSYS_TRAINING_DEVICE=cuda on a GPU host). Model sizes
(epochs, batch size, learning rate, layer sizes) are not here: they live in the training YAML, their one source
(recsys_assets/config/training.py). The resource imports nothing of the training code: `runtime()` is a plain dict
the model library's TrainSettings takes, and `launch()` says where the data-parallel workers run (in the run
process, torchrun on this host, or TorchDistributor on the Spark cluster: ml/launch.py).
"""

from __future__ import annotations

from typing import Literal

from dagster import ConfigurableResource
from pydantic import Field

from resources.devices import resolve_device, runtime_of

__all__ = ["TrainingResource", "resolve_device"]


class TrainingResource(ConfigurableResource):
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N; auto picks CUDA when present.")
    mixed_precision: Literal["auto", "off", "bf16"] = Field(
        default="auto", description="bf16 autocast; auto = on for CUDA, off on CPU (CPU runs stay bit-reproducible)."
    )
    num_threads: int = Field(default=0, ge=0, description="torch intra-op threads; 0 = torch default.")
    seed: int = Field(default=7, description="Seed of initial weights and batch order (a run is reproducible).")
    launcher: Literal["in_process", "torchrun", "spark"] = Field(
        default="in_process",
        description="in_process: train in the run's step process (one process; the demo's default). torchrun: "
        "`processes` data-parallel workers on this host (gloo on CPU, NCCL with one GPU each). spark: "
        "`processes` workers on the Spark cluster's executors through TorchDistributor (the Dataproc GPU path).",
    )
    processes: int = Field(
        default=1, ge=1, le=4096, description="Data-parallel worker processes (torchrun: per host; spark: in total)."
    )
    restarts: int = Field(
        default=1,
        ge=0,
        le=100,
        description="torchrun: how many times the worker group is started again after a failed rank (each start "
        "resumes from the last epoch checkpoint).",
    )
    worker_timeout_s: float = Field(
        default=1800.0,
        gt=0,
        description="How long a collective may wait for a silent rank before the workers fail (a hung rank must "
        "not hold the training pool forever); not a limit on the training's length.",
    )

    def runtime(self) -> dict:
        """device (resolved here), mixed_precision, num_threads, seed: the run-time half of a model's TrainSettings
        for a training in this process."""
        return runtime_of(self.device, self.mixed_precision, self.num_threads, self.seed)

    def worker_runtime(self) -> dict:
        """The same settings unresolved: a worker resolves `auto` on the host it runs on."""
        return {
            "device": self.device,
            "mixed_precision": self.mixed_precision,
            "num_threads": self.num_threads,
            "seed": self.seed,
        }

    def launch(self) -> dict:
        """How the model library's launcher starts the workers (ml/launch.py)."""
        return {
            "launcher": self.launcher,
            "processes": self.processes,
            "restarts": self.restarts,
            "timeout_s": self.worker_timeout_s,
            "use_gpu": self.device.startswith("cuda"),
        }
