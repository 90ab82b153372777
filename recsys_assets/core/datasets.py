"""The derived datasets, declared once: their names and the blocking checks that gate each partition's commit.

A dataset with blocking checks is staged by its asset and committed by the storage layer only when every one of
those checks has recorded a passing verdict (resources/storage.py); one without is committed by its asset. The
check names here must equal the blocking asset checks defined for the asset of the same name in `checks/`
(tests/test_gates.py holds the two lists together).
"""

from __future__ import annotations

from dataclasses import dataclass

from resources.storage import DatasetStore


@dataclass(frozen=True)
class DatasetDecl:
    name: str
    blocking_checks: tuple[str, ...] = ()


FILTERED_EVENTS = "filtered_events"
TRAINING_EVENTS = "training_events"
MONITORING_REPORT = "datagen_monitoring_report"
VOCAB = "vocab"
RANKER_MODEL = "ranker_model"
RETRIEVAL_MODEL = "retrieval_model"
RETRIEVAL_INDEX = "retrieval_index"
COLD_START_INDEX = "cold_start_index"
OFFLINE_EVALUATION = "offline_evaluation"
FEATURE_SKEW_REPORT = "feature_skew_report"
ONLINE_EVALUATION = "online_evaluation"

DATASETS: dict[str, DatasetDecl] = {
    d.name: d
    for d in (
        DatasetDecl(FILTERED_EVENTS, ("filter_item_loss_within_limits", "input_losses_within_limits")),
        DatasetDecl(TRAINING_EVENTS, ("embedding_join_item_loss", "training_events_expectations")),
        DatasetDecl(MONITORING_REPORT),
        DatasetDecl(VOCAB),
        DatasetDecl(RANKER_MODEL, ("ranker_auc_gate",)),
        DatasetDecl(RETRIEVAL_MODEL, ("retrieval_recall_gate",)),
        DatasetDecl(RETRIEVAL_INDEX, ("retrieval_index_recall_vs_exact",)),
        DatasetDecl(COLD_START_INDEX),
        DatasetDecl(OFFLINE_EVALUATION),
        DatasetDecl(FEATURE_SKEW_REPORT),
        DatasetDecl(ONLINE_EVALUATION),
    )
}


def publish_partition(store: DatasetStore, dataset: str, day: str, version: str, **manifest: object) -> dict:
    """Hand a fully written version to the storage layer: committed now if the dataset has no blocking checks,
    else staged until they pass."""
    return store.stage(dataset, day, version, DATASETS[dataset].blocking_checks, **manifest)
