"""`make demo`: synthetic raw data for N days, then the project's own jobs from the one Definitions through the
persistent Dagster instance ($DAGSTER_HOME) on local Spark: datagen_job for each day; then, for the last day,
training_job (vocab, both models trained on the days before it and validated on it, both FAISS indexes, the
offline evaluation), serving_job and online_evaluation_job. Prints each day's monitoring dict, the evaluation
report and check results, and runs the alert sensors as the daemon would."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd
from dagster import AssetKey, DagsterInstance, Definitions, build_sensor_context

from recsys_assets.alerts.sensors import check_failure_sensor, notification_delivery_sensor
from recsys_assets.core.partitions import DATAGEN_DAYS_PER_RUN, partition_range_tags
from recsys_assets.datagen.automation import monitoring_summary_sensor
from recsys_assets.definitions import build_defs, default_resources
from recsys_assets.synthetic.generator import SyntheticConfig, generate
from resources.store import DatasetStore

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def run_range(defs: Definitions, name: str, first: str, last: str, instance):
    """One run over the days [first, last] (a single day: an ordinary one-day run)."""
    if first == last:
        return run_job(defs, name, first, instance)
    return run_job(defs, name, None, instance, partition_range_tags(first, last))


def backfill_runs(days: list[str]) -> list[list[str]]:
    """The days in runs of up to RECSYS_DATAGEN_DAYS_PER_RUN, as a backfill of the datagen assets splits them."""
    return [days[i : i + DATAGEN_DAYS_PER_RUN] for i in range(0, len(days), DATAGEN_DAYS_PER_RUN)]


def run_job(defs: Definitions, name: str, day: str | None, instance, tags: dict | None = None):
    return defs.resolve_job_def(name).execute_in_process(
        partition_key=day,
        instance=instance,
        raise_on_error=False,
        tags={"recsys/trigger": "demo", **(tags or {})},
        run_config=QUIET,
    )


def build_histories(days: list[str], instance, defs: Definitions) -> None:
    """user_history for each day but the last (training_job builds the day it trains), in date order as a backfill of
    the self-dependent asset runs them: each extends the day before (the first day's history is empty)."""
    t = time.time()
    for day in days[:-1]:
        result = run_job(defs, "user_history_job", day, instance)
        if not result.success:
            raise SystemExit(f"user_history {day} failed (run {result.run_id}); see it in the UI")
    print(f"\n=== user_history {days[0]}..{days[-2]}: {len(days) - 1} one-day runs, {time.time() - t:.1f}s")


REPORT_KEYS = (
    "num_raw_events",
    "num_raw_items",
    "num_quarantined_events",
    "num_events_post_filters",
    "num_unique_items_post_filters",
    "num_items_post_embed_join",
    "item_loss_post_embedding_join",
    "num_final_rows",
    "item_age_bucket_formated",
    "item_age_buckets_delta_7d",
    "new_items_in_index_1d_delta",
    "common_items_in_index_1d_delta",
    "item_diff_1d_delta",
    "item_diff_7d_delta",
    "datagen_run_time",
    "SUCCESS",
)


def _home_and_data(home_name: str, data_name: str) -> tuple[Path, Path, str]:
    """The repository, the Dagster home (DAGSTER_HOME, else ./<home_name>, with the packaged dagster.yaml) and the
    data root (RECSYS_DATA_ROOT, else ./<data_name>)."""
    repo = Path(__file__).resolve().parents[1]
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(repo / home_name)))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(repo / "dagster.yaml", home / "dagster.yaml")
    return repo, home, os.environ.setdefault("RECSYS_DATA_ROOT", str(repo / data_name))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--days", type=int, default=8)
    p.add_argument("--events-per-day", type=int, default=SyntheticConfig.events_per_day)
    p.add_argument("--start-date", default=SyntheticConfig.start_date)
    p.add_argument("--regenerate", action="store_true", help="rewrite the synthetic raw data even if present")
    p.add_argument(
        "--interest-drift",
        type=float,
        default=SyntheticConfig.interest_drift,
        help="synthetic: share of users who swap one favourite cluster each day (0 = fixed preferences; use a data "
        "root of its own, or --regenerate)",
    )
    p.add_argument("--skip-training", action="store_true", help="datagen only (no models or indexes)")
    p.add_argument("--skip-serving", action="store_true", help="no registry / feed / online evaluation (no Postgres)")
    p.add_argument(
        "--dataset",
        choices=["synthetic", "movielens"],
        default="synthetic",
        help="movielens: import MovieLens latest-small laid out as --days daily logs (make demo-real) instead of "
        "generating synthetic days; datagen uses config/datagen_movielens.yaml; no serving (no online logs)",
    )
    p.add_argument("--eval-days", type=int, default=3, help="movielens: train and evaluate each of the last N days")
    p.add_argument("--source-dir", default=None, help="the MovieLens release (default: RECSYS_MOVIELENS_DIR or shared)")
    p.add_argument(
        "--via-csv",
        action="store_true",
        help="movielens: import the release's ratings.csv with the generic CSV importer (recsys-import csv: no genres "
        "or titles, so no content embeddings from them) instead of the MovieLens reader",
    )
    a = p.parse_args(argv)
    if a.dataset == "movielens":
        return main_movielens(a)

    repo, home, data_root = _home_and_data(".dagster_home", "data")
    store = DatasetStore(data_root)

    # One raw day more than datagen processes: the day after the last one is "tomorrow", whose plays the online
    # evaluation of the last day's feed reads.
    cfg = SyntheticConfig(
        start_date=a.start_date,
        num_days=a.days + 1,
        events_per_day=a.events_per_day,
        interest_drift=a.interest_drift,
    )
    datagen_days = cfg.days[:-1]
    # The demo's registry/feed database belongs to its data root: a new synthetic world starts a new registry.
    os.environ.setdefault("RECSYS_PG_DB", "recsys_demo")
    t0 = time.time()
    generated = False
    if a.regenerate or any(not store.exists(store.raw_success_file(d)) for d in cfg.days):
        generated = True
        counts = generate(store, cfg)
        total = sum(c["events"] for c in counts.values())
        print(f"generated {total:,} raw events over {a.days} days under {data_root} in {time.time() - t0:.1f}s")
    else:
        print(f"reusing synthetic raw data under {data_root} (--regenerate to rewrite)")

    instance = DagsterInstance.get()
    resources = default_resources()
    defs = build_defs(resources)
    summary = []
    # Datagen as a backfill runs it: ranges of up to RECSYS_DATAGEN_DAYS_PER_RUN days, one run and one Spark session
    # each, every day committed and checked on its own (recsys_assets/datagen/ranges.py).
    for chunk in backfill_runs(datagen_days):
        t = time.time()
        result = run_range(defs, "datagen_job", chunk[0], chunk[-1], instance)
        seconds = time.time() - t
        print(
            f"\n=== datagen {chunk[0]}..{chunk[-1]} ({len(chunk)} days, one run)  run {result.run_id[:8]}  "
            f"{'SUCCESS' if result.success else 'FAILED'}  {seconds:.1f}s"
        )
        for day in chunk:
            checks = {
                e.check_name: ("PASS" if e.passed else f"FAIL({e.severity.value})")
                for e in result.get_asset_check_evaluations()
                if e.partition == day
            }
            report_path = (
                store.committed_path("datagen_monitoring_report", day, "report.json")
                if store.read_manifest("datagen_monitoring_report", day)
                else None
            )
            report = store.read_json(report_path) if report_path else {}
            print(f"\n=== {day}")
            print(json.dumps({k: report.get(k) for k in REPORT_KEYS}, indent=1))
            print("checks:", json.dumps(checks))
            summary.append(
                {
                    "day": day,
                    "success": bool(report) and all(c == "PASS" or "WARN" in c for c in checks.values()),
                    "run_seconds": round(seconds, 1),
                    "final_rows": report.get("num_final_rows"),
                    "checks": checks,
                }
            )

    if not a.skip_training:
        build_histories(datagen_days, instance, defs)
        trained = train_last_day(datagen_days[-1], instance, defs, store)
        summary.append(trained)
        if trained["success"] and not a.skip_serving:
            summary.append(serve_day(datagen_days[-1], instance, defs, resources, store, reset_registry=generated))

    # What the daemon's sensors would send: a summary per day (info route) and any failed check (error route),
    # queued in the outbox and logged to notifications.jsonl, then delivered to the webhooks if RECSYS_*_WEBHOOK_URL
    # are set.
    for sensor in (monitoring_summary_sensor, check_failure_sensor, notification_delivery_sensor):
        with build_sensor_context(instance=instance, definitions=defs, resources=resources) as ctx:
            print(f"{sensor.name}:", sensor(ctx).skip_message)
    print("\nsummary:", json.dumps(summary, indent=1))
    print(f"\ndemo finished in {time.time() - t0:.0f}s; notifications in {home / 'notifications.jsonl'}")
    print(f"see runs, partitions, metadata and checks in the UI:  make ui   (DAGSTER_HOME={home})")
    tracking = os.environ.get("MLFLOW_TRACKING_URI")
    print(
        f"MLflow runs and releases in {tracking} (make ui serves them on http://127.0.0.1:5000)"
        if tracking
        else "MLflow tracking off (MLFLOW_TRACKING_URI unset; make demo sets it)"
    )


