"""The offline evaluation report of a day: what the model assets measured on the validation day, every method on one
protocol (retrieval: two-tower with/without history, most-popular, recent-popular, item-kNN; ranker: with/without
history, item prior, previous model; index recall vs exact; cold-start self-recall), read from the version each model
gate judged (the withheld candidate when a gate failed) with what the gate decided. Plain functions over the store."""

from __future__ import annotations

from dataclasses import dataclass

from recsys_assets.core.datasets import COLD_START_INDEX, RANKER_MODEL, RETRIEVAL_INDEX, RETRIEVAL_MODEL
from recsys_assets.core.store_dirs import PartitionVersion
from resources.store import DatasetStore


def build_evaluation_report(
    ranker: dict,
    ranker_training: dict,
    retrieval: dict,
    index: dict | None,
    cold_start: dict | None,
    gates: dict[str, str] | None = None,
    retrieval_training: dict | None = None,
) -> dict:
    k = retrieval["k"]
    pop = retrieval[f"popularity_recall@{k}"]
    methods = retrieval.get("methods") or {
        "two-tower": {m[len("model_") :]: v for m, v in retrieval.items() if m.startswith("model_")},
        "most-popular": {m[len("popularity_") :]: v for m, v in retrieval.items() if m.startswith("popularity_")},
    }
    return {
        "validation_day": ranker["validation_day"],
        "train_days": ranker_training["train_days"],
        "gates": gates or {},
        "ranker": {
            "auc": ranker["auc"],
            "history_len": ranker.get("history_len", 0),
            "item_bias": ranker.get("item_bias", False),
            "auc_history_free": ranker.get("auc_history_free", {}),
            "auc_item_prior": ranker.get("auc_item_prior", {}),
            "previous_model_day": ranker["previous_model_day"],
            "previous_model_auc": ranker["previous_model_auc"],
            "auc_delta_vs_previous": {
                t: ranker["auc"][t] - ranker["previous_model_auc"][t] for t in ranker["previous_model_auc"]
            },
            "positive_rate": ranker["positive_rate"],
            "validation_rows": ranker["validation_rows"],
            # what the temporal holdout fit chose on the window's last day (ml/holdout_fit.py), and its table
            "epochs": ranker.get("epochs"),
            "holdout_fit": ranker_training.get("holdout_fit"),
        },
        "retrieval": {
            **{m: retrieval[m] for m in retrieval if m.startswith(("model_", "popularity_"))},
            f"recall_lift_over_popularity@{k}": retrieval[f"model_recall@{k}"] / pop if pop else None,
            "primary_method": retrieval.get("primary_method", "two-tower"),
            "methods": methods,
            # the served score minus each method, per user, with a bootstrap 95% interval (models trained before
            # this existed have none)
            "paired_vs_served": retrieval.get("paired_vs_served", {}),
            "exclude_seen": retrieval.get("exclude_seen", False),
            "recency_prior": retrieval.get("recency_prior", 0.0),
            "epochs": retrieval.get("epochs"),
            "item_trend": retrieval.get("item_trend", False),
            "example_age": retrieval.get("example_age", False),
            "holdout_fit": (retrieval_training or {}).get("holdout_fit"),
            "num_queries": retrieval["num_queries"],
            "corpus_size": retrieval["corpus_size"],
        },
        "retrieval_index": {
            x: index[x] for x in ("type", "num_vectors", "recall_vs_exact", "recall_k", "batch_queries_per_s")
        }
        if index
        else None,
        "cold_start_index": {
            x: cold_start[x] for x in ("type", "num_vectors", "num_new", "num_rare", "self_recall_at_1")
        }
        if cold_start
        else None,
    }


def _judged_json(store: DatasetStore, dataset: str, day: str, name: str) -> tuple[dict, str]:
    """A model's JSON from the version its gate judged (withheld or committed), and the gate's state."""
    version = store.version_under_check(dataset, day)
    state = store.gate_state(dataset, day)
    verdict = "passed" if state.state == "committed" and state.committed_version == version else state.state
    return PartitionVersion(store, dataset, day, version).read_json(name), verdict


def _training_json(store: DatasetStore, dataset: str, day: str) -> dict:
    return PartitionVersion(store, dataset, day, store.version_under_check(dataset, day)).read_json("training.json")


def _committed_json(store: DatasetStore, dataset: str, day: str, name: str) -> dict | None:
    return PartitionVersion.committed(store, dataset, day).read_json(name) if store.is_committed(dataset, day) else None


@dataclass(frozen=True)
class EvaluationReport:
    report: dict
    png: bytes  # comparison.png: every method's recall/NDCG@10 and every ranker variant's AUC

    def write(self, out: PartitionVersion) -> dict:
        out.write_json("report.json", self.report)
        out.write_bytes("comparison.png", self.png)
        return {}


def evaluate_day(store: DatasetStore, day: str) -> EvaluationReport:
    from recsys_assets.evaluation.plot import comparison_png

    ranker, ranker_gate = _judged_json(store, RANKER_MODEL, day, "metrics.json")
    retrieval, retrieval_gate = _judged_json(store, RETRIEVAL_MODEL, day, "metrics.json")
    report = build_evaluation_report(
        ranker,
        _training_json(store, RANKER_MODEL, day),
        retrieval,
        _committed_json(store, RETRIEVAL_INDEX, day, "index.json"),
        _committed_json(store, COLD_START_INDEX, day, "index.json"),
        gates={RANKER_MODEL: ranker_gate, RETRIEVAL_MODEL: retrieval_gate},
        retrieval_training=_training_json(store, RETRIEVAL_MODEL, day),
    )
    return EvaluationReport(report, comparison_png(report))
