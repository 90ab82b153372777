"""offline_evaluation: one report per day of the temporal split (models trained on days <= D-1, evaluated on D).

It gathers what the model assets measured on the validation day, on one protocol for every method: retrieval
(two-tower with and without history, most-popular, recent-popular, item-kNN: recall/NDCG@K, top-10 coverage),
the ranker (AUC per task with and without history, the item prior, the previous model on the same events), the
index's recall against exact search and the cold-start index's self-recall, into one JSON, tables and a plot
(`comparison.png`, also shown in the UI).

It exists on the days a model gate fails too: it reads the version each gate judged (the withheld candidate when
the gate failed) and says what each gate decided. A failed gate keeps the model out of the index, feed and
promotion, never out of the report. In the training run it follows the models and indexes; when a gate failed
(which skips it there), Declarative Automation runs it on its own right after (gate `any`), with whatever of the
day's indexes exists.
"""

import base64

from dagster import AssetExecutionContext, AssetSelection, MaterializeResult, MetadataValue, asset

from recsys_assets.core.automation import after_upstream
from recsys_assets.core.gating import judged_version
from recsys_assets.core.metadata import md_table, numeric_metadata
from recsys_assets.core.partitions import PER_DAY, daily_partitions
from recsys_assets.indexes.assets import cold_start_index, retrieval_index
from recsys_assets.indexes.evaluation_plot import comparison_png
from recsys_assets.training.artifacts import (
    COLD_START_INDEX,
    OFFLINE_EVALUATION,
    RANKER_MODEL,
    RETRIEVAL_INDEX,
    RETRIEVAL_MODEL,
    ArtifactDir,
)
from recsys_assets.training.assets import ranker_model, retrieval_model
from resources.storage import StorageResource


def _r(v, digits: int = 4):
    return round(v, digits) if isinstance(v, (int, float)) else "n/a"


def build_evaluation_report(
    ranker: dict,
    ranker_training: dict,
    retrieval: dict,
    index: dict | None,
    cold_start: dict | None,
    gates: dict[str, str] | None = None,
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
        },
        "retrieval": {
            **{m: retrieval[m] for m in retrieval if m.startswith(("model_", "popularity_"))},
            f"recall_lift_over_popularity@{k}": retrieval[f"model_recall@{k}"] / pop if pop else None,
            "primary_method": retrieval.get("primary_method", "two-tower"),
            "methods": methods,
            "exclude_seen": retrieval.get("exclude_seen", False),
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


def _judged_json(store, dataset: str, day: str, name: str) -> tuple[dict, str]:
    """A model's JSON from the version its gate judged (withheld or committed), and the gate's state."""
    version = judged_version(store, dataset, day)
    state = store.gate_state(dataset, day)
    verdict = "passed" if state.state == "committed" and state.committed_version == version else state.state
    return ArtifactDir(store, dataset, day, version).read_json(name), verdict


def _training_json(store, dataset: str, day: str) -> dict:
    return ArtifactDir(store, dataset, day, judged_version(store, dataset, day)).read_json("training.json")


def _committed_json(store, dataset: str, day: str, name: str) -> dict | None:
    return ArtifactDir.committed(store, dataset, day).read_json(name) if store.is_committed(dataset, day) else None


@asset(
    partitions_def=daily_partitions,
    # After the day's models, whatever their gates decided (the report shows a failing model beside the baselines).
    automation_condition=after_upstream(AssetSelection.assets(RANKER_MODEL, RETRIEVAL_MODEL), gate="any"),
    group_name="evaluation",
    # retrieval_index: in the training run the report follows the index (and shows its recall vs exact); when the
    # retrieval gate failed there is no index for the day and the report, run by automation, says so.
    deps=[ranker_model, retrieval_model, retrieval_index, cold_start_index],
    kinds={"python", "json"},
    backfill_policy=PER_DAY,
    description="Temporal-split offline evaluation of partition D's models on day D, every method on one protocol: "
    "retrieval (two-tower with/without history, most-popular, recent-popular, item-kNN: recall/NDCG@K, coverage), "
    "ranker AUC per task (with/without history, item prior, previous model), index recall vs exact; also on days "
    "a model gate failed (it reports the withheld model and the gate's verdict).",
)
def offline_evaluation(context: AssetExecutionContext, storage: StorageResource) -> MaterializeResult:
    day, store = context.partition_key, storage.store
    ranker, ranker_gate = _judged_json(store, RANKER_MODEL, day, "metrics.json")
    retrieval, retrieval_gate = _judged_json(store, RETRIEVAL_MODEL, day, "metrics.json")
    report = build_evaluation_report(
        ranker,
        _training_json(store, RANKER_MODEL, day),
        retrieval,
        _committed_json(store, RETRIEVAL_INDEX, day, "index.json"),
        _committed_json(store, COLD_START_INDEX, day, "index.json"),
        gates={RANKER_MODEL: ranker_gate, RETRIEVAL_MODEL: retrieval_gate},
    )
    out = ArtifactDir.new(store, OFFLINE_EVALUATION, day, context.run_id)
    out.write_json("report.json", report)
    png = comparison_png(report)
    out.write_bytes("comparison.png", png)
    plot = f"![comparison](data:image/png;base64,{base64.b64encode(png).decode()})"  # how the UI shows an image
    out.publish()
    r, ret = report["ranker"], report["retrieval"]
    methods = ret["methods"]
    names = list(methods)
    ks = sorted({int(m.split("@")[1]) for m in methods[names[0]] if m.startswith("recall@")})
    index_rows = []
    if report["retrieval_index"]:
        ri = report["retrieval_index"]
        index_rows.append(["retrieval_index", ri["type"], ri["num_vectors"], _r(ri["recall_vs_exact"]), "-"])
    if report["cold_start_index"]:
        cs = report["cold_start_index"]
        index_rows.append(["cold_start_index", cs["type"], cs["num_vectors"], "-", _r(cs["self_recall_at_1"])])
    return MaterializeResult(
        metadata={
            "gates": md_table(["model", "gate"], [[m, g] for m, g in report["gates"].items()]),
            "ranker_auc": md_table(
                [
                    "task",
                    "ranker",
                    "history-free ranker",
                    "item prior",
                    f"previous ({r['previous_model_day'] or 'none'})",
                ],
                [
                    [
                        t,
                        _r(v),
                        _r(r["auc_history_free"].get(t)),
                        _r(r["auc_item_prior"].get(t)),
                        _r(r["previous_model_auc"].get(t)),
                    ]
                    for t, v in r["auc"].items()
                ],
            ),
            "retrieval": md_table(
                ["metric", *names],
                [[f"{m}@{x}", *[_r(methods[n][f"{m}@{x}"]) for n in names]] for m in ("recall", "ndcg") for x in ks]
                + [["coverage@10", *[_r(methods[n].get("coverage@10")) for n in names]]],
            ),
            "protocol": f"day {day}, full corpus ({ret['corpus_size']:,} items), {ret['num_queries']:,} users, exact "
            "top-K; " + ("items seen in the window excluded" if ret["exclude_seen"] else "seen items not excluded"),
            "indexes": md_table(["index", "type", "vectors", "recall vs exact", "self-recall@1"], index_rows),
            "comparison_plot": MetadataValue.md(plot),
            "report": MetadataValue.json(report),
            "path": MetadataValue.path(out.uri),
            **numeric_metadata({f"auc_{t}": float(v) for t, v in r["auc"].items()}),
            **numeric_metadata({k_: float(v) for k_, v in ret.items() if k_.startswith(("model_", "popularity_"))}),
        }
    )