def main_movielens(a) -> None:
    """MovieLens latest-small as daily logs: import (recsys-import), datagen range runs, training + evaluation of the
    last day, through the same Definitions as the synthetic demo."""
    from recsys_assets.ingest.importer import ImportSpec, import_movielens, movielens_dir

    repo, home, data_root = _home_and_data(".dagster_home_real", "data-real")
    os.environ.setdefault("RECSYS_DATAGEN_CONFIG", str(repo / "recsys_assets" / "config" / "datagen_movielens.yaml"))
    os.environ.setdefault("RECSYS_TRAINING_CONFIG", str(repo / "recsys_assets" / "config" / "training_movielens.yaml"))
    store = DatasetStore(data_root)
    days = a.days if a.days != 8 else 10  # 10 equal-count days unless asked otherwise
    t0 = time.time()
    source = a.source_dir or movielens_dir()
    # The demo owns its data root: a rerun replaces the raw days it imported before.
    spec = ImportSpec(relay_days=days, start_date=a.start_date, replace=True)
    if a.via_csv:  # the generic layout: what a user with a plain interactions log would run
        from recsys_assets.ingest.importer import CsvMapping, import_csv

        mapping = CsvMapping(user="userId", item="movieId", timestamp="timestamp", rating="rating")
        counts = import_csv(Path(source) / "ratings.csv", mapping, store, spec).days
    else:
        counts = import_movielens(source, store, spec).days
    datagen_days = sorted(counts)
    print(f"imported {sum(c['events'] for c in counts.values()):,} MovieLens ratings as {days} days under {data_root}")
    instance = DagsterInstance.get()
    defs = build_defs(default_resources())
    summary = []
    for chunk in backfill_runs(datagen_days):
        result = run_range(defs, "datagen_job", chunk[0], chunk[-1], instance)
        failed = sorted({(e.partition, e.check_name) for e in result.get_asset_check_evaluations() if not e.passed})
        print(
            f"=== datagen {chunk[0]}..{chunk[-1]}: {'SUCCESS' if result.success else 'FAILED'}; failed checks: {failed}"
        )
        summary.append({"datagen": f"{chunk[0]}..{chunk[-1]}", "success": result.success, "failed_checks": failed})
    if not a.skip_training:
        build_histories(datagen_days, instance, defs)
        # The last days each trained and evaluated on their own (models of D: 7 days before D, validated on D), and
        # every method's mean over them: one re-laid day has ~70 validation users, too few for one day to decide.
        for day in datagen_days[-a.eval_days :]:
            summary.append(train_last_day(day, instance, defs, store))
        summary.append(mean_of_reports(store, datagen_days[-a.eval_days :]))
        print("\nmean over the evaluated days:", json.dumps(summary[-1], indent=1))
    print("\nsummary:", json.dumps(summary, indent=1))
    print(f"\ndemo (MovieLens) finished in {time.time() - t0:.0f}s; DAGSTER_HOME={home}")


