"""offline_evaluation: one report per day of the temporal split (models trained on days <= D-1, evaluated on D).

It gathers what the model and index assets measured on the validation day (AUC per task against the previous
model on the same events, full-corpus recall/NDCG@K against most-popular, the index's recall against exact
search, the cold-start index's self-recall) into one JSON beside the data and tables in the UI.
"""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from recsys_assets.core.metadata import md_table, numeric_metadata
from recsys_assets.core.partitions import PER_DAY, daily_partitions
from recsys_assets.indexes.assets import cold_start_index, retrieval_index
from recsys_assets.training.artifacts import (
    COLD_START_INDEX,
    OFFLINE_EVALUATION,
    RANKER_MODEL,
    RETRIEVAL_INDEX,
    RETRIEVAL_MODEL,
    ArtifactDir,
)
from recsys_assets.training.assets import ranker_model, retrieval_model
from recsys_assets.training.automation import TRAIN_AFTER_VOCAB
from resources.storage import StorageResource


def build_evaluation_report(
    ranker: dict, ranker_training: dict, retrieval: dict, index: dict, cold_start: dict
) -> dict:
    k = retrieval["k"]
    return {
        "validation_day": ranker["validation_day"],
        "train_days": ranker_training["train_days"],
        "ranker": {
            "auc": ranker["auc"],
            "previous_model_day": ranker["previous_model_day"],
            "previous_model_auc": ranker["previous_model_auc"],
            "auc_delta_vs_previous": {
                t: ranker["auc"][t] - ranker["previous_model_auc"][t] for t in ranker["previous_model_auc"]
            },
            "positive_rate": ranker["positive_rate"],
            "validation_rows": ranker["validation_rows"],
        },
        "retrieval": {
            **{m: retrieval[m] for m in retrieval if m.startswith(("model_", "popularity_"))},
            f"recall_lift_over_popularity@{k}": retrieval[f"model_recall@{k}"] / retrieval[f"popularity_recall@{k}"]
            if retrieval[f"popularity_recall@{k}"]
            else None,
            "num_queries": retrieval["num_queries"],
            "corpus_size": retrieval["corpus_size"],
        },
        "retrieval_index": {
            x: index[x] for x in ("type", "num_vectors", "recall_vs_exact", "recall_k", "batch_queries_per_s")
        },
        "cold_start_index": {
            x: cold_start[x] for x in ("type", "num_vectors", "num_new", "num_rare", "self_recall_at_1")
        },
    }


@asset(
    partitions_def=daily_partitions,
    automation_condition=TRAIN_AFTER_VOCAB,
    group_name="evaluation",
    deps=[ranker_model, retrieval_model, retrieval_index, cold_start_index],
    kinds={"python", "json"},
    backfill_policy=PER_DAY,
    description="Temporal-split offline evaluation of partition D's models on day D: ranker AUC per task (and vs "
    "the previous model on the same events), retrieval recall/NDCG@K vs most-popular, index recall vs exact.",
)
def offline_evaluation(context: AssetExecutionContext, storage: StorageResource) -> MaterializeResult:
    day, store = context.partition_key, storage.store
    ranker_dir = ArtifactDir.committed(store, RANKER_MODEL, day)
    report = build_evaluation_report(
        ranker_dir.read_json("metrics.json"),
        ranker_dir.read_json("training.json"),
        ArtifactDir.committed(store, RETRIEVAL_MODEL, day).read_json("metrics.json"),
        ArtifactDir.committed(store, RETRIEVAL_INDEX, day).read_json("index.json"),
        ArtifactDir.committed(store, COLD_START_INDEX, day).read_json("index.json"),
    )
    out = ArtifactDir.new(store, OFFLINE_EVALUATION, day, context.run_id)
    out.write_json("report.json", report)
    out.publish()
    r, ret = report["ranker"], report["retrieval"]
    ks = sorted({int(m.split("@")[1]) for m in ret if m.startswith("model_recall@")})
    return MaterializeResult(
        metadata={
            "ranker_auc": md_table(
                ["task", "AUC", f"previous model ({r['previous_model_day'] or 'none'})", "delta"],
                [
                    [
                        t,
                        round(v, 4),
                        round(r["previous_model_auc"][t], 4) if t in r["previous_model_auc"] else "n/a",
                        round(r["auc_delta_vs_previous"][t], 4) if t in r["auc_delta_vs_previous"] else "n/a",
                    ]
                    for t, v in r["auc"].items()
                ],
            ),
            "retrieval": md_table(
                ["k", "recall two-tower", "recall most-popular", "NDCG two-tower", "NDCG most-popular"],
                [
                    [
                        x,
                        round(ret[f"model_recall@{x}"], 4),
                        round(ret[f"popularity_recall@{x}"], 4),
                        round(ret[f"model_ndcg@{x}"], 4),
                        round(ret[f"popularity_ndcg@{x}"], 4),
                    ]
                    for x in ks
                ],
            ),
            "indexes": md_table(
                ["index", "type", "vectors", "recall vs exact", "self-recall@1"],
                [
                    [
                        "retrieval_index",
                        report["retrieval_index"]["type"],
                        report["retrieval_index"]["num_vectors"],
                        round(report["retrieval_index"]["recall_vs_exact"], 4),
                        "-",
                    ],
                    [
                        "cold_start_index",
                        report["cold_start_index"]["type"],
                        report["cold_start_index"]["num_vectors"],
                        "-",
                        round(report["cold_start_index"]["self_recall_at_1"], 4),
                    ],
                ],
            ),
            "report": MetadataValue.json(report),
            "path": MetadataValue.path(out.uri),
            **numeric_metadata({f"auc_{t}": float(v) for t, v in r["auc"].items()}),
            **numeric_metadata({k_: float(v) for k_, v in ret.items() if k_.startswith(("model_", "popularity_"))}),
        }
    )
