"""`recsys-import`: public interaction logs -> raw input days under a data root (recsys_assets/ingest/importer.py).

    recsys-import movielens --source-dir ../shared/realdata/movielens-latest-small --data-root ./data-ml \\
        --relay-days 10 --start-date 2024-03-01
    recsys-import csv --path plays.csv --user user --item video --timestamp ts --timestamp-unit iso \\
        --duration secs --liked liked --data-root ./data-csv
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from recsys_assets.ingest.importer import CsvMapping, ImportSpec, SourceDataError, import_csv, import_movielens
from resources.store import DatasetStore


def _days(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"a whole number of days >= 1, got {value!r}")
    return n


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="kind", required=True)
    ml = sub.add_parser("movielens", help="ratings.csv + movies.csv of a MovieLens release")
    ml.add_argument("--source-dir", required=True)
    gen = sub.add_parser("csv", help="a CSV of (user, item, timestamp, optional rating/duration/liked)")
    gen.add_argument("--path", required=True)
    gen.add_argument("--user", required=True, help="column of the user id")
    gen.add_argument("--item", required=True, help="column of the item id")
    gen.add_argument("--timestamp", required=True, help="column of the event time")
    gen.add_argument("--timestamp-unit", choices=["s", "ms", "iso"], default="s")
    gen.add_argument("--rating", help="column of a 0-5 rating (liked = rating >= --positive-rating)")
    gen.add_argument("--duration", help="column of the play duration in seconds")
    gen.add_argument("--liked", help="column of a liked label (1/true/yes)")
    for sp in (ml, gen):
        sp.add_argument("--data-root", required=True)
        sp.add_argument("--source", default=None, help="id prefix (default: ml / csv)")
        sp.add_argument("--relay-days", type=_days, default=None, help="lay events onto N (>= 1) consecutive days")
        sp.add_argument(
            "--replace", action="store_true", help="remove the raw days already under --data-root first (else refused)"
        )
        sp.add_argument("--start-date", default=None, help="first re-laid day (default RECSYS_PARTITIONS_START)")
        sp.add_argument("--positive-rating", type=float, default=4.0)
        sp.add_argument("--video-length-s", type=float, default=100.0)
        sp.add_argument("--language", default="hi")
    a = p.parse_args(argv)
    t = time.time()
    try:
        spec = ImportSpec(
            source=a.source or ("ml" if a.kind == "movielens" else "csv"),
            relay_days=a.relay_days,
            start_date=a.start_date,
            positive_rating=a.positive_rating,
            video_length_s=a.video_length_s,
            language=a.language,
            replace=a.replace,
        )
        store = DatasetStore(a.data_root)
        if a.kind == "movielens":
            report = import_movielens(a.source_dir, store, spec)
        else:
            mapping = CsvMapping(
                user=a.user,
                item=a.item,
                timestamp=a.timestamp,
                timestamp_unit=a.timestamp_unit,
                rating=a.rating,
                duration=a.duration,
                liked=a.liked,
            )
            report = import_csv(a.path, mapping, store, spec)
    except (SourceDataError, ValueError) as e:  # the user's input: a message, not a traceback
        print(f"recsys-import: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(
        json.dumps(
            {
                "data_root": a.data_root,
                "days": report.days,
                "duplicate_rows_dropped": report.duplicate_rows_dropped,
                "replaced_days": report.replaced_days,
                "seconds": round(time.time() - t, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
