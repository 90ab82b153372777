"""The daily datagen monitoring report: production's monitoring dict (same keys and string formats) plus the
numeric values behind every string, so checks and Dagster plots use numbers, not parsed strings.

Inputs are item-sized (one row per final item), so this runs on pyarrow/numpy, no Spark.
"""

from __future__ import annotations

import math

import numpy as np


def bucket_labels(edges: list[float]) -> list[str]:
    bounds = [-math.inf, *[float(e) for e in edges], math.inf]
    return [f"({_fmt_edge(lo)}, {_fmt_edge(hi)}]" for lo, hi in zip(bounds[:-1], bounds[1:])]


def in_bucket_order(buckets: dict[str, object]) -> list[tuple[str, object]]:
    """Bucket entries ordered by lower edge (JSON metadata round-trips lose the insertion order)."""
    return sorted(buckets.items(), key=lambda kv: float(kv[0][1:].split(",")[0]))


def _fmt_edge(x: float) -> str:
    return "-inf" if x == -math.inf else "inf" if x == math.inf else f"{x:.1f}"


def age_bucket_counts(item_age_days: np.ndarray, edges: list[float]) -> dict[str, int]:
    """Right-closed buckets (-inf,e0], (e0,e1], ..., (en,inf] of item ages in days."""
    ages = np.asarray(item_age_days, dtype=np.float64)
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), ages, side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1)
    return dict(zip(bucket_labels(edges), (int(c) for c in counts)))


def fmt_count_pct(count: int, total: int) -> str:
    pct = round(100.0 * count / total, 2) if total else 0.0
    return f"{count:,} ({pct}%)"


def pct_change(now: float, before: float) -> float | None:
    if before == 0:
        return None if now else 0.0
    return round(100.0 * (now - before) / before, 2)


def fmt_delta(now: int, before: int) -> str:
    p = pct_change(now, before)
    pct = "n/a" if p is None else f"{p:+}%"
    return f"{now - before:,} ({pct})"


def build_report(
    *,
    day: str,
    filter_stats: dict,
    join_stats: dict,
    item_ids: np.ndarray,
    item_age_days: np.ndarray,
    edges: list[float],
    prev_1d_item_ids: np.ndarray | None,
    prev_1d_report: dict | None,
    prev_7d_report: dict | None,
    started_at: str,
    finished_at: str,
    run_time_s: float,
) -> dict:
    """Production's monitoring dict for `day`. Deltas are None where the baseline day has no report."""
    buckets = age_bucket_counts(item_age_days, edges)
    n_items = int(len(item_ids))
    report: dict = {"partition": day, "datagen_start_time": started_at}
    report.update({k: v for k, v in filter_stats.items() if k != "stage_order"})
    report.update(join_stats)
    report["item_age_buckets"] = buckets
    report["item_age_bucket_share_pct"] = {
        k: round(100.0 * v / n_items, 4) if n_items else 0.0 for k, v in buckets.items()
    }
    report["item_age_bucket_formated"] = {k: fmt_count_pct(v, n_items) for k, v in buckets.items()}

    if prev_7d_report is not None:
        before = prev_7d_report["item_age_buckets"]
        before_share = prev_7d_report["item_age_bucket_share_pct"]
        report["item_age_buckets_delta_7d"] = {k: fmt_delta(buckets[k], before.get(k, 0)) for k in buckets}
        report["item_age_buckets_delta_pct_7d"] = {k: pct_change(buckets[k], before.get(k, 0)) for k in buckets}
        report["item_age_bucket_share_delta_pp_7d"] = {
            k: round(report["item_age_bucket_share_pct"][k] - before_share.get(k, 0.0), 4) for k in buckets
        }
    else:
        report["item_age_buckets_delta_7d"] = None
        report["item_age_buckets_delta_pct_7d"] = None
        report["item_age_bucket_share_delta_pp_7d"] = None

    if prev_1d_item_ids is not None:
        common = int(np.isin(item_ids, prev_1d_item_ids, assume_unique=True).sum())
        new = n_items - common
        report["num_new_items_1d"] = new
        report["num_common_items_1d"] = common
        report["new_items_pct_1d"] = round(100.0 * new / n_items, 4) if n_items else 0.0
        report["new_items_in_index_1d_delta"] = fmt_count_pct(new, n_items)
        report["common_items_in_index_1d_delta"] = fmt_count_pct(common, n_items)
    else:
        for k in ("num_new_items_1d", "num_common_items_1d", "new_items_pct_1d"):
            report[k] = None
        report["new_items_in_index_1d_delta"] = None
        report["common_items_in_index_1d_delta"] = None

    for label, prev in (("1d", prev_1d_report), ("7d", prev_7d_report)):
        if prev is None:
            report[f"item_diff_{label}_delta"] = None
            report[f"item_delta_pct_{label}"] = None
            report[f"event_delta_pct_{label}"] = None
            continue
        report[f"item_diff_{label}_delta"] = fmt_delta(n_items, prev["num_items_post_embed_join"])
        report[f"item_delta_pct_{label}"] = pct_change(n_items, prev["num_items_post_embed_join"])
        report[f"event_delta_pct_{label}"] = pct_change(join_stats["num_final_rows"], prev["num_final_rows"])

    report["datagen_end_time"] = finished_at
    report["datagen_run_time_s"] = round(run_time_s, 2)
    h, rem = divmod(int(run_time_s), 3600)
    report["datagen_run_time"] = f"{h}h:{rem // 60}mins"
    report["SUCCESS"] = True
    return report
