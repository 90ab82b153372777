"""What the per-filter stats cost: the filtered_events stage three ways on one synthetic day of N events.

- one_pass: the platform's stage (stats for every filter from one per-item aggregation + a tiny item-sized job);
- stats_off: `plan_filter_chain`, the stage's own plan and outputs without the stage-stats job (the duplicate
  scan and the per-item counts stay: the item filter needs them to decide which items survive);
- naive: the seed's way, apply filters one after another and count events and distinct items after each.

Prints one JSON object with seconds per variant and the ratios the issue asks for.

    .venv/bin/python benchmarks/stats_overhead.py --events 5000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pyspark.sql import functions as F

from recsys_assets.config.datagen import MinItemEventsFilter, load_datagen_spec
from recsys_assets.core.days import window_micros, window_of
from recsys_assets.core.raw_inputs import read_raw
from recsys_assets.datagen.filter_chain import (
    FILTERED_EVENT_COLUMNS,
    FILTERED_ITEM_COLUMNS,
    ITEM_ATTRIBUTE_COLUMNS,
    enrich_events,
    filter_predicate,
    item_catalogue,
    mark_duplicates,
    plan_filter_chain,
    quarantine_reason,
    sample_predicate,
    stages_of,
)
from recsys_assets.datagen.stages import datagen_params, filtered_events_stage
from recsys_assets.synthetic.generator import SyntheticConfig, generate
from resources.spark import SparkResource
from resources.store import DatasetStore

DAY = "2024-03-01"


def stats_off(session, store, out):
    start_us, end_us = window_micros(window_of(DAY))
    events, items = read_raw(session, store, "events", DAY), read_raw(session, store, "items", DAY)
    result = plan_filter_chain(events, items, load_datagen_spec(), start_us, end_us)
    try:
        result.filtered_events.write.mode("overwrite").parquet(f"{out}/events")
        result.filtered_items.write.mode("overwrite").parquet(f"{out}/items")
        result.quarantined_events.write.mode("overwrite").parquet(f"{out}/quarantine")
    finally:
        result.release()


def naive(session, store, out) -> dict:
    spec = load_datagen_spec()
    start_us, end_us = window_micros(window_of(DAY))
    events, items = read_raw(session, store, "events", DAY), read_raw(session, store, "items", DAY)
    invalid = quarantine_reason(start_us, end_us, spec.quarantine)
    df = mark_duplicates(enrich_events(events, item_catalogue(items)), invalid=invalid.isNotNull())
    df = df.withColumn(
        "quarantine_reason", F.coalesce(invalid, F.when(F.col("is_duplicate"), F.lit("duplicate_event_id")))
    )
    counts = {"raw": (df.count(), df.select(F.countDistinct("item_id")).first()[0])}
    df.filter(F.col("quarantine_reason").isNotNull()).select(*events.columns, "quarantine_reason").write.mode(
        "overwrite"
    ).parquet(f"{out}/quarantine")
    steps = [
        ("quarantine", F.col("quarantine_reason").isNull()),
        ("language", F.col("item_language").isin(list(spec.language.allowed))),
        ("sample", sample_predicate(spec.sample.fraction, spec.sample.seed)),
    ]
    for name, pred in steps:
        df = df.filter(pred)
        counts[name] = (df.count(), df.select(F.countDistinct("item_id")).first()[0])
    for f in spec.filters:
        if isinstance(f, MinItemEventsFilter):
            keep = df.groupBy("item_id").count().filter(F.col("count") >= f.min_events).select("item_id")
            df = df.join(keep, "item_id", "left_semi")
        else:
            df = df.filter(filter_predicate(f))
        counts[f.name] = (df.count(), df.select(F.countDistinct("item_id")).first()[0])
    df.select(*FILTERED_EVENT_COLUMNS).write.mode("overwrite").parquet(f"{out}/events")
    df.groupBy("item_id", *ITEM_ATTRIBUTE_COLUMNS).agg(
        F.count(F.lit(1)).alias("num_events"), F.max("item_age_days").alias("item_age_days")
    ).select(*FILTERED_ITEM_COLUMNS).write.mode("overwrite").parquet(f"{out}/items")
    return counts


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=5_000_000)
    p.add_argument("--master", default="local[2]")
    a = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="stats-bench-"))
    store = DatasetStore(str(root))
    scale = a.events / SyntheticConfig.events_per_day
    cfg = SyntheticConfig(
        start_date=DAY,
        num_days=1,
        events_per_day=a.events,
        num_users=int(30_000 * scale**0.5),
        initial_items=int(8_000 * scale**0.5),
    )
    with ProcessPoolExecutor(max_workers=1) as pool:
        pool.submit(generate, store, cfg).result()
    session = SparkResource(master=a.master, driver_memory="6g", shuffle_partitions=8).get_session()
    # Warm-up (JVM start, first query compilation) so no variant pays it.
    params = datagen_params(load_datagen_spec())
    filtered_events_stage(session, store, DAY, "warmup", params)
    seconds, naive_counts, one_pass_stats = {}, None, None
    for variant in ("one_pass", "stats_off", "naive", "one_pass"):
        t0 = time.perf_counter()
        if variant == "one_pass":
            one_pass_stats = filtered_events_stage(session, store, DAY, f"v-{variant}-{time.time_ns()}", params)
        elif variant == "stats_off":
            stats_off(session, store, store.path("bench", variant))
        else:
            naive_counts = naive(session, store, store.path("bench", variant))
        seconds.setdefault(variant, []).append(round(time.perf_counter() - t0, 2))
    best = {k: min(v) for k, v in seconds.items()}
    last = stages_of(load_datagen_spec())[-1].name
    print(
        json.dumps(
            {
                "benchmark": "stats_overhead",
                "events": a.events,
                "master": a.master,
                "cpus": os.cpu_count(),
                "seconds": seconds,
                "best_seconds": best,
                "one_pass_over_stats_off": round(best["one_pass"] / best["stats_off"], 3),
                "naive_over_one_pass": round(best["naive"] / best["one_pass"], 3),
                # Same answer both ways (the naive chain counts after each filter; one pass derives them all at once).
                "final_events_one_pass": one_pass_stats["num_events_post_filters"],
                "final_events_naive": naive_counts[last][0],
                "final_items_one_pass": one_pass_stats["num_unique_items_post_filters"],
                "final_items_naive": naive_counts[last][1],
            }
        )
    )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
