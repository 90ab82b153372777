"""training_events: filtered events joined with valid 128-d content embeddings and the latest user features,
nulls filled with configured constants and float features normalised with the day's statistics.

Output is two tables written in one commit: `events` (one row per event: event-level columns, user features) and
`items` (one row per final item: catalogue columns, item-level normalised features, embedding). The 512-byte
embedding and the catalogue columns stay out of the event rows, which keeps a production day's output and its
write small (sizes and times in docs/benchmarks.md); loaders look items up by item_id.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_assets.config.datagen import TrainingEventsSpec
from recsys_assets.core.days import US_PER_DAY
from recsys_assets.core.schemas import EMBEDDING_DIM
from recsys_assets.datagen.filter_chain import BROADCAST_ROW_LIMIT, ITEM_ATTRIBUTE_COLUMNS, first_row_per_key

EMBEDDING_REJECT_REASONS = ("null_item_id", "wrong_length", "non_finite_value", "duplicate_item_id")


def embedding_validity(embeddings: DataFrame) -> DataFrame:
    """Every embedding row with `reject_reason` (null if valid). An item keeps its first *valid* row: invalid rows
    rank after valid ones (a NaN row never displaces a good one), and among valid rows the smallest vector in
    lexicographic order comes first, a rule of the data rather than of how Spark packed the files; the other
    valid rows are rejected as duplicate_item_id, invalid ones with their own reason."""
    from pyspark.sql.window import Window

    bad_value = F.exists("embedding", lambda x: x.isNull() | F.isnan(x) | (F.abs(x) == float("inf")))
    invalid = (
        F.when(F.col("item_id").isNull(), "null_item_id")
        .when(F.col("embedding").isNull() | (F.size("embedding") != EMBEDDING_DIM), "wrong_length")
        .when(bad_value, "non_finite_value")
    )
    w = Window.partitionBy("item_id").orderBy(invalid.isNotNull().asc(), F.col("embedding").asc_nulls_last())
    duplicate = F.when(F.row_number().over(w) > 1, "duplicate_item_id")
    return embeddings.withColumn("reject_reason", F.coalesce(invalid, duplicate))


# training_events is a fact table (`events`) and a dimension table (`items`): the catalogue columns are constant per
# item within a day, so they are written once per item, not copied onto every event (the copies dominated the
# events write, docs/benchmarks.md). Readers widen events with them by item_id (`recsys_assets.ml.loader`).
ITEM_ATTRIBUTES = tuple(ITEM_ATTRIBUTE_COLUMNS)  # filtered_events' items table carries the same
ITEM_KEYS = ("item_id", *ITEM_ATTRIBUTES)
# The events output's columns, in order (the per-day *_norm columns of event-level features follow).
EVENT_COLUMNS = (
    "user_id",
    "item_id",
    "event_id",
    "event_ts",
    "feed_source",
    "client_event",
    "play_duration_s",
    "liked",
    "shared",
    "followed",
    "item_age_days",
    "user_language",
    "user_region",
    "user_tenure_days",
    "watch_ratio",
)


def user_features(users: DataFrame) -> DataFrame:
    """One row per user of the snapshot (`first_row_per_key`: the most complete row, then by value), renamed."""
    users = users.select("user_id", "language", "region", "signup_ts")
    return first_row_per_key(users, "user_id").select(
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
    # Filled in by the events write (`Dataset.observe`): call `finish_stats` after writing `events`.
    observation: object = None
    event_level_columns: tuple[str, ...] = ()

    def finish_stats(self) -> dict:
        """The null counts of the event-level columns, observed while `events` was written, merged into `stats`;
        raises if the written rows disagree with filtered_events' per-item event counts."""
        row = self.observation.get
        written = int(row["num_events"] or 0)
        if written != self.stats["num_events_post_embedding_join"]:
            raise ValueError(
                f"training_events wrote {written} events, but filtered_events' items table counts "
                f"{self.stats['num_events_post_embedding_join']} events for the same items: filtered_events' events "
                "and items tables disagree (rematerialize filtered_events for this day)"
            )
        self.stats.update({f"num_nulls_filled_{c}": int(row[f"nulls_{c}"] or 0) for c in self.event_level_columns})
        return self.stats

    def release(self) -> None:
        for df in self.cached:
            df.unpersist()


def count_users(events: DataFrame) -> int:
    """Distinct users of written training_events (read back: a dictionary-encoded column, no joins to redo)."""
    return events.select("user_id").distinct().count()


def _broadcast_if_small(df: DataFrame, rows: int) -> DataFrame:
    return F.broadcast(df) if rows <= BROADCAST_ROW_LIMIT else df


