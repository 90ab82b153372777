"""FAISS inner-product indexes over L2-normalised vectors: exact for small catalogues, IVF for large ones.

The models emit L2-normalised vectors and train on their dot product, so the index uses METRIC_INNER_PRODUCT:
the metric the model was trained with, never L2 on unnormalised vectors. Ids are corpus row numbers; the
row -> item_id table is stored beside the index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys_assets.ml.metrics import exact_top_k


@dataclass(frozen=True)
class IndexSpec:
    ivf_min_items: int = 100_000  # below this an exact IndexFlatIP is both faster to build and exact
    nlist: int = 0  # 0 = 4 * sqrt(n), a common default for IVF
    nprobe: int = 32
    train_sample: int = 262_144  # vectors used to train the IVF quantiser
    seed: int = 7


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def build_ip_index(vectors: np.ndarray, spec: IndexSpec = IndexSpec()) -> tuple[faiss.Index, dict]:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    if n < spec.ivf_min_items:
        index = faiss.IndexFlatIP(d)
        index.add(vectors)
        return index, {"type": "IndexFlatIP", "metric": "inner_product", "num_vectors": n, "dim": d}
    nlist = spec.nlist or max(1, int(4 * math.sqrt(n)))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(spec.seed)
    sample = vectors[rng.choice(n, size=min(n, spec.train_sample), replace=False)]
    index.train(sample)
    index.add(vectors)
    index.nprobe = spec.nprobe
    return index, {
        "type": "IndexIVFFlat",
        "metric": "inner_product",
        "num_vectors": n,
        "dim": d,
        "nlist": nlist,
        "nprobe": spec.nprobe,
    }


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def recall_vs_exact(index: faiss.Index, corpus: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Share of the exact top-k (brute force on the same vectors) that the index returns."""
    k = min(k, len(corpus))
    if k == 0 or len(queries) == 0:
        return float("nan")
    truth = exact_top_k(queries, corpus, k)
    _, got = search(index, queries, k)
    hits = sum(len(np.intersect1d(t, g[g >= 0])) for t, g in zip(truth, got))
    return hits / (k * len(queries))


def serialize(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def deserialize(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def valid_embeddings(table: pa.Table, dim: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Rows of a raw (item_id, embedding) table with a non-null id and a finite vector of length `dim`; the
    first occurrence per id wins. Vectorised (Arrow list kernels); every rejected row is counted by reason."""
    ids = table.column("item_id").combine_chunks()
    emb = table.column("embedding").combine_chunks()
    null_id = pc.is_null(ids).to_numpy(zero_copy_only=False)
    right_len = pc.fill_null(pc.equal(pc.list_value_length(emb), dim), False).to_numpy(zero_copy_only=False)
    candidates = np.flatnonzero(~null_id & right_len)
    mat = pc.list_flatten(emb.take(pa.array(candidates))).to_numpy(zero_copy_only=False).astype(np.float32)
    mat = mat.reshape(len(candidates), dim)
    finite = np.isfinite(mat).all(axis=1)
    cand_ids = ids.take(pa.array(candidates)).to_numpy(zero_copy_only=False)
    dup = np.zeros(len(candidates), bool)
    dup[finite] = pd.Series(cand_ids[finite]).duplicated(keep="first").to_numpy()
    keep = finite & ~dup
    rejects = {
        "null_item_id": int(null_id.sum()),
        "wrong_length": int((~null_id & ~right_len).sum()),
        "non_finite_value": int((~finite).sum()),
        "duplicate_item_id": int(dup.sum()),
    }
    return cand_ids[keep].astype(object), np.ascontiguousarray(mat[keep]), rejects


def cold_start_candidates(
    items: pd.DataFrame,
    as_of: pd.Timestamp,
    window_event_counts: pd.Series,
    max_age_days: float,
    max_window_events: int,
) -> pd.DataFrame:
    """Approved catalogue items that are new (age <= max_age_days at `as_of`) or rarely seen in the window.

    `items` has item_id, moderation_status, created_at; returns those rows plus age_days, window_events and
    the reason(s) each qualified."""
    # Fails closed: an item listed with different moderation statuses is not approved (as in the filter chain).
    statuses = items.groupby("item_id")["moderation_status"].nunique(dropna=False)
    approved = items["item_id"].notna() & (items["moderation_status"] == "approved")
    approved &= items["item_id"].map(statuses).fillna(0).to_numpy() == 1
    df = items.loc[approved, ["item_id", "created_at"]].drop_duplicates("item_id")
    df = df.assign(
        age_days=(as_of - pd.to_datetime(df["created_at"], utc=True)).dt.total_seconds() / 86_400.0,
        window_events=window_event_counts.reindex(df["item_id"]).fillna(0).astype("int64").to_numpy(),
    )
    df = df[df["age_days"] >= 0]  # created after the partition day: not in this day's catalogue yet
    new = df["age_days"] <= max_age_days
    rare = df["window_events"] < max_window_events
    return df[new | rare].assign(is_new=new[new | rare], is_rare=rare[new | rare]).reset_index(drop=True)
