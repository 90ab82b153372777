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


def recall_ndcg_at_k(ranked: np.ndarray, relevant: list[np.ndarray], ks: list[int]) -> dict[str, float]:
    """Mean recall@k (hits / |relevant|) and NDCG@k (binary gains) over queries with >= 1 relevant item."""
    out: dict[str, list[float]] = {f"recall@{k}": [] for k in ks} | {f"ndcg@{k}": [] for k in ks}
    discounts = 1.0 / np.log2(np.arange(2, ranked.shape[1] + 2))
    for row, rel in zip(ranked, relevant):
        if len(rel) == 0:
            continue
        hit = np.isin(row, rel)
        for k in ks:
            out[f"recall@{k}"].append(hit[:k].sum() / len(rel))
            ideal = discounts[: min(len(rel), k)].sum()
            out[f"ndcg@{k}"].append(float((hit[:k] * discounts[:k]).sum() / ideal))
    return {name: float(np.mean(v)) if v else float("nan") for name, v in out.items()}


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