def build_training_events(
    filtered_events: DataFrame,
    filtered_items: DataFrame,
    embeddings: DataFrame,
    users: DataFrame,
    spec: TrainingEventsSpec,
    num_unique_items_post_filters: int,
) -> TrainingEventsResult:
    """Join, fill and normalise.

    Every item-level number comes from filtered_events' items table (one row per surviving item with its event
    count, max age and catalogue columns): the embedding join keeps or drops whole items, so the final items and
    their event counts are an item-sized join, with no aggregation of events. The events see two passes: a global
    aggregate of the few columns the day's normalisation moments need (no shuffle), then the write, which also
    observes the event-level null counts (`TrainingEventsResult.finish_stats`). Joins are broadcasts of item- and
    user-sized tables when they fit; nothing event-sized is cached."""
    from pyspark.sql import Observation

    checked = embedding_validity(embeddings).persist()
    valid_emb = checked.filter(F.col("reject_reason").isNull()).select("item_id", "embedding")
    reject_counts = {r["reject_reason"]: int(r["count"]) for r in checked.groupBy("reject_reason").count().collect()}
    reject_counts.pop(None, 0)
    final_items = filtered_items.join(valid_emb.select("item_id"), "item_id", "left_semi").persist()
    item_row = (
        final_items.agg(
            F.count(F.lit(1)).alias("num_items"),
            F.sum("num_events").alias("num_events"),
            *[
                F.sum(
                    F.when(
                        F.col(c).isNull()
                        | (F.isnan(c) if dict(filtered_items.dtypes)[c] == "double" else F.lit(False)),
                        F.col("num_events"),
                    ).otherwise(0)
                ).alias(f"nulls_{c}")
                for c in ITEM_ATTRIBUTES
            ],
        )
        .first()
        .asDict()
    )
    items_after = int(item_row["num_items"] or 0)
    user_rows = users.count()

    # The inner join with the final items drops the events of items without a valid embedding (whole items) and
    # brings the one item column an event-level feature needs (watch_ratio); it also feeds the moments of
    # item_video_length_s over events, then is dropped from the events output.
    joined = (
        filtered_events.select(*[c for c in filtered_events.columns if c not in ITEM_ATTRIBUTES])
        .join(
            _broadcast_if_small(final_items.select("item_id", "item_video_length_s"), items_after), "item_id", "inner"
        )
        .join(_broadcast_if_small(user_features(users), user_rows), "user_id", "left")
        .withColumn(
            "user_tenure_days",
            (F.unix_micros("event_ts") - F.unix_micros("user_signup_ts")) / F.lit(float(US_PER_DAY)),
        )
        .withColumn(
            "watch_ratio",
            F.when(F.col("item_video_length_s") > 0, F.col("play_duration_s") / F.col("item_video_length_s")),
        )
        .select(*EVENT_COLUMNS, "item_video_length_s")
    )

    def typed(df, t: str) -> list[str]:
        return [f.name for f in df.schema.fields if f.dataType.simpleString() == t]

    item_strings = [c for c in typed(final_items, "string") if c in ITEM_ATTRIBUTES]
    item_floats = [c for c in typed(final_items, "double") if c in ITEM_ATTRIBUTES]
    event_strings = [c for c in typed(joined, "string") if c not in ITEM_KEYS]
    event_floats = [c for c in typed(joined, "double") if c not in ITEM_KEYS]

    def feature(c: str, fill_nulls: bool = False):
        # One rule for the moments and the outputs: NaN is missing, like null (the outputs' fillna replaces both),
        # so a NaN that reaches here can never make the day's mean and every *_norm value NaN.
        col = F.col(c)
        if fill_nulls:
            col = F.when(col.isNull() | F.isnan(col), F.lit(spec.float_fill)).otherwise(col)
        return F.log1p(F.greatest(col, F.lit(0.0))) if c in spec.log_columns else col

    # The day's moments of the filled (and log1p'd) features over events (an item column counts once per event),
    # one global aggregate: each task folds its rows into one buffer per moment, so there is no shuffle, and
    # column pruning reads only what the features need.
    moment_row = (
        joined.agg(
            *[F.avg(feature(c, fill_nulls=True)).alias(f"mean_{c}") for c in spec.normalized_columns],
            *[F.stddev_pop(feature(c, fill_nulls=True)).alias(f"std_{c}") for c in spec.normalized_columns],
        )
        .first()
        .asDict()
    )
    normalization = {
        c: {
            "mean": float(moment_row[f"mean_{c}"] or 0.0),
            "std": float(moment_row[f"std_{c}"] or 0.0),
            "transform": "log1p_zscore" if c in spec.log_columns else "zscore",
        }
        for c in spec.normalized_columns
    }

    def normalized(df, columns):
        for c in columns:
            m = normalization[c]
            std = m["std"] if m["std"] > 0 else 1.0
            df = df.withColumn(f"{c}_norm", ((feature(c) - F.lit(m["mean"])) / F.lit(std)).cast("float"))
        return df

    # Null counts: item attributes from the items table (an item's events share its attribute), the rest observed
    # on the events as they are written.
    event_level = tuple(event_strings + event_floats)
    observation = Observation("training_events_nulls")

    def missing(c: str):
        return F.col(c).isNull() | F.isnan(c) if c in event_floats else F.col(c).isNull()

    observed = joined.drop("item_video_length_s").observe(
        observation,
        F.count(F.lit(1)).alias("num_events"),
        *[F.count(F.when(missing(c), 1)).alias(f"nulls_{c}") for c in event_level],
    )
    out = normalized(
        observed.fillna(spec.string_fill, subset=event_strings).fillna(spec.float_fill, subset=event_floats),
        [c for c in spec.normalized_columns if c not in ITEM_KEYS],
    )

    # The items output: the catalogue columns filled with the same constants, the item-level normalised features
    # (with the day's event-weighted moments) and the embedding.
    fill = {c: spec.string_fill for c in item_strings}
    fill.update({c: spec.float_fill for c in ("item_age_days", *item_floats)})
    items = normalized(
        final_items.select("item_id", "num_events", "item_age_days", *ITEM_ATTRIBUTES).fillna(fill),
        [c for c in spec.normalized_columns if c in ITEM_KEYS],
    ).join(valid_emb, "item_id", "inner")
    num_events = int(item_row["num_events"] or 0)
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
        **{f"num_nulls_filled_{c}": int(item_row[f"nulls_{c}"] or 0) for c in item_strings + item_floats},
    }
    return TrainingEventsResult(
        events=out,
        items=items,
        stats=stats,
        normalization=normalization,
        cached=(checked, final_items),
        observation=observation,
        event_level_columns=event_level,
    )
