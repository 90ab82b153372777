"""The asset checks of the model, index and serving assets, as one Definitions to merge with the assets they judge
(by asset key: nothing here imports an asset module).

The datagen checks are declared by the datagen assets themselves and judged per day as each day is written
(recsys_assets/datagen/day_checks.py): a range run must give each day its own evaluation; user_history's live with
it (recsys_assets/history/checks.py)."""

from dagster import Definitions

from checks.model_checks import model_checks
from checks.serving_checks import serving_checks

defs = Definitions(asset_checks=[*model_checks, *serving_checks])
