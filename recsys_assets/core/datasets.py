"""The derived datasets, declared once: name (= the asset and the directory under the data root), what protects
each partition (blocking checks), and what retention does with it.

Protection: a dataset with blocking checks is staged by its asset and committed by the storage layer only when
every one of those checks has recorded a passing verdict (resources/storage.py); one without is committed by its
asset. The datagen checks take their blocking flag from here (datagen/day_checks.py); the model checks in `checks/`
declare theirs, and tests/core/test_gates.py holds the two together.

Retention (recsys_assets/maintenance/retention.py): every partition older than the retention age is deleted unless
protected. The latest committed partitions of each `model` dataset are kept, with the days of every
`training_data` dataset their training.json says they were trained and validated on, and the same day of every
`model_companion` dataset (the vocab and indexes served with them). `report` partitions are never protected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from resources.store import DatasetStore

Retention = Literal["training_data", "model", "model_companion", "report"]


@dataclass(frozen=True)
class DatasetDecl:
    name: str
    retention: Retention
    blocking_checks: tuple[str, ...] = ()


FILTERED_EVENTS = "filtered_events"
TRAINING_EVENTS = "training_events"
MONITORING_REPORT = "datagen_monitoring_report"
USER_HISTORY = "user_history"
VOCAB = "vocab"
RANKER_MODEL = "ranker_model"
RETRIEVAL_MODEL = "retrieval_model"
RETRIEVAL_INDEX = "retrieval_index"
COLD_START_INDEX = "cold_start_index"
OFFLINE_EVALUATION = "offline_evaluation"
FEATURE_SKEW_REPORT = "feature_skew_report"
ONLINE_EVALUATION = "online_evaluation"
FEED_ROWS = "feed"  # the day's feed as scored on Spark (Parquet), before the feed asset loads it into PostgreSQL

DATASETS: dict[str, DatasetDecl] = {
    d.name: d
    for d in (
        DatasetDecl(FILTERED_EVENTS, "training_data", ("filter_item_loss_within_limits", "input_losses_within_limits")),
        DatasetDecl(TRAINING_EVENTS, "training_data", ("embedding_join_item_loss", "training_events_expectations")),
        DatasetDecl(MONITORING_REPORT, "training_data"),
        DatasetDecl(USER_HISTORY, "training_data", ("user_history_point_in_time",)),
        DatasetDecl(VOCAB, "model_companion"),
        DatasetDecl(RANKER_MODEL, "model", ("ranker_auc_gate",)),
        DatasetDecl(RETRIEVAL_MODEL, "model", ("retrieval_recall_gate",)),
        DatasetDecl(RETRIEVAL_INDEX, "model_companion", ("retrieval_index_recall_vs_exact",)),
        DatasetDecl(COLD_START_INDEX, "model_companion"),
        DatasetDecl(OFFLINE_EVALUATION, "model_companion"),
        DatasetDecl(FEATURE_SKEW_REPORT, "report"),
        DatasetDecl(ONLINE_EVALUATION, "report"),
        DatasetDecl(FEED_ROWS, "report"),
    )
}


def datasets_with(retention: Retention) -> tuple[str, ...]:
    return tuple(name for name, d in DATASETS.items() if d.retention == retention)


def publish_partition(store: DatasetStore, dataset: str, day: str, version: str, **manifest: object) -> dict:
    """Hand a fully written version to the storage layer: committed now if the dataset has no blocking checks,
    else staged until they pass."""
    return store.stage(dataset, day, version, DATASETS[dataset].blocking_checks, **manifest)
