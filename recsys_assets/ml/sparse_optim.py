"""Adam for id-embedding tables whose step cost does not grow with the table: only the rows a batch looked up are
read and written, and the rows a step skipped catch up, in closed form, when they are next looked up.

Dense AdamW over an `nn.Embedding` touches every row every step (a row nobody looked up still has momentum, so it
keeps moving, and its moments decay): its cost grows with the table, ~6 ms a step on a GPU and seconds on a CPU for
tens of millions of user ids. `torch.optim.SparseAdam` is cheap but changes the optimizer: a row moves only on the
steps that look it up, so a rarely seen row (most user ids) moves ~1/10 .. 1/30 as far as under dense Adam and the
model trains differently (measured in docs/scale.md).

`LazyAdam` keeps dense AdamW's trajectory at sparse cost. Between two lookups of a row its gradient is zero, and
under zero gradients Adam's moments decay geometrically (m *= beta1, v *= beta2 per step), so the J skipped updates
of a row sum to

    lr * m / sqrt(v) * sum_{j=1..J} (beta1 / sqrt(beta2))^j * sqrt(1 - beta2^s_j) / (1 - beta1^s_j)

which is applied (with the decoupled weight decay of those steps) just before the row's next update, and for every
row at `catch_up_all()` (end of an epoch / of training, before the weights are read). A row's value matters only
when it is looked up, so the loss of every step is the one dense AdamW would see, up to two approximations that
`tests/ml/test_sparse_optim.py` bounds against `torch.optim.AdamW`: eps is taken outside the geometric sum, and the
bias-correction factor of the first skipped step stands for all of them (both vanish once the terms that carry the
sum, j < ~100, are past the first few hundred steps of training).
"""

from __future__ import annotations

import math

import torch

# Skipped steps summed term by term (their exact bias corrections); beyond, r^j < 2e-6 and the tail is closed-form.
EXACT_TERMS = 128
# Rows caught up at a time: the sum's temporaries are [rows, EXACT_TERMS] float64 (8 MiB each at 8,192 rows), so a
# catch-up of a whole table (catch_up_all: tens of millions of user ids) needs memory of a chunk, not of the table.
CATCH_UP_ROWS = 8192


def _skipped_step_sum(
    last: torch.Tensor, skipped: torch.Tensor, beta1: float, beta2: float, decay: float = 1.0
) -> torch.Tensor:
    """Per row: what its J = `skipped` zero-gradient Adam steps s = last+1 .. last+J move it, in units of
    lr * m / sqrt(v): sum_j r^j * sqrt(1 - beta2^s) / (1 - beta1^s) * decay^(J-j), with r = beta1 / sqrt(beta2) and
    decay = 1 - lr * weight_decay (AdamW shrinks the row before each step, so an early update is shrunk by the
    steps after it)."""
    r = beta1 / math.sqrt(beta2)
    big_j = skipped.to(torch.float64).unsqueeze(1)
    j = torch.arange(1, EXACT_TERMS + 1, dtype=torch.float64, device=last.device)
    s = last.to(torch.float64).unsqueeze(1) + j  # [rows, terms]
    terms = r**j * torch.sqrt(1 - beta2**s) / (1 - beta1**s) * decay ** (big_j - j).clamp(min=0)
    head = (terms * (j <= big_j)).sum(1)
    # Steps past EXACT_TERMS: bias corrections of step last+EXACT_TERMS+1 (r^j makes them ~0 anyway).
    k, big_j = EXACT_TERMS, big_j.squeeze(1)
    rd = r / decay
    n_tail = (big_j - k).clamp(min=0)
    s_tail = last.to(torch.float64) + k + 1
    tail = rd ** (k + 1) * (1 - rd**n_tail) / (1 - rd) * decay**big_j
    tail = tail * torch.sqrt(1 - beta2**s_tail) / (1 - beta1**s_tail)
    return (head + tail).to(torch.float32)


