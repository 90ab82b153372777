"""The datagen filter chain over Spark DataFrames, with every stage's event and item counts from one aggregation.

Each event gets `fail_stage`: the index of the first row-level stage it fails (quarantine, language, sample,
then the configured row filters), or `len(stages)` if it passes them all. One groupBy(item_id, fail_stage,
quarantine_reason) count gives the per-item counts by stage; item-level stages (min_item_events) and every stage's
surviving event and item counts are then derived from that item-sized table with column arithmetic and a single
one-row global aggregate. So the whole chain costs one aggregation of events, however many filters the config
lists, instead of one Spark job per filter.

Nothing event-sized is cached. The flags are a narrow map of the raw scan (broadcast joins only), so the stats
pass and the filtered write each re-read the raw Parquet instead of holding the day in executor memory: a
columnar cache of the enriched day cost more than recomputing it (benchmarks/datagen.py) and grew the JVM with
the day. Duplicates are the one thing a narrow map cannot see: see `deduplicate`, whose small cache (repeated ids
and invalid rows) also serves the quarantine output without another scan.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_assets.config.datagen import (
    ID_FORBIDDEN_CHARACTERS,
    QUARANTINE_REASONS,
    DatagenSpec,
    InSetFilter,
    MinItemEventsFilter,
    QuarantineSpec,
    RangeFilter,
)
from recsys_assets.core.days import US_PER_DAY

QUARANTINE_STAGE = "quarantine"

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


def _missing(df: DataFrame, c: str) -> Column:
    """Null, or NaN in a floating-point column: missing, as everywhere else in the platform."""
    if isinstance(df.schema[c].dataType, T.FloatType | T.DoubleType):
        return F.col(c).isNull() | F.isnan(c)
    return F.col(c).isNull()


def first_row_per_key(df: DataFrame, key: str) -> DataFrame:
    """One row per `key` chosen by a rule of the data, not of file layout: the most complete row (fewest missing
    columns: null, or NaN in a float column) first, ties broken by the other columns' values in schema order,
    ascending, nulls last. Rows that tie on every column are identical, so which one is kept makes no difference.
    The input contract documents this rule for catalogue and user snapshots that list an id twice; any cluster and
    any rerun keeps the same row."""
    from pyspark.sql.window import Window

    rest = [c for c in df.columns if c != key]
    nulls = reduce(lambda a, b: a + b, [_missing(df, c).cast("int") for c in rest], F.lit(0))
    w = Window.partitionBy(key).orderBy(nulls.asc(), *[F.col(c).asc_nulls_last() for c in rest])
    return df.withColumn("_rank", F.row_number().over(w)).filter(F.col("_rank") == 1).drop("_rank")


# The moderation status of an item whose catalogue rows disagree on it: no filter allows it (fails closed).
CONFLICTING_MODERATION = "conflicting"


def item_catalogue(items: DataFrame) -> DataFrame:
    """The day's catalogue with one row per item_id (`first_row_per_key`: a duplicated catalogue row can never
    multiply events) and its columns prefixed item_. Rows without an item_id are left out (counted by the caller).
    An item listed with different moderation statuses gets CONFLICTING_MODERATION, so a moderation filter drops it
    (counted as that filter's loss) instead of keeping whichever status sorts first. Item-sized: callers cache it."""
    from pyspark.sql.window import Window

    statuses = F.size(
        F.collect_set(F.coalesce("moderation_status", F.lit("\u0000null"))).over(Window.partitionBy("item_id"))
    )
    keyed = items.filter(F.col("item_id").isNotNull()).withColumn("_statuses", statuses)
    chosen = first_row_per_key(keyed, "item_id").withColumn(
        "moderation_status",
        F.when(F.col("_statuses") > 1, F.lit(CONFLICTING_MODERATION)).otherwise(F.col("moderation_status")),
    )
    return chosen.select("item_id", *[F.col(c).alias(f"item_{c}") for c in items.columns if c != "item_id"])


def enrich_events(events: DataFrame, catalogue: DataFrame, how: str = "left", broadcast: bool = True) -> DataFrame:
    """Events joined with `item_catalogue` rows and item age at event time. With the default left join, events
    whose item is missing from the catalogue keep null item_ columns and fail the filters that look at them
    (counted there); an inner join with a subset of the catalogue keeps only that subset's events. `broadcast`:
    ship the catalogue to every task (no shuffle of events); pass False for a catalogue too big for that."""
    joined = events.join(F.broadcast(catalogue) if broadcast else catalogue, on="item_id", how=how)
    age_days = (F.unix_micros("event_ts") - F.unix_micros("item_created_at")) / F.lit(float(US_PER_DAY))
    return joined.withColumn("item_age_days", age_days)


def _unstorable_id(c: str, max_length: int) -> Column:
    """An id outside the platform's id alphabet (docs/data_contract.md): empty, longer than `max_length` characters,
    or containing a control character (ID_FORBIDDEN_CHARACTERS: NUL, CR, LF, tab, the other C0/C1 controls, DEL, the
    Unicode line and paragraph separators), which log formats, CSV and the serving tables do not carry safely."""
    col = F.col(c)
    return (F.length(col) < 1) | (F.length(col) > max_length) | col.rlike(ID_FORBIDDEN_CHARACTERS)


def quarantine_reason(day_start_us: int, day_end_us: int, spec: QuarantineSpec | None = None) -> Column:
    """The first reason (QUARANTINE_REASONS order) an event is invalid input, or null. Duplicates are marked by
    `mark_duplicates`."""
    spec = spec or QuarantineSpec()
    ts = F.unix_micros("event_ts")
    duration = F.col("play_duration_s")
    return (
        F.when(F.col("event_id").isNull(), "null_event_id")
        .when(F.col("user_id").isNull(), "null_user_id")
        .when(F.col("item_id").isNull(), "null_item_id")
        .when(F.col("event_ts").isNull(), "null_event_ts")
        .when(_unstorable_id("event_id", spec.max_id_length), "invalid_event_id")
        .when(_unstorable_id("user_id", spec.max_id_length), "invalid_user_id")
        .when(_unstorable_id("item_id", spec.max_id_length), "invalid_item_id")
        .when(
            duration.isNull() | F.isnan(duration) | (duration < 0) | (F.abs(duration) == float("inf")),
            "invalid_play_duration",
        )
        .when(duration > F.lit(spec.max_play_duration_s), "play_duration_over_max")
        .when((ts < F.lit(day_start_us)) | (ts >= F.lit(day_end_us)), "event_ts_outside_day")
    )


# Physical-plan limit (rows) for broadcasting an item- or duplicate-sized table; above it the same join shuffles.
BROADCAST_ROW_LIMIT = 2_000_000
_ID_HASH = "_event_id_hash"


def mark_duplicates(events: DataFrame, invalid: Column | None = None) -> DataFrame:
    """Column `is_duplicate`: true for every copy of an event_id after the first, ordered by validity (`invalid`:
    a predicate on the raw columns; valid copies rank first, so a late or broken copy never displaces the valid
    one), then event_ts, item_id and every other column, so which copy is kept never depends on partitioning
    (copies that tie on every column are identical, and keeping any one of them is the same)."""
    from pyspark.sql.window import Window

    rest = [c for c in events.columns if c not in ("event_id", "event_ts", "item_id", _ID_HASH)]
    order = [F.col(c).asc_nulls_last() for c in ("event_ts", "item_id", *rest)]
    if invalid is not None:
        order.insert(0, F.coalesce(invalid, F.lit(False)).asc())
    w = Window.partitionBy("event_id").orderBy(*order)
    return events.withColumn("is_duplicate", F.col("event_id").isNotNull() & (F.row_number().over(w) > 1))


@contextmanager
def _session_conf(session, settings: dict[str, str]):
    """Set SQL properties for the enclosed queries only, restoring what was there."""
    before = {k: session.conf.get(k, None) for k in settings}
    for k, v in settings.items():
        session.conf.set(k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                session.conf.unset(k)
            else:
                session.conf.set(k, v)


@dataclass
class Deduplicated:
    events: DataFrame  # the input with `is_duplicate`; lazily defined
    duplicate_candidates: int  # rows routed through the window (ids whose hash occurs more than once)
    # Every row of a repeated id (with `is_duplicate`) plus the invalid rows (`deduplicate`'s `invalid`), read
    # from the cache; None when the whole day went through the window.
    cached_rows: DataFrame | None = None
    cached: tuple[DataFrame, ...] = ()


def deduplicate(
    events: DataFrame, broadcast_limit: int = BROADCAST_ROW_LIMIT, invalid: Column | None = None
) -> Deduplicated:
    """`mark_duplicates` without shuffling the day. One aggregation over a 64-bit hash of event_id (a single column
    read) finds the hashes that occur more than once; only those rows (every real duplicate, plus the odd hash
    collision, which the window then keeps) go through the window, and that small set is cached. Every other row is
    `is_duplicate = false` by a broadcast anti-join, a narrow map that later passes recompute from the scan. If the
    candidates are too many to broadcast, the whole day goes through the window instead (same result).

    `invalid`: a predicate on the raw columns ("invalid input"). Valid copies of an id rank before invalid ones
    (`mark_duplicates`), and the same scan caches the invalid rows next to the repeated ones, so a later pass that
    needs only those rows (the quarantine) reads no events at all."""
    hashed = events.withColumn(_ID_HASH, F.xxhash64("event_id"))
    # Almost every hash is unique, so a map-side partial count would build a day-sized hash map for nothing:
    # aggregate once after the shuffle (Spark 4's bypass; an older Spark ignores the unknown setting). The plan of
    # a persisted DataFrame is fixed when it is persisted, so the setting is scoped to building this one table.
    with _session_conf(events.sparkSession, {"spark.sql.execution.bypassPartialAggregation": "true"}):
        candidates = hashed.groupBy(_ID_HASH).agg(F.count(F.lit(1)).alias("n")).filter(F.col("n") > 1).persist()
        rows = int(candidates.agg(F.sum("n")).first()[0] or 0)
    if rows > broadcast_limit:
        candidates.unpersist()
        return Deduplicated(mark_duplicates(events, invalid), rows)
    keys = F.broadcast(candidates.select(_ID_HASH))
    repeated_flag = F.broadcast(candidates.select(_ID_HASH, F.lit(True).alias("_repeated")))
    keep = F.col("_repeated").isNotNull()
    if invalid is not None:
        keep = keep | F.coalesce(invalid, F.lit(False))
    small = hashed.join(repeated_flag, _ID_HASH, "left").filter(keep).persist()
    repeated = mark_duplicates(
        small.filter(F.col("_repeated").isNotNull()).drop(_ID_HASH, "_repeated"), invalid
    ).persist()
    others = (
        small.filter(F.col("_repeated").isNull()).drop(_ID_HASH, "_repeated").withColumn("is_duplicate", F.lit(False))
    )
    unique = hashed.join(keys, _ID_HASH, "left_anti").drop(_ID_HASH).withColumn("is_duplicate", F.lit(False))
    return Deduplicated(
        unique.unionByName(repeated),
        rows,
        cached_rows=others.unionByName(repeated),
        cached=(candidates, small, repeated),
    )


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


def with_quarantine_reason(
    deduped: DataFrame, day_start_us: int, day_end_us: int, spec: QuarantineSpec | None = None
) -> DataFrame:
    """Raw events (with `is_duplicate`) -> the same rows with `quarantine_reason` (null for valid input)."""
    reason = F.coalesce(
        quarantine_reason(day_start_us, day_end_us, spec), F.when(F.col("is_duplicate"), F.lit("duplicate_event_id"))
    )
    return deduped.withColumn("quarantine_reason", reason).drop("is_duplicate")


def row_predicates(spec: DatagenSpec) -> list[tuple[int, Column]]:
    """(stage index, keep-predicate) of every row-level stage, in chain order, over enriched events that carry
    `quarantine_reason`."""
    preds: list[tuple[int, Column]] = [
        (0, F.col("quarantine_reason").isNull()),
        (1, F.coalesce(F.col("item_language").isin(list(spec.language.allowed)), F.lit(False))),
        (2, sample_predicate(spec.sample.fraction, spec.sample.seed)),
    ]
    for i, f in enumerate(spec.filters, start=3):
        if not isinstance(f, MinItemEventsFilter):
            preds.append((i, filter_predicate(f)))
    return preds


def flag_events(enriched: DataFrame, spec: DatagenSpec) -> DataFrame:
    """Add `fail_stage` (first failing row stage index; len(stages) = passed all) to enriched events that carry
    `quarantine_reason`."""
    fail = F.lit(len(stages_of(spec)))
    for idx, pred in reversed(row_predicates(spec)):
        fail = F.when(~pred, F.lit(idx)).otherwise(fail)
    return enriched.withColumn("fail_stage", fail.cast("int"))


def passes_row_stages(spec: DatagenSpec) -> Column:
    """True where an event passes every row-level stage (`fail_stage == len(stages)`), as a conjunction: the
    optimizer pushes each conjunct on event columns alone (validity, sample, feed_source, ...) below the
    catalogue join and the duplicate anti-join, so only events that can survive are joined at all."""
    return reduce(lambda a, b: a & b, [pred for _, pred in row_predicates(spec)])


def per_item_stage_counts(flagged: DataFrame, spec: DatagenSpec) -> DataFrame:
    """One row per item_id (null included): c_<k> = events whose first failing row stage is k, c_pass, and
    q_<reason> quarantine counts; plus `events_after_<stage>`, `alive` (passes the whole chain) and
    `item_age_days` (the oldest age at which an event passing every row stage saw the item).

    The event-sized work is one count per (item, fail_stage, reason) key; the columns per item are then pivoted
    from that item-sized result, so the hash aggregation over events updates one buffer per row, not one
    conditional count per stage and reason."""
    stages = stages_of(spec)
    n = len(stages)
    keyed = flagged.groupBy("item_id", "fail_stage", "quarantine_reason").agg(
        F.count(F.lit(1)).alias("cnt"),
        F.max(F.when(F.col("fail_stage") == n, F.col("item_age_days"))).alias("max_age"),
    )
    aggs = [F.max("max_age").alias("item_age_days")]
    aggs += [F.sum(F.when(F.col("fail_stage") == k, F.col("cnt")).otherwise(0)).alias(f"c_{k}") for k in range(n + 1)]
    aggs += [
        F.sum(F.when(F.col("quarantine_reason") == r, F.col("cnt")).otherwise(0)).alias(f"q_{r}")
        for r in QUARANTINE_REASONS
    ]
    per_item = keyed.groupBy("item_id").agg(*aggs)

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
        aggs.append(
            F.count(F.when(F.col("item_id").isNotNull() & (c > 0), 1)).alias(f"num_items_post_filter_{st.name}")
        )
    row = per_item.agg(*aggs).collect()[0].asDict()
    stats: dict = {k: int(v or 0) for k, v in row.items()}
    stats["num_quarantined_events"] = sum(stats[f"num_quarantined_{r}"] for r in QUARANTINE_REASONS)
    prev_items = stats["num_raw_items"]
    for st in stages:
        items = stats[f"num_items_post_filter_{st.name}"]
        stats[f"item_loss_percentage_{st.name}"] = (
            round(100.0 * (prev_items - items) / prev_items, 4) if prev_items else 0.0
        )
        prev_items = items
    last = stages[-1].name
    stats["num_events_post_filters"] = stats[f"num_events_post_filter_{last}"]
    stats["num_unique_items_post_filters"] = stats[f"num_items_post_filter_{last}"]
    stats["stage_order"] = [st.name for st in stages]
    return stats


@dataclass
class FilterChainResult:
    filtered_events: DataFrame  # lazily defined; the caller writes it
    filtered_items: DataFrame  # one row per surviving item: catalogue attributes, event count, max age
    quarantined_events: DataFrame
    stats: dict
    per_item: DataFrame  # `per_item_stage_counts`, cached
    cached: tuple[DataFrame, ...] = ()

    def release(self) -> None:
        for df in self.cached:
            df.unpersist()


# filtered_events is a fact table and a dimension table. Events keep what varies per event; the catalogue columns
# (constant per item within a day: one catalogue row per item) are written once per item in `items`, not copied
# onto every event row: string dictionary encoding of six copies per event cost more of the events write than the
# items table's ~1% of the rows does (docs/benchmarks.md).
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
    "item_age_days",
]
ITEM_ATTRIBUTE_COLUMNS = [
    "item_language",
    "item_moderation_status",
    "item_video_length_s",
    "item_created_at",
    "item_author_id",
    "item_category",
]
FILTERED_ITEM_COLUMNS = ["item_id", "num_events", "item_age_days", *ITEM_ATTRIBUTE_COLUMNS]


def plan_filter_chain(
    events: DataFrame, items: DataFrame, spec: DatagenSpec, day_start_us: int, day_end_us: int
) -> FilterChainResult:
    """Quarantine, language, sample and the configured chain, without the stage statistics (`run_filter_chain`
    adds them). The duplicate scan runs eagerly; the per-item counts run when first used; the filtered output is
    a lazy re-read of the raw Parquet through the same narrow predicates, and the quarantine output reads only
    rows cached by the duplicate scan."""
    catalogue = item_catalogue(items).persist()
    counted = catalogue.agg(
        F.count(F.lit(1)), F.sum((F.col("item_moderation_status") == CONFLICTING_MODERATION).cast("long"))
    ).first()
    catalogue_items, conflicting = int(counted[0]), int(counted[1] or 0)
    small_catalogue = catalogue_items <= BROADCAST_ROW_LIMIT
    # item-sized; with the distinct count they show duplicated and id-less catalogue rows
    catalogue_rows, rows_with_id = items.agg(F.count(F.lit(1)), F.count("item_id")).first()
    q = spec.quarantine
    dedup = deduplicate(events, invalid=quarantine_reason(day_start_us, day_end_us, q).isNotNull())
    checked = with_quarantine_reason(dedup.events, day_start_us, day_end_us, q)
    flagged = flag_events(enrich_events(checked, catalogue, broadcast=small_catalogue), spec)
    per_item = per_item_stage_counts(flagged, spec).persist()
    last = stages_of(spec)[-1].name
    alive = per_item.filter("alive").select(
        "item_id", F.col(f"events_after_{last}").alias("num_events"), "item_age_days"
    )
    filtered_items = catalogue.join(alive, "item_id", "inner").select(*FILTERED_ITEM_COLUMNS)
    # The write pass joins only the surviving items' catalogue rows (inner): events of every other item drop out at
    # the join, and the event-only predicates run before it (`passes_row_stages`).
    surviving = catalogue.join(alive.select("item_id"), "item_id", "left_semi")
    filtered = (
        enrich_events(checked, surviving, how="inner", broadcast=small_catalogue)
        .filter(passes_row_stages(spec))
        .select(*FILTERED_EVENT_COLUMNS)
    )
    # Quarantine depends on the raw columns only: no catalogue join, and (unless the day had too many repeated
    # ids to cache) no scan either.
    source = dedup.cached_rows if dedup.cached_rows is not None else dedup.events
    quarantined = (
        with_quarantine_reason(source, day_start_us, day_end_us, q)
        .filter(F.col("quarantine_reason").isNotNull())
        .select(*events.columns, "quarantine_reason")
    )
    stats = {
        "num_duplicate_candidates": dedup.duplicate_candidates,
        "num_catalogue_rows": int(catalogue_rows),
        "num_catalogue_rows_without_item_id": int(catalogue_rows - rows_with_id),
        "num_duplicate_catalogue_rows": int(rows_with_id - catalogue_items),
        "num_items_conflicting_moderation": conflicting,
    }
    return FilterChainResult(
        filtered, filtered_items, quarantined, stats, per_item, cached=(catalogue, *dedup.cached, per_item)
    )


def run_filter_chain(
    events: DataFrame, items: DataFrame, spec: DatagenSpec, day_start_us: int, day_end_us: int
) -> FilterChainResult:
    """`plan_filter_chain` plus every stage's event and item counts (one tiny job over the per-item table, which
    also materializes it)."""
    result = plan_filter_chain(events, items, spec, day_start_us, day_end_us)
    result.stats.update(stage_stats(result.per_item, spec))
    return result
