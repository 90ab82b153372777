"""The datagen job: every datagen asset of a day with its checks (the raw inputs are external, never run)."""

from dagster import AssetSelection, define_asset_job

from recsys_assets.core.partitions import daily_partitions

datagen_job = define_asset_job(
    "datagen_job",
    selection=AssetSelection.groups("datagen"),
    partitions_def=daily_partitions,
    description="Filter, join and report one day of raw events (with the datagen asset checks).",
    tags={"recsys/stage": "datagen"},
)
