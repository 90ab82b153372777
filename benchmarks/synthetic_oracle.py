"""What recall@K is reachable at all on the synthetic demo's day D: an oracle that knows the generator's latent truth
(each user's two favourite clusters, every item's cluster and that day's popularity weight) ranks the catalogue by the
expected number of positive events of the user on each item, on the same queries, relevant sets and catalogue as
offline_evaluation. No learned model can beat it in expectation; its recall is the ceiling the issue-21 goals
(two-tower >= 2x most-popular, history-aware >= 1.3x history-free) are measured against. It also knows what nobody
trained on the window can: the quality of items with no event in the window (published on day D; quality is Zipf,
independent of content, author and id), which draw a large share of day D's positives; the "window-observable"
oracle gives those items the expected quality of a random item instead: the ceiling a model can reach. Also: the
day's committed retrieval model with lam x log(the day's true popularity) added to its score, to see whether
popularity is what it misses. Prints one JSON object.

    .venv/bin/python benchmarks/synthetic_oracle.py [--day 2024-03-08]   # after `make demo` (data in ./data)

E[positives of u on i] = events of u x P(impression of i | u) x P(positive | affinity(u, i)), with
P(impression of i | u) = 0.5 w_i + 0.5 x sum over u's two favourite clusters f of 0.5 [cluster(i) = f] w_i / W_f
(half the impressions by popularity, half from a favourite cluster by popularity within it: the generator's feed)
and P(positive | affinity) by Monte Carlo of the generator's watch / like / share / follow draws.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]


def positive_rates(labels, draws: int = 2_000_000, seed: int = 0) -> dict[int, float]:
    """P(retrieval positive | affinity) under the generator's draws (recsys_assets/synthetic/generator.py)."""
    rng = np.random.default_rng(seed)
    out = {}
    for a in (0, 1):
        watch = rng.beta(1.2 + 2.0 * a, 2.2 - 0.8 * a, draws)
        watch = np.where(rng.uniform(size=draws) < 0.08, 1.0 + rng.uniform(0, 1, draws), watch)
        logit = -3.2 + 2.4 * a + 1.5 * np.minimum(watch, 1.5)
        liked = rng.uniform(size=draws) < 1 / (1 + np.exp(-logit))
        shared = rng.uniform(size=draws) < 1 / (1 + np.exp(-(logit - 2.0)))
        followed = rng.uniform(size=draws) < 1 / (1 + np.exp(-(logit - 2.8)))
        positive = watch >= labels.retrieval_positive_min_watch_ratio
        if labels.retrieval_positive_on_engagement:
            positive |= liked | shared | followed
        out[a] = float(positive.mean())
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--day", default="2024-03-08")
    p.add_argument("--interest-drift", type=float, default=0.0, help="the demo's --interest-drift")
    p.add_argument("--data-root", default=os.environ.get("RECSYS_DATA_ROOT", str(REPO / "data")))
    a = p.parse_args()

    from recsys_assets.config.training import load_training_spec
    from recsys_assets.core.days import window_of
    from recsys_assets.ml.artifacts import ArtifactDir
    from recsys_assets.ml.baselines import compare_methods
    from recsys_assets.ml.loader import committed_events_dataset, item_frequencies
    from recsys_assets.ml.models import TwoTower
    from recsys_assets.ml.retrieval import evaluation_queries, item_vectors, query_vectors
    from recsys_assets.ml.train import ModelInputs
    from recsys_assets.synthetic.generator import MAX_ITEM_AGE_DAYS, SyntheticConfig, _day_bounds_us, _World
    from resources.store import DatasetStore

    store = DatasetStore(a.data_root)
    spec = load_training_spec("")
    inputs = ModelInputs.resolve(store, a.day, spec, print)
    window, encoder = inputs.window, inputs.encoder
    queries = evaluation_queries(committed_events_dataset(store, [a.day]), encoder, spec.labels)

    # The demo's world (make demo: SyntheticConfig defaults, 9 days from 2024-03-01): same seed -> same latent truth.
    cfg = SyntheticConfig(num_days=9, interest_drift=a.interest_drift)
    if a.day not in cfg.days:
        raise SystemExit(f"{a.day} is not a day of the demo's synthetic world ({cfg.days[0]}..{cfg.days[-1]})")
    world = _World(cfg)
    _, day_end_us = _day_bounds_us(a.day)
    age_at_end = (day_end_us - world.item_created_us) / 86400e6
    in_catalogue = (world.item_created_us < day_end_us) & (age_at_end <= MAX_ITEM_AGE_DAYS)
    age = np.maximum(age_at_end, 0.0)
    weight = np.where(in_catalogue, world.item_quality * (np.exp(-age / 25.0) + 0.5 * np.exp(-age / 2.0)), 0.0)
    weight /= weight.sum()
    cluster_weight = np.bincount(world.item_cluster, weights=weight, minlength=cfg.num_clusters)

    item_of_row = np.array([int(i[1:]) for i in encoder.catalog.item_ids])  # "i0001234" -> generator index
    user_of_query = np.array([int(u[1:]) for u in queries.user_ids])
    w, c = weight[item_of_row], world.item_cluster[item_of_row]
    rates = positive_rates(spec.labels)
    fav = world.user_fav_by_day[cfg.days.index(a.day)][user_of_query]  # [queries, 2]: the day's favourites
    w_t, c_t = torch.from_numpy(w), torch.from_numpy(c)
    fav_t, cw_t = torch.from_numpy(fav), torch.from_numpy(cluster_weight)

    def expected_positives(w_t: torch.Tensor):
        def score(rows: slice) -> torch.Tensor:
            f = fav_t[rows]
            personal = sum(
                0.5 * (c_t[None, :] == f[:, k : k + 1]) * (w_t[None, :] / cw_t[f[:, k]][:, None]) for k in (0, 1)
            )
            impression = 0.5 * w_t[None, :] + 0.5 * personal
            affinity = ((c_t[None, :] == f[:, :1]) | (c_t[None, :] == f[:, 1:2])).to(torch.float64)
            return impression * (rates[0] + (rates[1] - rates[0]) * affinity)

        return score

    oracle = expected_positives(w_t)
    # What a model trained on the window can know at best: an item with no event in the window (published on day D,
    # or never shown before) has a quality nobody has observed (quality is independent of content, author and id),
    # so the best guess is the expected quality of a random item; everything else as the oracle.
    window_events = item_frequencies(committed_events_dataset(store, window.train_days), encoder.catalog)
    unseen = window_events == 0
    feasible_w = np.where(unseen, w * world.item_quality.mean() / world.item_quality[item_of_row], w)
    oracle_feasible = expected_positives(torch.from_numpy(feasible_w))

    def oracle_popularity(rows: slice) -> torch.Tensor:  # the same truth without the user: expected popularity
        return (w_t * (0.5 + 0.5 / cfg.num_clusters)).unsqueeze(0).expand(rows.stop - rows.start, -1)

    # Is popularity what the model misses? Its own score plus lam x log(true popularity of the day).
    model_dir = ArtifactDir.committed(store, "retrieval_model", a.day)
    model = TwoTower.from_config(model_dir.read_json("model_config.json"))
    model.load_state_dict(model_dir.read_torch("model.pt"))
    vocab, moments = model_dir.read_vocab()
    q = torch.from_numpy(query_vectors(model.eval(), queries, encoder.catalog)).double()
    items = torch.from_numpy(
        item_vectors(model, encoder.catalog, vocab, moments, pd.Timestamp(window_of(a.day).end))[0]
    )
    log_w = torch.log(w_t.clamp(min=1e-12))

    def model_plus_popularity(lam: float):
        return lambda rows: q[rows] @ items.double().T / model.temperature + lam * log_w[None, :]

    ks = sorted({10, spec.checks.retrieval_k})
    ceiling = compare_methods(
        {
            "oracle (latent truth)": oracle,
            "oracle (window-observable truth)": oracle_feasible,
            "oracle popularity (no user)": oracle_popularity,
            **{f"served model + {lam} x log(true popularity)": model_plus_popularity(lam) for lam in (0.25, 0.5, 1.0)},
        },
        queries.relevant,
        ks,
        len(encoder.catalog),
    ).metrics
    report = store.read_json(store.committed_path("offline_evaluation", a.day, "report.json"))
    measured = report["retrieval"]["methods"]
    oracle_r10 = ceiling["oracle (latent truth)"]["recall@10"]
    print(
        json.dumps(
            {
                "benchmark": "synthetic_oracle",
                "day": a.day,
                "interest_drift": a.interest_drift,
                "as_of": str(window_of(a.day).end),
                "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "validation_users": len(queries.user_ids),
                "catalogue_items": len(encoder.catalog),
                "catalogue_items_unseen_in_window": int(unseen.sum()),
                "positive_rate_by_affinity": rates,
                "ceiling": ceiling,
                "measured": measured,
                "recall@10_share_of_ceiling": {m: round(v["recall@10"] / oracle_r10, 3) for m, v in measured.items()},
                "recall@10_share_of_observable_ceiling": {
                    m: round(v["recall@10"] / ceiling["oracle (window-observable truth)"]["recall@10"], 3)
                    for m, v in measured.items()
                },
                "oracle_recall@10_over_most_popular": round(oracle_r10 / measured["most-popular"]["recall@10"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
