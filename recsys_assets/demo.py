"""`make demo`: synthetic raw data for N days, then every datagen asset and check materialized for each day
through the persistent Dagster instance ($DAGSTER_HOME) on local Spark; then, for the last day, the vocab, both
models (trained on the days before it, validated on it), both FAISS indexes and the offline evaluation with the
model checks. Prints each day's monitoring dict, the evaluation report and check results, and sends
notifications for failed checks as the sensor would."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from dagster import DagsterInstance, build_sensor_context, materialize

from checks.datagen_checks import datagen_checks
from checks.model_checks import model_checks
from recsys_assets.automation.sensors import check_failure_sensor, monitoring_summary_sensor
from recsys_assets.datagen.assets import datagen_assets
from recsys_assets.datagen.raw_sources import raw_specs
from recsys_assets.definitions import default_resources
from recsys_assets.indexes.assets import index_assets
from recsys_assets.training.assets import training_assets
from recsys_assets.training.offline_evaluation import offline_evaluation
from recsys_assets.synthetic.generator import SyntheticConfig, generate
from resources.storage import DatasetStore

REPORT_KEYS = (
    "num_raw_events", "num_raw_items", "num_quarantined_events", "num_events_post_filters",
    "num_unique_items_post_filters", "num_items_post_embed_join", "item_loss_post_embedding_join",
    "num_final_rows", "item_age_bucket_formated", "item_age_buckets_delta_7d", "new_items_in_index_1d_delta",
    "common_items_in_index_1d_delta", "item_diff_1d_delta", "item_diff_7d_delta", "datagen_run_time", "SUCCESS",
)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--days", type=int, default=8)
    p.add_argument("--events-per-day", type=int, default=SyntheticConfig.events_per_day)
    p.add_argument("--start-date", default=SyntheticConfig.start_date)
    p.add_argument("--regenerate", action="store_true", help="rewrite the synthetic raw data even if present")
    p.add_argument("--skip-training", action="store_true", help="datagen only (no models or indexes)")
    a = p.parse_args(argv)

    repo = Path(__file__).resolve().parents[1]
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(repo / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(repo / "dagster.yaml", home / "dagster.yaml")
    data_root = os.environ.setdefault("RECSYS_DATA_ROOT", str(repo / "data"))
    store = DatasetStore(data_root)

    cfg = SyntheticConfig(start_date=a.start_date, num_days=a.days, events_per_day=a.events_per_day)
    t0 = time.time()
    if a.regenerate or any(not store.exists(store.raw_success_file(d)) for d in cfg.days):
        counts = generate(store, cfg)
        total = sum(c["events"] for c in counts.values())
        print(f"generated {total:,} raw events over {a.days} days under {data_root} in {time.time() - t0:.1f}s")
    else:
        print(f"reusing synthetic raw data under {data_root} (--regenerate to rewrite)")

    instance = DagsterInstance.get()
    resources = default_resources()
    summary = []
    for day in cfg.days:
        t = time.time()
        result = materialize(
            [*raw_specs, *datagen_assets, *datagen_checks],
            partition_key=day,
            instance=instance,
            resources=resources,
            raise_on_error=False,
            tags={"recsys/trigger": "demo"},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        checks = {e.check_name: ("PASS" if e.passed else f"FAIL({e.severity.value})") for e in result.get_asset_check_evaluations()}
        report_path = store.committed_path("datagen_monitoring_report", day, "report.json") if store.read_manifest(
            "datagen_monitoring_report", day) else None
        report = store.read_json(report_path) if report_path else {}
        print(f"\n=== {day}  run {result.run_id[:8]}  {'SUCCESS' if result.success else 'FAILED'}  {time.time() - t:.1f}s")
        print(json.dumps({k: report.get(k) for k in REPORT_KEYS}, indent=1))
        print("checks:", json.dumps(checks))
        summary.append({"day": day, "success": result.success, "seconds": round(time.time() - t, 1),
                        "final_rows": report.get("num_final_rows"), "checks": checks})

    if not a.skip_training:
        summary.append(train_last_day(cfg.days[-1], instance, resources, store))

    # What the daemon's sensors would send: a summary per day (info route) and any failed check (error route),
    # to the webhooks if RECSYS_*_WEBHOOK_URL are set, and always to notifications.jsonl.
    with build_sensor_context(instance=instance, resources=resources) as ctx:
        monitoring_summary_sensor(ctx)
    with build_sensor_context(instance=instance, resources=resources) as ctx:
        check_failure_sensor(ctx)
    print("\nsummary:", json.dumps(summary, indent=1))
    print(f"\ndemo finished in {time.time() - t0:.0f}s; notifications in {home / 'notifications.jsonl'}")
    print(f"see runs, partitions, metadata and checks in the UI:  make ui   (DAGSTER_HOME={home})")


def train_last_day(day: str, instance, resources: dict, store: DatasetStore) -> dict:
    """What training_job (started by the sensor after datagen succeeds) does for `day`."""
    t = time.time()
    result = materialize(
        [*training_assets, *index_assets, offline_evaluation, *model_checks],
        partition_key=day,
        instance=instance,
        resources={k: resources[k] for k in ("storage", "training")},
        raise_on_error=False,
        tags={"recsys/trigger": "demo"},
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    checks = {e.check_name: ("PASS" if e.passed else f"FAIL({e.severity.value})") for e in result.get_asset_check_evaluations()}
    report = {}
    if store.read_manifest("offline_evaluation", day):
        report = store.read_json(store.committed_path("offline_evaluation", day, "report.json"))
    print(f"\n=== training {day}  run {result.run_id[:8]}  {'SUCCESS' if result.success else 'FAILED'}  {time.time() - t:.1f}s")
    print(json.dumps(report, indent=1))
    print("checks:", json.dumps(checks))
    return {"training_day": day, "success": result.success, "seconds": round(time.time() - t, 1), "checks": checks,
            "artifacts": {a: store.committed_uri(a, day) for a in ("ranker_model", "retrieval_model", "retrieval_index",
                                                                     "cold_start_index") if store.read_manifest(a, day)}}


if __name__ == "__main__":
    main()
