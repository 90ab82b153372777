"""Training's definitions: vocab and both models, the training job for manual runs, and the Declarative Automation
sensor that evaluates the training, index, evaluation and serving assets' conditions (automation.py)."""

from dagster import AssetSelection, AutomationConditionSensorDefinition, DefaultSensorStatus, Definitions

from recsys_assets.training.assets import training_assets
from recsys_assets.training.history_assets import history_assets, user_history_job
from recsys_assets.training.jobs import training_job

automation_sensor = AutomationConditionSensorDefinition(
    "declarative_automation",
    target=AssetSelection.groups("datagen", "history", "training", "indexes", "evaluation", "serving"),
    default_status=DefaultSensorStatus.RUNNING,  # on from the first `make ui` / production deploy
    minimum_interval_seconds=30,
    description="Starts a day's datagen when its raw inputs are reported (success-file sensor), its training once its "
    "datagen passed its blocking checks (last 60 days, so backfills retrain), and the newest day's serving once its "
    "models passed theirs.",
)

defs = Definitions(
    assets=[*history_assets, *training_assets], jobs=[training_job, user_history_job], sensors=[automation_sensor]
)
