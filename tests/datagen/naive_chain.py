"""An independent, naive implementation of the datagen filter chain in pandas: filter step by step and count
after every step (production's old way). Tests compare the one-pass Spark stats against it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys_assets.config.datagen import DatagenSpec, InSetFilter, MinItemEventsFilter, RangeFilter


def naive_chain(
    events: pd.DataFrame,
    items: pd.DataFrame,
    spec: DatagenSpec,
    day_start_us: int,
    day_end_us: int,
    sampled_event_ids: set[str],
) -> tuple[dict, pd.DataFrame]:
    stats: dict = {"num_raw_events": len(events), "num_raw_items": events["item_id"].nunique()}
    ev = events.copy()
    ts_us = (
        ev["event_ts"].astype("int64") // 1000
        if str(ev["event_ts"].dtype).endswith("[ns, UTC]")
        else ev["event_ts"].astype("int64")
    )
    ev["_ts_us"] = ts_us
    pd_ = ev["play_duration_s"]
    q = spec.quarantine

    def unstorable(c):
        v = ev[c]
        forbidden = v.str.contains("[\x00-\x1f\x7f-\x9f\u2028\u2029]", regex=True)
        return v.notna() & ((v.str.len() < 1) | (v.str.len() > q.max_id_length) | forbidden)

    checks = [
        ("null_event_id", ev["event_id"].isna()),
        ("null_user_id", ev["user_id"].isna()),
        ("null_item_id", ev["item_id"].isna()),
        ("null_event_ts", ev["event_ts"].isna()),
        ("invalid_event_id", unstorable("event_id")),
        ("invalid_user_id", unstorable("user_id")),
        ("invalid_item_id", unstorable("item_id")),
        ("invalid_play_duration", pd_.isna() | (pd_ < 0) | np.isinf(pd_)),
        ("play_duration_over_max", pd_ > q.max_play_duration_s),
        ("event_ts_outside_day", (ev["_ts_us"] < day_start_us) | (ev["_ts_us"] >= day_end_us)),
    ]
    reasons = pd.Series([None] * len(ev), index=ev.index, dtype=object)
    for name, mask in checks:
        reasons[reasons.isna() & mask] = name
    # Duplicates: every copy of an event_id after the first *valid* one (valid copies first, then by event_ts,
    # item_id); invalid copies keep their own reason.
    ev["_invalid"] = reasons.notna()
    order = ev.sort_values(["_invalid", "event_ts", "item_id"], na_position="last", kind="stable")
    dup_idx = order[order["event_id"].notna() & order.duplicated("event_id", keep="first")].index
    reasons[reasons.isna() & ev.index.isin(dup_idx)] = "duplicate_event_id"
    checks.append(("duplicate_event_id", None))
    for name, _ in checks:
        stats[f"num_quarantined_{name}"] = int((reasons == name).sum())
    stats["num_quarantined_events"] = int(reasons.notna().sum())

    # One catalogue row per item id (rows without one are left out): the most complete one (NaN counts as missing),
    # then the smallest values in column order; an item whose rows disagree on moderation status is `conflicting`.
    items = items[items["item_id"].notna()]
    rest = [c for c in items.columns if c != "item_id"]
    ranked = items.assign(_nulls=items[rest].isna().sum(axis=1)).sort_values(
        ["_nulls", *rest], na_position="last", kind="stable"
    )
    statuses = items.groupby("item_id")["moderation_status"].nunique(dropna=False)
    cat = ranked.drop_duplicates("item_id").drop(columns="_nulls")
    cat.loc[cat["item_id"].map(statuses).to_numpy() > 1, "moderation_status"] = "conflicting"
    cat = cat.rename(columns={c: f"item_{c}" for c in items.columns if c != "item_id"})
    ev = ev[reasons.isna()].merge(cat, on="item_id", how="left")
    ev["item_age_days"] = (ev["event_ts"] - ev["item_created_at"]).dt.total_seconds() / 86400.0

    prev_items = stats["num_raw_items"]

    def record(name: str, df: pd.DataFrame):
        nonlocal prev_items
        n_items = df["item_id"].nunique()
        stats[f"num_events_post_filter_{name}"] = len(df)
        stats[f"num_items_post_filter_{name}"] = n_items
        stats[f"item_loss_percentage_{name}"] = (
            round(100.0 * (prev_items - n_items) / prev_items, 4) if prev_items else 0.0
        )
        prev_items = n_items

    record("quarantine", ev)
    ev = ev[ev["item_language"].isin(spec.language.allowed)]
    record("language", ev)
    ev = ev[ev["event_id"].isin(sampled_event_ids)]
    record("sample", ev)
    for f in spec.filters:
        if isinstance(f, InSetFilter):
            ev = ev[ev[f.column].isin(f.values)]
        elif isinstance(f, RangeFilter):
            col = ev[f.column].astype("float64")
            keep = col.notna() & ~np.isnan(col)
            if f.min is not None:
                keep &= (col >= f.min) if f.min_inclusive else (col > f.min)
            if f.max is not None:
                keep &= (col <= f.max) if f.max_inclusive else (col < f.max)
            ev = ev[keep]
        elif isinstance(f, MinItemEventsFilter):
            counts = ev.groupby("item_id")["event_id"].transform("size")
            ev = ev[counts >= f.min_events]
        record(f.name, ev)
    stats["num_events_post_filters"] = len(ev)
    stats["num_unique_items_post_filters"] = ev["item_id"].nunique()
    return stats, ev
