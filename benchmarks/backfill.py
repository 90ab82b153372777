"""Backfill benchmark: a 7-day backfill of the datagen assets at ~200k events/day, one run per day vs range runs.
Prints one JSON object.

    .venv/bin/python benchmarks/backfill.py [--days 7] [--events-per-day 200000] [--workdir DIR]

Each mode runs on its own copy of the same synthetic raw data and its own SQLite Dagster instance; every run is a
fresh Python process, as the default run launcher starts one per run:
- `per_day`: one run per day (7 runs), what `BackfillPolicy.multi_run(1)` launched before;
- `range`: one run over the 7 days (`RECSYS_DATAGEN_DAYS_PER_RUN`, default 7).
Both use the in-process executor (the steps of a run share the process and its Spark session).

Per run, the child process reports: `import_s` (importing the code location, `recsys_assets.definitions`),
`jvm_start_s` (creating the Spark session), `run_s` (the Dagster run, from launch to finish), and `work_s`: the
Spark and check work the assets report per day (`write_s` + `checks_s` in each day's materialization metadata).
`framework_s` = process wall - work_s (interpreter start, import, JVM start, Dagster's own time per run and step,
JVM shutdown); the benchmark's own read-back of the timings (`measure_s`) is left out of the wall time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRST_DAY = "2024-03-01"


def child(first: str, last: str) -> None:
    """One run over [first, last] through the instance in $DAGSTER_HOME; prints its timings as JSON."""
    t_import = time.perf_counter()
    import recsys_assets.definitions as definitions

    import_s = time.perf_counter() - t_import
    from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

    from recsys_assets.core.partitions import partition_range_tags

    resources = definitions.default_resources()
    t0 = time.perf_counter()
    resources["spark"].get_session()
    jvm_start_s = time.perf_counter() - t0
    job = definitions.build_defs(resources).resolve_job_def("datagen_job")
    with DagsterInstance.get() as instance:
        t0 = time.perf_counter()
        result = job.execute_in_process(
            instance=instance,
            partition_key=first if first == last else None,
            tags=None if first == last else partition_range_tags(first, last),
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
        )
        run_s = time.perf_counter() - t0
        t_measure = time.perf_counter()  # reading the per-day timings back is this benchmark's, not the platform's
        work_s = 0.0
        for asset in ("filtered_events", "training_events", "datagen_monitoring_report"):
            records = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey(asset)), limit=1000).records
            for r in records:
                if r.run_id != result.run_id:
                    continue
                meta = r.asset_materialization.metadata
                work_s += sum(meta[k].value for k in ("write_s", "checks_s") if k in meta)
        measure_s = time.perf_counter() - t_measure
    print(
        json.dumps(
            {
                "success": result.success,
                "import_s": round(import_s, 2),
                "jvm_start_s": round(jvm_start_s, 2),
                "run_s": round(run_s, 2),
                "work_s": round(work_s, 2),
                "measure_s": round(measure_s, 2),
            }
        )
    )


def run_mode(name: str, raw: Path, workdir: Path, ranges: list[tuple[str, str]]) -> dict:
    data, home = workdir / name / "data", workdir / name / "dagster_home"
    shutil.rmtree(workdir / name, ignore_errors=True)
    shutil.copytree(raw, data)
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "RECSYS_DATA_ROOT": str(data), "PYTHONPATH": str(REPO)}
    runs = []
    t0 = time.perf_counter()
    for first, last in ranges:
        t_run = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", first, last], cwd=REPO, env=env, capture_output=True, text=True
        )
        wall = time.perf_counter() - t_run
        if proc.returncode != 0:
            raise SystemExit(f"{name} run {first}..{last} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        if not out["success"]:
            raise SystemExit(f"{name} run {first}..{last} did not succeed:\n{proc.stderr[-3000:]}")
        runs.append({"days": f"{first}..{last}", "process_wall_s": round(wall, 2), **out})
    # the benchmark's own read-back of the per-day timings is not part of the platform's wall time
    wall = time.perf_counter() - t0 - sum(r["measure_s"] for r in runs)
    work = sum(r["work_s"] for r in runs)
    return {
        "runs": len(runs),
        "wall_s": round(wall, 1),
        "import_s": round(sum(r["import_s"] for r in runs), 2),
        "jvm_start_s": round(sum(r["jvm_start_s"] for r in runs), 2),
        "work_s": round(work, 1),
        "framework_s": round(wall - work, 1),
        "framework_pct": round(100 * (wall - work) / wall, 1),
        "dagster_s": round(sum(r["run_s"] for r in runs) - work, 1),
        "per_run": runs,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", nargs=2, metavar=("FIRST", "LAST"), help=argparse.SUPPRESS)
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--events-per-day", type=int, default=200_000)
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "recsys-backfill-bench"))
    p.add_argument("--modes", default="per_day,range", help="which modes to run, comma-separated")
    a = p.parse_args()
    if a.child:
        child(*a.child)
        return
    from recsys_assets.synthetic.generator import SyntheticConfig, generate
    from resources.spark import class_archive_options, default_class_archive
    from resources.store import DatasetStore

    workdir = Path(a.workdir)
    raw = workdir / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    scale = a.events_per_day / SyntheticConfig.events_per_day
    cfg = SyntheticConfig(
        start_date=FIRST_DAY,
        num_days=a.days,
        events_per_day=a.events_per_day,
        num_users=int(30_000 * scale**0.5),
        initial_items=int(8_000 * scale**0.5),
    )
    t0 = time.perf_counter()
    generate(DatasetStore(str(raw)), cfg)
    gen_s = time.perf_counter() - t0
    days = [(dt.date.fromisoformat(FIRST_DAY) + dt.timedelta(days=i)).isoformat() for i in range(a.days)]
    out = {
        "benchmark": "backfill",
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "days": a.days,
        "events_per_day": a.events_per_day,
        "generate_s": round(gen_s, 1),
        # the driver's class-data-sharing archive the Spark resource maps when it exists (make install builds it)
        "spark_class_archive": class_archive_options(
            os.environ.get("RECSYS_SPARK_CLASS_ARCHIVE") or default_class_archive()
        )
        != "",
    }
    modes = {"per_day": [(d, d) for d in days], "range": [(days[0], days[-1])]}
    for mode in a.modes.split(","):
        out[mode] = run_mode(mode, raw, workdir, modes[mode])
    if "per_day" in out and "range" in out:
        out["range_speedup"] = round(out["per_day"]["wall_s"] / out["range"]["wall_s"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
