"""Every retrieval method on one protocol: each scores the full catalogue for the validation day's users, items the
user already interacted with in the window are optionally left out (training.yaml evaluation.exclude_seen), and
recall@K / NDCG@K / top-10 catalogue coverage are computed the same way for all (exact top-K, no index).

Methods: the two-tower (with and without history), most-popular (window positives), recent-popular (the last
window day's positives), item-kNN (cosine over users' histories as of the day: co-occurrence, no training; each item
keeps its nearest items, so scoring does not grow with the user population). The
ranker's cheap baseline is the item prior: the item's smoothed label rate in the window, per task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from recsys_assets.ml.features import positions_in
from recsys_assets.ml.metrics import (
    group_relevant,
    mean_recall_ndcg,
    paired_bootstrap,
    per_query_recall_ndcg,
    roc_auc,
)

ScoreFn = Callable[[slice], torch.Tensor]  # query rows -> scores [rows, catalogue]


def vector_scores(q_vecs: np.ndarray, item_vecs: np.ndarray) -> ScoreFn:
    q = torch.from_numpy(np.ascontiguousarray(q_vecs, np.float32))
    items = torch.from_numpy(np.ascontiguousarray(item_vecs, np.float32))
    return lambda rows: q[rows] @ items.T


def count_scores(counts: np.ndarray) -> ScoreFn:
    """The same list for every user: by count, ties by lower catalogue row (popularity_ranking's order)."""
    n = len(counts)
    score = torch.from_numpy(counts.astype(np.float64) + (n - np.arange(n)) / (n + 1.0))
    return lambda rows: score.unsqueeze(0).expand(rows.stop - rows.start, n)


@dataclass(frozen=True)
class ItemNeighbours:
    """Each item's most similar items: `rows` [items, m] catalogue rows (-1 = none), `similarity` [items, m]."""

    rows: np.ndarray
    similarity: np.ndarray

    @property
    def num_items(self) -> int:
        return len(self.rows)

    def matrix(self):
        """The lists as a sparse [items, items] matrix (scipy CSR)."""
        from scipy import sparse

        i, k = np.nonzero(self.rows >= 0)
        return sparse.csr_matrix(
            (self.similarity[i, k].astype(np.float64), (i, self.rows[i, k])), shape=(self.num_items, self.num_items)
        )


def item_neighbours(
    population_rows: np.ndarray, num_items: int, m: int, block_entries: int = 1 << 22
) -> ItemNeighbours:
    """Every item's `m` nearest items by cosine over the population's histories (binary user x item; an item is its
    own nearest, cos = 1): co-occurrence counts a block of items at a time, each row cut to its top `m` (ties: lower
    catalogue row). A block holds at most `block_entries` item pairs (block rows x catalogue size), so the memory
    does not grow with the catalogue. `population_rows` [users, L] are catalogue rows, -1 = none. Built once;
    scoring a query then costs its history's lists, not the population."""
    from scipy import sparse

    block = max(1, min(2048, block_entries // max(num_items, 1)))

    users, cols = np.nonzero(population_rows >= 0)
    x = sparse.csr_matrix(
        (np.ones(len(users), np.float64), (users, population_rows[users, cols])),
        shape=(len(population_rows), num_items),
    )
    x.sum_duplicates()
    x.data[:] = 1.0  # binary: an item twice in a history counts once
    norm = np.sqrt(np.maximum(np.asarray(x.sum(axis=0)).ravel(), 1.0))
    xt = x.T.tocsr()
    rows = np.full((num_items, m), -1, np.int64)
    sims = np.zeros((num_items, m), np.float32)
    for start in range(0, num_items, block):
        c = (xt[start : start + block] @ x).tocsr()  # co-occurrence counts of the block's items with every item
        c.sort_indices()
        r = np.repeat(np.arange(c.shape[0]), np.diff(c.indptr))
        cos = c.data / (norm[start + r] * norm[c.indices])
        order = np.lexsort((c.indices, -cos, r))
        r_o = r[order]
        rank = np.arange(len(order)) - c.indptr[:-1][r_o]
        keep = rank < m
        rows[start + r_o[keep], rank[keep]] = c.indices[order][keep]
        sims[start + r_o[keep], rank[keep]] = cos[order][keep]
    return ItemNeighbours(rows, sims)


def neighbour_scores(
    profile_rows: np.ndarray, neighbours: ItemNeighbours, fallback_counts: np.ndarray | None = None
) -> ScoreFn:
    """Item-kNN: score(u, j) = sum over u's history items i of sim(i, j) for j among i's neighbour list
    (`item_neighbours`). `profile_rows` [queries, L] are catalogue rows, -1 = none; `fallback_counts` break ties
    (and rank for users without history) by popularity, below any similarity."""
    from scipy import sparse

    num_items = neighbours.num_items
    sim = neighbours.matrix()
    tie = np.zeros(num_items, np.float64)
    if fallback_counts is not None and len(fallback_counts):
        order = np.lexsort((np.arange(num_items), -fallback_counts))
        tie[order] = np.linspace(1e-6, 0.0, num_items)

    def score(rows: slice) -> torch.Tensor:
        prof = profile_rows[rows]
        r, c = np.nonzero(prof >= 0)
        p = sparse.csr_matrix((np.ones(len(r)), (r, prof[r, c])), shape=(len(prof), num_items))
        p.sum_duplicates()
        p.data[:] = 1.0  # binary profile
        return torch.from_numpy((p @ sim).toarray() + tie)

    return score


def seen_items(window, user_ids: np.ndarray, catalog) -> list[np.ndarray]:
    """Per query user, the catalogue rows they had any event with in the window (streamed, only these users)."""
    users = pa.array(user_ids, pa.string())
    index = pd.Index(user_ids, dtype=object)
    qs, its = [], []
    for b in window.to_batches(columns=["user_id", "item_id"], filter=pc.field("user_id").isin(users)):
        rows = catalog.rows(b.column("item_id"))
        q = positions_in(index, b.column("user_id"))
        ok = (rows >= 0) & (q >= 0)
        qs.append(q[ok])
        its.append(rows[ok])
    q = np.concatenate(qs) if qs else np.zeros(0, np.int64)
    it = np.concatenate(its) if its else np.zeros(0, np.int64)
    return group_relevant(q, it, len(user_ids))


# Scores of one ranking chunk at most: [queries x catalogue] float64 (64 MiB; the scorer's own output beside it), so
# a chunk holds fewer queries as the catalogue grows (256 up to 32k items, ~11 at 729k) instead of growing with it.
RANK_CHUNK_SCORES = 1 << 23


def rank_chunk(num_items: int, most: int = 256) -> int:
    """Queries ranked at once against `num_items` items: at most `most`, at most RANK_CHUNK_SCORES scores."""
    return max(1, min(most, RANK_CHUNK_SCORES // max(num_items, 1)))


def rank_all(score: ScoreFn, n_queries: int, k: int, seen: list[np.ndarray] | None, chunk: int = 256) -> np.ndarray:
    out = []
    for s in range(0, n_queries, chunk):
        rows = slice(s, min(s + chunk, n_queries))
        sc = score(rows).to(torch.float64, copy=True)  # a copy: the seen mask below never writes the scorer's tensor
        if seen is not None:
            for i, q in enumerate(range(rows.start, rows.stop)):
                if len(seen[q]):
                    sc[i, torch.from_numpy(seen[q])] = -np.inf
        out.append(torch.topk(sc, min(k, sc.shape[1]), dim=1).indices.numpy())
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)


PAIRED_METRICS = ("recall@10", "ndcg@10")


@dataclass
class MethodComparison:
    """Every method's mean metrics, and its per-user recall@10 / NDCG@10 (the users with a relevant item, in the same
    order for every method) for paired comparisons."""

    metrics: dict[str, dict[str, float]]
    per_user: dict[str, dict[str, np.ndarray]]

    def paired(self, reference: str, samples: int = 1000, seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
        """For every other method: `reference` minus it, per user, averaged, with a bootstrap 95% interval
        (metrics.paired_bootstrap). "reference beats it" means the interval's low end is above 0."""
        ref = self.per_user[reference]
        return {
            name: {m: paired_bootstrap(ref[m] - values[m], samples, seed) for m in PAIRED_METRICS}
            for name, values in self.per_user.items()
            if name != reference
        }


def compare_methods(
    methods: dict[str, ScoreFn],
    relevant: list[np.ndarray],
    ks: list[int],
    num_items: int,
    seen: list[np.ndarray] | None = None,
) -> MethodComparison:
    """recall@k, ndcg@k and coverage@10 (distinct items in all top-10s / catalogue) of every method, and each
    method's per-user recall@10 / NDCG@10."""
    kmax = max(max(ks), 10)
    out, per_user = {}, {}
    for name, score in methods.items():
        ranked = rank_all(score, len(relevant), kmax, seen, chunk=rank_chunk(num_items))
        # one pass over the users per k; @10's arrays are also the paired comparison's
        per_k = {k: per_query_recall_ndcg(ranked, relevant, k) for k in sorted({*ks, 10})}
        m = mean_recall_ndcg({k: per_k[k] for k in ks})
        m["coverage@10"] = float(len(np.unique(ranked[:, :10])) / num_items) if num_items and len(ranked) else 0.0
        out[name] = m
        per_user[name] = dict(zip(PAIRED_METRICS, per_k[10]))
    return MethodComparison(out, per_user)


def smoothed_label_rates(
    keyed_labels: Iterable[tuple[np.ndarray, np.ndarray]], num_keys: int, num_tasks: int, smoothing: float
) -> np.ndarray:
    """[num_keys, tasks] label rate per key (an item's catalogue row or vocab id) over (keys [rows], labels [rows,
    tasks]) blocks, smoothed towards the overall rate: (positives + m * overall) / (events + m); keys without events
    get the overall rate. The item prior of the ranker's baseline and of its item bias."""
    pos = np.zeros((num_keys, num_tasks))
    n = np.zeros(num_keys)
    for keys, labels in keyed_labels:
        n += np.bincount(keys, minlength=num_keys)
        for t in range(num_tasks):
            pos[:, t] += np.bincount(keys, weights=labels[:, t], minlength=num_keys)
    return rates_from_sums(pos, n, smoothing)


def rates_from_sums(pos: np.ndarray, n: np.ndarray, smoothing: float) -> np.ndarray:
    """smoothed_label_rates from its sums: positives [keys, tasks] and events [keys] per key (e.g. counted on
    Spark, ml/window_counts.py)."""
    overall = pos.sum(axis=0) / max(n.sum(), 1.0)
    return (pos + smoothing * overall) / (n[:, None] + smoothing)


def item_prior_aucs(prior: np.ndarray, valid_batches, tasks: tuple[str, ...], max_rows: int | None) -> dict[str, float]:
    """AUC per task of the item prior: `prior` [catalogue rows, tasks] (the item's smoothed label rate in the
    training rows, smoothed_label_rates keyed by catalogue row: ranker.item_priors), scored on the validation rows
    (encoded batches: `content_row`, `labels`)."""
    scores, labels, seen = [], [], 0
    for b in valid_batches:
        scores.append(prior[b["content_row"].numpy()])
        labels.append(b["labels"].numpy())
        seen += len(labels[-1])
        if max_rows is not None and seen >= max_rows:
            break
    s = np.concatenate(scores)[:max_rows] if scores else np.zeros((0, len(tasks)))
    y = np.concatenate(labels)[:max_rows] if labels else np.zeros((0, len(tasks)))
    return {t: roc_auc(y[:, i], s[:, i]) for i, t in enumerate(tasks)}
