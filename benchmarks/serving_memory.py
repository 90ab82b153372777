"""Peak memory of the serving run process against volume: the feed (scored on Spark, loaded into PostgreSQL), the
feature skew report and the online evaluation at 1x, 4x, 16x users and events per day, each asset executed alone
in a fresh process whose peak RSS (and peak anonymous memory, sampled every 20 ms) is measured after every asset.
Prints JSON lines and a summary.

    .venv/bin/python benchmarks/serving_memory.py --work-dir /tmp/memscale --scales 1,4,16 \
        [--base-events 50000 --base-users 7500] [--master 'local[2]'] [--reuse-models]

The worlds are training_memory.py's (8 synthetic days through datagen and user_history, reused when there). The
served day is the second-to-last one (its next day's raw plays make the simulated impressions). The models of the
served day are trained first, unmeasured, on a one-day window for one epoch with the model gates at zero: the
measure is the serving steps' memory, not the models' quality, and a model that fails its gate is never served.

What "run process" means here: the Python process that runs the Dagster step. With local Spark the driver JVM and
the Python workers that score the feed are its children (in production they are the Dataproc cluster's), and are
not counted; --master sets the local Spark session.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml
from child_result import report, run_child  # this directory is on the path when run as a script
from training_memory import AnonPeak, measure_assets, one_epoch_spec, prepare, world_arguments, world_dir

SERVING_STEPS = ("model_repository", "model_promotion", "serving_config", "feed", "feature_skew_report")
DATABASE = "recsys_bench_serving"


def resources_of(a) -> dict:
    from recsys_assets.config.files import ConfigFilesResource
    from recsys_assets.definitions import default_resources
    from resources.postgres import PostgresResource
    from resources.spark import SparkResource
    from resources.storage import StorageResource
    from resources.training import TrainingResource

    return {
        **default_resources(),
        "storage": StorageResource(data_root=a.root),
        "training": TrainingResource(device="cpu"),
        "config_files": ConfigFilesResource(training=a.training_yaml),
        "postgres": PostgresResource(dbname=DATABASE),
        "spark": SparkResource(master=a.master),
    }


def child(a) -> None:
    """Run the job's assets one at a time (each reads what the one before committed) in this process."""
    from dagster import DagsterInstance

    from recsys_assets.definitions import build_defs

    t0 = time.time()
    anon = AnonPeak()
    job = build_defs(resources_of(a)).resolve_job_def(a.job)
    names = a.steps.split(",") if a.job != "training_job" else None
    # DAGSTER_HOME: the world's own instance, shared by the steps
    failed, peak_after, anon_after, seconds = measure_assets(job, a.day, names, DagsterInstance.get, anon)
    report(
        {
            "success": not failed,
            "failed_steps": failed,
            "seconds": seconds,
            "peak_rss_mb_after": peak_after,
            "peak_anon_mb_during": anon_after,
            "peak_rss_mb": max(peak_after.values()),
            "peak_anon_mb": max(anon_after.values()),
            "total_seconds": round(time.time() - t0, 1),
        }
    )


