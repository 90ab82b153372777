"""Training device resource: the same training code on CPU here and on a GPU node in production.

Only the resource values differ between environments (RECSYS_TRAINING_DEVICE=cuda on a GPU host). The resource
hands the training code its settings (`TrainSettings`); it imports nothing of the training code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dagster import ConfigurableResource
from pydantic import Field


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 2
    batch_size: int = 2048
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    seed: int = 7
    device: str = "cpu"  # resolved: "cpu" or "cuda[:n]"
    mixed_precision: bool = False  # bf16 autocast, GPU only
    num_threads: int = 0  # 0 = torch default
    shuffle_buffer_rows: int = 1_000_000


def resolve_device(requested: str) -> str:
    import torch  # here: building the Definitions must not import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"training device {requested!r} requested but CUDA is not available on this host")
    return requested


class TrainingResource(ConfigurableResource):
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N; auto picks CUDA when present.")
    batch_size: int = Field(default=2048, ge=1)
    epochs: int = Field(default=2, ge=1)
    learning_rate: float = Field(default=2e-3, gt=0)
    mixed_precision: Literal["auto", "off", "bf16"] = Field(
        default="auto", description="bf16 autocast; auto = on for CUDA, off on CPU (CPU runs stay bit-reproducible)."
    )
    num_threads: int = Field(default=0, ge=0, description="torch intra-op threads; 0 = torch default.")
    seed: int = 7
    shuffle_buffer_rows: int = Field(default=1_000_000, ge=1, description="Rows shuffled together by the loader.")

    def settings(self, **overrides) -> TrainSettings:
        device = resolve_device(self.device)
        amp = self.mixed_precision == "bf16" or (self.mixed_precision == "auto" and device.startswith("cuda"))
        base = dict(
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            seed=self.seed,
            device=device,
            mixed_precision=amp,
            num_threads=self.num_threads,
            shuffle_buffer_rows=self.shuffle_buffer_rows,
        )
        base.update({k: v for k, v in overrides.items() if v is not None})
        return TrainSettings(**base)
