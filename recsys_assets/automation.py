"""Cross-domain automation: the one Declarative Automation sensor that evaluates every domain's conditions (datagen,
history, training, indexes, evaluation, serving; each domain declares its own on its assets)."""

from dagster import AssetSelection, AutomationConditionSensorDefinition, DefaultSensorStatus, Definitions

AUTOMATED_GROUPS = ("datagen", "history", "training", "indexes", "evaluation", "serving")

automation_sensor = AutomationConditionSensorDefinition(
    "declarative_automation",
    target=AssetSelection.groups(*AUTOMATED_GROUPS),
    default_status=DefaultSensorStatus.RUNNING,  # on from the first `make ui` / production deploy
    minimum_interval_seconds=30,
    description="Starts a day's datagen when its raw inputs are reported (success-file sensor), its training once its "
    "datagen passed its blocking checks (last 60 days, so backfills retrain), and the newest day's serving once its "
    "models passed theirs.",
)

defs = Definitions(sensors=[automation_sensor])
