"""Maintenance's definitions: storage retention, its job and nightly schedule."""

from dagster import Definitions

from recsys_assets.maintenance.assets import storage_retention
from recsys_assets.maintenance.automation import retention_job, retention_schedule

defs = Definitions(assets=[storage_retention], jobs=[retention_job], schedules=[retention_schedule])
