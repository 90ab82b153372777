"""Serving's definitions: the hand-off assets (started by Declarative Automation for the newest day), their jobs
(serving, online evaluation, rollback) and the impressions-log sensor."""

from dagster import Definitions

from recsys_assets.serving.assets import serving_assets
from recsys_assets.serving.automation import impressions_log_sensor
from recsys_assets.serving.jobs import online_evaluation_job, serving_job
from recsys_assets.serving.rollback import rollback_model_job

defs = Definitions(
    assets=serving_assets,
    jobs=[serving_job, online_evaluation_job, rollback_model_job],
    sensors=[impressions_log_sensor],
)
