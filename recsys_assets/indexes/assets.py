"""Indexes: retrieval_index (item-tower vectors of the catalogue) and cold_start_index (content embeddings of
new or rarely seen items), both FAISS inner-product indexes with their row -> item_id table."""

import time
from typing import TYPE_CHECKING

from dagster import AssetExecutionContext, AssetKey, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from recsys_assets.core.metadata import md_table, numeric_metadata
from recsys_assets.core.partitions import PER_DAY, daily_partitions, window_of
from recsys_assets.core.schemas import EMBEDDING_DIM
from recsys_assets.datagen.assets import training_events
from recsys_assets.datagen.raw_inputs import read_raw_table
from recsys_assets.datagen.raw_sources import raw_asset_key
from recsys_assets.datagen.stages import read_final_items
from recsys_assets.training.artifacts import COLD_START_INDEX, RETRIEVAL_INDEX, RETRIEVAL_MODEL, ArtifactDir
from recsys_assets.training.assets import retrieval_model
from recsys_assets.training.automation import TRAIN_AFTER_DATAGEN, TRAIN_AFTER_VOCAB
from recsys_assets.training.config import load_training_spec
from recsys_assets.training.windows import training_window, window_dep
from resources.config_files import ConfigFilesResource
from resources.storage import StorageResource

if TYPE_CHECKING:  # annotations only: the modules load where they are used
    import numpy as np

    from recsys_assets.indexes.faiss_index import IndexSpec


class IndexConfig(Config):
    ivf_min_items: int = Field(default=100_000, description="Catalogues smaller than this get an exact IndexFlatIP.")
    nlist: int = Field(default=0, description="IVF lists; 0 = 4 * sqrt(items).")
    nprobe: int = Field(default=32, description="IVF lists searched per query.")
    recall_k: int = Field(default=50, description="k for the index's recall against exact search.")
    max_recall_queries: int = Field(default=2_000, description="Validation-day users used to measure index recall.")

    def spec(self) -> "IndexSpec":
        from recsys_assets.indexes.faiss_index import IndexSpec

        return IndexSpec(ivf_min_items=self.ivf_min_items, nlist=self.nlist, nprobe=self.nprobe)


def _queries_per_s(index, queries: "np.ndarray", k: int) -> float:
    from recsys_assets.indexes.faiss_index import search

    if len(queries) == 0:
        return 0.0
    t0 = time.perf_counter()
    search(index, queries, k)
    return len(queries) / max(time.perf_counter() - t0, 1e-9)


@asset(
    partitions_def=daily_partitions,
    automation_condition=TRAIN_AFTER_VOCAB,
    group_name="indexes",
    deps=[retrieval_model, window_dep(training_events)],
    kinds={"faiss"},
    backfill_policy=PER_DAY,
    description="FAISS inner-product index over the item-tower vectors of every item in the model's window and "
    "validation day (exact for small catalogues, IVF above ivf_min_items), with the query tower exported beside it "
    "and the index's recall@k against exact search on validation-day users.",
)
def retrieval_index(
    context: AssetExecutionContext, config: IndexConfig, storage: StorageResource, config_files: ConfigFilesResource
) -> MaterializeResult:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from recsys_assets.indexes.faiss_index import build_ip_index, recall_vs_exact, serialize
    from recsys_assets.training.features import build_item_catalog
    from recsys_assets.training.history import load_histories
    from recsys_assets.training.loader import (
        BatchEncoder,
        committed_events_dataset,
        item_frequencies,
        retrieval_positive_filter,
    )
    from recsys_assets.training.models import TwoTower
    from recsys_assets.training.retrieval import evaluation_queries, item_vectors, query_vectors, with_recency_prior

    day, store = context.partition_key, storage.store
    spec = load_training_spec(config_files.training)
    model_dir = ArtifactDir.committed(store, RETRIEVAL_MODEL, day)
    info = model_dir.read_json("training.json")
    cfg = model_dir.read_json("model_config.json")
    model = TwoTower.from_config(cfg)
    model.load_state_dict(model_dir.read_torch("model.pt"))
    model.eval()
    vocab, moments = model_dir.read_vocab()
    days = [*info["train_days"], day]
    catalog = build_item_catalog([read_final_items(store, d) for d in days])
    t0 = time.perf_counter()
    vectors = item_vectors(model, catalog, vocab, moments, pd.Timestamp(window_of(day).end))
    history = load_histories(store, [day], model.history_len, vocab, catalog) if model.history_len else None
    encoder = BatchEncoder(vocab, moments, catalog, spec.labels, history)
    queries = query_vectors(
        model, evaluation_queries(committed_events_dataset(store, [day]), encoder, spec.labels), catalog
    )
    queries = queries[np.random.default_rng(0).permutation(len(queries))[: config.max_recall_queries]]
    # The recency prior the model was evaluated with, from the index's own day (the newest data when it serves):
    # one extra dimension, so the inner product is the prior-weighted score (the feed appends 1 to each query).
    prior = float(model_dir.read_json("metrics.json").get("recency_prior", 0.0))
    if prior:
        recent = item_frequencies(
            committed_events_dataset(store, [day]), catalog, retrieval_positive_filter(spec.labels)
        )
        queries, vectors = with_recency_prior(queries, vectors, recent, prior, model.temperature)
    index, desc = build_ip_index(vectors, config.spec())
    build_s = time.perf_counter() - t0
    recall = recall_vs_exact(index, vectors, queries, config.recall_k)
    qps = _queries_per_s(index, queries, config.recall_k)
    desc |= {
        "model_day": day,
        "model_version": model_dir.version,
        "recency_prior": prior,
        "recency_prior_day": day if prior else None,
        "recall_vs_exact": recall,
        "recall_k": config.recall_k,
        "recall_queries": int(len(queries)),
        "min_recall_vs_exact": spec.checks.index_min_recall_vs_exact,
        "build_seconds": round(build_s, 3),
        "batch_queries_per_s": round(qps, 1),
        "data_versions": info["data_versions"],
    }
    out = ArtifactDir.new(store, RETRIEVAL_INDEX, day, context.run_id)
    out.write_bytes("index.faiss", serialize(index))
    out.write_table(
        "items.parquet",
        pa.table({"row": np.arange(len(catalog), dtype=np.int64), "item_id": pa.array(catalog.item_ids, pa.string())}),
    )
    out.write_bytes("query_tower.pt2", model_dir.read_bytes("query_tower.pt2"))
    out.write_vocab(vocab, moments)
    out.write_json("index.json", desc)
    out.publish(row_count=len(catalog), index=desc)
    return MaterializeResult(
        metadata={
            "dagster/row_count": MetadataValue.int(len(catalog)),
            "index": md_table(
                ["type", "metric", "vectors", "dim", f"recall@{config.recall_k} vs exact", "queries/s"],
                [[desc["type"], desc["metric"], desc["num_vectors"], desc["dim"], round(recall, 4), round(qps)]],
            ),
            "path": MetadataValue.path(out.uri),
            "version": out.version,
            "recall_vs_exact": MetadataValue.float(float(recall)),
            "build_seconds": MetadataValue.float(round(build_s, 3)),
            "batch_queries_per_s": MetadataValue.float(round(qps, 1)),
        }
    )


