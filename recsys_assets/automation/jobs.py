"""Jobs over the asset graph."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

from recsys_assets.partitions import daily_partitions

# Datagen assets with their checks; the raw inputs are external and never materialized by a run.
datagen_job = define_asset_job(
    "datagen_job",
    selection=AssetSelection.groups("datagen"),
    partitions_def=daily_partitions,
    description="Filter, join and report one day of raw events (with the datagen asset checks).",
    tags={"recsys/stage": "datagen"},
)

# Vocab, both models, both indexes and the offline evaluation for one day (with the model/index checks). The
# "training" pool (see dagster.yaml / README) keeps two trainings off one GPU.
training_job = define_asset_job(
    "training_job",
    selection=AssetSelection.groups("training", "indexes", "evaluation"),
    partitions_def=daily_partitions,
    description="Train the ranker and two-tower models on the window before the day, validate on the day, build "
    "the retrieval and cold-start indexes and the offline evaluation report.",
    # A crashed or killed run worker is relaunched from the failed step; training resumes from its checkpoint.
    tags={"recsys/stage": "training", "dagster/max_retries": "2", "dagster/retry_strategy": "FROM_FAILURE"},
)

retention_job = define_asset_job(
    "retention_job",
    selection=AssetSelection.groups("maintenance"),
    description="Delete expired partitions and abandoned staging data (config dry_run: true to only report).",
    tags={"recsys/stage": "maintenance"},
)

# Export + register + promote the day's release, publish the A/B config and the feed, and measure feature skew.
serving_job = define_asset_job(
    "serving_job",
    # The serving group without online_evaluation, which waits for the next day's logs (its own job below).
    selection=AssetSelection.groups("serving") - AssetSelection.assets("online_evaluation"),
    partitions_def=daily_partitions,
    description="Model repository + registry, promotion (only when the blocking model checks passed), A/B serving "
    "config (validated by a blocking check), the Postgres feed, and the training/serving skew report.",
    tags={"recsys/stage": "serving"},
)

# Runs when the serving side's impressions log for the day's feed lands (the next day).
online_evaluation_job = define_asset_job(
    "online_evaluation_job",
    selection=AssetSelection.assets("online_evaluation"),
    partitions_def=daily_partitions,
    description="CTR and user hit rate of the day's served feed per A/B arm and model version, from the logs.",
    tags={"recsys/stage": "serving"},
)