def training_yaml(path: Path) -> str:
    """The project's training config with a one-day window, one epoch, no history-free twins and every model gate at
    zero (the models only have to exist for the serving steps)."""
    spec = one_epoch_spec()
    spec["window_days"], spec["min_window_days"] = 1, 1
    checks = spec["checks"]
    checks["ranker_min_auc"] = {t: 0.0 for t in checks["ranker_min_auc"]}
    checks["ranker_max_auc_drop"] = 1.0
    checks["retrieval_min_recall"] = 0.0
    checks["retrieval_min_lift_over_popularity"] = 0.0
    checks["index_min_recall_vs_exact"] = 0.0
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def serve_world(world: Path, info: dict, scale: int, a) -> dict:
    import pandas as pd

    from recsys_assets.config.files import ConfigFilesResource
    from recsys_assets.synthetic.online_logs import simulate_impressions, write_online_feature_sample
    from resources.postgres import PostgresResource
    from resources.store import DatasetStore

    root, home = world / "data", world / "serving-home"
    home.mkdir(parents=True, exist_ok=True)
    day = info["days"][-2]  # its next day's raw plays are the simulated impressions' plays
    base = [sys.executable, __file__, "--child", "--root", str(root), "--day", day, "--master", a.master]
    yml = training_yaml(Path(a.work_dir) / "serving-training.yaml")
    base += ["--training-yaml", yml]
    # The window length shapes the asset graph (its lineage), so the code location loads with this file too.
    env = {**os.environ, "DAGSTER_HOME": str(home), "RECSYS_CACHE_DIR": str(Path(a.work_dir) / "cache")}
    env["RECSYS_TRAINING_CONFIG"] = yml
    store = DatasetStore(str(root))
    pg = PostgresResource(dbname=DATABASE)
    pg.drop_database()  # every scale starts from an empty feed table and registry
    pg.ensure_database()
    from recsys_assets.core.datasets import COLD_START_INDEX, RANKER_MODEL, RETRIEVAL_INDEX, RETRIEVAL_MODEL

    trained = {"total_seconds": None}  # --reuse-models and the day's models and indexes are committed: not retrained
    if not (
        a.reuse_models
        and all(store.is_committed(d, day) for d in (RANKER_MODEL, RETRIEVAL_MODEL, RETRIEVAL_INDEX, COLD_START_INDEX))
    ):
        trained = run_child([*base, "--job", "training_job", "--steps", "-"], f"training {scale}", env)
        if not trained["success"]:
            raise SystemExit(f"scale {scale}: training failed: {trained['failed_steps']}")
    spec = ConfigFilesResource().serving_spec()
    online_rows = write_online_feature_sample(store, day, spec.skew.online_feature_log)
    serving = run_child([*base, "--job", "serving_job", "--steps", ",".join(SERVING_STEPS)], f"serving {scale}", env)
    with pg.connect() as conn:
        feed_rows = pd.read_sql_query(
            "SELECT user_id, item_id, rank, model_version, arm FROM feed WHERE dt = %s", conn, params=(day,)
        )
    impressions = simulate_impressions(store, feed_rows, day, spec.online_evaluation.impressions_log)
    online = run_child(
        [*base, "--job", "online_evaluation_job", "--steps", "online_evaluation"], f"online evaluation {scale}", env
    )
    return {
        "scale": scale,
        "users": info["users"],
        "events_per_day": info["events_per_day"],
        "served_day": day,
        "served_day_training_rows": info["training_rows"][day],
        "feed_rows": len(feed_rows),
        "feed_users": int(feed_rows["user_id"].nunique()),
        "online_feature_rows": online_rows,
        "impressions": impressions,
        "training_seconds": trained["total_seconds"],
        "serving": serving,
        "online_evaluation": online,
        "peak_rss_mb": max(serving["peak_rss_mb"], online["peak_rss_mb"]),
        "peak_anon_mb": max(serving["peak_anon_mb"], online["peak_anon_mb"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    world_arguments(p, base_events=50_000, base_users=7_500)
    p.add_argument("--master", default="local[2]")
    p.add_argument(
        "--reuse-models", action="store_true", help="serve the day's committed models and indexes of an earlier run"
    )
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--steps", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a)
    rows = []
    for scale in [int(s) for s in a.scales.split(",")]:
        world = world_dir(a, scale)  # training_memory.py's worlds
        info = prepare(world / "data", world / "home", scale, a)
        row = serve_world(world, info, scale, a)
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {"benchmark": "serving_memory", "cpus": os.cpu_count(), "master": a.master, "runs": rows}
    for key in ("peak_rss_mb", "peak_anon_mb"):
        summary[f"{key}_over_1x"] = [round(r[key] / rows[0][key], 2) for r in rows]
    for part in ("serving", "online_evaluation"):
        first = rows[0][part]["peak_rss_mb"]
        summary[f"{part}_peak_rss_over_1x"] = [round(r[part]["peak_rss_mb"] / first, 2) for r in rows]
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
