"""The temporal holdout fit: what a model's training chooses inside its own window, never on the days that score it.

For partition D the window is the committed days before D; D itself is the validation day the gates and reports
judge. Here a first model trains on the window without its last day L for up to `epochs`, and after every epoch it
is scored on L, the next day it has not seen (the same protocol as D's: full catalogue, the same users' sample, seen
items excluded when configured):
- the two-tower: recall@10 / NDCG@10 of its score blended with every weight of
  `retrieval_scoring.recency_prior_search` (the prior of L: the positives of the day before it);
- the ranker: the mean AUC over the gated tasks (checks.ranker_min_auc) on L's events.
The best (epoch count, weight) by recall@10 (then NDCG@10) or by mean AUC (ties: fewer epochs, smaller weight) is
what the model of the whole window is then trained and served with. Neither model reads D here; both record the
whole table in training.json (`holdout_fit`) and the chosen values in metrics.json.

A window of one day has nothing to hold out: its model trains with the configured epochs (the search space's top)
and the recency prior 0, and says so.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys_assets.core.days import window_of

Log = Callable[[str], None]


@dataclass(frozen=True)
class HoldoutFit:
    """The fit's days, what it maximised, what it chose and every epoch's scores on the held-out day."""

    fit_days: list[str]
    holdout_day: str
    objective: str
    epochs: int
    recency_prior: float | None
    per_epoch: list[dict]
    holdout_queries: int | None = None
    pooled: dict | None = None  # the weight's choice over several held-out days (recency_prior_pooled_days)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def holdout_split(train_days: list[str]) -> tuple[list[str], str] | None:
    """(the days the holdout model trains on, the held-out day): the window's last day held out; None for a window
    of one day."""
    if len(train_days) < 2:
        return None
    return list(train_days[:-1]), train_days[-1]


def choose(scores: list[dict[float, tuple[float, ...]]]) -> tuple[int, float]:
    """(epochs, weight) with the best score tuple over `scores` (one dict per epoch: weight -> (primary, secondary,
    ...)); ties go to fewer epochs, then the smaller weight. NaN scores never win."""
    best: tuple[tuple[float, ...], int, float] | None = None
    for epoch, by_weight in enumerate(scores):
        for weight in sorted(by_weight):
            value = tuple(v if math.isfinite(v) else -math.inf for v in by_weight[weight])
            if best is None or value > best[0]:
                best = (value, epoch + 1, weight)
    if best is None:
        raise ValueError("the holdout fit scored no epoch")
    return best[1], best[2]


def _split(inputs, log: Log, fallback: str) -> tuple[list[str], str] | None:
    split = holdout_split(inputs.window.train_days)
    if split is None:
        log(f"holdout fit: the window has one day, nothing to hold out: {fallback}")
    return split


def _fit_positives(day_positives: dict | None, fit_days: list[str], fit_data, encoder) -> dict:
    """The fit days' positives per day and catalogue row: the window's counted ones restricted to them (never the
    held-out day's), else counted over the fit days' events."""
    from recsys_assets.ml.loader import positives_by_day

    given = {d: day_positives[d] for d in fit_days} if day_positives is not None else None
    return positives_by_day(fit_data, encoder, given)


def _on_cpu(model):
    """The model itself when it is on the CPU, else a CPU copy (the evaluation reads host tensors)."""
    p = next(model.parameters(), None)
    return model if p is None or p.device.type == "cpu" else copy.deepcopy(model).to("cpu")


def fit_retrieval(inputs, train_fn, hyper, settings, day_positives: dict | None, log: Log) -> HoldoutFit | None:
    """The two-tower's epoch count and recency-prior weight, fitted on the window's last day (module docstring).
    `day_positives`: the window's positives per day and catalogue row when already counted (Spark window counts)."""
    from recsys_assets.ml.baselines import compare_methods, seen_items, vector_scores
    from recsys_assets.ml.loader import committed_events_dataset
    from recsys_assets.ml.metrics import softmax_log_likelihood
    from recsys_assets.ml.retrieval import evaluation_queries, item_vectors, query_vectors, with_recency_prior

    if (split := _split(inputs, log, "configured epochs, recency prior 0")) is None:
        return None
    fit_days, holdout_day = split
    spec, store, encoder = inputs.spec, inputs.store, inputs.encoder
    fit_data = committed_events_dataset(store, fit_days)
    by_day = _fit_positives(day_positives, fit_days, fit_data, encoder)
    queries = evaluation_queries(
        committed_events_dataset(store, [holdout_day]), encoder, spec.labels, spec.evaluation.validation_users
    )
    seen = seen_items(fit_data, queries.user_ids, encoder.catalog) if spec.evaluation.exclude_seen else None
    recent = by_day.get(fit_days[-1], np.zeros(len(encoder.catalog), np.int64))
    as_of = pd.Timestamp(window_of(holdout_day).end)
    prior = spec.retrieval_scoring.recency_prior
    weights = spec.retrieval_scoring.recency_prior_search if prior == "fit" else (float(prior),)
    objective = spec.retrieval_scoring.holdout_objective
    table: list[dict[float, tuple[float, float]]] = []

    def evaluate(epoch: int, model) -> dict:
        m = _on_cpu(model)
        q = query_vectors(m, queries, encoder.catalog)
        items, bias = item_vectors(
            m,
            encoder.catalog,
            encoder.vocab,
            encoder.moments,
            as_of,
            day_positives=by_day,
            day=holdout_day,
        )
        methods = {w: vector_scores(*with_recency_prior(q, items, recent, w, m.temperature, bias)) for w in weights}
        scored = compare_methods(methods, queries.relevant, [10], len(encoder.catalog), seen).metrics
        cells = {w: {"recall@10": s["recall@10"], "ndcg@10": s["ndcg@10"]} for w, s in scored.items()}
        if objective == "log_likelihood":  # another catalogue-sized pass per weight: only when it is the objective
            # the served score / T: q.i / T + b(i) + w log(1 + recent), its softmax over the catalogue
            loglik = softmax_log_likelihood(
                vector_scores(*with_recency_prior(q / m.temperature, items, recent, 0.0, 1.0, bias)),
                queries.relevant,
                np.log1p(recent.astype(np.float64)),
                list(weights),
                seen,
            )
            for w in weights:
                cells[w]["log_likelihood"] = loglik[w]
            table.append({w: (loglik[w], cells[w]["recall@10"]) for w in weights})
        else:
            table.append({w: (c["recall@10"], c["ndcg@10"]) for w, c in cells.items()})
        return {"holdout": {str(w): c for w, c in cells.items()}}

    log(f"holdout fit: two-tower on {fit_days[0]}..{fit_days[-1]}, scored on {holdout_day} after every epoch")
    _, fit, _ = train_fn(
        fit_data, encoder, hyper, settings, None, "", log, day_positives=by_day, evaluate_epoch=evaluate
    )
    epochs, weight = choose(table)
    pooled = None
    pool = spec.retrieval_scoring.recency_prior_pooled_days
    if len(weights) > 1 and objective == "recall@10" and pool > 1:
        earlier = previous_fit_rows(store, inputs.day, pool - 1, weights, log)
        if earlier:
            rows = [table[epochs - 1], *(r for _, r in earlier)]
            scores = {w: tuple(float(np.mean([r[w][i] for r in rows])) for i in range(2)) for w in weights}
            _, weight = choose([scores])
            epochs, _ = choose([{weight: t[weight]} for t in table])  # this day's best epoch count at that weight
            pooled = {
                "holdout_days": [holdout_day, *(d for d, _ in earlier)],
                "mean": {str(w): {"recall@10": s[0], "ndcg@10": s[1]} for w, s in scores.items()},
            }
    log(f"holdout fit: {epochs} epoch(s), recency prior {weight} ({objective} {table[epochs - 1][weight][0]:.4f})")
    return HoldoutFit(
        fit_days=fit_days,
        holdout_day=holdout_day,
        objective=(
            "mean log-likelihood of the held-out positives under the blended score's softmax over the catalogue"
            if objective == "log_likelihood"
            else "recall@10, then NDCG@10, of the blended score on the held-out day"
        ),
        epochs=epochs,
        recency_prior=weight,
        per_epoch=[{"epoch": r["epoch"] + 1, **r.get("holdout", {})} for r in fit.history],
        holdout_queries=int(sum(1 for r in queries.relevant if len(r))),
        pooled=pooled,
    )


def previous_fit_rows(store, day: str, n: int, weights, log: Log) -> list[tuple[str, dict[float, tuple[float, float]]]]:
    """(held-out day, weight -> (recall@10, NDCG@10) at its chosen epoch) of the holdout fits of the last `n`
    committed retrieval models before `day`, newest first; a model whose table lacks a weight of `weights` (another
    search space, a pinned prior, no fit) or is unreadable (the data root is untrusted) is skipped and said."""
    from recsys_assets.core.datasets import RETRIEVAL_MODEL
    from recsys_assets.ml.artifacts import ArtifactDir, latest_committed_before

    out, d = [], day
    while len(out) < n and (d := latest_committed_before(store, RETRIEVAL_MODEL, d)) is not None:
        try:
            fit = ArtifactDir.committed(store, RETRIEVAL_MODEL, d).read_json("training.json").get("holdout_fit")
            if not fit:
                continue
            row = fit["per_epoch"][int(fit["epochs"]) - 1]
            cells = {w: (float(row[str(w)]["recall@10"]), float(row[str(w)]["ndcg@10"])) for w in weights}
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            log(f"holdout fit: the fit of retrieval_model {d} is not comparable ({type(e).__name__}: {e}); skipped")
            continue
        out.append((str(fit["holdout_day"]), cells))
    return out


def fit_ranker(inputs, hyper, settings, log: Log, day_positives: dict | None = None) -> HoldoutFit | None:
    """The ranker's epoch count, fitted on the window's last day: the mean AUC over the gated tasks that have both
    labels on that day (module docstring). Its item-bias start is the prior of the fit days alone; its trend inputs
    (with hyper.item_trend) read the fit days' positives of `day_positives` only (the held-out day's inputs come from
    the days before it)."""
    from recsys_assets.ml.loader import committed_events_dataset
    from recsys_assets.ml.ranker import item_priors, score_ranker, task_aucs, train_ranker

    if (split := _split(inputs, log, "configured epochs")) is None:
        return None
    fit_days, holdout_day = split
    spec, store, encoder = inputs.spec, inputs.store, inputs.encoder
    fit_data = committed_events_dataset(store, fit_days)
    held_data = committed_events_dataset(store, [holdout_day])
    smoothing = spec.evaluation.item_prior_smoothing
    priors = inputs.counts.item_priors(encoder, fit_days, smoothing, 0.0) if inputs.counts is not None else None
    if priors is None:
        priors = item_priors(fit_data, encoder, smoothing, None)
    tasks = list(spec.checks.ranker_min_auc)
    table: list[dict[float, tuple[float]]] = []
    by_day = _fit_positives(day_positives, fit_days, fit_data, encoder) if hyper.item_trend else None

    def evaluate(epoch: int, model) -> dict:
        scored = score_ranker(
            _on_cpu(model), held_data, encoder, max_rows=spec.ranker.max_validation_rows, day_positives=by_day
        )
        aucs = task_aucs(*scored)
        finite = [aucs[t] for t in tasks if aucs.get(t) is not None and math.isfinite(aucs[t])]
        mean = float(np.mean(finite)) if finite else math.nan
        table.append({0.0: (mean,)})
        return {"holdout": {"mean_auc": mean, "auc": aucs}}

    log(f"holdout fit: ranker on {fit_days[0]}..{fit_days[-1]}, scored on {holdout_day} after every epoch")
    kwargs = {"item_bias_start": priors.bias_logits} if hyper.item_bias else {}
    if by_day is not None:
        kwargs["day_positives"] = by_day
    _, fit = train_ranker(fit_data, encoder, hyper, settings, None, "", log, evaluate_epoch=evaluate, **kwargs)
    epochs, _ = choose(table)
    log(f"holdout fit: ranker {epochs} epoch(s) (mean AUC {table[epochs - 1][0.0][0]:.4f} on {holdout_day})")
    return HoldoutFit(
        fit_days=fit_days,
        holdout_day=holdout_day,
        objective=f"mean AUC over {tasks} on the held-out day",
        epochs=epochs,
        recency_prior=None,
        per_epoch=[{"epoch": r["epoch"] + 1, **r.get("holdout", {})} for r in fit.history],
    )