def mean_of_reports(store: DatasetStore, days: list[str]) -> dict:
    """Every method's retrieval metrics and every ranker variant's AUC, averaged over the days' offline_evaluation
    reports (days without a report are named, not averaged)."""
    import numpy as np

    reports = {
        d: store.read_json(store.committed_path("offline_evaluation", d, "report.json"))
        for d in days
        if store.read_manifest("offline_evaluation", d)
    }
    if not reports:
        return {"mean_over_days": [], "missing": days}
    retrieval: dict[str, dict[str, list[float]]] = {}
    for r in reports.values():
        for method, metrics in r["retrieval"]["methods"].items():
            for k, v in metrics.items():
                retrieval.setdefault(method, {}).setdefault(k, []).append(v)
    ranker: dict[str, dict[str, list[float]]] = {}
    for r in reports.values():
        for variant, key in (
            ("ranker", "auc"),
            ("history-free ranker", "auc_history_free"),
            ("item prior", "auc_item_prior"),
        ):
            for task, v in (r["ranker"].get(key) or {}).items():
                ranker.setdefault(variant, {}).setdefault(task, []).append(v)

    def mean(values: list[float]) -> float | None:
        finite = [v for v in values if v is not None and np.isfinite(v)]
        return round(float(np.mean(finite)), 4) if finite else None

    # The served score is each day's primary method (its fitted recency prior may be 0 one day and not another);
    # "model score alone" is the same model without the prior.
    for r in reports.values():
        primary = r["retrieval"]["primary_method"]
        alone = primary.removesuffix(" + recency prior")
        for label, method in (("served (each day's fitted score)", primary), ("model score alone", alone)):
            for k, v in r["retrieval"]["methods"][method].items():
                retrieval.setdefault(label, {}).setdefault(k, []).append(v)
    return {
        "mean_over_days": sorted(reports),
        "fitted": {
            d: {
                "recency_prior": r["retrieval"].get("recency_prior"),
                "retrieval_epochs": r["retrieval"].get("epochs"),
                "ranker_epochs": r["ranker"].get("epochs"),
            }
            for d, r in reports.items()
        },
        "missing": [d for d in days if d not in reports],
        "gates": {d: r["gates"] for d, r in reports.items()},
        "retrieval": {m: {k: mean(v) for k, v in ms.items()} for m, ms in retrieval.items()},
        "ranker_auc": {m: {t: mean(v) for t, v in ts.items()} for m, ts in ranker.items()},
        "validation_users": {d: r["retrieval"]["num_queries"] for d, r in reports.items()},
    }


