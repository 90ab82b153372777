"""The raw inputs as external (source) assets: written by upstream, observed by the success-file sensor."""

from __future__ import annotations

from dagster import AssetKey, AssetSpec

from recsys_assets.core.partitions import daily_partitions
from recsys_assets.core.schemas import RAW_TABLES

RAW_DESCRIPTIONS = {
    "events": "Raw app events (plays, completes, likes, ...) for the day, Parquet under raw/events/dt=<day>/.",
    "items": "The day's item catalogue snapshot (language, moderation status, length, created_at, author, category).",
    "item_embeddings": "128-d content (BLIP-like) embeddings of catalogue items.",
    "users": "The day's user snapshot (language, region, signup time).",
}


def raw_asset_key(table: str) -> AssetKey:
    return AssetKey(["raw", table])


raw_specs = [
    AssetSpec(
        key=raw_asset_key(table),
        description=RAW_DESCRIPTIONS[table],
        group_name="raw",
        partitions_def=daily_partitions,
        kinds={"parquet"},
        metadata={"contract_columns": ", ".join(f"{f.name}: {f.type}" for f in schema)},
    )
    for table, schema in RAW_TABLES.items()
]
