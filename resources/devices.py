"""Which torch device a training process uses: plain code (no Dagster), shared by the training resource in the run
process and by data-parallel workers, which resolve `auto` on the host they run on."""

from __future__ import annotations


def resolve_device(requested: str) -> str:
    import torch  # here: building the Definitions must not import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"training device {requested!r} requested but CUDA is not available on this host")
    return requested


def runtime_of(device: str, mixed_precision: str, num_threads: int, seed: int) -> dict:
    """device (resolved here), mixed_precision (bf16 autocast on CUDA for `auto`), num_threads, seed: the run-time
    half of a model's TrainSettings."""
    resolved = resolve_device(device)
    amp = mixed_precision == "bf16" or (mixed_precision == "auto" and resolved.startswith("cuda"))
    return {"device": resolved, "mixed_precision": amp, "num_threads": num_threads, "seed": seed}
