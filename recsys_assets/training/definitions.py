"""Training's definitions: vocab and both models, and the training job for manual runs (what starts them
automatically is Declarative Automation, recsys_assets/automation.py, with the conditions in automation.py)."""

from dagster import Definitions

from recsys_assets.training.assets import training_assets
from recsys_assets.training.jobs import training_job
from recsys_assets.training.sensors import mlflow_replay_sensor

defs = Definitions(assets=training_assets, jobs=[training_job], sensors=[mlflow_replay_sensor])
