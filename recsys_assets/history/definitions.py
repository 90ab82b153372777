"""user_history's definitions: the asset, its checks and its job."""

from dagster import Definitions

from recsys_assets.history.assets import user_history, user_history_job
from recsys_assets.history.checks import history_checks

defs = Definitions(assets=[user_history], asset_checks=history_checks, jobs=[user_history_job])
