"""Indexes: retrieval_index (item-tower vectors of the catalogue) and cold_start_index (content embeddings of new or
rarely seen items), both FAISS inner-product indexes built by the model library (recsys_assets/ml/indexing.py)."""

from collections.abc import Callable

from dagster import AssetExecutionContext, AssetKey, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from recsys_assets.config.files import ConfigFilesResource
from recsys_assets.core.datasets import (
    COLD_START_INDEX,
    MONITORING_REPORT,
    RETRIEVAL_INDEX,
    RETRIEVAL_MODEL,
    TRAINING_EVENTS,
)
from recsys_assets.core.metadata import md_table, numeric_metadata
from recsys_assets.core.partitions import PER_DAY, daily_partitions
from recsys_assets.core.runs import DayRun
from recsys_assets.datagen.raw_sources import raw_asset_key
from recsys_assets.ml.indexing import BuiltIndex, IndexSettings, build_cold_start_index, build_retrieval_index
from recsys_assets.training.automation import TRAIN_AFTER_DATAGEN, TRAIN_AFTER_VOCAB
from recsys_assets.training.lineage import window_dep
from resources.storage import StorageResource

GROUP = "indexes"


class IndexConfig(Config):
    ivf_min_items: int = Field(default=100_000, description="Catalogues smaller than this get an exact IndexFlatIP.")
    nlist: int = Field(default=0, description="IVF lists; 0 = 4 * sqrt(items).")
    nprobe: int = Field(default=32, description="IVF lists searched per query.")
    recall_k: int = Field(default=50, description="k for the index's recall against exact search.")
    max_recall_queries: int = Field(default=2_000, description="Validation-day users used to measure index recall.")

    def settings(self) -> IndexSettings:
        from recsys_assets.ml.faiss_index import IndexSpec

        spec = IndexSpec(ivf_min_items=self.ivf_min_items, nlist=self.nlist, nprobe=self.nprobe)
        return IndexSettings(spec, self.recall_k, self.max_recall_queries)


def index_asset(name: str, build: Callable[..., BuiltIndex], report: Callable[[BuiltIndex], dict], **asset_args):
    """A daily FAISS index asset: built by the library from the day's committed inputs, published, reported."""

    @asset(
        name=name,
        partitions_def=daily_partitions,
        group_name=GROUP,
        kinds={"faiss"},
        backfill_policy=PER_DAY,
        **asset_args,
    )
    def index(
        context: AssetExecutionContext, config: IndexConfig, storage: StorageResource, config_files: ConfigFilesResource
    ) -> MaterializeResult:
        run = DayRun.of(context, storage)
        built = build(run.store, run.day, config_files.training_spec(), config.settings())
        out = run.write(name, built.write)
        return MaterializeResult(
            metadata={
                "dagster/row_count": MetadataValue.int(built.items.num_rows),
                **report(built),
                "path": MetadataValue.path(out.uri),
                "version": out.version,
            }
        )

    return index


def retrieval_index_report(built: BuiltIndex) -> dict:
    d = built.desc
    return {
        "index": md_table(
            ["type", "metric", "vectors", "dim", f"recall@{d['recall_k']} vs exact", "queries/s"],
            [
                [
                    d["type"],
                    d["metric"],
                    d["num_vectors"],
                    d["dim"],
                    round(d["recall_vs_exact"], 4),
                    round(d["batch_queries_per_s"]),
                ]
            ],
        ),
        "recall_vs_exact": MetadataValue.float(float(d["recall_vs_exact"])),
        "build_seconds": MetadataValue.float(d["build_seconds"]),
        "batch_queries_per_s": MetadataValue.float(d["batch_queries_per_s"]),
    }


def cold_start_index_report(built: BuiltIndex) -> dict:
    d = built.desc
    numeric = ("num_new", "num_rare", "self_recall_at_1", "recall_vs_exact", "build_seconds")
    return {
        "items": md_table(
            ["new (age)", "rare (events)", "candidates without valid embedding", "index type"],
            [[d["num_new"], d["num_rare"], d["num_candidates_without_valid_embedding"], d["type"]]],
        ),
        "embedding_rejects": md_table(["reason", "rows"], [[k, v] for k, v in d["embedding_rejects"].items()]),
        **numeric_metadata({k: d[k] for k in (*numeric, "num_candidates_without_valid_embedding")}),
    }


retrieval_index = index_asset(
    RETRIEVAL_INDEX,
    build_retrieval_index,
    retrieval_index_report,
    automation_condition=TRAIN_AFTER_VOCAB,
    deps=[AssetKey(RETRIEVAL_MODEL), window_dep(TRAINING_EVENTS)],
    description="FAISS inner-product index over the item-tower vectors of every item in the model's window and "
    "validation day (exact for small catalogues, IVF above ivf_min_items), with the query tower exported beside it "
    "and the index's recall@k against exact search on validation-day users.",
)
cold_start_index = index_asset(
    COLD_START_INDEX,
    build_cold_start_index,
    cold_start_index_report,
    automation_condition=TRAIN_AFTER_DATAGEN,
    deps=[
        raw_asset_key("items"),
        raw_asset_key("item_embeddings"),
        window_dep(TRAINING_EVENTS),
        AssetKey(MONITORING_REPORT),  # the day's datagen finished: what starts it
    ],
    description="FAISS inner-product index over the L2-normalised 128-d content embeddings of approved items that "
    "are new (age <= cold_start.max_age_days) or have fewer than cold_start.max_window_events events in the "
    "window, so items without interactions can still be retrieved by content.",
)

index_assets = [retrieval_index, cold_start_index]
