"""Datagen throughput: one synthetic day of N raw events through the datagen Spark stages (filtered_events then
training_events) on local Spark, in this process, as the default backend runs them. Reports raw events/s end to
end (raw Parquet read -> training_events written), per-stage seconds, and peak RSS of this Python driver and of
the Spark JVM. Prints one JSON line per size and a final JSON object.

    .venv/bin/python benchmarks/datagen.py --sizes 1000000,5000000,20000000 --master 'local[2]'
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from recsys_assets.config.datagen import load_datagen_spec
from recsys_assets.datagen.stages import datagen_params, filtered_events_stage, training_events_stage
from recsys_assets.synthetic.generator import SyntheticConfig, generate
from resources.spark import SparkResource
from resources.store import DatasetStore

DAY = "2024-03-01"


def jvm_peak_rss_mb() -> float | None:
    """VmHWM of the Spark JVM this process started (a child `java` process)."""
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if b"java" in cmd and int(fields.get("PPid", "0").strip()) == me:
            return int(fields["VmHWM"].split()[0]) / 1024
    return None


_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "min": 60.0}


def _seconds(value: str) -> float | None:
    """Spark SQL UI metric text ('total (min, med, max ...)\n12.3 s (...)' or '450 ms') -> seconds."""
    import re

    m = re.search(r"(?:^|\n)\s*([\d.,]+)\s*(ms|s|m|min|h)\b", value)
    return float(m.group(1).replace(",", "")) * _UNITS[m.group(2)] if m else None


def _sql_executions(session, details: bool) -> list[dict]:
    import urllib.request

    sc = session.sparkContext
    url = (
        f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/sql"
        f"?details={str(details).lower()}&planDescription=false&length=10000"
    )
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def sql_execution_times(session, since_id: int = -1, min_s: float = 0.5) -> list[dict]:
    """Wall time of each Spark SQL execution (one per action: a count, a collect, a write) after `since_id`, named
    by the action and the line of our code that ran it: which pass of the stages the time went to."""
    import re

    rows = []
    for ex in _sql_executions(session, details=False):
        if ex["id"] <= since_id or ex.get("duration", 0) < min_s * 1000:
            continue
        desc = re.sub(r"/\S*/", "", ex.get("description", ""))  # 'collect at /…/filter_chain.py:273' -> file:line
        rows.append({"id": ex["id"], "action": desc, "seconds": round(ex["duration"] / 1000, 1)})
    return rows


def last_sql_execution_id(session) -> int:
    return max((ex["id"] for ex in _sql_executions(session, details=False)), default=-1)


def sql_time_profile(session, since_id: int = -1, top: int = 15) -> list[dict]:
    """Where the executors' time went, from the Spark UI's SQL metrics of the queries after `since_id`: the time
    metrics (scan, sort, aggregation build, shuffle write, ...) summed per (plan node, metric)."""
    executions = [ex for ex in _sql_executions(session, details=True) if ex["id"] > since_id]
    totals: dict[tuple[str, str], float] = {}
    for ex in executions:
        for node in ex.get("nodes", []):
            for metric in node.get("metrics", []):
                if "time" not in metric["name"] and "duration" not in metric["name"]:
                    continue
                sec = _seconds(metric["value"])
                if sec:
                    key = (node["nodeName"], metric["name"])
                    totals[key] = totals.get(key, 0.0) + sec
    rows = sorted(
        ({"node": k[0], "metric": k[1], "seconds": round(v, 2)} for k, v in totals.items()), key=lambda r: -r["seconds"]
    )
    return rows[:top]


def user_history_timings(session, store: DatasetStore, day: str, events_version: str) -> dict:
    """Seconds of the user_history stage on this day's training_events: the next day's history built from the
    day alone, then the day after's from that history + the same day's events again (the cost of folding one day
    into an existing history; the entries are duplicates, the work is the same)."""
    from recsys_assets.config.training import load_training_spec
    from recsys_assets.core.days import shift_day
    from recsys_assets.history.stage import user_history_stage

    spec = load_training_spec()
    params = {
        "keep": spec.history.keep,
        "lookback_days": spec.history.lookback_days,
        "min_watch_ratio": spec.labels.retrieval_positive_min_watch_ratio,
        "on_engagement": spec.labels.retrieval_positive_on_engagement,
    }
    first, second = shift_day(day, 1), shift_day(day, 2)
    t0 = time.perf_counter()
    v1 = store.new_version()
    full = user_history_stage(
        session,
        store,
        first,
        v1,
        {**params, "previous_day": day, "previous_version": None, "event_versions": {day: events_version}},
    )
    store.commit("user_history", first, v1)
    t1 = time.perf_counter()
    incremental = user_history_stage(
        session,
        store,
        second,
        store.new_version(),
        {**params, "previous_day": first, "previous_version": v1, "event_versions": {day: events_version}},
    )
    t2 = time.perf_counter()
    return {
        "user_history_from_one_day_s": round(t1 - t0, 1),
        "user_history_incremental_s": round(t2 - t1, 1),
        "user_history_users": full["users_with_history"],
        "user_history_entries": full["entries"],
        "user_history_incremental_entries": incremental["entries"],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="1000000,5000000")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--driver-memory", default="6g")
    p.add_argument("--workdir", default="")
    p.add_argument("--profile", action="store_true", help="add the Spark SQL time metrics per plan node")
    p.add_argument(
        "--user-history",
        action="store_true",
        help="also build user_history from the day (the next day's history: a full build from one day's events) "
        "and extend it (the day after: that history + a day of events, the incremental path's work)",
    )
    a = p.parse_args()
    spark = SparkResource(
        master=a.master,
        driver_memory=a.driver_memory,
        shuffle_partitions=8,
        spark_conf={"spark.ui.enabled": "true"} if a.profile else {},
    )
    session = spark.get_session()
    results = []
    for n in [int(x) for x in a.sizes.split(",")]:
        root = Path(a.workdir or tempfile.mkdtemp(prefix="datagen-bench-")) / f"n{n}"
        shutil.rmtree(root, ignore_errors=True)
        store = DatasetStore(str(root))
        scale = n / SyntheticConfig.events_per_day
        cfg = SyntheticConfig(
            start_date=DAY,
            num_days=1,
            events_per_day=n,
            num_users=int(30_000 * scale**0.5),
            initial_items=int(8_000 * scale**0.5),
        )
        # Generated in a child process, so this process's peak RSS is the datagen driver's alone.
        t0 = time.perf_counter()
        with ProcessPoolExecutor(max_workers=1) as pool:
            raw = pool.submit(generate, store, cfg).result()[DAY]["events"]
        gen_s = time.perf_counter() - t0

        since = last_sql_execution_id(session) if a.profile else -1
        t0 = time.perf_counter()
        version = store.new_version()
        fstats = filtered_events_stage(session, store, DAY, version, datagen_params(load_datagen_spec()))
        store.commit("filtered_events", DAY, version)  # the stages alone are measured: no checks, committed as is
        t1 = time.perf_counter()
        version = store.new_version()
        tstats = training_events_stage(session, store, DAY, version, datagen_params(load_datagen_spec()))
        store.commit("training_events", DAY, version)
        t2 = time.perf_counter()
        row = {
            "raw_events": raw,
            "users": cfg.num_users,
            "initial_items": cfg.initial_items,
            "generate_s": round(gen_s, 1),
            "filtered_events_s": round(t1 - t0, 1),
            "training_events_s": round(t2 - t1, 1),
            "end_to_end_s": round(t2 - t0, 1),
            "raw_events_per_s": round(raw / (t2 - t0)),
            "final_rows": tstats["num_final_rows"],
            "events_after_filters": fstats["num_events_post_filters"],
            "driver_python_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "spark_jvm_peak_rss_mb": jvm_peak_rss_mb(),
        }
        if a.user_history:
            row |= user_history_timings(session, store, DAY, store.committed_version("training_events", DAY))
        if a.profile:
            row["profile_top_sql_time"] = sql_time_profile(session, since)
            row["profile_actions"] = sql_execution_times(session, since)
        results.append(row)
        print(json.dumps(row), flush=True)
        if not a.workdir:
            shutil.rmtree(root.parent, ignore_errors=True)
    print(
        json.dumps(
            {
                "benchmark": "datagen",
                "master": a.master,
                "cpus": os.cpu_count(),
                "driver_memory": a.driver_memory,
                "platform": platform.platform(),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
