"""Data-parallel training over `torch.distributed`: N worker processes (torchrun on one host, or Spark's
TorchDistributor on a cluster) each read a disjoint share of the window and keep a full replica of the model.

What one optimizer step does across ranks (`trainer.fit`):

1. every rank draws its next batch (a rank whose share is used up joins with an empty batch until all are done, so
   every rank takes part in every collective and no row is dropped to even the shares out);
2. one all-reduce of [rows in my batch, 1 if I had a batch]: the global batch size N and whether anyone is left;
3. the rank's loss (a mean over its rows) is scaled by n_rank / N before backward, so the summed gradients are those
   of the mean loss over the global batch (the two-tower's in-batch negatives are the global batch's items,
   `gather_rows`, and its gradient reaches the rank that produced each item vector);
4. `GradientSync`: dense gradients summed in one flat all-reduce; each sparse (embedding-table) gradient's rows and
   values all-gathered and summed (NCCL has no sparse all-reduce; gathering works on gloo and NCCL alike);
5. the same optimizer step on every rank: the replicas stay identical without broadcasting weights.

Batch sizes in the training YAML are global: each rank takes its share of batch_size (in proportion to the rows of
its pieces, so the ranks take as many steps), so a run on N processes follows the optimisation path of one process
with the same config (same global batch, same negatives per query).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Rank:
    """This process's place in a data-parallel training: rank 0 of 1 when not distributed."""

    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Rank()  # one process: not distributed


def rank_from_env() -> Rank:
    """The rank torchrun / TorchDistributor gives this process (RANK, WORLD_SIZE), or a single process."""
    return Rank(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))


def init_process_group(device: str, timeout_s: float = 1800.0) -> Rank:
    """Join the process group torchrun / TorchDistributor set up (MASTER_ADDR/PORT, RANK, WORLD_SIZE in the
    environment): NCCL on GPUs, gloo on CPU. A no-op for a single process."""
    rank = rank_from_env()
    if rank.distributed and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s))
    return rank


def local_device(device: str) -> str:
    """A CUDA device per local rank (LOCAL_RANK) when the job asks for `cuda` on a multi-GPU host."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather_objects(obj) -> list:
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _gather_padded(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """All ranks' `x` (first dims `sizes`), concatenated in rank order: padded to the largest, gathered, trimmed."""
    longest = max(sizes)
    if longest == 0:
        return x[:0]
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: len(x)] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def gathered_sizes(n: int, device: torch.device) -> list[int]:
    t = torch.tensor([n], dtype=torch.int64, device=device)
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    return [int(p) for p in parts]


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.sizes = sizes
        return _gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Every rank's loss saw every rank's rows: the gradient of my rows is the sum over ranks of theirs.
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: dist.get_rank()])
        return grad[start : start + ctx.sizes[dist.get_rank()]], None


def gather_rows(x: torch.Tensor, sizes: list[int] | None = None) -> tuple[torch.Tensor, int]:
    """(every rank's rows of `x` in rank order, the offset of this rank's rows in it), differentiable: the
    gradient flowing into another rank's rows is sent back to it. Rows may differ in number between ranks."""
    if not is_distributed():
        return x, 0
    sizes = sizes if sizes is not None else gathered_sizes(len(x), x.device)
    offset = sum(sizes[: dist.get_rank()])
    if x.requires_grad:
        return _GatherRows.apply(x, sizes), offset
    return _gather_padded(x, sizes), offset


class GradientSync:
    """Sum each parameter's gradient over the ranks (after the loss scaling above: the global batch's gradient).
    Which parameters are sparse is fixed up front (the tables with sparse lookups), the same on every rank whatever
    its batch held: the ranks must issue the same collectives in the same order."""

    def __init__(self, model: nn.Module):
        tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse}
        params = [p for p in model.parameters() if p.requires_grad]
        self.dense = [p for p in params if id(p) not in tables]
        self.sparse = [p for p in params if id(p) in tables]

    def __call__(self) -> None:
        if self.dense:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.dense]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            at = 0
            for p, g in zip(self.dense, grads, strict=True):
                p.grad = flat[at : at + g.numel()].view_as(p)
                at += g.numel()
        if self.sparse:
            self._sync_sparse()

    def _sync_sparse(self) -> None:
        """Every table's (rows, values) of every rank in three collectives, whatever the number of tables: the row
        counts [ranks, tables], then all tables' rows and all their values, each packed into one tensor."""
        rows, values = [], []
        for p in self.sparse:
            if p.grad is None:
                rows.append(torch.zeros(0, dtype=torch.int64, device=p.device))
                values.append(p.new_zeros((0, *p.shape[1:])))
            else:
                g = p.grad.coalesce()
                rows.append(g.indices()[0])
                values.append(g.values())
        device = self.sparse[0].device
        counts = torch.tensor([len(r) for r in rows], dtype=torch.int64, device=device)
        parts = [torch.empty_like(counts) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, counts)
        counts_by_rank = torch.stack(parts).tolist()  # [ranks][tables]
        widths = [p[0].numel() for p in self.sparse]  # values per row of each table
        all_rows = _gather_padded(torch.cat(rows), [sum(c) for c in counts_by_rank])
        flat_values = torch.cat([v.reshape(-1) for v in values])
        all_values = _gather_padded(flat_values, [sum(n * w for n, w in zip(c, widths)) for c in counts_by_rank])
        table_rows = [[] for _ in self.sparse]
        table_values = [[] for _ in self.sparse]
        r_at = v_at = 0
        for c in counts_by_rank:
            for t, n in enumerate(c):
                table_rows[t].append(all_rows[r_at : r_at + n])
                table_values[t].append(all_values[v_at : v_at + n * widths[t]])
                r_at, v_at = r_at + n, v_at + n * widths[t]
        for t, p in enumerate(self.sparse):
            idx = torch.cat(table_rows[t]).unsqueeze(0)
            val = torch.cat(table_values[t]).view(-1, *p.shape[1:])
            p.grad = torch.sparse_coo_tensor(idx, val, p.shape, check_invariants=False).coalesce()
