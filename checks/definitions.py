"""The asset checks of the model and serving domains, as one Definitions to merge with the assets they judge.

The datagen checks are declared by the datagen assets themselves and judged per day as each day is written
(recsys_assets/datagen/day_checks.py): a range run must give each day its own evaluation."""

from dagster import Definitions

from checks.history_checks import history_checks
from checks.model_checks import model_checks
from checks.serving_checks import serving_checks

defs = Definitions(asset_checks=[*history_checks, *model_checks, *serving_checks])