def train_last_day(day: str, instance, defs: Definitions, store: DatasetStore) -> dict:
    """What training_job (started by the sensor after datagen succeeds) does for `day`."""
    t = time.time()
    result = run_job(defs, "training_job", day, instance)
    checks = {
        e.check_name: ("PASS" if e.passed else f"FAIL({e.severity.value})")
        for e in result.get_asset_check_evaluations()
    }
    if not store.read_manifest("offline_evaluation", day):
        # A model gate failed, which skips the report in the training run: automation runs it on its own after
        # (gate `any`); the demo does the same, so the comparison with every baseline is there on such a day too.
        defs.resolve_job_def("training_job").execute_in_process(
            partition_key=day,
            instance=instance,
            raise_on_error=False,
            run_config=QUIET,
            asset_selection=[AssetKey("offline_evaluation")],
        )
    report = {}
    if store.read_manifest("offline_evaluation", day):
        report = store.read_json(store.committed_path("offline_evaluation", day, "report.json"))
    print(
        f"\n=== training {day}  run {result.run_id[:8]}  {'SUCCESS' if result.success else 'FAILED'}  "
        f"{time.time() - t:.1f}s"
    )
    print(json.dumps(report, indent=1))
    metrics = {
        f"{e.asset_key.path[-1]}.{k}": v.value
        for e in result.get_asset_materialization_events()
        for k, v in e.step_materialization_data.materialization.metadata.items()
        if e.asset_key.path[-1] in ("ranker_model", "retrieval_model")
        and any(w in k for w in ("recall", "auc", "ndcg", "lift"))
        and isinstance(v.value, (int, float))
    }
    if not report:  # no report: the models' own numbers still tell what they measured
        print(json.dumps(metrics, indent=1))
    print("checks:", json.dumps(checks))
    return {
        "training_day": day,
        "success": result.success,
        "seconds": round(time.time() - t, 1),
        "checks": checks,
        "artifacts": {
            a: store.committed_uri(a, day)
            for a in ("ranker_model", "retrieval_model", "retrieval_index", "cold_start_index")
            if store.read_manifest(a, day)
        },
    }


