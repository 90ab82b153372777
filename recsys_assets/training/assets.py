"""Training assets: vocab -> ranker_model, retrieval_model (the model library's entry points, ml/train.py).

Each asset resolves its day, training YAML and resources, calls one library function, publishes what it returns and
reports it. Both models come from one factory (`model_asset`): same partitions, lineage (the training window),
automation, pool and run shape.
"""

from collections.abc import Callable

from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    MaterializeResult,
    MetadataValue,
    TimeWindowPartitionMapping,
    asset,
)

from recsys_assets.config.files import ConfigFilesResource
from recsys_assets.config.training import RANKER_TASKS
from recsys_assets.core.datasets import (
    MONITORING_REPORT,
    RANKER_MODEL,
    RETRIEVAL_MODEL,
    TRAINING_EVENTS,
    USER_HISTORY,
    VOCAB,
)
from recsys_assets.core.metadata import md_table, numeric_metadata
from recsys_assets.core.partitions import PER_DAY, daily_partitions
from recsys_assets.core.runs import DayRun
from recsys_assets.core.spark_stages import stage_job
from recsys_assets.ml.train import (
    TrainedModel,
    VocabResult,
    build_day_vocab,
    train_day_ranker,
    train_day_retrieval,
    vocab_inputs,
)
from recsys_assets.ml.window_counts import WindowCounts, window_counts_params
from recsys_assets.training.automation import TRAIN_AFTER_DATAGEN, TRAIN_AFTER_VOCAB
from recsys_assets.training.lineage import window_dep
from recsys_assets.training.tracking import track, training_payload
from recsys_assets.training.workers import ModelRun, train_model
from resources.mlflow import MlflowResource
from resources.spark import SparkResource
from resources.storage import StorageResource
from resources.training import TrainingResource

GROUP = "training"


def window_table(status: dict[str, str]) -> MetadataValue:
    """Each day of the window and what happened to it (used, withheld by a failed check, missing)."""
    return md_table(["day", "training_events"], [[d, s] for d, s in status.items()])


@asset(
    partitions_def=daily_partitions,
    automation_condition=TRAIN_AFTER_DATAGEN,
    group_name=GROUP,
    # Self-dependency on the previous day: ids extend yesterday's vocab, so backfills run days in order.
    deps=[
        window_dep(TRAINING_EVENTS),
        # The day's datagen finished (its report is written from a committed training_events day): what starts it.
        AssetKey(MONITORING_REPORT),
        AssetDep(
            AssetKey(VOCAB),
            partition_mapping=TimeWindowPartitionMapping(
                start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True
            ),
        ),
    ],
    kinds={"spark", "python", "parquet"},
    backfill_policy=PER_DAY,
    description="Vocabularies of the categorical features over the training window with stable ids (yesterday's "
    "ids kept, new tokens appended), reserved padding/OOV ids, counts, dense-feature moments, and the OOV rate of "
    "each feature on the validation day.",
)
def vocab(
    context: AssetExecutionContext, storage: StorageResource, config_files: ConfigFilesResource, spark: SparkResource
) -> MaterializeResult:
    run = DayRun.of(context, storage)
    spec = config_files.training_spec()
    # The window's counts on the Spark resource (a stage of the Spark job, ml/window_counts.py), written into the new
    # version; the run process merges the vocabulary from the small tables it wrote.
    window, previous_day = vocab_inputs(run.store, run.day, spec)
    out = run.new_version(VOCAB)
    params = window_counts_params(run.store, window, spec, previous_day)
    spark.run_job(context, stage_job(VOCAB, run.store, run.day, out.version, params))
    result = build_day_vocab(run.store, run.day, spec, WindowCounts.read(run.store, out))
    out.publish(**result.write(out))
    return MaterializeResult(
        metadata={**vocab_metadata(result, run.day), "path": MetadataValue.path(out.uri), "version": out.version}
    )


def vocab_metadata(result: VocabResult, day: str) -> dict:
    stats = result.stats
    sizes, oov, retired = stats["cardinality"], stats["oov_rate_validation_day"], stats.get("retired_ids", {})
    return {
        "dagster/row_count": MetadataValue.int(stats["num_tokens"]),
        "features": md_table(
            [
                "feature",
                "ids (incl. 2 reserved)",
                "new ids",
                "retired ids (free)",
                "OOV rate on " + day,
                "max OOV rate",
            ],
            [
                [f, sizes[f], stats["new_tokens"][f], retired.get(f, 0), round(oov[f], 4), stats["max_oov_rate"][f]]
                for f in sizes
            ],
        ),
        "counted_on": stats.get("counted_on", "run process"),
        "retire_after_days": str(stats.get("retire_after_days")),
        "train_days": ", ".join(result.window.train_days),
        "window": window_table(result.window.status),
        "warm_start_from": stats["warm_start_from"] or "none (first vocab)",
        **numeric_metadata({f"cardinality_{f}": v for f, v in sizes.items()}),
        **numeric_metadata({f"oov_rate_{f}": float(v) for f, v in oov.items()}),
    }


def model_asset(name: str, train: Callable[..., TrainedModel], report: Callable[[dict], dict], description: str):
    """A daily model asset: trained on the window before its day after that day's vocab, validated on the day, one
    training at a time per pool slot, reported with its training history and window."""

    @asset(
        name=name,
        partitions_def=daily_partitions,
        automation_condition=TRAIN_AFTER_VOCAB,
        group_name=GROUP,
        deps=[AssetKey(VOCAB), window_dep(TRAINING_EVENTS), window_dep(USER_HISTORY)],
        kinds={"pytorch"},
        backfill_policy=PER_DAY,
        pool="training",
        description=description,
    )
    def model(
        context: AssetExecutionContext,
        storage: StorageResource,
        training: TrainingResource,
        config_files: ConfigFilesResource,
        spark: SparkResource,
        mlflow: MlflowResource,
    ) -> MaterializeResult:
        run = DayRun.of(context, storage)
        trained = train_model(run, name, train, config_files.training_spec(), training, spark, context)
        out = trained.out
        payload = training_payload(
            name, run.day, out.uri, out.version, trained.training_info, trained.metrics, context.run_id
        )
        tracked = track(mlflow, storage.store, payload)
        return MaterializeResult(metadata={**report(trained.metrics), **training_metadata(trained), **tracked})

    return model


