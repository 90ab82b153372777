"""Feed scoring on one served day, in-process vs on Spark: users/s and the peak RSS of the process that asks for it.

Needs a data root where the serving job has run (a published serving config and its releases: `make demo` leaves
one). Each path runs in a fresh process on the same day and config: `in_process` calls serving/feed.build_feed (the
whole feed in that process); `spark` runs the feed stage (serving/feed_stage.py) on a local Spark session of
--master, as the feed asset does (the process holds the stats only; the scoring runs in Spark's Python workers,
whose memory is the executors', not the run process's). Prints JSON lines and a summary.

    .venv/bin/python benchmarks/feed_scoring.py --data-root data --day 2024-03-08 [--master 'local[2]']
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from child_result import peak_rss_mb, report, run_child  # noqa: E402  (this directory is on the path when run as a script)


def child(path: str, root: str, day: str, master: str) -> None:
    from recsys_assets.config.serving import load_serving_spec
    from recsys_assets.serving.serving_config import latest_config
    from resources.store import DatasetStore

    store, spec = DatasetStore(root), load_serving_spec()
    cfg = latest_config(store)
    t0, extra = time.perf_counter(), {}
    if path == "in_process":
        from recsys_assets.serving.feed import build_feed

        feed = build_feed(store, day, spec, cfg)
        rows, users = len(feed.rows), feed.scored_users
    else:
        from recsys_assets.core.spark_stages import run_stage
        from recsys_assets.serving.feed_stage import feed_params
        from resources.spark import SparkResource

        session = SparkResource(master=master, driver_memory="2g").get_session()
        with tempfile.TemporaryDirectory() as tmp:  # the rows go to a scratch copy of the layout, not the store's
            scratch = DatasetStore(tmp)
            stats = run_stage(session, "feed", _ReadFrom(store, scratch), day, "bench", feed_params(spec, cfg))
        rows, users = stats["rows"], stats["scored_users"]
        extra = {k: stats[k] for k in ("release_load_task_seconds", "scoring_task_seconds", "users_per_task_second")}
    seconds = time.perf_counter() - t0
    peak = peak_rss_mb()
    report(
        {
            "path": path,
            "rows": int(rows),
            "users": int(users),
            "seconds": round(seconds, 1),
            "users_per_s": round(users / seconds, 1),
            "run_process_peak_rss_mb": round(peak, 1),
            **extra,
        }
    )


class _ReadFrom:
    """A store that reads the served day from `source` and writes the feed version into `target`."""

    def __init__(self, source, target):
        self._source, self._target = source, target

    def __getattr__(self, name):
        return getattr(self._source, name)

    def version_uri(self, dataset, *parts):
        return (self._target if dataset == "feed" else self._source).version_uri(dataset, *parts)

    def version_path(self, dataset, *parts):
        return (self._target if dataset == "feed" else self._source).version_path(dataset, *parts)

    def write_json_atomic(self, path, obj):
        return self._target.write_json_atomic(path, obj)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-root")
    p.add_argument("--day")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(*a.child)
    if not (a.data_root and a.day):
        p.error("--data-root and --day are required")
    runs = []
    for path in ("in_process", "spark"):
        runs.append(run_child([sys.executable, __file__, "--child", path, a.data_root, a.day, a.master], path))
        print(json.dumps(runs[-1]), flush=True)
    print(json.dumps({"benchmark": "feed_scoring", "cpus": os.cpu_count(), "master": a.master, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
