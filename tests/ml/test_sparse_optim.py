"""LazyAdam: sparse-cost updates of id tables that follow dense AdamW's trajectory."""

from __future__ import annotations

import pytest
import torch

from recsys_assets.ml import sparse_optim
from recsys_assets.ml.sparse_optim import LazyAdam


def _train(lazy: bool, steps: int, weight_decay: float, eps: float = 1e-8, resume_at: int | None = None):
    """An embedding (1,000 rows: ten hot ones in every batch, the rest drawn rarely) and a linear head trained on a
    fixed stream; dense AdamW over both, or LazyAdam on the table + AdamW on the head."""
    torch.manual_seed(0)
    table = torch.nn.Embedding(1000, 8, sparse=lazy)
    head = torch.nn.Linear(8, 1)
    start = table.weight.detach().clone()

    def optimizers():
        if not lazy:
            params = [*table.parameters(), *head.parameters()]
            return [torch.optim.AdamW(params, 0.01, weight_decay=weight_decay, eps=eps)]
        sparse = LazyAdam(table.parameters(), lr=0.01, weight_decay=weight_decay, eps=eps)
        sparse.watch([table])
        return [sparse, torch.optim.AdamW(head.parameters(), 0.01, weight_decay=weight_decay, eps=eps)]

    opts = optimizers()
    stream = torch.Generator().manual_seed(1)
    for step in range(steps):
        if step == resume_at:  # a new process: fresh optimizers loaded from the saved state
            saved = [o.state_dict() for o in opts]
            for o in opts:
                if isinstance(o, LazyAdam):
                    o.unwatch()
            opts = optimizers()
            for o, s in zip(opts, saved, strict=True):
                o.load_state_dict(s)
        hot, rare = torch.randint(0, 10, (20,), generator=stream), torch.randint(0, 1000, (20,), generator=stream)
        rows = torch.cat([hot, rare])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(table(rows)).squeeze(1), (rows % 2).float())
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()
    if lazy:
        opts[0].catch_up_all()
    return start, table.weight.detach(), head.weight.detach()


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_lazy_adam_follows_dense_adamw(weight_decay):
    start, dense, dense_head = _train(lazy=False, steps=100, weight_decay=weight_decay)
    _, lazy, lazy_head = _train(lazy=True, steps=100, weight_decay=weight_decay)
    moved = (dense - start).abs().mean()
    assert moved > 0.1  # the rows did move (most of them are skipped on most steps)
    # Per-row catch-up of the skipped steps: within 1e-4 of dense AdamW's movement on average, 3% at worst
    # (a row whose gradients were so small that eps, taken outside the geometric sum, matters).
    assert (lazy - dense).abs().mean() < 1e-4 * moved
    assert (lazy - dense).abs().max() < 3e-2 * moved
    assert torch.allclose(lazy_head, dense_head, atol=1e-4)


def test_without_eps_the_catch_up_is_exact_to_float_rounding():
    _, dense, _ = _train(lazy=False, steps=100, weight_decay=0.01, eps=1e-30)
    _, lazy, _ = _train(lazy=True, steps=100, weight_decay=0.01, eps=1e-30)
    assert (lazy - dense).abs().max() < 2e-5


def test_a_resumed_lazy_adam_ends_where_an_uninterrupted_one_does():
    _, once, _ = _train(lazy=True, steps=60, weight_decay=0.0)
    _, resumed, _ = _train(lazy=True, steps=60, weight_decay=0.0, resume_at=31)
    assert torch.equal(once, resumed)


def test_a_step_reads_and_writes_only_the_looked_up_rows():
    table = torch.nn.Embedding(10, 2, sparse=True)
    opt = LazyAdam(table.parameters(), lr=0.1)
    opt.watch([table])
    for rows in ([1, 2], [5]):
        before = table.weight.detach().clone()
        opt.zero_grad()
        table(torch.tensor(rows)).sum().backward()
        opt.step()
        assert torch.nonzero((table.weight.detach() != before).any(1)).flatten().tolist() == rows
    assert opt.state[table.weight]["row_step"].tolist() == [0, 1, 1, 0, 0, 2, 0, 0, 0, 0]
    before = table.weight.detach().clone()
    opt.catch_up_all()  # rows 1 and 2 take the step they skipped (their momentum)
    assert torch.nonzero((table.weight.detach() != before).any(1)).flatten().tolist() == [1, 2]
    with pytest.raises(RuntimeError, match="sparse gradients"):
        dense = torch.nn.Embedding(3, 2)
        o = LazyAdam(dense.parameters(), lr=0.1)
        dense(torch.tensor([0])).sum().backward()
        o.step()


def test_catching_up_in_chunks_gives_the_rows_of_one_pass(monkeypatch):
    """catch_up_all and a lookup's catch-up walk the rows CATCH_UP_ROWS at a time (their temporaries are
    [rows, EXACT_TERMS] float64: a whole table of tens of millions of ids at once would not fit): a chunk of 7 rows
    (1,000-row table, lookups of 40 rows) ends on the weights and moments of one pass over all of them."""
    _, whole, _ = _train(lazy=True, steps=60, weight_decay=0.01)
    monkeypatch.setattr(sparse_optim, "CATCH_UP_ROWS", 7)
    _, chunked, _ = _train(lazy=True, steps=60, weight_decay=0.01)
    assert sparse_optim.CATCH_UP_ROWS < 1000  # the table really was caught up in many chunks
    assert torch.equal(whole, chunked)