def training_metadata(trained: ModelRun) -> dict:
    info, out = trained.training_info, trained.out
    history = info["history"]
    per_rank = history[-1].get("rank_samples_per_s") if history else None
    return {
        "training_history": md_table(
            ["epoch", "loss", "holdout loss", "samples", "seconds", "samples/s"],
            [
                [h["epoch"], round(h["loss"], 5), round(h["holdout_loss"], 5) if "holdout_loss" in h else "-"]
                + [h["samples"], h["seconds"], h["samples_per_s"]]
                for h in history
            ],
        ),
        "train_days": ", ".join(info["train_days"]),
        "window": window_table(info["window_status"]),
        "device": info["settings"]["device"],
        "launcher": trained.launcher,
        "processes": MetadataValue.int(info["settings"].get("world_size", 1)),
        "path": MetadataValue.path(out.uri),
        "version": out.version,
        "samples_per_s": MetadataValue.float(round(info["samples_per_s"], 1)),
        **({"samples_per_s_per_rank": MetadataValue.json({"last_epoch": per_rank})} if per_rank else {}),
        "train_seconds": MetadataValue.float(round(info["train_seconds"], 2)),
        "resumed_from_epoch": MetadataValue.int(
            -1 if info["resumed_from_epoch"] is None else info["resumed_from_epoch"]
        ),
    }


def _r4(v):
    return round(v, 4) if v is not None else "n/a"


def ranker_report(metrics: dict) -> dict:
    aucs, hf, prior, prev = (metrics[k] for k in ("auc", "auc_history_free", "auc_item_prior", "previous_model_auc"))
    header = ["task", "AUC" + (" (history)" if metrics["history_len"] else ""), "history-free ranker", "item prior"]
    header += [f"previous model ({metrics['previous_model_day'] or 'none'})", "floor", "positive rate"]
    rows = [
        [t, _r4(aucs[t]), _r4(hf.get(t)), _r4(prior.get(t)), _r4(prev.get(t))]
        + [metrics["min_auc"].get(t, "-"), _r4(metrics["positive_rate"][t])]
        for t in RANKER_TASKS
    ]
    return {
        "validation_auc": md_table(header, rows),
        **numeric_metadata({f"auc_{t}": float(v) for t, v in aucs.items()}),
        **numeric_metadata({f"auc_history_free_{t}": float(v) for t, v in hf.items()}),
        **numeric_metadata({f"auc_item_prior_{t}": float(v) for t, v in prior.items()}),
    }


def retrieval_report(metrics: dict) -> dict:
    methods, ks = metrics["methods"], metrics["ks"]
    names = list(methods)
    rows = [[f"{m}@{x}", *[round(methods[n][f"{m}@{x}"], 4) for n in names]] for m in ("recall", "ndcg") for x in ks]
    rows.append(["coverage@10", *[round(methods[n]["coverage@10"], 4) for n in names]])
    seen = "items seen in the window excluded" if metrics["exclude_seen"] else "seen items not excluded"
    return {
        "validation_retrieval": md_table(["metric", *names], rows),
        "protocol": f"day {metrics['validation_day']}, full corpus ({metrics['corpus_size']:,} items), exact top-K, "
        + f"{metrics['num_queries']:,} users (a fixed hash sample of at most "
        + f"{metrics.get('validation_users_sample', metrics['num_queries']):,}), "
        + seen,
        "recall_plot": _recall_plot(methods, ks),
        "num_validation_users": MetadataValue.int(metrics["num_queries"]),
        "corpus_size": MetadataValue.int(metrics["corpus_size"]),
        **numeric_metadata({k: v for k, v in metrics.items() if k.startswith(("model_", "popularity_"))}),
    }


def _recall_plot(methods: dict, ks: list[int]) -> MetadataValue:
    """recall@k of every method as a bar chart (markdown: the UI renders it without a plotting library)."""
    lines = []
    for x in ks:
        top = max(m[f"recall@{x}"] for m in methods.values()) or 1.0
        lines.append(f"**recall@{x}**\n")
        for name, m in methods.items():
            bar = "#" * round(30 * m[f"recall@{x}"] / top)
            lines.append(f"    {name:<26} {bar:<30} {m[f'recall@{x}']:.4f}")
        lines.append("")
    return MetadataValue.md("\n".join(lines))


ranker_model = model_asset(
    RANKER_MODEL,
    train_day_ranker,
    ranker_report,
    "Multi-task MMoE ranker (liked, shared, followed, watch_complete) over vocab embeddings, the 128-d content "
    "embedding and dense features. AUC per task on the validation day, also for the previous partition's model on "
    "the same day. Weights + exported program + vocab in a versioned directory.",
)
retrieval_model = model_asset(
    RETRIEVAL_MODEL,
    train_day_retrieval,
    retrieval_report,
    "Two-tower retrieval model (user query tower, item tower with content embedding) trained on positive events with "
    "in-batch negatives and logQ correction; cosine similarity (L2-normalised dot product), the index's metric. "
    "Full-corpus recall/NDCG@K on the validation day vs a most-popular baseline.",
)

training_assets = [vocab, ranker_model, retrieval_model]
