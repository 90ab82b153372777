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


def build_training_events(
    filtered_events: DataFrame,
    embeddings: DataFrame,
    users: DataFrame,
    spec: TrainingEventsSpec,
    num_unique_items_post_filters: int,
) -> TrainingEventsResult:
    """Join, fill and normalise. Stats (and normalisation moments) come from one aggregation over the joined
    events, which also fills the cache the writes then read."""
    checked = embedding_validity(embeddings).persist()
    valid_emb = checked.filter(F.col("reject_reason").isNull()).select("item_id", "embedding")

    joined = (
        filtered_events.join(valid_emb.select("item_id"), "item_id", "left_semi")
        .join(user_features(users), "user_id", "left")
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
    # Cache the joined rows once: the one aggregation below (null counts, join stats, normalisation moments) and
    # the writes of events and items all read this cache instead of redoing the joins.
    joined = joined.persist()
    string_cols = [f.name for f in joined.schema.fields if f.dataType.simpleString() == "string"]
    float_cols = [f.name for f in joined.schema.fields if f.dataType.simpleString() == "double"]
    null_counts = [F.count(F.when(F.col(c).isNull(), 1)).alias(f"nulls_{c}") for c in string_cols + float_cols]
    filled = joined.fillna(spec.string_fill, subset=string_cols).fillna(spec.float_fill, subset=float_cols)

    def feature(c: str, fill_nulls: bool = False):
        col = F.coalesce(F.col(c), F.lit(spec.float_fill)) if fill_nulls else F.col(c)
        return F.log1p(F.greatest(col, F.lit(0.0))) if c in spec.log_columns else col

    # Moments of the filled values, computed on `joined` (fill applied in the expression) so the null counts
    # and moments come from the same single pass.
    moments = []
    for c in spec.normalized_columns:
        moments += [
            F.avg(feature(c, fill_nulls=True)).alias(f"mean_{c}"),
            F.stddev_pop(feature(c, fill_nulls=True)).alias(f"std_{c}"),
        ]
    row = joined.agg(
        *null_counts,
        F.count(F.lit(1)).alias("num_events_post_embedding_join"),
        F.countDistinct("item_id").alias("num_items_post_embed_join"),
        F.countDistinct("user_id").alias("num_users"),
        *moments,
    ).collect()[0].asDict()
    normalization = {
        c: {
            "mean": float(row[f"mean_{c}"] or 0.0),
            "std": float(row[f"std_{c}"] or 0.0),
            "transform": "log1p_zscore" if c in spec.log_columns else "zscore",
        }
        for c in spec.normalized_columns
    }
    out = filled
    for c, m in normalization.items():
        std = m["std"] if m["std"] > 0 else 1.0
        out = out.withColumn(f"{c}_norm", ((feature(c) - F.lit(m["mean"])) / F.lit(std)).cast("float"))

    items = (
        out.groupBy("item_id")
        .agg(
            F.count(F.lit(1)).alias("num_events"),
            F.max("item_age_days").alias("item_age_days"),
            F.first("item_language").alias("item_language"),
            F.first("item_category").alias("item_category"),
            F.first("item_author_id").alias("item_author_id"),
            F.first("item_video_length_s").alias("item_video_length_s"),
            F.first("item_created_at").alias("item_created_at"),
        )
        .join(valid_emb, "item_id", "inner")
    )
    reject_counts = {
        r["reject_reason"]: int(r["count"])
        for r in checked.filter(F.col("reject_reason").isNotNull()).groupBy("reject_reason").count().collect()
    }
    items_after = int(row["num_items_post_embed_join"])
    stats = {
        "num_items_post_embed_join": items_after,
        "item_loss_post_embedding_join": round(
            100.0 * (num_unique_items_post_filters - items_after) / num_unique_items_post_filters, 4
        )
        if num_unique_items_post_filters
        else 0.0,
        "num_events_post_embedding_join": int(row["num_events_post_embedding_join"]),
        "num_final_rows": int(row["num_events_post_embedding_join"]),
        "num_users": int(row["num_users"]),
        "num_embeddings_rejected": sum(reject_counts.values()),
        **{f"num_embeddings_rejected_{r}": reject_counts.get(r, 0) for r in EMBEDDING_REJECT_REASONS},
        **{f"num_nulls_filled_{c}": int(row[f"nulls_{c}"]) for c in string_cols + float_cols},
    }
    return TrainingEventsResult(events=out, items=items, stats=stats, normalization=normalization, cached=(checked, joined))
