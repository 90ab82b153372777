"""Offline metrics: ROC AUC per ranker task, full-corpus recall@K / NDCG@K with exact search, and baselines.

Pure numpy/torch over arrays, so they are tested against brute-force definitions without Dagster or data.
"""

from __future__ import annotations

import numpy as np
import torch


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties; NaN when only one class is present."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), np.float64)
    # Average rank of each run of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(s)]])
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of positions start..end-1
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def exact_top_k(queries: np.ndarray, corpus: np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    """Indices [n_queries, k] of the k highest inner products (brute force, the ground truth for indexes)."""
    k = min(k, len(corpus))
    c = torch.from_numpy(np.ascontiguousarray(corpus, dtype=np.float32))
    out = []
    for s in range(0, len(queries), chunk):
        q = torch.from_numpy(np.ascontiguousarray(queries[s : s + chunk], dtype=np.float32))
        out.append(torch.topk(q @ c.T, k, dim=1).indices.numpy())
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)


def per_query_recall_ndcg(ranked: np.ndarray, relevant: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """recall@k (hits / |relevant|) and NDCG@k (binary gains) of each query with >= 1 relevant item, in query order."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recall, ndcg = [], []
    for row, rel in zip(ranked, relevant):
        if len(rel) == 0:
            continue
        hit = np.isin(row[:k], rel)
        recall.append(hit.sum() / len(rel))
        ndcg.append(float((hit * discounts[: len(hit)]).sum() / discounts[: min(len(rel), k)].sum()))
    return np.asarray(recall, np.float64), np.asarray(ndcg, np.float64)


def recall_ndcg_at_k(ranked: np.ndarray, relevant: list[np.ndarray], ks: list[int]) -> dict[str, float]:
    """Mean recall@k and NDCG@k over queries with >= 1 relevant item."""
    return mean_recall_ndcg({k: per_query_recall_ndcg(ranked, relevant, k) for k in ks})


def mean_recall_ndcg(per_query: dict[int, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """{recall@k..., ndcg@k...} from per_query_recall_ndcg's arrays per k (nan where no query has a relevant item)."""

    def mean(a: np.ndarray) -> float:
        return float(a.mean()) if len(a) else float("nan")

    return {f"recall@{k}": mean(r) for k, (r, _) in per_query.items()} | {
        f"ndcg@{k}": mean(n) for k, (_, n) in per_query.items()
    }


def paired_bootstrap(diff: np.ndarray, samples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """The mean of per-user paired differences with a percentile bootstrap interval: users resampled with
    replacement `samples` times (the same users for both methods in each resample, so the interval is the
    difference's own, not two overlapping marginal ones). Reproducible for a seed; chunked so memory stays bounded."""
    diff = np.asarray(diff, np.float64)
    n = len(diff)
    if n == 0:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "users": 0}
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    chunk = max(1, 4_000_000 // n)
    for s in range(0, samples, chunk):
        b = min(chunk, samples - s)
        means[s : s + b] = diff[rng.integers(0, n, (b, n))].mean(axis=1)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return {"diff": float(diff.mean()), "lo": float(lo), "hi": float(hi), "users": int(n)}


def popularity_ranking(item_counts: np.ndarray, k: int) -> np.ndarray:
    """The k most frequent items (ties by lower index): the baseline every retrieval model must beat."""
    return np.lexsort((np.arange(len(item_counts)), -item_counts))[:k]


def group_relevant(query_rows: np.ndarray, item_rows: np.ndarray, num_queries: int) -> list[np.ndarray]:
    """Per query row, the distinct item rows it engaged with (vectorised group-by)."""
    order = np.lexsort((item_rows, query_rows))
    q, it = query_rows[order], item_rows[order]
    keep = np.ones(len(q), bool)
    keep[1:] = (q[1:] != q[:-1]) | (it[1:] != it[:-1])
    q, it = q[keep], it[keep]
    bounds = np.searchsorted(q, np.arange(num_queries + 1))
    return [it[bounds[i] : bounds[i + 1]] for i in range(num_queries)]


def softmax_log_likelihood(
    score,
    relevant: list[np.ndarray],
    extra: np.ndarray,
    weights: list[float],
    seen: list[np.ndarray] | None = None,
    chunk: int = 256,
) -> dict[float, float]:
    """Mean over (user, relevant item) of log softmax over the catalogue of `score(rows) + w * extra` for each w
    (items a user has seen left out of its softmax when `seen` is given): the held-out likelihood of the blended score,
    smooth in w and using every positive (a top-10 hit rate on a day of ~100 users moves by whole hits).
    `score`: query rows (a slice) -> [rows, catalogue] scores."""
    import torch

    bonus = torch.from_numpy(np.asarray(extra, np.float64))
    total = {w: 0.0 for w in weights}
    count = 0
    for s in range(0, len(relevant), chunk):
        rows = slice(s, min(s + chunk, len(relevant)))
        base = score(rows).to(torch.float64)
        mask = torch.zeros_like(base, dtype=torch.bool)
        if seen is not None:
            for i, q in enumerate(range(rows.start, rows.stop)):
                if len(seen[q]):
                    mask[i, torch.from_numpy(seen[q])] = True
        qi = [i for i, q in enumerate(range(rows.start, rows.stop)) for _ in relevant[q]]
        it = np.concatenate([relevant[q] for q in range(rows.start, rows.stop)]) if qi else np.zeros(0, np.int64)
        if not qi:
            continue
        qi_t, it_t = torch.tensor(qi), torch.from_numpy(it.astype(np.int64))
        count += len(qi)
        for w in weights:
            logits = (base + w * bonus).masked_fill(mask, -np.inf)
            log_z = torch.logsumexp(logits, dim=1)
            total[w] += float((logits[qi_t, it_t] - log_z[qi_t]).clamp(min=-1e4).sum())
    return {w: total[w] / count if count else float("nan") for w in weights}
