"""Publishing a day's feed into the partitioned PostgreSQL table at growing volume: peak RSS and rows/s of the
publishing process (the Dagster run process in production) at 1x, 4x, 16x feed rows.

Each size: synthetic feed rows (20 per user) written to Parquet in row groups (as the Spark feed stage writes
them), then a fresh process streams them with serving/feed.feed_row_chunks into serving/feed_table.publish_feed
against a fresh database on the local server, twice (the first publication of the day, then a replacement swap),
and reports its peak RSS (VmHWM) and the time of each. Prints JSON lines and a summary.

    .venv/bin/python benchmarks/feed_publish.py [--rows 1000000,4000000,16000000] [--work-dir /tmp/feed-publish] \
        [--streams 1,2,4]

--streams: COPY streams of a publication (publish_feed(streams=N)); each size is published once per value.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from child_result import peak_rss_mb, report, run_child  # noqa: E402  (this directory is on the path when run as a script)

DSN = dict(host=os.environ.get("RECSYS_PG_HOST", "127.0.0.1"), port=5432, user="postgres")
DAY = "2024-03-08"


def write_rows(root: Path, rows: int, version: str) -> None:
    """`rows` feed rows as the Spark stage lays them out (feed/dt=DAY/v=.../rows/*.parquet), in 500k-row groups."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = root / "feed" / f"dt={DAY}" / f"v={version}" / "rows"
    out.mkdir(parents=True, exist_ok=True)
    step = 500_000
    with pq.ParquetWriter(out / "part-00000.parquet", _schema()) as w:
        for s in range(0, rows, step):
            n = min(step, rows - s)
            i = np.arange(s, s + n)
            w.write_table(
                pa.table(
                    {
                        "strategy_name": pa.array(["ml-two-tower-mmoe"] * n),
                        "dt": pa.array([DAY] * n),
                        "user_id": pa.array([f"user_{u:09d}" for u in i // 20]),
                        "rank": pa.array((i % 20 + 1).astype(np.int32)),
                        "item_id": pa.array([f"item_{(u * 7919) % 729_000:07d}" for u in i]),
                        "score": pa.array(1.0 / (i % 20 + 1.0)),
                        "model_version": pa.array(np.full(n, 3, np.int64)),
                        "arm": pa.array(np.where(i // 20 % 10 == 0, "holdback", "production").astype(object)),
                    },
                    schema=_schema(),
                )
            )


def _schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("strategy_name", pa.string()),
            ("dt", pa.string()),
            ("user_id", pa.string()),
            ("rank", pa.int32()),
            ("item_id", pa.string()),
            ("score", pa.float64()),
            ("model_version", pa.int64()),
            ("arm", pa.string()),
        ]
    )


def child(root: str, version: str, dbname: str, streams: str) -> None:
    import contextlib

    import psycopg2

    from recsys_assets.serving.feed import feed_row_chunks
    from recsys_assets.serving.feed_table import ensure_feed_table, publish_feed
    from resources.store import DatasetStore

    store = DatasetStore(root)
    conn = psycopg2.connect(dbname=dbname, **DSN)
    ensure_feed_table(conn)
    seconds, swap_lock_s = [], []
    for _ in range(2):  # the day's first publication, then a replacement (detach + drop + attach)
        t0, timings = time.perf_counter(), {}
        written = publish_feed(
            conn,
            feed_row_chunks(store, DAY, version),
            "ml-two-tower-mmoe",
            DAY,
            timings=timings,
            streams=int(streams),
            connect=lambda: contextlib.closing(psycopg2.connect(dbname=dbname, **DSN)),
        )
        seconds.append(round(time.perf_counter() - t0, 1))
        swap_lock_s.append(timings["swap_lock_s"])
    conn.close()
    peak = peak_rss_mb()
    report({"written": written, "seconds": seconds, "swap_lock_s": swap_lock_s, "peak_rss_mb": round(peak, 1)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", default="1000000,4000000,16000000")
    p.add_argument("--work-dir", default="/tmp/feed-publish")
    p.add_argument("--streams", default="1", help="COPY streams per publication, e.g. 1,2,4")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(*a.child)
    import psycopg2

    results = []
    sizes = [(int(r), int(n)) for r in a.rows.split(",") for n in a.streams.split(",")]
    for rows, streams in sizes:
        root, version = Path(a.work_dir) / f"rows{rows}", "bench"
        if not (root / "feed" / f"dt={DAY}" / f"v={version}" / "rows" / "part-00000.parquet").exists():
            write_rows(root, rows, version)
        dbname = f"recsys_bench_{uuid.uuid4().hex[:8]}"
        admin = psycopg2.connect(dbname="postgres", **DSN)
        admin.autocommit = True
        admin.cursor().execute(f'CREATE DATABASE "{dbname}"')
        try:
            cmd = [sys.executable, __file__, "--child", str(root), version, dbname, str(streams)]
            r = run_child(cmd, f"{rows} rows, {streams} streams")
        finally:
            admin.cursor().execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
            admin.close()
        row = {"rows": rows, "streams": streams, **r, "rows_per_s": [round(rows / s) for s in r["seconds"]]}
        results.append(row)
        print(json.dumps(row), flush=True)
    base = results[0]["peak_rss_mb"]
    print(
        json.dumps(
            {
                "benchmark": "feed_publish",
                "cpus": os.cpu_count(),
                "runs": results,
                "peak_rss_over_smallest": [round(r["peak_rss_mb"] / base, 2) for r in results],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
