"""The training job: vocab, both models, both indexes and the offline evaluation for one day, with their checks."""

from dagster import AssetSelection, define_asset_job

from recsys_assets.core.partitions import daily_partitions

# The "training" pool (dagster.yaml) keeps two trainings off one GPU.
training_job = define_asset_job(
    "training_job",
    selection=AssetSelection.groups("history", "training", "indexes", "evaluation"),
    partitions_def=daily_partitions,
    description="Train the ranker and two-tower models on the window before the day, validate on the day, build "
    "the retrieval and cold-start indexes and the offline evaluation report.",
    # A crashed or killed run worker is relaunched from the failed step; training resumes from its checkpoint.
    tags={"recsys/stage": "training", "dagster/max_retries": "2", "dagster/retry_strategy": "FROM_FAILURE"},
)
