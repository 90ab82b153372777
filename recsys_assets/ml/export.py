"""Models as torch.export programs (.pt2): what a release serves, loadable without this code."""

from __future__ import annotations

import io

import torch


def export_program(module: torch.nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> bytes:
    """A torch.export ExportedProgram (.pt2) with a dynamic batch dimension, for serving without our code."""
    batch = torch.export.Dim("batch", min=1)
    shapes = tuple({0: batch} for _ in example_inputs)
    program = torch.export.export(module.eval(), example_inputs, dynamic_shapes=shapes)
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def load_program(data: bytes) -> torch.nn.Module:
    return torch.export.load(io.BytesIO(data)).module()