class LazyAdam(torch.optim.Optimizer):
    """AdamW on sparse gradients (an `nn.Embedding(sparse=True)` weight) with per-row catch-up of skipped steps."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        if lr < 0 or not 0 <= betas[0] < 1 or not 0 <= betas[1] < 1:
            raise ValueError(f"LazyAdam: invalid lr {lr} or betas {betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    def _state(self, p: torch.Tensor) -> dict:
        st = self.state[p]
        if not st:
            st["step"] = 0  # optimizer steps taken (the same clock for every row)
            st["exp_avg"] = torch.zeros_like(p)
            st["exp_avg_sq"] = torch.zeros_like(p)
            # The step through which each row's moments and value are current.
            st["row_step"] = torch.zeros(p.shape[0], dtype=torch.int64, device=p.device)
        return st

    @staticmethod
    def _catch_up(p, st, group, rows: torch.Tensor, to_step: int) -> None:
        """Apply the zero-gradient steps row_step[rows]+1 .. to_step to `rows` (each has skipped J >= 0 of them),
        CATCH_UP_ROWS rows at a time."""
        skipped = to_step - st["row_step"][rows]
        moving = skipped > 0
        if not bool(moving.any()):
            return
        rows, skipped = rows[moving], skipped[moving]
        for s in range(0, len(rows), CATCH_UP_ROWS):
            LazyAdam._catch_up_rows(p, st, group, rows[s : s + CATCH_UP_ROWS], skipped[s : s + CATCH_UP_ROWS], to_step)

    @staticmethod
    def _catch_up_rows(p, st, group, rows: torch.Tensor, skipped: torch.Tensor, to_step: int) -> None:
        """`_catch_up` of distinct rows that each skipped `skipped` > 0 steps."""
        (beta1, beta2), lr, eps, wd = group["betas"], group["lr"], group["eps"], group["weight_decay"]
        m, v = st["exp_avg"][rows], st["exp_avg_sq"][rows]
        j = skipped.to(p.dtype)
        last = st["row_step"][rows]
        # eps is added to sqrt(v / (1 - beta2^s)): in units of sqrt(v) it is eps * sqrt(1 - beta2^s), taken at the
        # first skipped step (it changes by < 1e-3 relative over the ~100 steps that carry the sum once s > 10^4).
        eps_v = eps * torch.sqrt(1 - beta2 ** (last + 1).to(torch.float64)).to(p.dtype).unsqueeze(1)
        moved = _skipped_step_sum(last, skipped, beta1, beta2, 1 - lr * wd)
        update = m / (v.sqrt() + eps_v) * (lr * moved).unsqueeze(1)
        decay = ((1 - lr * wd) ** j).unsqueeze(1) if wd else 1.0
        p.data[rows] = p.data[rows] * decay - update
        st["exp_avg"][rows] = m * (beta1**j).unsqueeze(1)
        st["exp_avg_sq"][rows] = v * (beta2**j).unsqueeze(1)
        st["row_step"][rows] = to_step

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            (beta1, beta2), lr, eps, wd = group["betas"], group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                st = self._state(p)
                st["step"] += 1
                t = st["step"]
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError("LazyAdam expects sparse gradients (nn.Embedding(sparse=True))")
                grad = p.grad.coalesce()
                rows, g = grad.indices()[0], grad.values()
                if rows.numel() == 0:
                    continue
                self._catch_up(p, st, group, rows, t - 1)
                m = st["exp_avg"][rows].mul_(beta1).add_(g, alpha=1 - beta1)
                v = st["exp_avg_sq"][rows].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                step_size = lr / (1 - beta1**t)
                denom = (v / (1 - beta2**t)).sqrt_().add_(eps)
                value = p.data[rows]
                if wd:
                    value.mul_(1 - lr * wd)
                p.data[rows] = value.addcdiv_(m, denom, value=-step_size)
                st["exp_avg"][rows], st["exp_avg_sq"][rows] = m, v
                st["row_step"][rows] = t
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for st in self.state.values():  # Optimizer.load_state_dict casts every tensor to its parameter's float dtype
            if "row_step" in st:
                st["row_step"] = st["row_step"].round().to(torch.int64)

    def watch(self, tables: list[torch.nn.Embedding]) -> None:
        """Bring the rows a lookup of `tables` reads up to date before the lookup (a forward pre-hook): every forward
        pass then sees the values dense Adam would have, not rows frozen since their last lookup."""
        owner = {id(p): (p, g) for g in self.param_groups for p in g["params"]}

        @torch.no_grad()
        def before_lookup(module: torch.nn.Embedding, args) -> None:
            p, group = owner[id(module.weight)]
            st = self.state[p]
            if st:
                self._catch_up(p, st, group, torch.unique(args[0]), st["step"])

        self._hooks = getattr(self, "_hooks", []) + [t.register_forward_pre_hook(before_lookup) for t in tables]

    def unwatch(self) -> None:
        for h in getattr(self, "_hooks", []):
            h.remove()
        self._hooks = []

    @torch.no_grad()
    def catch_up_all(self) -> None:
        """Bring every row to the current step (O(table) time, once per epoch; memory of CATCH_UP_ROWS rows): before
        weights are read or saved."""
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state and self.state[p]:
                    st = self.state[p]
                    for s in range(0, p.shape[0], CATCH_UP_ROWS):
                        rows = torch.arange(s, min(s + CATCH_UP_ROWS, p.shape[0]), device=p.device)
                        self._catch_up(p, st, group, rows, st["step"])
