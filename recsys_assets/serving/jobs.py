"""Serving jobs: the day's hand-off (export, register, promote, A/B config, feed, skew) and the online evaluation
that runs when the next day's logs land."""

from dagster import AssetSelection, define_asset_job

from recsys_assets.core.partitions import daily_partitions

serving_job = define_asset_job(
    "serving_job",
    # The serving group without online_evaluation, which waits for the next day's logs (its own job below).
    selection=AssetSelection.groups("serving") - AssetSelection.assets("online_evaluation"),
    partitions_def=daily_partitions,
    description="Model repository + registry, promotion (only when the blocking model checks passed), A/B serving "
    "config (validated by a blocking check), the Postgres feed, and the training/serving skew report.",
    tags={"recsys/stage": "serving"},
)

online_evaluation_job = define_asset_job(
    "online_evaluation_job",
    selection=AssetSelection.assets("online_evaluation"),
    partitions_def=daily_partitions,
    description="CTR and user hit rate of the day's served feed per A/B arm and model version, from the logs.",
    tags={"recsys/stage": "serving"},
)
