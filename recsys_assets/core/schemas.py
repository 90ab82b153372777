"""The raw-input data contract's schemas, declared once (docs/data_contract.md).

pyarrow schemas are the source of truth (the synthetic generator and the importer write them, the boundary check
compares against them); Spark schemas are derived from them so the two can never drift. The derived datasets'
schemas are what their Spark stages write; each stage reports them in its stats and the asset shows them as
`dagster/column_schema`.
"""

from __future__ import annotations

import pyarrow as pa

EMBEDDING_DIM = 128

RAW_EVENTS = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("event_ts", pa.timestamp("us", tz="UTC")),
        ("feed_source", pa.string()),
        ("client_event", pa.string()),
        ("play_duration_s", pa.float64()),
        ("liked", pa.bool_()),
        ("shared", pa.bool_()),
        ("followed", pa.bool_()),
    ]
)

RAW_ITEMS = pa.schema(
    [
        ("item_id", pa.string()),
        ("language", pa.string()),
        ("moderation_status", pa.string()),
        ("video_length_s", pa.float64()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("author_id", pa.string()),
        ("category", pa.string()),
    ]
)

RAW_ITEM_EMBEDDINGS = pa.schema(
    [
        ("item_id", pa.string()),
        ("embedding", pa.list_(pa.float32())),
    ]
)

RAW_USERS = pa.schema(
    [
        ("user_id", pa.string()),
        ("language", pa.string()),
        ("region", pa.string()),
        ("signup_ts", pa.timestamp("us", tz="UTC")),
    ]
)

# name under raw/ -> schema. The names are also the Dagster source asset keys' last component.
RAW_TABLES: dict[str, pa.Schema] = {
    "events": RAW_EVENTS,
    "items": RAW_ITEMS,
    "item_embeddings": RAW_ITEM_EMBEDDINGS,
    "users": RAW_USERS,
}


def _arrow_type_to_spark(t: pa.DataType):
    from pyspark.sql import types as T

    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return T.StringType()
    if pa.types.is_float64(t):
        return T.DoubleType()
    if pa.types.is_float32(t):
        return T.FloatType()
    if pa.types.is_int64(t):
        return T.LongType()
    if pa.types.is_int32(t):
        return T.IntegerType()
    if pa.types.is_boolean(t):
        return T.BooleanType()
    if pa.types.is_timestamp(t):
        return T.TimestampType()
    if pa.types.is_list(t):
        return T.ArrayType(_arrow_type_to_spark(t.value_type))
    raise TypeError(f"no Spark mapping for arrow type {t}")


def spark_schema(schema: pa.Schema):
    """The Spark StructType equivalent of a pyarrow schema (all fields nullable: raw data may have nulls)."""
    from pyspark.sql import types as T

    return T.StructType([T.StructField(f.name, _arrow_type_to_spark(f.type), True) for f in schema])
