"""Checks on training metadata, models and indexes, with thresholds from training.yaml recorded at training time.

The model and index gates are blocking ERROR checks: a ranker that got worse, a retrieval model that does not
beat most-popular, or an index that misses what exact search finds stops the run before anything downstream
(index, evaluation, promotion) is built from it.
"""

import math

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from recsys_assets.core.datasets import COLD_START_INDEX, RANKER_MODEL, RETRIEVAL_INDEX, RETRIEVAL_MODEL, VOCAB
from recsys_assets.core.gating import gate, judged_version
from recsys_assets.core.metadata import md_table
from recsys_assets.core.partitions import daily_partitions
from recsys_assets.core.store_dirs import PartitionVersion
from resources.storage import StorageResource


def _judged(storage: StorageResource, dataset: str, day: str, name: str) -> tuple[str, dict]:
    """(version under check, one of its JSON files): the staged model, else the committed one."""
    version = judged_version(storage.store, dataset, day)
    return version, PartitionVersion(storage.store, dataset, day, version).read_json(name)


def _json(storage: StorageResource, dataset: str, day: str, name: str) -> dict:
    return _judged(storage, dataset, day, name)[1]


@asset_check(
    asset=VOCAB,
    partitions_def=daily_partitions,
    blocking=False,
    description="Share of validation-day events whose token is OOV stays under max_oov_rate per feature.",
)
def vocab_oov_rate_within_limits(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    stats = _json(storage, VOCAB, context.partition_key, "vocab.json")
    rates, limits = stats["oov_rate_validation_day"], stats["max_oov_rate"]
    breaches = {f: r for f, r in rates.items() if r > limits[f]}
    return AssetCheckResult(
        passed=not breaches,
        severity=AssetCheckSeverity.WARN,
        description=", ".join(f"{f} OOV {r:.2%} > {limits[f]:.0%}" for f, r in breaches.items())
        or "OOV rates within limits",
        metadata={
            "oov": md_table(["feature", "OOV rate", "max"], [[f, round(r, 4), limits[f]] for f, r in rates.items()]),
            "max_oov_rate_observed": MetadataValue.float(max(rates.values(), default=0.0)),
        },
    )


@asset_check(
    asset=RANKER_MODEL,
    partitions_def=daily_partitions,
    blocking=True,
    description="Per-task validation AUC above its floor and not worse than the previous model's AUC on "
    "the same validation events by more than ranker_max_auc_drop.",
)
def ranker_auc_gate(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    from recsys_assets.ml.ranker import ranker_gate

    day = context.partition_key
    version, metrics = _judged(storage, RANKER_MODEL, day, "metrics.json")
    ok, rows = ranker_gate(metrics)
    failing = [r[0] for r in rows if r[-1] == "FAIL"]
    return gate(
        storage.store,
        RANKER_MODEL,
        day,
        version,
        "ranker_auc_gate",
        AssetCheckResult(
            passed=ok,
            severity=AssetCheckSeverity.ERROR,
            description=f"AUC gate failed for {', '.join(failing)}" if failing else "all tasks pass the AUC gate",
            metadata={
                "auc_gate": md_table(["task", "AUC", "floor", "previous model AUC", "result"], rows),
                "min_task_auc": MetadataValue.float(min(metrics["auc"].values())),
            },
        ),
    )


@asset_check(
    asset=RETRIEVAL_MODEL,
    partitions_def=daily_partitions,
    blocking=True,
    description="Full-corpus recall@k on the validation day above retrieval_min_recall and at least "
    "retrieval_min_lift_over_popularity times the most-popular baseline.",
)
def retrieval_recall_gate(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    day = context.partition_key
    version, m = _judged(storage, RETRIEVAL_MODEL, day, "metrics.json")
    k = m["k"]
    recall, pop = m[f"model_recall@{k}"], m[f"popularity_recall@{k}"]
    lift = recall / pop if pop else float("inf")
    problems = []
    if not recall >= m["min_recall"]:
        problems.append(f"recall@{k} {recall:.4f} < {m['min_recall']}")
    if not lift >= m["min_lift_over_popularity"]:
        problems.append(f"lift over most-popular {lift:.2f} < {m['min_lift_over_popularity']}")
    return gate(
        storage.store,
        RETRIEVAL_MODEL,
        day,
        version,
        "retrieval_recall_gate",
        AssetCheckResult(
            passed=not problems,
            severity=AssetCheckSeverity.ERROR,
            description="; ".join(problems) or f"recall@{k} {recall:.4f}, {lift:.2f}x most-popular",
            metadata={
                f"recall_at_{k}": MetadataValue.float(recall),
                f"popularity_recall_at_{k}": MetadataValue.float(pop),
                "lift_over_popularity": MetadataValue.float(lift if math.isfinite(lift) else -1.0),
            },
        ),
    )


@asset_check(
    asset=RETRIEVAL_INDEX,
    partitions_def=daily_partitions,
    blocking=True,
    description="The index returns at least index_min_recall_vs_exact of the exact top-k for validation users.",
)
def retrieval_index_recall_vs_exact(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    day = context.partition_key
    version, d = _judged(storage, RETRIEVAL_INDEX, day, "index.json")
    return gate(
        storage.store,
        RETRIEVAL_INDEX,
        day,
        version,
        "retrieval_index_recall_vs_exact",
        AssetCheckResult(
            passed=bool(d["recall_vs_exact"] >= d["min_recall_vs_exact"]),
            severity=AssetCheckSeverity.ERROR,
            description=f"{d['type']}: recall@{d['recall_k']} vs exact {d['recall_vs_exact']:.4f} "
            f"(min {d['min_recall_vs_exact']})",
            metadata={"recall_vs_exact": MetadataValue.float(float(d["recall_vs_exact"])), "index_type": d["type"]},
        ),
    )


@asset_check(
    asset=COLD_START_INDEX,
    partitions_def=daily_partitions,
    blocking=False,
    description="Every indexed cold-start item is found first for its own content vector, and the index is not empty.",
)
def cold_start_index_self_recall(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    d = _json(storage, COLD_START_INDEX, context.partition_key, "index.json")
    ok = d["num_vectors"] > 0 and d["self_recall_at_1"] >= 0.99
    return AssetCheckResult(
        passed=bool(ok),
        severity=AssetCheckSeverity.WARN,
        description=f"{d['num_vectors']} items, self-recall@1 {d['self_recall_at_1']:.4f}",
        metadata={
            "num_items": MetadataValue.int(d["num_vectors"]),
            "self_recall_at_1": MetadataValue.float(float(d["self_recall_at_1"])),
        },
    )


model_checks = [
    vocab_oov_rate_within_limits,
    ranker_auc_gate,
    retrieval_recall_gate,
    retrieval_index_recall_vs_exact,
    cold_start_index_self_recall,
]