def serve_day(
    day: str, instance, defs: Definitions, resources: dict, store: DatasetStore, reset_registry: bool
) -> dict:
    """What serving_job (after training) and online_evaluation_job (when the impressions log lands) do for `day`,
    with simulated serving logs (recsys_assets.synthetic.online_logs)."""
    import psycopg2

    from recsys_assets.synthetic.online_logs import simulate_impressions, write_online_feature_sample

    pg = resources["postgres"].process_config_and_initialize()  # EnvVar fields -> their values
    try:
        if reset_registry and pg.dbname == "recsys_demo":
            pg.drop_database()
        pg.ensure_database()
    except psycopg2.OperationalError as e:
        print(f"\nPostgreSQL not reachable at {pg.describe()} ({str(e).strip()[:200]}): serving hand-off skipped")
        return {"serving_day": day, "skipped": "postgres unreachable"}
    t = time.time()
    spec = resources["config_files"].process_config_and_initialize().serving_spec()
    online_rows = write_online_feature_sample(store, day, spec.skew.online_feature_log)
    result = run_job(defs, "serving_job", day, instance)
    checks = {
        e.check_name: ("PASS" if e.passed else f"FAIL({e.severity.value})")
        for e in result.get_asset_check_evaluations()
    }
    meta = {
        e.asset_key.path[-1]: e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    print(
        f"\n=== serving {day}  run {result.run_id[:8]}  {'SUCCESS' if result.success else 'FAILED'}  "
        f"{time.time() - t:.1f}s"
    )
    out = {"serving_day": day, "success": result.success, "checks": checks}
    if not result.success:
        print("checks:", json.dumps(checks))
        return out
    for name in ("model_repository", "model_promotion", "serving_config", "feed", "feature_skew_report"):
        m = meta.get(name, {})
        keep = {
            k: getattr(v, "value", v)
            for k, v in m.items()
            if k
            in (
                "version",
                "checks_passed",
                "decision",
                "config_version",
                "notes",
                "dagster/row_count",
                "active_users",
                "generate_seconds",
                "max_psi_observed",
                "max_ks_observed",
                "online_rows",
            )
        }
        print(f"{name}: {json.dumps(keep, default=str)}")
    with pg.connect() as conn:
        feed_rows = pd.read_sql_query(
            "SELECT user_id, item_id, rank, model_version, arm FROM feed WHERE dt = %s", conn, params=(day,)
        )
    served = simulate_impressions(store, feed_rows, day, spec.online_evaluation.impressions_log)
    ev = run_job(defs, "online_evaluation_job", day, instance)
    report = store.read_json(store.committed_path("online_evaluation", day, "report.json")) if ev.success else {}
    print(f"online evaluation ({served:,} simulated impressions, {online_rows:,} logged online feature rows):")
    for r in report.get("arms", []):
        print(
            f"  arm {r['arm']} v{r['model_version']}: CTR {r['ctr']:.4f} ({r['clicks']:,}/{r['impressions']:,}), "
            f"user hit rate {r['user_hit_rate']:.4f} over {r['users']:,} users"
        )
    print("checks:", json.dumps(checks))
    out |= {
        "online_evaluation": report.get("arms"),
        "seconds": round(time.time() - t, 1),
        "success": result.success and ev.success,
    }
    return out


if __name__ == "__main__":
    main()
