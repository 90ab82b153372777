"""The asset checks of every domain, as one Definitions to merge with the assets they judge."""

from dagster import Definitions

from checks.datagen_checks import datagen_checks
from checks.model_checks import model_checks
from checks.serving_checks import serving_checks

defs = Definitions(asset_checks=[*datagen_checks, *model_checks, *serving_checks])
