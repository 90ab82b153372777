"""Training-step time against the size of the id tables: the ranker (MMoE, the packaged sizes) with its user_id table
at 0.25M ... 8M rows, one step = forward, backward and optimizer step on a batch, dense AdamW over every parameter vs
sparse embedding updates (LazyAdam on the tables, AdamW on the rest: training.yaml `sparse_embeddings`). Prints JSON.

    .venv/bin/python benchmarks/sparse_step.py [--rows 250000,1000000,4000000,8000000] [--batch-size 2048] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from recsys_assets.ml.models import MMoERanker, RankerConfig, ranker_loss
from recsys_assets.ml.trainer import Optimizers, TrainSettings

FEATURES = ["user_id", "item_id", "item_author_id", "item_category", "item_language", "user_language", "user_region"]


def step_ms(rows: int, batch: int, steps: int, sparse: bool, device: str) -> float:
    torch.manual_seed(0)
    cards = [rows, 200_000, 20_000, 50, 10, 10, 40]  # the user table grows; the others as in a large catalogue
    cfg = RankerConfig(cat_features=FEATURES, cardinalities=cards, num_dense=3)
    model = MMoERanker(cfg).to(device)
    opt = Optimizers(model, TrainSettings(sparse_embeddings=sparse, device=device))
    cat = torch.stack([torch.randint(1, c, (batch,)) for c in cards], dim=1).to(device)
    dense, content = torch.randn(batch, 3, device=device), torch.randn(batch, 128, device=device)
    labels = (torch.rand(batch, 4, device=device) < 0.3).float()
    times = []
    for i in range(steps + 3):
        cat[:, 0] = torch.randint(1, rows, (batch,), device=device)  # new user rows every step
        t0 = time.perf_counter()
        opt.zero_grad()
        ranker_loss(model, model(cat, dense, content), labels, [1.0] * 4).backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= 3:  # warm-up steps left out
            times.append(time.perf_counter() - t0)
    times.sort()
    return round(1000 * times[len(times) // 2], 2)  # median


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", default="250000,1000000,4000000,8000000")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    out = {
        "benchmark": "sparse_step",
        "device": a.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "batch_size": a.batch_size,
        "embedding_dim": 16,
        "median_step_ms": {},
    }
    for rows in [int(r) for r in a.rows.split(",")]:
        row = {mode: step_ms(rows, a.batch_size, a.steps, mode == "sparse", a.device) for mode in ("dense", "sparse")}
        out["median_step_ms"][rows] = row
        print(json.dumps({"user_rows": rows, **row}), flush=True)
    sparse = [v["sparse"] for v in out["median_step_ms"].values()]
    out["sparse_max_over_min"] = round(max(sparse) / min(sparse), 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
