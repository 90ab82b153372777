"""offline_evaluation: one report per day of the temporal split (models trained on days <= D-1, evaluated on D),
every method on one protocol (report.py), as one JSON, tables and a plot (`comparison.png`, also shown in the UI).

It exists on the days a model gate fails too: it reads the version each gate judged (the withheld candidate when
the gate failed) and says what each gate decided. A failed gate keeps the model out of the index, feed and
promotion, never out of the report. In the training run it follows the models and indexes; when a gate failed
(which skips it there), Declarative Automation runs it on its own right after (gate `any`), with whatever of the
day's indexes exists.
"""

import base64

from dagster import AssetExecutionContext, AssetKey, AssetSelection, MaterializeResult, MetadataValue, asset

from recsys_assets.core.automation import after_upstream
from recsys_assets.core.datasets import (
    COLD_START_INDEX,
    OFFLINE_EVALUATION,
    RANKER_MODEL,
    RETRIEVAL_INDEX,
    RETRIEVAL_MODEL,
)
from recsys_assets.core.metadata import md_table, numeric_metadata
from recsys_assets.core.partitions import PER_DAY, daily_partitions
from recsys_assets.core.runs import DayRun
from recsys_assets.evaluation.report import evaluate_day
from resources.storage import StorageResource

GROUP = "evaluation"


def _r(v, digits: int = 4):
    return round(v, digits) if isinstance(v, (int, float)) else "n/a"


@asset(
    partitions_def=daily_partitions,
    # After the day's models, whatever their gates decided (the report shows a failing model beside the baselines).
    automation_condition=after_upstream(AssetSelection.assets(RANKER_MODEL, RETRIEVAL_MODEL), gate="any"),
    group_name=GROUP,
    # retrieval_index: in the training run the report follows the index (and shows its recall vs exact); when the
    # retrieval gate failed there is no index for the day and the report, run by automation, says so.
    deps=[AssetKey(RANKER_MODEL), AssetKey(RETRIEVAL_MODEL), AssetKey(RETRIEVAL_INDEX), AssetKey(COLD_START_INDEX)],
    kinds={"python", "json"},
    backfill_policy=PER_DAY,
    description="Temporal-split offline evaluation of partition D's models on day D, every method on one protocol: "
    "retrieval (two-tower with/without history, most-popular, recent-popular, item-kNN: recall/NDCG@K, coverage), "
    "ranker AUC per task (with/without history, item prior, previous model), index recall vs exact; also on days "
    "a model gate failed (it reports the withheld model and the gate's verdict).",
)
def offline_evaluation(context: AssetExecutionContext, storage: StorageResource) -> MaterializeResult:
    run = DayRun.of(context, storage)
    evaluation = evaluate_day(run.store, run.day)
    out = run.write(OFFLINE_EVALUATION, evaluation.write)
    return MaterializeResult(
        metadata={
            **evaluation_metadata(evaluation.report, evaluation.png, run.day),
            "path": MetadataValue.path(out.uri),
        }
    )


def paired_verdict(d: dict) -> str:
    """ "beats" only when the whole bootstrap interval of served - method is above zero."""
    return "served beats it" if d["lo"] > 0 else "served below it" if d["hi"] < 0 else "no difference shown"


def evaluation_metadata(report: dict, png: bytes, day: str) -> dict:
    plot = f"![comparison](data:image/png;base64,{base64.b64encode(png).decode()})"  # how the UI shows an image
    r, ret = report["ranker"], report["retrieval"]
    methods = ret["methods"]
    names = list(methods)
    ks = sorted({int(m.split("@")[1]) for m in methods[names[0]] if m.startswith("recall@")})
    index_rows = []
    if ri := report["retrieval_index"]:
        index_rows.append(["retrieval_index", ri["type"], ri["num_vectors"], _r(ri["recall_vs_exact"]), "-"])
    if cs := report["cold_start_index"]:
        index_rows.append(["cold_start_index", cs["type"], cs["num_vectors"], "-", _r(cs["self_recall_at_1"])])
    previous = f"previous ({r['previous_model_day'] or 'none'})"
    ranker_rows = [
        [t, _r(v), _r(r["auc_history_free"].get(t)), _r(r["auc_item_prior"].get(t)), _r(r["previous_model_auc"].get(t))]
        for t, v in r["auc"].items()
    ]
    retrieval_rows = [
        [f"{m}@{x}", *[_r(methods[n][f"{m}@{x}"]) for n in names]] for m in ("recall", "ndcg") for x in ks
    ] + [["coverage@10", *[_r(methods[n].get("coverage@10")) for n in names]]]
    seen = "items seen in the window excluded" if ret["exclude_seen"] else "seen items not excluded"
    paired_rows = [
        [name, *(f"{_r(d[m]['diff'])} [{_r(d[m]['lo'])}, {_r(d[m]['hi'])}]" for m in ("recall@10", "ndcg@10"))]
        + [paired_verdict(d["recall@10"]), paired_verdict(d["ndcg@10"])]
        for name, d in ret.get("paired_vs_served", {}).items()
    ]
    return {
        "gates": md_table(["model", "gate"], [[m, g] for m, g in report["gates"].items()]),
        "ranker_auc": md_table(["task", "ranker", "history-free ranker", "item prior", previous], ranker_rows),
        "retrieval": md_table(["metric", *names], retrieval_rows),
        f"served_vs_each_method ({ret['primary_method']})": md_table(
            [
                "method",
                "recall@10: served - method [95% CI]",
                "NDCG@10: served - method [95% CI]",
                "recall@10",
                "NDCG@10",
            ],
            paired_rows,
        ),
        "fitted_on_last_window_day": md_table(
            ["model", "held-out day", "epochs", "recency prior"],
            [
                [name, (fit or {}).get("holdout_day", "not fitted"), part.get("epochs"), prior]
                for name, part, fit, prior in (
                    ("ranker", r, r.get("holdout_fit"), "-"),
                    ("retrieval", ret, ret.get("holdout_fit"), ret.get("recency_prior")),
                )
            ],
        ),
        "protocol": f"day {day}, full corpus ({ret['corpus_size']:,} items), {ret['num_queries']:,} users, exact "
        "top-K; " + seen,
        "indexes": md_table(["index", "type", "vectors", "recall vs exact", "self-recall@1"], index_rows),
        "comparison_plot": MetadataValue.md(plot),
        "report": MetadataValue.json(report),
        **numeric_metadata({f"auc_{t}": float(v) for t, v in r["auc"].items()}),
        **numeric_metadata({k_: float(v) for k_, v in ret.items() if k_.startswith(("model_", "popularity_"))}),
    }
