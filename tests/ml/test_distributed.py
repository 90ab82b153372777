"""Data-parallel training (ml/distributed.py): disjoint shards that cover the window, the global batch's gradient
on N gloo processes equal to one process's, and torchrun workers that survive a killed rank by resuming."""

from __future__ import annotations

import collections
import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recsys_assets.ml.distributed import Rank
from recsys_assets.ml.loader import (
    committed_events_dataset,
    local_batch_size,
    sequential_batches,
    shard_pieces,
    shuffled_batches,
)
from tests.helpers import TRAIN_DAYS, descendants, free_port, make_encoder, wait_until


def test_shards_are_disjoint_cover_every_piece_and_balance_rows():
    rows = np.array([100, 5, 70, 70, 30, 1, 200, 64, 64, 9])
    order = np.random.default_rng(0).permutation(len(rows))
    shares = [shard_pieces(rows, order, Rank(r, 3)) for r in range(3)]
    assert sorted(np.concatenate(shares).tolist()) == list(range(len(rows)))  # each piece once
    loads = [int(rows[s].sum()) for s in shares]
    assert max(loads) - min(loads) <= rows.max()  # greedy: within one piece of each other
    assert shard_pieces(rows, order, Rank()).tolist() == order.tolist()  # one process: everything, same order
    # a rank's batch is its share of the global batch: the ranks take about as many steps
    sizes = [local_batch_size(300, rows, s) for s in shares]
    assert abs(sum(sizes) - 300) <= 2
    steps = [loads[r] / sizes[r] for r in range(3)]
    assert max(steps) - min(steps) < 1.5


def _row_keys(batches) -> collections.Counter:
    """Each encoded row as bytes (all its arrays), counted: the rows a stream of batches holds."""
    keys = collections.Counter()
    for b in batches:
        arrays = [b[k].numpy().reshape(len(b[k]), -1) for k in sorted(b)]
        for i in range(len(arrays[0])):
            keys[b"|".join(a[i].tobytes() for a in arrays)] += 1
    return keys


def test_each_rank_reads_a_disjoint_share_and_together_every_row_once(model_store):
    data = committed_events_dataset(model_store, TRAIN_DAYS)
    enc = make_encoder(model_store)
    assert len(data.get_pieces()) == 6  # 3 days x 2 files, one row group each
    everything = _row_keys(sequential_batches(data, enc, 1000))
    assert sum(everything.values()) == data.count_rows()
    for epoch in (0, 1):
        shares = [
            _row_keys(shuffled_batches(data, enc, 512, seed=3, epoch=epoch, shard=Rank(r, 2), shuffle_buffer_rows=4096))
            for r in range(2)
        ]
        assert shares[0] + shares[1] == everything  # every row once per epoch
        assert not set(shares[0]) & set(shares[1]) or all(
            shares[0][k] + shares[1][k] == everything[k] for k in set(shares[0]) & set(shares[1])
        )  # a row in both shares only when the window holds it twice (identical events)
    sequential = [_row_keys(sequential_batches(data, enc, 700, shard=Rank(r, 2))) for r in range(2)]
    assert sequential[0] + sequential[1] == everything


# --- the global batch's gradient on two gloo processes -----------------------------------------------------------


def _models():
    from recsys_assets.ml.models import MMoERanker, RankerConfig, TowerConfig, TwoTower

    torch.manual_seed(0)
    ranker = MMoERanker(RankerConfig(cat_features=["user_id", "item_id"], cardinalities=[50, 40], num_dense=2))
    q = TowerConfig(["user_id"], [50], 1, use_content=False, embedding_dim=8, hidden_sizes=[16], output_dim=8)
    i = TowerConfig(["item_id"], [40], 1, use_content=True, embedding_dim=8, hidden_sizes=[16], output_dim=8)
    return ranker, TwoTower(q, i, temperature=0.1)


def _global_batch(n: int = 96):
    g = torch.Generator().manual_seed(1)
    return {
        "user": torch.randint(1, 50, (n,), generator=g),
        "item": torch.randint(1, 20, (n,), generator=g),  # repeats: same-item rows are masked, not negatives
        "dense": torch.randn(n, 2, generator=g),
        "content": torch.randn(n, 128, generator=g),
        "labels": (torch.rand(n, 4, generator=g) < 0.4).float(),
        "log_q": torch.randn(n, generator=g) * 0.1,
    }


def _losses(ranker, two_tower, b):
    from recsys_assets.ml.models import in_batch_softmax_loss, ranker_loss

    cat = torch.stack([b["user"], b["item"]], 1)
    r = ranker_loss(ranker, ranker(cat, b["dense"], b["content"]), b["labels"], [1.0] * 4)
    q = two_tower.query(b["user"][:, None], b["dense"][:, :1])
    i = two_tower.item_tower(b["item"][:, None], b["dense"][:, 1:], b["content"])
    return r + in_batch_softmax_loss(q, i, b["item"], b["log_q"], two_tower.temperature)


