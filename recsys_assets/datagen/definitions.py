"""Datagen's definitions: raw inputs, the three datagen assets, their job, sensors and schedule."""

from dagster import Definitions

from recsys_assets.datagen.assets import datagen_assets
from recsys_assets.datagen.automation import datagen_schedules, datagen_sensors
from recsys_assets.datagen.jobs import datagen_job
from recsys_assets.datagen.raw_sources import raw_specs

defs = Definitions(
    assets=[*raw_specs, *datagen_assets], jobs=[datagen_job], sensors=datagen_sensors, schedules=datagen_schedules
)
