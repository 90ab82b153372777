"""Models as torch.export programs (.pt2): what a release serves, loadable without this code."""

from __future__ import annotations

import io

import torch


def export_program(
    module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...], first_dims: tuple[str, ...] | None = None
) -> bytes:
    """A torch.export ExportedProgram (.pt2) with dynamic first dimensions, for serving without our code.
    `first_dims` names each input's first dimension (inputs naming the same one share its size); default: one
    "batch" dimension for every input."""
    names = first_dims or ("batch",) * len(example_inputs)
    dims = {n: torch.export.Dim(n, min=1) for n in dict.fromkeys(names)}
    shapes = tuple({0: dims[n]} for n in names)
    program = torch.export.export(module.eval(), example_inputs, dynamic_shapes=shapes)
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def load_program(data: bytes) -> torch.nn.Module:
    return torch.export.load(io.BytesIO(data)).module()
