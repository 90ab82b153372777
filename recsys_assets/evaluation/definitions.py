"""Evaluation's definitions: the day's offline evaluation (run by training_job, which selects this group)."""

from dagster import Definitions

from recsys_assets.evaluation.assets import offline_evaluation

defs = Definitions(assets=[offline_evaluation])
