"""The datagen filter chain over Spark DataFrames, with every stage's event and item counts from one aggregation.

Each event gets `fail_stage`: the index of the first row-level stage it fails (quarantine, language, sample,
then the configured row filters), or `len(stages)` if it passes them all. One groupBy(item_id) aggregation
counts events per item by fail_stage; item-level stages (min_item_events) and every stage's surviving event and
item counts are then derived from that per-item table with column arithmetic and a single one-row global
aggregate. So the whole chain costs one shuffle of events, however many filters the config lists, instead of
one Spark job per filter.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recsys_assets.datagen.config import (
    DatagenSpec,
    InSetFilter,
    MinItemEventsFilter,
    RangeFilter,
)

QUARANTINE_STAGE = "quarantine"
# Reasons a raw event is invalid input (counted and written to quarantine, never silently dropped).
QUARANTINE_REASONS = (
    "null_event_id",
    "null_user_id",
    "null_item_id",
    "null_event_ts",
    "invalid_play_duration",
    "event_ts_outside_day",
    "duplicate_event_id",
)
US_PER_DAY = 86_400_000_000
SAMPLE_BUCKETS = 1_000_000


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str  # "row" or "item"
    min_events: int = 0


def stages_of(spec: DatagenSpec) -> list[Stage]:
    out = [Stage(QUARANTINE_STAGE, "row"), Stage("language", "row"), Stage("sample", "row")]
    for f in spec.filters:
        if isinstance(f, MinItemEventsFilter):
            out.append(Stage(f.name, "item", f.min_events))
        else:
            out.append(Stage(f.name, "row"))
    return out


def enrich_events(events: DataFrame, items: DataFrame) -> DataFrame:
    """Events left-joined with the day's catalogue (columns prefixed item_) and item age at event time.

    The catalogue is item-sized and deduplicated by item_id first so a duplicated catalogue row can never
    multiply events. Events whose item is missing from the catalogue keep null item_ columns and fail the
    filters that look at them (counted there).
    """
    catalogue = items.dropDuplicates(["item_id"]).select(
        "item_id", *[F.col(c).alias(f"item_{c}") for c in items.columns if c != "item_id"]
    )
    joined = events.join(catalogue, on="item_id", how="left")
    age_days = (F.unix_micros("event_ts") - F.unix_micros("item_created_at")) / F.lit(float(US_PER_DAY))
    return joined.withColumn("item_age_days", age_days)


def quarantine_reason(day_start_us: int, day_end_us: int) -> Column:
    """The first reason an event is invalid input, or null. Duplicates are marked by `mark_duplicates`."""
    ts = F.unix_micros("event_ts")
    return (
        F.when(F.col("event_id").isNull(), "null_event_id")
        .when(F.col("user_id").isNull(), "null_user_id")
        .when(F.col("item_id").isNull(), "null_item_id")
        .when(F.col("event_ts").isNull(), "null_event_ts")
        .when(
            F.col("play_duration_s").isNull() | F.isnan("play_duration_s") | (F.col("play_duration_s") < 0),
            "invalid_play_duration",
        )
        .when((ts < F.lit(day_start_us)) | (ts >= F.lit(day_end_us)), "event_ts_outside_day")
    )


def mark_duplicates(events: DataFrame) -> DataFrame:
    """Column `is_duplicate`: true for every copy of an event_id after the first (by event_ts, then item)."""
    from pyspark.sql.window import Window

    w = Window.partitionBy("event_id").orderBy(F.col("event_ts").asc_nulls_last(), F.col("item_id").asc_nulls_last())
    return events.withColumn("is_duplicate", F.col("event_id").isNotNull() & (F.row_number().over(w) > 1))


def filter_predicate(f) -> Column:
    """The keep-predicate of one configured row filter. Nulls (and NaN for ranges) are failures."""
    col = F.col(f.column)
    if isinstance(f, InSetFilter):
        pred = col.isin(list(f.values))
    elif isinstance(f, RangeFilter):
        parts = [col.isNotNull(), ~F.isnan(col.cast("double"))]
        if f.min is not None:
            parts.append(col >= f.min if f.min_inclusive else col > f.min)
        if f.max is not None:
            parts.append(col <= f.max if f.max_inclusive else col < f.max)
        pred = reduce(lambda a, b: a & b, parts)
    else:  # pragma: no cover - config validation admits only the kinds above
        raise TypeError(f"not a row filter: {f!r}")
    return F.coalesce(pred, F.lit(False))


def sample_predicate(fraction: float, seed: int) -> Column:
    """Deterministic sample by hash of event_id: the same rows are kept on any cluster and partitioning."""
    bucket = F.pmod(F.xxhash64(F.lit(seed), F.col("event_id")), F.lit(SAMPLE_BUCKETS))
    return bucket < F.lit(int(round(fraction * SAMPLE_BUCKETS)))


def flag_events(enriched: DataFrame, spec: DatagenSpec, day_start_us: int, day_end_us: int) -> DataFrame:
    """Add `quarantine_reason` and `fail_stage` (first failing row stage index; len(stages) = passed all)."""
    stages = stages_of(spec)
    marked = mark_duplicates(enriched)
    reason = F.coalesce(
        quarantine_reason(day_start_us, day_end_us), F.when(F.col("is_duplicate"), F.lit("duplicate_event_id"))
    )
    flagged = marked.withColumn("quarantine_reason", reason).drop("is_duplicate")
    row_preds: list[tuple[int, Column]] = [
        (0, F.col("quarantine_reason").isNull()),
        (1, F.coalesce(F.col("item_language").isin(list(spec.language.allowed)), F.lit(False))),
        (2, sample_predicate(spec.sample.fraction, spec.sample.seed)),
    ]
    for i, f in enumerate(spec.filters, start=3):
        if not isinstance(f, MinItemEventsFilter):
            row_preds.append((i, filter_predicate(f)))
    fail = F.lit(len(stages))
    for idx, pred in reversed(row_preds):
        fail = F.when(~pred, F.lit(idx)).otherwise(fail)
    return flagged.withColumn("fail_stage", fail.cast("int"))


def per_item_stage_counts(flagged: DataFrame, spec: DatagenSpec) -> DataFrame:
    """One row per item_id (null included): c_<k> = events whose first failing row stage is k, c_pass, and
    q_<reason> quarantine counts; plus `events_after_<stage>` and `alive` (passes the whole chain)."""
    stages = stages_of(spec)
    n = len(stages)
    aggs = [F.count(F.when(F.col("fail_stage") == k, 1)).alias(f"c_{k}") for k in range(n + 1)]
    aggs += [F.count(F.when(F.col("quarantine_reason") == r, 1)).alias(f"q_{r}") for r in QUARANTINE_REASONS]
    per_item = flagged.groupBy("item_id").agg(*aggs)

    # Walk the stages in order: events surviving stage j at row level are those failing later than j (or never);
    # an item stage keeps the item only if enough of its events survived everything before it.
    alive: Column = F.lit(True)
    for j, st in enumerate(stages):
        row_survivors = reduce(lambda a, b: a + b, [F.col(f"c_{k}") for k in range(j + 1, n + 1)])
        if st.kind == "item":
            prev_events = F.col(f"events_after_{stages[j - 1].name}") if j > 0 else row_survivors
            alive = alive & (prev_events >= F.lit(st.min_events))
        after = F.when(alive, row_survivors).otherwise(F.lit(0)).cast("long")
        per_item = per_item.withColumn(f"events_after_{st.name}", after)
    return per_item.withColumn("alive", alive & (F.col(f"c_{n}") > 0))


def stage_stats(per_item: DataFrame, spec: DatagenSpec) -> dict:
    """The monitoring dict's filter section (production's keys) from the per-item table: one tiny Spark job."""
    stages = stages_of(spec)
    n = len(stages)
    raw_events = reduce(lambda a, b: a + b, [F.col(f"c_{k}") for k in range(n + 1)])
    aggs = [
        F.sum(raw_events).alias("num_raw_events"),
        F.count(F.when(F.col("item_id").isNotNull() & (raw_events > 0), 1)).alias("num_raw_items"),
    ]
    aggs += [F.sum(f"q_{r}").alias(f"num_quarantined_{r}") for r in QUARANTINE_REASONS]
    for st in stages:
        c = F.col(f"events_after_{st.name}")
        aggs.append(F.sum(c).alias(f"num_events_post_filter_{st.name}"))
        aggs.append(F.count(F.when(F.col("item_id").isNotNull() & (c > 0), 1)).alias(f"num_items_post_filter_{st.name}"))
    row = per_item.agg(*aggs).collect()[0].asDict()
    stats: dict = {k: int(v or 0) for k, v in row.items()}
    stats["num_quarantined_events"] = sum(stats[f"num_quarantined_{r}"] for r in QUARANTINE_REASONS)
    prev_items = stats["num_raw_items"]
    for st in stages:
        items = stats[f"num_items_post_filter_{st.name}"]
        stats[f"item_loss_percentage_{st.name}"] = round(100.0 * (prev_items - items) / prev_items, 4) if prev_items else 0.0
        prev_items = items
    last = stages[-1].name
    stats["num_events_post_filters"] = stats[f"num_events_post_filter_{last}"]
    stats["num_unique_items_post_filters"] = stats[f"num_items_post_filter_{last}"]
    stats["stage_order"] = [st.name for st in stages]
    return stats


@dataclass
class FilterChainResult:
    filtered_events: DataFrame  # lazily defined; the caller writes it
    quarantined_events: DataFrame
    stats: dict
    cached: tuple[DataFrame, ...] = ()

    def release(self) -> None:
        for df in self.cached:
            df.unpersist()


FILTERED_EVENT_COLUMNS = [
    "event_id",
    "user_id",
    "item_id",
    "event_ts",
    "feed_source",
    "client_event",
    "play_duration_s",
    "liked",
    "shared",
    "followed",
    "item_language",
    "item_moderation_status",
    "item_video_length_s",
    "item_created_at",
    "item_author_id",
    "item_category",
    "item_age_days",
]


def run_filter_chain(
    events: DataFrame, items: DataFrame, spec: DatagenSpec, day_start_us: int, day_end_us: int
) -> FilterChainResult:
    """Apply quarantine, language, sample and the configured chain. Stats are computed eagerly (one scan of
    the input, which also fills the cache); the filtered and quarantined outputs read the cached flags."""
    flagged = flag_events(enrich_events(events, items), spec, day_start_us, day_end_us).persist()
    per_item = per_item_stage_counts(flagged, spec).persist()
    stats = stage_stats(per_item, spec)
    n = len(stages_of(spec))
    survivors = per_item.filter("alive").select("item_id")
    filtered = (
        flagged.filter(F.col("fail_stage") == n)
        .join(F.broadcast(survivors) if stats["num_unique_items_post_filters"] < 2_000_000 else survivors, "item_id", "left_semi")
        .select(*FILTERED_EVENT_COLUMNS)
    )
    quarantined = flagged.filter(F.col("fail_stage") == 0).select(*events.columns, "quarantine_reason")
    return FilterChainResult(filtered, quarantined, stats, cached=(flagged, per_item))
