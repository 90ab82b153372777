"""training_events: filtered events joined with valid 128-d content embeddings and the latest user features,
nulls filled with configured constants and float features normalised with the day's statistics.

Output is two tables written in one commit: `events` (one row per event, no embedding) and `items` (one row per
final item, with its embedding and attributes). Keeping the 512-byte embedding out of the event rows keeps a
production day (~380M events) at tens of GB instead of ~190 GB; loaders look embeddings up by item_id.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_assets.schemas import EMBEDDING_DIM

US_PER_DAY = 86_400_000_000

EMBEDDING_REJECT_REASONS = ("null_item_id", "wrong_length", "non_finite_value", "duplicate_item_id")


@dataclass(frozen=True)
class TrainingEventsSpec:
    """What the join normalises and fills. Column names refer to the training_events output."""

    normalized_columns: tuple[str, ...] = (
        "play_duration_s",
        "item_video_length_s",
        "item_age_days",
        "user_tenure_days",
        "watch_ratio",
    )
    # log1p before standardising: durations and ages are heavy-tailed.
    log_columns: tuple[str, ...] = ("play_duration_s", "item_video_length_s", "user_tenure_days")
    string_fill: str = "unknown"
    float_fill: float = 0.0


def embedding_validity(embeddings: DataFrame) -> DataFrame:
    """Every embedding row with `reject_reason` (null if valid). Duplicates after the first are rejected."""
    from pyspark.sql.window import Window

    w = Window.partitionBy("item_id").orderBy(F.monotonically_increasing_id())
    bad_value = F.exists("embedding", lambda x: x.isNull() | F.isnan(x) | (F.abs(x) == float("inf")))
    reason = (
        F.when(F.col("item_id").isNull(), "null_item_id")
        .when(F.col("embedding").isNull() | (F.size("embedding") != EMBEDDING_DIM), "wrong_length")
        .when(bad_value, "non_finite_value")
        .when(F.row_number().over(w) > 1, "duplicate_item_id")
    )
    return embeddings.withColumn("reject_reason", reason)


# Catalogue attributes carried to the items output (constant per item within a day's events).
ITEM_ATTRIBUTES = ("item_language", "item_category", "item_author_id", "item_video_length_s", "item_created_at")
# The per-item grouping keys: every catalogue column of filtered_events (item_age_days is per event).
ITEM_KEYS = ("item_id", *ITEM_ATTRIBUTES, "item_moderation_status")


def user_features(users: DataFrame) -> DataFrame:
    return users.dropDuplicates(["user_id"]).select(
        "user_id",
        F.col("language").alias("user_language"),
        F.col("region").alias("user_region"),
        F.col("signup_ts").alias("user_signup_ts"),
    )


@dataclass
class TrainingEventsResult:
    events: DataFrame
    items: DataFrame
    stats: dict
    normalization: dict[str, dict[str, float]]
    cached: tuple[DataFrame, ...] = ()

    def release(self) -> None:
        for df in self.cached:
            df.unpersist()


def count_users(events: DataFrame) -> int:
    """Distinct users of written training_events (read back: a dictionary-encoded column, no joins to redo)."""
    return events.select("user_id").distinct().count()


def _broadcast_if_small(df: DataFrame, rows: int) -> DataFrame:
    from recsys_assets.datagen.filter_chain import BROADCAST_ROW_LIMIT

    return F.broadcast(df) if rows <= BROADCAST_ROW_LIMIT else df


def pooled_moments(per_item: DataFrame, columns: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """Day-level (mean, population std) of each column from per-item `n`, `mean_<c>` and `var_<c>` (population),
    combined exactly (Chan et al.): M2 = sum(var_i * n_i) + sum(n_i * (mean_i - mean)^2). Two item-sized jobs."""
    total = F.sum("n")
    means = per_item.agg(
        *[(F.sum(F.col("n") * F.col(f"mean_{c}")) / total).alias(c) for c in columns]
    ).first().asDict()
    m2 = per_item.agg(
        *[
            (
                F.sum(F.col("n") * F.col(f"var_{c}") + F.col("n") * (F.col(f"mean_{c}") - F.lit(means[c] or 0.0)) ** 2)
                / total
            ).alias(c)
            for c in columns
        ]
    ).first().asDict()
    return {c: (float(means[c] or 0.0), float(max(m2[c] or 0.0, 0.0)) ** 0.5) for c in columns}


def build_training_events(
    filtered_events: DataFrame,
    embeddings: DataFrame,
    users: DataFrame,
    spec: TrainingEventsSpec,
    num_unique_items_post_filters: int,
) -> TrainingEventsResult:
    """Join, fill and normalise.

    Nothing event-sized is cached: the joins are broadcasts of item- and user-sized tables (when they fit), so the
    joined events are a narrow map of the filtered_events scan. One groupBy(item_id) pass over the few columns it
    needs gives the items output and the normalisation moments (pooled from per-item moments); the events write
    re-reads the scan through the same map. Distinct users are counted on the written events (`count_users`):
    one column of our own output, no joins."""

    checked = embedding_validity(embeddings).persist()
    valid_emb = checked.filter(F.col("reject_reason").isNull()).select("item_id", "embedding")
    reject_counts = {
        r["reject_reason"]: int(r["count"]) for r in checked.groupBy("reject_reason").count().collect()
    }
    valid_items = reject_counts.pop(None, 0)
    user_rows = users.count()

    joined = (
        filtered_events.join(_broadcast_if_small(valid_emb.select("item_id"), valid_items), "item_id", "left_semi")
        .join(_broadcast_if_small(user_features(users), user_rows), "user_id", "left")
        .withColumn(
            "user_tenure_days",
            (F.unix_micros("event_ts") - F.unix_micros("user_signup_ts")) / F.lit(float(US_PER_DAY)),
        )
        .withColumn(
            "watch_ratio",
            F.when(F.col("item_video_length_s") > 0, F.col("play_duration_s") / F.col("item_video_length_s")),
        )
        .drop("user_signup_ts")
    )
    string_cols = [f.name for f in joined.schema.fields if f.dataType.simpleString() == "string"]
    float_cols = [f.name for f in joined.schema.fields if f.dataType.simpleString() == "double"]

    def feature(c: str, fill_nulls: bool = False):
        col = F.coalesce(F.col(c), F.lit(spec.float_fill)) if fill_nulls else F.col(c)
        return F.log1p(F.greatest(col, F.lit(0.0))) if c in spec.log_columns else col

    # Per item: its event count, the items output's attributes and the moments of the filled features; item-sized
    # and cached, so every day-level number below is a tiny job over it. The catalogue attributes are grouping keys
    # rather than first() aggregates: they are constant per item (filtered_events joined one catalogue row per
    # item), and string aggregation buffers would force a sort-based aggregation of every event.
    # Null counts: per event for the event-level columns; an item attribute's nulls are the events of the items
    # whose (constant) attribute is null, summed from this table.
    event_level = [c for c in string_cols + float_cols if c not in ITEM_KEYS]
    per_item = (
        joined.groupBy(*ITEM_KEYS)
        .agg(
            F.count(F.lit(1)).alias("n"),
            *[F.count(F.when(F.col(c).isNull(), 1)).alias(f"nulls_{c}") for c in event_level],
            F.max("item_age_days").alias("item_age_days"),
            *[F.avg(feature(c, fill_nulls=True)).alias(f"mean_{c}") for c in spec.normalized_columns],
            *[F.var_pop(feature(c, fill_nulls=True)).alias(f"var_{c}") for c in spec.normalized_columns],
        )
        .persist()
    )
    row = per_item.agg(
        F.count(F.lit(1)).alias("num_items"),
        F.countDistinct("item_id").alias("distinct_items"),
        F.sum("n").alias("num_events"),
        *[F.sum(f"nulls_{c}").alias(f"nulls_{c}") for c in event_level],
        *[F.sum(F.when(F.col(c).isNull(), F.col("n")).otherwise(0)).alias(f"nulls_{c}")
          for c in string_cols + float_cols if c in ITEM_KEYS],
    ).first().asDict()
    if row["num_items"] != row["distinct_items"]:
        clash = per_item.groupBy("item_id").count().filter(F.col("count") > 1).first()["item_id"]
        raise ValueError(
            f"filtered_events: item {clash!r} has more than one value of {list(ITEM_KEYS[1:])} within the day "
            "(each item's catalogue columns must be constant across its events)"
        )
    moments = pooled_moments(per_item, spec.normalized_columns)
    normalization = {
        c: {
            "mean": moments[c][0],
            "std": moments[c][1],
            "transform": "log1p_zscore" if c in spec.log_columns else "zscore",
        }
        for c in spec.normalized_columns
    }
    out = joined.fillna(spec.string_fill, subset=string_cols).fillna(spec.float_fill, subset=float_cols)
    for c, m in normalization.items():
        std = m["std"] if m["std"] > 0 else 1.0
        out = out.withColumn(f"{c}_norm", ((feature(c) - F.lit(m["mean"])) / F.lit(std)).cast("float"))

    # The items output: the per-item attributes as filled in the events (the catalogue columns' fill applies to
    # both), with the embedding.
    fill = {c: spec.string_fill for c in ITEM_ATTRIBUTES if c in string_cols}
    fill.update({c: spec.float_fill for c in ("item_age_days", *ITEM_ATTRIBUTES) if c in float_cols})
    items = (
        per_item.select(F.col("n").alias("num_events"), "item_id", "item_age_days", *ITEM_ATTRIBUTES)
        .fillna(fill)
        .join(valid_emb, "item_id", "inner")
        .select("item_id", "num_events", "item_age_days", *ITEM_ATTRIBUTES, "embedding")
    )
    items_after = int(row["num_items"] or 0)
    num_events = int(row["num_events"] or 0)
    stats = {
        "num_items_post_embed_join": items_after,
        "item_loss_post_embedding_join": round(
            100.0 * (num_unique_items_post_filters - items_after) / num_unique_items_post_filters, 4
        )
        if num_unique_items_post_filters
        else 0.0,
        "num_events_post_embedding_join": num_events,
        "num_final_rows": num_events,
        "num_embeddings_rejected": sum(reject_counts.values()),
        **{f"num_embeddings_rejected_{r}": reject_counts.get(r, 0) for r in EMBEDDING_REJECT_REASONS},
        **{f"num_nulls_filled_{c}": int(row[f"nulls_{c}"] or 0) for c in string_cols + float_cols},
    }
    return TrainingEventsResult(events=out, items=items, stats=stats, normalization=normalization, cached=(checked, per_item))