def _grads(models) -> dict[str, torch.Tensor]:
    return {
        f"{k}.{name}": (p.grad.to_dense() if p.grad.is_sparse else p.grad).clone()
        for k, m in enumerate(models)
        for name, p in m.named_parameters()
        if p.grad is not None
    }


def _rank_main(rank: int, world: int, port: int, split: list[int], out: str) -> None:
    from recsys_assets.ml.distributed import GradientSync

    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ranker, two_tower = _models()
        for m in (ranker, two_tower):
            for e in m.modules():
                if isinstance(e, torch.nn.Embedding):
                    e.sparse = True
        start = sum(split[:rank])
        mine = {k: v[start : start + split[rank]] for k, v in _global_batch(sum(split)).items()}
        loss = _losses(ranker, two_tower, mine)
        (loss * (split[rank] / sum(split))).backward()
        for m in (ranker, two_tower):
            GradientSync(m)()
        torch.save(_grads((ranker, two_tower)), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("split", [[60, 36], [96, 0]], ids=["uneven", "one-rank-empty"])
def test_two_gloo_ranks_get_the_global_batch_gradient_of_one_process(tmp_path, split):
    """Both losses (the ranker's mean BCE, the two-tower's in-batch softmax whose negatives are the global batch's
    items), sparse embedding and dense gradients: summed over the ranks they equal one process's on the whole batch,
    also when one rank's share is used up (it steps with an empty batch)."""
    ranker, two_tower = _models()
    _losses(ranker, two_tower, _global_batch(sum(split))).backward()
    expected = _grads((ranker, two_tower))
    out = str(tmp_path / "grads")
    mp.spawn(_rank_main, args=(2, free_port(), split, out), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(f"{out}.{rank}")
        assert set(got) == set(expected)
        for name, g in expected.items():
            assert torch.allclose(got[name], g, atol=1e-6, rtol=1e-4), name
    assert any(float(g.abs().sum()) > 0 for n, g in expected.items() if "embeddings" in n)


# --- torchrun workers: a killed rank's run resumes ------------------------------------------------------------


def _rank_pids(rank: int) -> list[int]:
    """Live torchrun workers below this test process with RANK=`rank`."""
    pids = []
    for pid in descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if b"recsys_assets.ml.worker" in cmd and b"torch.distributed.run" not in cmd and f"RANK={rank}".encode() in env:
            pids.append(pid)
    return pids


@pytest.mark.slow
def test_a_killed_rank_restarts_the_workers_which_resume_from_the_last_epoch(tmp_path):
    from recsys_assets.core.datasets import RANKER_MODEL
    from recsys_assets.ml.launch import run_torchrun
    from recsys_assets.ml.trainer import CheckpointStore
    from tests.ml.distributed_setup import job_for, prepared_store

    # Small batches, three epochs: each epoch takes seconds, so the kill lands while epoch 1 or 2 is training.
    store, spec = prepared_store(tmp_path / "data", {"ranker": {"epochs": 3, "batch_size": 64}})
    checkpoints = store.path("_checkpoints", RANKER_MODEL)

    def epoch_zero_saved() -> bool:
        for _root, _, files in os.walk(checkpoints):
            if "epoch-0000.json" in files:
                return True
        return False

    # Uninterrupted: two ranks.
    once = run_torchrun(job_for(store, spec, "once"), 2, 0, print)
    assert once["world_size"] == 2 and once["training_info"]["resumed_from_epoch"] is None
    assert len(once["training_info"]["history"][-1]["rank_samples_per_s"]) == 2
    CheckpointStore(store, once["checkpoints"]).clear()  # as the asset does once the model is published
    assert not epoch_zero_saved()

    # Killed: rank 1 dies once epoch 0's checkpoint is written; torchrun restarts the group, which resumes.
    result: dict = {}
    runner = threading.Thread(
        target=lambda: result.update(run_torchrun(job_for(store, spec, "killed"), 2, 1, print)), daemon=True
    )
    runner.start()
    wait_until(epoch_zero_saved, lambda: time.monotonic() // 5, "epoch 0 checkpoint", stall_s=600, poll_s=0.05)
    victims = _rank_pids(1)
    assert victims, "no rank-1 worker found"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    runner.join(timeout=900)
    assert not runner.is_alive() and result, "the restarted workers did not finish"
    info = result["training_info"]
    assert info["resumed_from_epoch"] in (0, 1)  # the last checkpoint before the kill (1 if epoch 1 beat it)
    assert [h["epoch"] for h in info["history"]] == [0, 1, 2]
    # Same weights as the uninterrupted run: the resumed epoch reads the same shares in the same order.
    from recsys_assets.core.store_dirs import PartitionVersion

    versions = [PartitionVersion(store, RANKER_MODEL, "2024-05-04", v) for v in ("once", "killed")]
    weights = [v.read_torch("model.pt") for v in versions]
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k
    assert json.dumps(once["metrics"]["auc"], sort_keys=True) == json.dumps(result["metrics"]["auc"], sort_keys=True)
