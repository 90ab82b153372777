"""`recsys-synth`: write N days of synthetic raw data under a data root."""

from __future__ import annotations

import argparse
import json
import time

from recsys_assets.synthetic.generator import SyntheticConfig, generate
from resources.store import DatasetStore


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-root", default="./data")
    p.add_argument("--start-date", default=SyntheticConfig.start_date)
    p.add_argument("--days", type=int, default=SyntheticConfig.num_days)
    p.add_argument("--events-per-day", type=int, default=SyntheticConfig.events_per_day)
    p.add_argument("--users", type=int, default=SyntheticConfig.num_users)
    p.add_argument("--initial-items", type=int, default=SyntheticConfig.initial_items)
    p.add_argument("--new-items-per-day", type=int, default=SyntheticConfig.new_items_per_day)
    p.add_argument("--seed", type=int, default=SyntheticConfig.seed)
    p.add_argument("--no-success-files", action="store_true", help="leave out raw/daily_success_files/")
    a = p.parse_args(argv)
    cfg = SyntheticConfig(
        start_date=a.start_date,
        num_days=a.days,
        events_per_day=a.events_per_day,
        num_users=a.users,
        initial_items=a.initial_items,
        new_items_per_day=a.new_items_per_day,
        seed=a.seed,
    )
    t = time.time()
    counts = generate(DatasetStore(a.data_root), cfg, write_success=not a.no_success_files)
    print(json.dumps({"data_root": a.data_root, "days": counts, "seconds": round(time.time() - t, 2)}))


if __name__ == "__main__":
    main()
