"""The model library's index entry points: a day's retrieval index (the two-tower's item vectors of the window's
catalogue, with the query tower beside it) and its cold-start index (content embeddings of new or rarely seen items),
both FAISS inner-product indexes with their row -> item_id table, measured against exact search. No Dagster."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys_assets.config.training import TrainingSpec
from recsys_assets.core.datasets import RETRIEVAL_MODEL, TRAINING_EVENTS, VOCAB
from recsys_assets.core.days import shift_day, window_of
from recsys_assets.core.raw_inputs import read_raw_table
from recsys_assets.core.readers import read_final_items
from recsys_assets.core.schemas import EMBEDDING_DIM
from recsys_assets.core.store_dirs import PartitionVersion
from recsys_assets.ml.artifacts import ArtifactDir, write_vocab
from recsys_assets.ml.faiss_index import IndexSpec
from resources.store import DatasetStore


@dataclass(frozen=True)
class IndexSettings:
    """How an index is built and measured (the index assets' run config)."""

    spec: IndexSpec
    recall_k: int = 50  # k for the index's recall against exact search
    max_recall_queries: int = 2_000  # queries used to measure it


@dataclass
class BuiltIndex:
    """A FAISS index partition: its files, its description (index.json, also in the manifest) and row count."""

    files: dict[str, bytes]
    items: pa.Table  # row -> item_id (and, for the cold-start index, why the item is in it)
    desc: dict
    model_dir: ArtifactDir | None = None  # the retrieval model served with it (query tower, vocab)

    def write(self, out: PartitionVersion) -> dict:
        for name, data in self.files.items():
            out.write_bytes(name, data)
        out.write_table("items.parquet", self.items)
        if self.model_dir is not None:
            out.write_bytes("query_tower.pt2", self.model_dir.read_bytes("query_tower.pt2"))
            write_vocab(out, *self.model_dir.read_vocab())
        out.write_json("index.json", self.desc)
        return {"row_count": self.items.num_rows, "index": self.desc}


def _queries_per_s(index, queries: np.ndarray, k: int) -> float:
    from recsys_assets.ml.faiss_index import search

    if len(queries) == 0:
        return 0.0
    t0 = time.perf_counter()
    search(index, queries, k)
    return len(queries) / max(time.perf_counter() - t0, 1e-9)


def _vocab_counts(store: DatasetStore, day: str, versions: dict[str, str]):
    """The window counts (Spark) of the day's committed vocab when they were taken from these training_events
    `versions` (day -> version), else None (the caller counts itself). Both indexes of the day read them."""
    from recsys_assets.ml.window_counts import WindowCounts

    if not store.is_committed(VOCAB, day):
        return None
    counts = WindowCounts.read(store, ArtifactDir.committed(store, VOCAB, day))
    return counts if counts is not None and counts.covers(versions) else None


def build_retrieval_index(store: DatasetStore, day: str, spec: TrainingSpec, settings: IndexSettings) -> BuiltIndex:
    """Item-tower vectors of every item in the committed model's window and validation day (exact for small
    catalogues, IVF above ivf_min_items), the recency prior as one extra dimension when the model was evaluated
    with it, and the index's recall@k against exact search on validation-day users."""
    from recsys_assets.ml.faiss_index import build_ip_index, recall_vs_exact, serialize
    from recsys_assets.ml.features import build_item_catalog
    from recsys_assets.ml.history import load_histories
    from recsys_assets.ml.loader import (
        BatchEncoder,
        committed_events_dataset,
        item_day_frequencies,
        item_frequencies,
        retrieval_positive_filter,
    )
    from recsys_assets.ml.models import TwoTower
    from recsys_assets.ml.retrieval import evaluation_queries, item_vectors, query_vectors, with_recency_prior
    from recsys_assets.ml.trend import TREND_LOOKBACK_DAYS

    model_dir = ArtifactDir.committed(store, RETRIEVAL_MODEL, day)
    info = model_dir.read_json("training.json")
    model = TwoTower.from_config(model_dir.read_json("model_config.json"))
    model.load_state_dict(model_dir.read_torch("model.pt"))
    model.eval()
    vocab, moments = model_dir.read_vocab()
    catalog = build_item_catalog([partial(read_final_items, store, d) for d in [*info["train_days"], day]])
    t0 = time.perf_counter()
    positives = retrieval_positive_filter(spec.labels)
    # The index serves the day after its own: a model with trend inputs reads the items' positives of the days
    # before that one (its own day and the two before it, those committed).
    trend_counts = None
    if model.item_trend:
        lookback = [shift_day(day, -k) for k in range(TREND_LOOKBACK_DAYS - 1, -1, -1)]
        counted = [d for d in lookback if store.is_committed(TRAINING_EVENTS, d)]
        counts = _vocab_counts(store, day, {d: store.committed_version(TRAINING_EVENTS, d) for d in counted})
        if counts is not None:  # counted on Spark with the day's vocab: no pass over events here
            trend_counts = counts.item_day_positives(catalog, counted)
        else:
            trend_counts = item_day_frequencies(committed_events_dataset(store, counted), catalog, positives)
    vectors, bias = item_vectors(
        model,
        catalog,
        vocab,
        moments,
        pd.Timestamp(window_of(day).end),
        day_positives=trend_counts,
        day=shift_day(day, 1),
    )
    history = load_histories(store, [day], model.history_len, vocab, catalog) if model.history_len else None
    encoder = BatchEncoder(vocab, moments, catalog, spec.labels, history)
    queries = query_vectors(
        model,
        evaluation_queries(committed_events_dataset(store, [day]), encoder, spec.labels, settings.max_recall_queries),
        catalog,
    )
    queries = queries[np.random.default_rng(0).permutation(len(queries))[: settings.max_recall_queries]]
    # The recency prior the model was evaluated with, from the index's own day (the newest data when it serves):
    # one extra dimension, so the inner product is the prior-weighted score (the feed appends 1 to each query).
    prior = float(model_dir.read_json("metrics.json").get("recency_prior", 0.0))
    if prior or bias is not None:  # the prior and the model's popularity logit: one extra dimension
        recent = (
            trend_counts[day]
            if trend_counts is not None and day in trend_counts
            else item_frequencies(committed_events_dataset(store, [day]), catalog, positives)
        )
        queries, vectors = with_recency_prior(queries, vectors, recent, prior, model.temperature, bias)
    index, desc = build_ip_index(vectors, settings.spec)
    build_s = time.perf_counter() - t0
    recall = recall_vs_exact(index, vectors, queries, settings.recall_k)
    desc |= {
        "model_day": day,
        "model_version": model_dir.version,
        "recency_prior": prior,
        "recency_prior_day": day if prior else None,
        "popularity_logit": bias is not None,  # the model's learned popularity logit, in the extra dimension
        "recall_vs_exact": recall,
        "recall_k": settings.recall_k,
        "recall_queries": int(len(queries)),
        "min_recall_vs_exact": spec.checks.index_min_recall_vs_exact,
        "build_seconds": round(build_s, 3),
        "batch_queries_per_s": round(_queries_per_s(index, queries, settings.recall_k), 1),
        "data_versions": info["data_versions"],
    }
    items = pa.table(
        {"row": np.arange(len(catalog), dtype=np.int64), "item_id": pa.array(catalog.item_ids, pa.string())}
    )
    return BuiltIndex({"index.faiss": serialize(index)}, items, desc, model_dir)


def build_cold_start_index(store: DatasetStore, day: str, spec: TrainingSpec, settings: IndexSettings) -> BuiltIndex:
    """L2-normalised 128-d content embeddings of approved items that are new (age <= cold_start.max_age_days) or have
    fewer than cold_start.max_window_events events in the window, so items without interactions can still be
    retrieved by content; each indexed item must come back first for its own vector."""
    from recsys_assets.ml.faiss_index import (
        build_ip_index,
        cold_start_candidates,
        l2_normalize,
        recall_vs_exact,
        search,
        serialize,
        valid_embeddings,
    )
    from recsys_assets.ml.features import count_tokens
    from recsys_assets.ml.loader import committed_events_dataset
    from recsys_assets.ml.windows import training_window

    window = training_window(store, day, spec.window_days)
    if (counts := _vocab_counts(store, day, window.versions)) is not None:  # counted on Spark with the day's vocab
        window_counts = counts.item_rows([*window.train_days, day])
    else:
        events = committed_events_dataset(store, [*window.train_days, day])
        window_counts = count_tokens(events.to_batches(columns=["item_id"]), ["item_id"])["item_id"]
    items = read_raw_table(store, "items", day, ["item_id", "moderation_status", "created_at"]).to_pandas()
    as_of = pd.Timestamp(window_of(day).end)
    candidates = cold_start_candidates(
        items, as_of, window_counts, spec.cold_start.max_age_days, spec.cold_start.max_window_events
    )
    emb_ids, emb, rejects = valid_embeddings(
        read_raw_table(store, "item_embeddings", day, ["item_id", "embedding"]), EMBEDDING_DIM
    )
    rows = pd.Index(emb_ids).get_indexer(candidates["item_id"])
    without_embedding = int((rows < 0).sum())
    chosen = candidates[rows >= 0].reset_index(drop=True)
    vectors = l2_normalize(emb[rows[rows >= 0]])
    t0 = time.perf_counter()
    index, desc = build_ip_index(vectors, settings.spec)
    build_s = time.perf_counter() - t0
    # Each indexed item must come back first for its own content vector (recall of the index, not of a model).
    sample = np.random.default_rng(0).permutation(len(vectors))[: settings.max_recall_queries]
    _, top1 = search(index, vectors[sample], 1) if len(sample) else (None, np.zeros((0, 1), np.int64))
    self_recall = float((top1[:, 0] == sample).mean()) if len(sample) else float("nan")
    recall = recall_vs_exact(index, vectors, vectors[sample], min(settings.recall_k, len(vectors)))
    desc |= {
        "num_new": int(chosen["is_new"].sum()),
        "num_rare": int(chosen["is_rare"].sum()),
        "num_candidates_without_valid_embedding": without_embedding,
        "embedding_rejects": rejects,
        "self_recall_at_1": self_recall,
        "recall_vs_exact": recall,
        "build_seconds": round(build_s, 3),
        "max_age_days": spec.cold_start.max_age_days,
        "max_window_events": spec.cold_start.max_window_events,
        "window": window.as_dict(),
    }
    table = pa.Table.from_pandas(chosen.assign(row=np.arange(len(chosen), dtype=np.int64)), preserve_index=False)
    return BuiltIndex({"index.faiss": serialize(index)}, table, desc)
