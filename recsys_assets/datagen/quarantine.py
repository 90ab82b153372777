"""Invalid raw input and the losses before the filter chain: the quarantine reasons, and the judgement of a day's
quarantine, language and sample stages against the limits in the datagen YAML.

Only the configured filters carry `max_item_loss_pct`; these limits cover what happens before them, so a day laid
out in the wrong time zone (almost every event `event_ts_outside_day`) or a broken sampler fails a blocking check
instead of becoming two events of training data. No Spark here: the check judges the stats the stage wrote.
"""

from __future__ import annotations

import math

# Binomial standard errors allowed on top of the sample's max deviation (a 1-in-15,000 false alarm).
SAMPLE_STANDARD_ERRORS = 4.0


def _pct(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 4) if whole else 0.0


def judge_input_losses(stats: dict, limits: dict) -> tuple[list[list], list[str]]:
    """(table rows [stage, what, count, of, %, limit, ok], breach messages) for a filtered_events day's stats."""
    rows, breaches = [], []
    raw = stats["num_raw_events"]
    quarantined = stats["num_quarantined_events"]

    def judge(stage: str, what: str, count: int, of: int, pct: float, limit: float, ok: bool):
        rows.append([stage, what, count, of, pct, limit, "ok" if ok else "BREACH"])
        if not ok:
            breaches.append(
                f"{stage} {what}: {count:,} of {of:,} events ({pct}% > {limit}%)"
                if stage == "quarantine"
                else f"{stage} {what}: {pct}% (limit {limit})"
            )

    pct = _pct(quarantined, raw)
    judge(
        "quarantine",
        "all reasons",
        quarantined,
        raw,
        pct,
        limits["max_quarantined_pct"],
        pct <= limits["max_quarantined_pct"],
    )
    for reason, limit in limits["max_quarantined_pct_per_reason"].items():
        n = stats.get(f"num_quarantined_{reason}", 0)
        pct = _pct(n, raw)
        if n or pct > limit:
            judge("quarantine", reason, n, raw, pct, limit, pct <= limit)

    valid = stats["num_events_post_filter_quarantine"]
    after_language = stats["num_events_post_filter_language"]
    pct = _pct(valid - after_language, valid)
    judge(
        "language",
        "event loss",
        valid - after_language,
        valid,
        pct,
        limits["max_language_event_loss_pct"],
        pct <= limits["max_language_event_loss_pct"],
    )
    item_loss = stats["item_loss_percentage_language"]
    judge(
        "language",
        "item loss",
        stats["num_items_post_filter_quarantine"] - stats["num_items_post_filter_language"],
        stats["num_items_post_filter_quarantine"],
        item_loss,
        limits["max_language_item_loss_pct"],
        item_loss <= limits["max_language_item_loss_pct"],
    )

    kept = stats["num_events_post_filter_sample"]
    p = limits["sample_fraction"]
    observed = kept / after_language if after_language else p
    noise_pp = SAMPLE_STANDARD_ERRORS * 100.0 * math.sqrt(p * (1 - p) / after_language) if after_language else 0.0
    allowed = round(limits["sample_max_deviation_pp"] + noise_pp, 4)
    deviation = round(100.0 * abs(observed - p), 4)
    rows.append(
        [
            "sample",
            f"kept {round(100 * observed, 4)}% (configured {round(100 * p, 4)}%)",
            kept,
            after_language,
            deviation,
            allowed,
            "ok" if deviation <= allowed else "BREACH",
        ]
    )
    if deviation > allowed:
        breaches.append(
            f"sample kept {kept:,} of {after_language:,} events = {round(100 * observed, 2)}%, "
            f"configured {round(100 * p, 2)}% (off by {deviation}pp > {allowed}pp)"
        )
    return rows, breaches
