"""Peak memory of a day's training against volume: synthetic worlds at 1x, 4x, 16x users and events per day (8 days:
a 7-day window + the validation day), datagen and user_history through the project's jobs, then vocab + both
models of the last day in a fresh process whose peak RSS (and its workers', with a launcher) is measured.
Prints JSON lines and a summary.

    .venv/bin/python benchmarks/training_memory.py --work-dir /tmp/memscale --scales 1,4,16 \
        [--base-events 200000 --base-users 30000] [--launcher in_process|torchrun --processes N] [--prepare-only]

At scale s: s x base events and s x base users a day; items (8k, + 65 new a day) and authors (3k) in proportion to
the events (the generator's default day is 200k events).

Models train one epoch each without the history-free twins (the measure is memory, not quality). The datasets are
kept under --work-dir and reused by a rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import yaml
from child_result import peak_rss_mb, report, run_child  # this directory is on the path when run as a script


def prepare(root: Path, home: Path, scale: int, a) -> dict:
    """Raw data, datagen and user_history of every day (reused when already there)."""
    from dagster import DagsterInstance

    from recsys_assets.definitions import build_defs, default_resources
    from recsys_assets.demo import backfill_runs, run_job, run_range
    from recsys_assets.synthetic.generator import SyntheticConfig, generate
    from resources.store import DatasetStore

    store = DatasetStore(str(root))
    volume = a.base_events * scale / 200_000  # the generator's default day: 200k events, 8k items, 3k authors
    # Items and authors grow with the volume too (as many events per item as at 1x): with a fixed catalogue the
    # filter chain's item losses move past the datagen checks' thresholds and the day is withheld.
    cfg = SyntheticConfig(
        num_days=8,
        events_per_day=a.base_events * scale,
        num_users=a.base_users * scale,
        initial_items=round(8_000 * volume),
        new_items_per_day=round(65 * volume),
        num_authors=round(3_000 * volume),
    )
    done = root / "_prepared.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.time()
    counts = generate(store, cfg)
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ["RECSYS_DATA_ROOT"] = str(root)
    instance = DagsterInstance.ephemeral()
    defs = build_defs(default_resources())
    for chunk in backfill_runs(cfg.days):
        if not run_range(defs, "datagen_job", chunk[0], chunk[-1], instance).success:
            raise SystemExit(f"datagen {chunk} failed at scale {scale}")
    for day in cfg.days:
        if not run_job(defs, "user_history_job", day, instance).success:
            raise SystemExit(f"user_history {day} failed at scale {scale}")
    info = {
        "scale": scale,
        "raw_events": sum(c["events"] for c in counts.values()),
        "users": cfg.num_users,
        "events_per_day": cfg.events_per_day,
        "days": cfg.days,
        "training_rows": {d: store.read_manifest("training_events", d).get("row_count") for d in cfg.days},
        "prepare_seconds": round(time.time() - t0, 1),
    }
    done.write_text(json.dumps(info))
    return info


class AnonPeak:
    """The peak RssAnon of this process since the last take(), sampled by a daemon thread."""

    def __init__(self, every_s: float = 0.02):
        import threading

        self._peak = 0
        self._every = every_s
        threading.Thread(target=self._run, daemon=True).start()

    @staticmethod
    def now() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))

    def _run(self) -> None:
        while True:
            self._peak = max(self._peak, self.now())
            time.sleep(self._every)

    def take(self) -> float:
        peak, self._peak = max(self._peak, self.now()), 0
        return round(peak / 1024, 1)


def root_cause(error) -> str:
    """The innermost error's last line (a step failure's own message is Dagster's wrapper)."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return (error.message.strip().splitlines() or [""])[-1][:300]


