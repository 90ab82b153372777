"""Both models of several days retrained through the model library on a data root whose datagen, user_history and
vocab are committed (after `make demo` / `make demo-real`), with training-YAML overrides: what a setting does on every
method, on the same protocol as the training run (nothing is written to the data root).

Prints JSON: per day the retrieval methods' recall@10 / NDCG@10 (and the served score's paired differences against
each, with bootstrap 95% intervals), the ranker AUCs, what the temporal holdout fit chose; and the means over the days.

    .venv/bin/python benchmarks/model_variants.py --data-root data-real --days 2024-03-06 2024-03-07 \
        --config recsys_assets/config/training_movielens.yaml --set retrieval.item_trend=false
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import yaml


def _override(doc: dict, assignment: str) -> None:
    key, value = assignment.split("=", 1)
    *parents, leaf = key.split(".")
    for p in parents:
        doc = doc.setdefault(p, {})
    doc[leaf] = yaml.safe_load(value)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-root", required=True)
    p.add_argument("--days", nargs="+", required=True)
    p.add_argument("--config", default="recsys_assets/config/training.yaml")
    p.add_argument("--set", action="append", default=[], help="a training.yaml override: key.path=yaml-value")
    p.add_argument("--skip-ranker", action="store_true")
    p.add_argument("--skip-retrieval", action="store_true", help="the ranker alone (its variants' AUCs)")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()

    from recsys_assets.config.training import TrainingSpec
    from recsys_assets.ml.train import ModelInputs, train_day_ranker, train_day_retrieval
    from resources.store import DatasetStore
    from resources.training import runtime_of

    with open(a.config) as f:
        doc = yaml.safe_load(f)
    for s in a.set:
        _override(doc, s)
    spec = TrainingSpec.model_validate(doc)
    store = DatasetStore(a.data_root)
    runtime = runtime_of("cpu", False, a.threads, 7)
    quiet = lambda m: None  # noqa: E731
    out: dict = {"config": a.config, "overrides": a.set, "days": {}}
    for day in a.days:
        t0 = time.time()
        inputs = ModelInputs.resolve(store, day, spec, quiet)
        row = {} if a.skip_retrieval else _retrieval_row(train_day_retrieval(inputs, runtime, "bench", quiet))
        if not a.skip_ranker:
            rk = train_day_ranker(inputs, runtime, "bench", quiet)
            rk.checkpoints.clear()
            row["ranker"] = {
                "epochs": rk.metrics["epochs"],
                "auc": rk.metrics["auc"],
                "auc_history_free": rk.metrics["auc_history_free"],
                "auc_item_prior": rk.metrics["auc_item_prior"],
            }
        row["seconds"] = round(time.time() - t0, 1)
        out["days"][day] = row
        print(json.dumps({day: row}), flush=True)
    days = list(out["days"].values())
    out["mean"] = {} if a.skip_retrieval else _retrieval_means(days)
    if not a.skip_ranker:
        out["mean"]["ranker"] = {
            variant: {
                t: round(float(np.nanmean([d["ranker"][variant].get(t, np.nan) for d in days])), 4)
                for t in days[0]["ranker"]["auc"]
            }
            for variant in ("auc", "auc_history_free", "auc_item_prior")
            if days[0]["ranker"][variant]
        }
    print(json.dumps(out["mean"], indent=1))


def _retrieval_row(r) -> dict:
    r.checkpoints.clear()
    m = r.metrics
    primary = m["primary_method"]
    return {
        "validation_users": m["num_queries"],
        "primary": primary,
        "recency_prior": m["recency_prior"],
        "epochs": m["epochs"],
        "retrieval": {k: {x: round(v[x], 4) for x in ("recall@10", "ndcg@10")} for k, v in m["methods"].items()},
        "paired_vs_served": {
            k: {x: [round(v[x][y], 4) for y in ("diff", "lo", "hi")] for x in v}
            for k, v in m["paired_vs_served"].items()
        },
    }


def _retrieval_means(days: list[dict]) -> dict:
    methods = {k for d in days for k in d["retrieval"]}
    return {
        "retrieval": {
            k: {
                x: round(float(np.mean([d["retrieval"][k][x] for d in days if k in d["retrieval"]])), 4)
                for x in ("recall@10", "ndcg@10")
            }
            for k in sorted(methods)
        },
        # the served method's name carries "+ recency prior" on the days its fitted weight was above 0
        "served": {
            x: round(float(np.mean([d["retrieval"][d["primary"]][x] for d in days])), 4)
            for x in ("recall@10", "ndcg@10")
        },
    }


if __name__ == "__main__":
    main()
