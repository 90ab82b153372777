"""Pipeline benchmark: wall time of the README demo end to end, and what Dagster itself costs per run and per asset.
Prints one JSON object.

    .venv/bin/python benchmarks/pipeline.py [--workdir /tmp/recsys-pipeline-bench] [--reuse]

Three measurements:
1. `demo`: `python -m recsys_assets.demo` in a fresh DAGSTER_HOME + data root (synthetic data generation included),
   timed as a subprocess, exactly what `make demo` runs after the install step.
2. `demo_runs`: read back from that instance's event log, per run: run created -> RUN_START -> first STEP_START
   (the launch overhead), the sum of step durations, and the time between steps that belongs to no step
   (framework time: event writes, IO manager, check evaluation hand-off).
3. `noop_assets`: a chain of N partitioned no-op assets (+ one check each) materialized through a SQLite instance,
   so per-asset overhead is measured without any user compute; plus the import time of the code location
   (`recsys_assets.definitions`), which every launched run process pays before its first step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))], 3)


def run_demo(workdir: Path, reuse: bool) -> dict:
    home, data = workdir / "dagster_home", workdir / "data"
    if not reuse:
        shutil.rmtree(workdir, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "RECSYS_DATA_ROOT": str(data)}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "recsys_assets.demo"], cwd=REPO, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"demo failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return {"wall_s": round(wall, 1), "dagster_home": str(home)}


def run_timings(instance) -> list[dict]:
    """Per run: launch overhead and framework time between steps, from the instance's event log."""
    from dagster import DagsterEventType

    out = []
    for record in reversed(instance.get_run_records()):
        run = record.dagster_run
        events = [e for e in instance.all_logs(run.run_id) if e.dagster_event is not None]
        by_type: dict = {}
        steps: dict[str, dict] = {}
        for e in events:
            et = e.dagster_event.event_type
            by_type.setdefault(et, e.timestamp)
            if e.step_key and et == DagsterEventType.STEP_START:
                steps.setdefault(e.step_key, {})["start"] = e.timestamp
            elif e.step_key and et in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
                steps.setdefault(e.step_key, {})["end"] = e.timestamp
        start = by_type.get(DagsterEventType.RUN_START)
        end = by_type.get(DagsterEventType.RUN_SUCCESS) or by_type.get(DagsterEventType.RUN_FAILURE)
        done = [s for s in steps.values() if "start" in s and "end" in s]
        if not (start and end and done):
            continue
        first_step = min(s["start"] for s in done)
        step_total = sum(s["end"] - s["start"] for s in done)
        run_wall = end - record.create_timestamp.timestamp()
        out.append(
            {
                "run_id": run.run_id[:8],
                "job": run.job_name,
                "partition": run.tags.get("dagster/partition"),
                "steps": len(done),
                "run_wall_s": round(run_wall, 3),
                "created_to_run_start_s": round(start - record.create_timestamp.timestamp(), 3),
                "run_start_to_first_step_s": round(first_step - start, 3),
                "step_time_s": round(step_total, 3),
                # In-process executor: steps run one after another, so what is not inside a step is Dagster's.
                "outside_steps_s": round(run_wall - step_total, 3),
            }
        )
    return out


def noop_chain(n_assets: int, repeats: int) -> dict:
    """Per-asset Dagster overhead with no user compute: N chained daily-partitioned assets, each with one check."""
    from dagster import AssetCheckResult, DagsterInstance, asset, asset_check, materialize

    from recsys_assets.core.partitions import daily_partitions

    assets, checks = [], []
    for i in range(n_assets):
        deps = [f"noop_{i - 1}"] if i else []

        @asset(name=f"noop_{i}", partitions_def=daily_partitions, deps=deps)
        def _noop(context):
            context.add_output_metadata({"rows": 0})

        @asset_check(asset=f"noop_{i}", name="noop_check")
        def _check():
            return AssetCheckResult(passed=True)

        assets.append(_noop)
        checks.append(_check)

    walls = []
    with tempfile.TemporaryDirectory() as home:
        shutil.copy(REPO / "dagster.yaml", Path(home) / "dagster.yaml")
        with DagsterInstance.from_config(home) as instance:
            for r in range(repeats):
                t0 = time.perf_counter()
                res = materialize(
                    [*assets, *checks],
                    partition_key=f"2024-03-{r + 1:02d}",
                    instance=instance,
                    run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
                )
                walls.append(time.perf_counter() - t0)
                assert res.success
            timings = run_timings(instance)
    per_asset = [w / n_assets for w in walls]
    return {
        "assets_per_run": n_assets,
        "checks_per_run": n_assets,
        "runs": repeats,
        "run_wall_s": {"median": round(statistics.median(walls), 3), "min": round(min(walls), 3)},
        "per_asset_with_check_s": {"median": round(statistics.median(per_asset), 3), "p90": _pct(per_asset, 0.9)},
        "run_start_to_first_step_s": {
            "median": round(statistics.median(t["run_start_to_first_step_s"] for t in timings), 3)
        },
    }


def definitions_import_s() -> float:
    """What a launched run process pays to load the code location before it can start a step."""
    code = "import time; t=time.perf_counter(); import recsys_assets.definitions; print(time.perf_counter()-t)"
    vals = [
        float(
            subprocess.run(
                [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout.strip()
        )
        for _ in range(3)
    ]
    return round(statistics.median(vals), 2)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "recsys-pipeline-bench"))
    p.add_argument("--reuse", action="store_true", help="keep the synthetic raw data of an earlier run")
    p.add_argument("--skip-demo", action="store_true")
    p.add_argument("--noop-assets", type=int, default=10)
    p.add_argument("--noop-runs", type=int, default=5)
    a = p.parse_args()
    out = {
        "benchmark": "pipeline",
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if not a.skip_demo:
        demo = run_demo(Path(a.workdir), a.reuse)
        from dagster import DagsterInstance

        with DagsterInstance.from_config(demo["dagster_home"]) as instance:
            runs = run_timings(instance)
        out["demo"] = {"wall_s": demo["wall_s"], "runs": len(runs)}
        out["demo_runs"] = runs
        out["demo_overhead"] = {
            "created_to_first_step_s_median": round(
                statistics.median(r["created_to_run_start_s"] + r["run_start_to_first_step_s"] for r in runs), 3
            ),
            "outside_steps_s_total": round(sum(r["outside_steps_s"] for r in runs), 2),
            "outside_steps_s_per_step_median": round(
                statistics.median(r["outside_steps_s"] / r["steps"] for r in runs), 3
            ),
            "step_time_s_total": round(sum(r["step_time_s"] for r in runs), 2),
        }
    out["definitions_import_s"] = definitions_import_s()
    out["noop_assets"] = noop_chain(a.noop_assets, a.noop_runs)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