def measure_assets(job, day: str, names: list[str] | None, instance_of, anon: AnonPeak):
    """Execute `job`'s assets `names` one at a time (each reads what the one before committed; None: the whole job
    once) on a fresh `instance_of()` each, in this process. Returns (failed steps -> root cause, peak RSS after each,
    peak anonymous memory during each, seconds of each): the peak after each says which step raised it."""
    from dagster import AssetKey

    failed, peak_after, anon_after, seconds = {}, {}, {}, {}
    for name in names or [job.name]:
        t = time.time()
        result = job.execute_in_process(
            partition_key=day,
            instance=instance_of(),
            raise_on_error=False,
            asset_selection=[AssetKey(name)] if names else None,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        failed |= {e.step_key: root_cause(e.event_specific_data.error) for e in result.all_events if e.is_step_failure}
        seconds[name] = round(time.time() - t, 1)
        peak_after[name] = peak_rss_mb()
        anon_after[name] = anon.take()
    return failed, peak_after, anon_after, seconds


def child(a) -> None:
    """Train the last day's vocab and models in this process (the measured one) and print its peak RSS."""
    from dagster import DagsterInstance

    from recsys_assets.config.files import ConfigFilesResource
    from recsys_assets.definitions import build_defs, default_resources
    from resources.storage import StorageResource
    from resources.training import TrainingResource

    t0 = time.time()
    anon = AnonPeak()
    resources = {
        **default_resources(),
        "storage": StorageResource(data_root=a.root),
        "training": TrainingResource(device="cpu", launcher=a.launcher, processes=a.processes),
        "config_files": ConfigFilesResource(training=a.training_yaml),
    }
    job = build_defs(resources).resolve_job_def("training_job")
    names = ["vocab", "ranker_model", "retrieval_model"]
    failed, peak_after, anon_after, _ = measure_assets(job, a.day, names, DagsterInstance.ephemeral, anon)
    own = peak_rss_mb()
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    report(
        {
            "success": not failed,
            "failed_steps": failed,  # e.g. a model gate failing on a tiny world: the steps still ran
            "peak_rss_mb_after": peak_after,
            # RssAnon sampled every 20 ms: what the process holds, without the file-backed pages (shared libraries,
            # the memory-mapped histories) that the peak RSS counts and the kernel can drop
            "peak_anon_mb_during": anon_after,
            "peak_rss_mb": round(own, 1),
            "peak_anon_mb": max(anon_after.values()),
            "peak_worker_rss_mb": round(workers, 1),
            "seconds": round(time.time() - t0, 1),
        }
    )


def one_epoch_spec(shuffle_buffer_rows: int | None = None) -> dict:
    """The packaged training config with one epoch per model and no history-free twins (the measure is memory, not
    quality); both models' shuffle buffer set when given."""
    from recsys_assets.config.training import DEFAULT_TRAINING_CONFIG_PATH

    spec = yaml.safe_load(Path(DEFAULT_TRAINING_CONFIG_PATH).read_text())
    spec["history"]["compare_history_free"] = "never"
    for model in ("ranker", "retrieval"):
        spec[model]["epochs"] = 1
        if shuffle_buffer_rows:
            spec[model]["shuffle_buffer_rows"] = shuffle_buffer_rows
    return spec


def training_yaml(path: Path, shuffle_buffer_rows: int | None = None) -> str:
    path.write_text(yaml.safe_dump(one_epoch_spec(shuffle_buffer_rows)))
    return str(path)


def world_arguments(p: argparse.ArgumentParser, base_events: int, base_users: int) -> None:
    """The worlds' arguments (and a measured child's), shared with serving_memory.py."""
    p.add_argument("--work-dir", default="/tmp/recsys-memscale")
    p.add_argument("--scales", default="1,4,16")
    p.add_argument("--base-events", type=int, default=base_events)
    p.add_argument("--base-users", type=int, default=base_users)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--day", help=argparse.SUPPRESS)
    p.add_argument("--training-yaml", help=argparse.SUPPRESS)


def world_dir(a, scale: int) -> Path:
    """Named by volume: a world is the same at (base 200k, x4) and (base 50k, x16), and is prepared once."""
    return Path(a.work_dir) / f"e{a.base_events * scale}-u{a.base_users * scale}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    world_arguments(p, base_events=200_000, base_users=30_000)
    p.add_argument("--launcher", default="in_process")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--prepare-only", action="store_true", help="prepare the worlds, measure nothing")
    p.add_argument("--shuffle-buffer-rows", type=int, help="both models' shuffle buffer (default: training.yaml's)")
    a = p.parse_args()
    if a.child:
        return child(a)
    work = Path(a.work_dir)
    rows = []
    for scale in [int(s) for s in a.scales.split(",")]:
        world = world_dir(a, scale)
        root, home = world / "data", world / "home"
        info = prepare(root, home, scale, a)
        if a.prepare_only:
            print(json.dumps({"prepared": scale, **info}), flush=True)
            continue
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--root",
            str(root),
            "--day",
            info["days"][-1],
            "--training-yaml",
            training_yaml(work / "training.yaml", a.shuffle_buffer_rows),
            "--launcher",
            a.launcher,
            "--processes",
            str(a.processes),
        ]
        env = {**os.environ, "DAGSTER_HOME": str(home), "RECSYS_CACHE_DIR": str(work / "cache")}
        result = run_child(cmd, f"scale {scale}", env)
        window_rows = sum(v for d, v in info["training_rows"].items() if d != info["days"][-1] and v)
        row = {
            "scale": scale,
            "users": info["users"],
            "events_per_day": info["events_per_day"],
            "window_training_rows": window_rows,
            "launcher": a.launcher,
            "processes": a.processes,
            "shuffle_buffer_rows": a.shuffle_buffer_rows,
            **result,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not rows:
        return
    base = rows[0]["peak_rss_mb"]
    summary = {"benchmark": "training_memory", "cpus": os.cpu_count(), "runs": rows}
    summary["peak_rss_over_1x"] = [round(r["peak_rss_mb"] / base, 2) for r in rows]
    summary["peak_anon_over_1x"] = [round(r["peak_anon_mb"] / rows[0]["peak_anon_mb"], 2) for r in rows]
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