@asset(
    partitions_def=daily_partitions,
    automation_condition=TRAIN_AFTER_DATAGEN,
    group_name="indexes",
    deps=[
        raw_asset_key("items"),
        raw_asset_key("item_embeddings"),
        window_dep(training_events),
        AssetKey("datagen_monitoring_report"),  # the day's datagen finished: what starts it
    ],
    kinds={"faiss"},
    backfill_policy=PER_DAY,
    description="FAISS inner-product index over the L2-normalised 128-d content embeddings of approved items that "
    "are new (age <= cold_start.max_age_days) or have fewer than cold_start.max_window_events events in the "
    "window, so items without interactions can still be retrieved by content.",
)
def cold_start_index(
    context: AssetExecutionContext, config: IndexConfig, storage: StorageResource, config_files: ConfigFilesResource
) -> MaterializeResult:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from recsys_assets.indexes.faiss_index import (
        build_ip_index,
        cold_start_candidates,
        l2_normalize,
        recall_vs_exact,
        search,
        serialize,
        valid_embeddings,
    )
    from recsys_assets.training.features import count_tokens
    from recsys_assets.training.loader import committed_events_dataset

    day, store = context.partition_key, storage.store
    spec = load_training_spec(config_files.training)
    window = training_window(store, day, spec.window_days)
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
    index, desc = build_ip_index(vectors, config.spec())
    build_s = time.perf_counter() - t0
    # Each indexed item must come back first for its own content vector (recall of the index, not of a model).
    sample = np.random.default_rng(0).permutation(len(vectors))[: config.max_recall_queries]
    _, top1 = search(index, vectors[sample], 1) if len(sample) else (None, np.zeros((0, 1), np.int64))
    self_recall = float((top1[:, 0] == sample).mean()) if len(sample) else float("nan")
    recall = recall_vs_exact(index, vectors, vectors[sample], min(config.recall_k, len(vectors)))
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
    out = ArtifactDir.new(store, COLD_START_INDEX, day, context.run_id)
    out.write_bytes("index.faiss", serialize(index))
    out.write_table(
        "items.parquet",
        pa.Table.from_pandas(chosen.assign(row=np.arange(len(chosen), dtype=np.int64)), preserve_index=False),
    )
    out.write_json("index.json", desc)
    out.publish(row_count=len(chosen), index=desc)
    return MaterializeResult(
        metadata={
            "dagster/row_count": MetadataValue.int(len(chosen)),
            "items": md_table(
                ["new (age)", "rare (events)", "candidates without valid embedding", "index type"],
                [[desc["num_new"], desc["num_rare"], without_embedding, desc["type"]]],
            ),
            "embedding_rejects": md_table(["reason", "rows"], [[k, v] for k, v in rejects.items()]),
            "path": MetadataValue.path(out.uri),
            "version": out.version,
            **numeric_metadata(
                {
                    k: desc[k]
                    for k in (
                        "num_new",
                        "num_rare",
                        "self_recall_at_1",
                        "recall_vs_exact",
                        "build_seconds",
                        "num_candidates_without_valid_embedding",
                    )
                }
            ),
        }
    )


index_assets = [retrieval_index, cold_start_index]
