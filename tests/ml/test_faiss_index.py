"""FAISS indexes: exact equals brute force, IVF recall, serialisation, embedding validation, cold-start retrieval."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys_assets.ml.faiss_index import (
    IndexSpec,
    build_ip_index,
    cold_start_candidates,
    deserialize,
    l2_normalize,
    recall_vs_exact,
    search,
    serialize,
    valid_embeddings,
)
from recsys_assets.ml.metrics import exact_top_k


def clustered(n, d=64, clusters=50, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    return l2_normalize(centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, d)))


def test_small_catalogue_gets_an_exact_index_with_the_same_top_k_as_brute_force():
    vectors = clustered(900)
    corpus, queries = vectors[:800], vectors[800:]
    index, desc = build_ip_index(corpus, IndexSpec(ivf_min_items=1000))
    assert desc["type"] == "IndexFlatIP" and desc["metric"] == "inner_product"
    _, got = search(index, queries, 10)
    assert (got == exact_top_k(queries, corpus, 10)).all()
    assert recall_vs_exact(index, corpus, queries, 10) == 1.0


def test_large_catalogue_gets_ivf_with_high_recall_and_survives_serialisation():
    vectors = clustered(30_300)
    corpus, queries = vectors[:30_000], vectors[30_000:]  # queries from the corpus' distribution
    index, desc = build_ip_index(corpus, IndexSpec(ivf_min_items=10_000, nprobe=32))
    assert desc["type"] == "IndexIVFFlat" and desc["nlist"] == int(4 * np.sqrt(30_000))
    recall = recall_vs_exact(index, corpus, queries, 10)
    assert 0.95 <= recall <= 1.0
    restored = deserialize(serialize(index))
    assert (search(restored, queries, 10)[1] == search(index, queries, 10)[1]).all()
    # Fewer probes, lower recall: nprobe is the knob it claims to be.
    index.nprobe = 1
    assert recall_vs_exact(index, corpus, queries, 10) < recall


def test_valid_embeddings_counts_every_rejected_row():
    good = [0.1] * 128
    tbl = pa.table(
        {
            "item_id": pa.array(["a", None, "b", "c", "a", "d", "e"], pa.string()),
            "embedding": pa.array(
                [good, good, [0.1] * 64, [float("nan")] + good[1:], good, None, good], pa.list_(pa.float32())
            ),
        }
    )
    ids, vecs, rejects = valid_embeddings(tbl, 128)
    assert ids.tolist() == ["a", "e"] and vecs.shape == (2, 128)
    assert rejects == {"null_item_id": 1, "wrong_length": 2, "non_finite_value": 1, "duplicate_item_id": 1}


def test_cold_start_candidates_are_approved_items_that_are_new_or_rare():
    as_of = pd.Timestamp("2024-03-10", tz="UTC")
    items = pd.DataFrame(
        {
            "item_id": ["new", "old_rare", "old_popular", "rejected_new", "future"],
            "moderation_status": ["approved", "approved", "approved", "rejected", "approved"],
            "created_at": pd.to_datetime(
                ["2024-03-09", "2024-01-01", "2024-01-01", "2024-03-09", "2024-03-11"], utc=True
            ),
        }
    )
    counts = pd.Series({"new": 40, "old_rare": 2, "old_popular": 500})
    got = cold_start_candidates(items, as_of, counts, max_age_days=3, max_window_events=5)
    assert got["item_id"].tolist() == ["new", "old_rare"]
    assert got["is_new"].tolist() == [True, False] and got["is_rare"].tolist() == [False, True]
    assert got["window_events"].tolist() == [40, 2]


def test_cold_start_index_retrieves_a_new_item_from_its_content():
    rng = np.random.default_rng(5)
    catalogue = l2_normalize(rng.normal(size=(2_000, 128)))
    index, _ = build_ip_index(catalogue)
    new_item = 1234
    # A query from the same content (e.g. a similar upload, or the item's own noisy re-embedding).
    query = l2_normalize(catalogue[new_item : new_item + 1] + 0.05 * rng.normal(size=(1, 128)))
    _, top = search(index, query, 5)
    assert top[0, 0] == new_item
