"""Monitoring dict: right-closed age buckets, production's string formats, 1d/7d deltas."""

from __future__ import annotations

import numpy as np

from recsys_assets.datagen.monitoring import age_bucket_counts, bucket_labels, build_report, fmt_count_pct, fmt_delta

EDGES = [0, 1, 2, 4, 7, 14, 30, 60, 90]


def test_bucket_labels_match_production_keys():
    assert bucket_labels(EDGES) == [
        "(-inf, 0.0]",
        "(0.0, 1.0]",
        "(1.0, 2.0]",
        "(2.0, 4.0]",
        "(4.0, 7.0]",
        "(7.0, 14.0]",
        "(14.0, 30.0]",
        "(30.0, 60.0]",
        "(60.0, 90.0]",
        "(90.0, inf]",
    ]


def test_age_buckets_are_right_closed():
    counts = age_bucket_counts(np.array([-1.0, 0.0, 0.5, 1.0, 1.0001, 90.0, 90.5, 500.0]), EDGES)
    assert counts["(-inf, 0.0]"] == 2
    assert counts["(0.0, 1.0]"] == 2
    assert counts["(1.0, 2.0]"] == 1
    assert counts["(60.0, 90.0]"] == 1
    assert counts["(90.0, inf]"] == 2
    assert sum(counts.values()) == 8


def test_formats_like_production():
    assert fmt_count_pct(7539, 728706) == "7,539 (1.03%)"
    assert fmt_delta(7539, 7062) == "477 (+6.75%)"
    assert fmt_delta(91, 97) == "-6 (-6.19%)"
    assert fmt_delta(5, 0) == "5 (n/a)"


def _report(item_ids, ages, prev_ids=None, prev_1d=None, prev_7d=None):
    return build_report(
        day="2024-03-08",
        filter_stats={"num_raw_events": 100, "stage_order": ["x"]},
        join_stats={"num_final_rows": 80, "num_items_post_embed_join": len(item_ids)},
        item_ids=np.array(item_ids, dtype=object),
        item_age_days=np.array(ages),
        edges=EDGES,
        prev_1d_item_ids=None if prev_ids is None else np.array(prev_ids, dtype=object),
        prev_1d_report=prev_1d,
        prev_7d_report=prev_7d,
        started_at="2024-03-09T03:00:00+00:00",
        finished_at="2024-03-09T06:21:00+00:00",
        run_time_s=3 * 3600 + 21 * 60,
    )


def test_report_new_common_items_and_deltas():
    week_ago = _report(["a", "b", "c", "d"], [0.5, 0.5, 3.0, 50.0])
    yesterday = _report(["a", "b", "c"], [0.5, 3.0, 3.0])
    r = _report(
        ["a", "b", "x", "y", "z"],
        [0.5, 0.5, 3.0, 3.0, 50.0],
        prev_ids=["a", "b", "c"],
        prev_1d=yesterday,
        prev_7d=week_ago,
    )
    assert r["num_new_items_1d"] == 3 and r["num_common_items_1d"] == 2
    assert r["new_items_in_index_1d_delta"] == "3 (60.0%)"
    assert r["common_items_in_index_1d_delta"] == "2 (40.0%)"
    assert r["item_diff_1d_delta"] == "2 (+66.67%)"
    assert r["item_diff_7d_delta"] == "1 (+25.0%)"
    assert r["item_age_buckets_delta_7d"]["(2.0, 4.0]"] == "1 (+100.0%)"
    # shares: (2,4] went from 25% to 40% of items
    assert r["item_age_bucket_share_delta_pp_7d"]["(2.0, 4.0]"] == 15.0
    assert r["event_delta_pct_1d"] == 0.0
    assert r["datagen_run_time"] == "3h:21mins"
    assert r["SUCCESS"] is True


def test_report_without_baselines_has_no_deltas():
    r = _report(["a"], [1.0])
    assert r["item_age_buckets_delta_7d"] is None
    assert r["new_items_pct_1d"] is None
    assert r["item_diff_1d_delta"] is None
