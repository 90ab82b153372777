"""Training device resource: where and how a training runs (device, bf16, threads, seed), the same training code
on CPU here and on a GPU node in production.

Only the resource values differ between environments (RECSYS_TRAINING_DEVICE=cuda on a GPU host). Model sizes
(epochs, batch size, learning rate, layer sizes) are not here: they live in the training YAML, their one source
(recsys_assets/config/training.py). The resource imports nothing of the training code: `runtime()` is a plain dict
the model library's TrainSettings takes.
"""

from __future__ import annotations

from typing import Literal

from dagster import ConfigurableResource
from pydantic import Field


def resolve_device(requested: str) -> str:
    import torch  # here: building the Definitions must not import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"training device {requested!r} requested but CUDA is not available on this host")
    return requested


class TrainingResource(ConfigurableResource):
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N; auto picks CUDA when present.")
    mixed_precision: Literal["auto", "off", "bf16"] = Field(
        default="auto", description="bf16 autocast; auto = on for CUDA, off on CPU (CPU runs stay bit-reproducible)."
    )
    num_threads: int = Field(default=0, ge=0, description="torch intra-op threads; 0 = torch default.")
    seed: int = Field(default=7, description="Seed of initial weights and batch order (a run is reproducible).")

    def runtime(self) -> dict:
        """device (resolved), mixed_precision, num_threads, seed: the run-time half of a model's TrainSettings."""
        device = resolve_device(self.device)
        amp = self.mixed_precision == "bf16" or (self.mixed_precision == "auto" and device.startswith("cuda"))
        return {"device": device, "mixed_precision": amp, "num_threads": self.num_threads, "seed": self.seed}
