"""Feed scoring per core: the served release's ranker with each user's history given once (the grouped program,
MMoERanker.forward_grouped) vs the older form with the history repeated for every (user, candidate) pair, on one
served day, one thread and the heap policy of the feed stage's Spark workers (one Spark task = one core), the same
users, release and index.

The per-pair program is exported here from the release's own eager weights (ranker_model of its partition day), so
the two forms differ only in how the history reaches the attention. Reports users/s for each form (best of
--repeats, alternating), the largest score difference and the share of feed rows (user, rank -> item) that agree.
--user-batch / --ranker-users: generate_feed's batch sizes (retrieval / the ranker's pairs), e.g. 2048 / 2048 for
the ranker on whole 2048-user batches as before the ranker got its own batch size.

    .venv/bin/python benchmarks/ranker_serving.py --data-root data --day 2024-03-08 [--users 4096]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import json
import os
import time

import numpy as np
import pandas as pd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-root", required=True)
    p.add_argument("--day", required=True)
    p.add_argument("--users", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--user-batch", type=int, default=None, help="generate_feed's user_batch (default: its own)")
    p.add_argument("--ranker-users", type=int, default=None, help="generate_feed's ranker_users (default: its own)")
    a = p.parse_args()

    import torch

    from recsys_assets.config.serving import load_serving_spec
    from recsys_assets.core.days import window_of
    from recsys_assets.core.readers import read_history_table
    from recsys_assets.ml.artifacts import ArtifactDir
    from recsys_assets.ml.export import load_program
    from recsys_assets.ml.memory import SCORING_TRIM_THRESHOLD, bound_heap_growth
    from recsys_assets.ml.models import MMoERanker, RankerConfig
    from recsys_assets.ml.ranker import ranker_program
    from recsys_assets.ml.release import load_release
    from recsys_assets.ml.scoring import USER_COLUMNS, generate_feed
    from recsys_assets.serving.feed import active_users
    from recsys_assets.serving.serving_config import latest_config
    from resources.store import DatasetStore

    torch.set_num_threads(1)
    bound_heap_growth(trim_threshold=SCORING_TRIM_THRESHOLD)  # as serving/feed_stage.score_users
    store, spec = DatasetStore(a.data_root), load_serving_spec()
    version = int(latest_config(store)["arms"][0]["model_version"])
    grouped = load_release(store, version)
    if not grouped.ranker_config.get("history_len"):
        raise SystemExit(f"release {version}'s ranker is history-free: both forms are the same program")
    src = ArtifactDir.committed(store, "ranker_model", grouped.manifest["partition_day"])
    eager = MMoERanker(RankerConfig(**{**src.read_json("model_config.json"), "grouped_history": False}))
    eager.load_state_dict(src.read_torch("model.pt"))
    per_pair = dataclasses.replace(
        grouped,
        ranker=load_program(ranker_program(eager)),
        ranker_config={**grouped.ranker_config, "grouped_history": False},
        cache={},
    )
    users = active_users(store, a.day)[USER_COLUMNS].head(a.users).reset_index(drop=True)
    history = read_history_table(store, a.day)
    as_of = pd.Timestamp(window_of(a.day).end)
    f = spec.feed
    batch = {k: v for k, v in (("user_batch", a.user_batch), ("ranker_users", a.ranker_users)) if v}
    defaults = inspect.signature(generate_feed).parameters

    def feed(release, who: pd.DataFrame, **sizes):
        return generate_feed(
            release,
            who,
            f.k_retrieve,
            f.k_feed,
            f.task_weights,
            f.feed_source,
            as_of,
            history=history,
            history_day=a.day,
            **sizes,
        )

    forms = {"grouped": grouped, "per_pair": per_pair}
    for release in forms.values():  # warm: the item side, the programs' first call
        feed(copy.copy(release), users.head(64))
    best: dict[str, float] = {}
    rows: dict[str, pd.DataFrame] = {}
    for _ in range(a.repeats):
        for name, release in forms.items():
            t0 = time.perf_counter()
            rows[name] = feed(release, users, **batch)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    g, pp = rows["grouped"], rows["per_pair"]
    same = (g["user_id"].to_numpy() == pp["user_id"].to_numpy()) & (g["item_id"].to_numpy() == pp["item_id"].to_numpy())
    result = {
        "benchmark": "ranker_serving",
        "cpus": os.cpu_count(),
        "threads": 1,
        "release": version,
        "day": a.day,
        "users": len(users),
        "user_batch": a.user_batch or defaults["user_batch"].default,
        "ranker_users": a.ranker_users or defaults["ranker_users"].default,
        "k_retrieve": f.k_retrieve,
        "history_len": int(grouped.ranker_config["history_len"]),
        "seconds": {k: round(v, 3) for k, v in best.items()},
        "users_per_s": {k: round(len(users) / v, 1) for k, v in best.items()},
        "speedup": round(best["per_pair"] / best["grouped"], 2),
        "feed_rows": len(g),
        "rows_agreeing": round(float(same.mean()), 6) if len(g) == len(pp) else None,
        "max_score_diff": float(np.abs(g["score"].to_numpy() - pp["score"].to_numpy()).max())
        if len(g) == len(pp)
        else None,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
