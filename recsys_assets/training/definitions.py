"""Training's definitions: vocab and both models, the training job and the sensor that starts it."""

from dagster import Definitions

from recsys_assets.training.assets import training_assets
from recsys_assets.training.automation import training_after_datagen_sensor
from recsys_assets.training.jobs import training_job

defs = Definitions(assets=training_assets, jobs=[training_job], sensors=[training_after_datagen_sensor])
