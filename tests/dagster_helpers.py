"""Helpers for running the real assets and checks through Dagster in tests."""

from __future__ import annotations

from types import SimpleNamespace

from dagster import materialize

from checks.datagen_checks import datagen_checks
from recsys_assets.datagen.assets import datagen_assets
from recsys_assets.datagen.raw_sources import raw_specs

ALL = [*raw_specs, *datagen_assets, *datagen_checks]
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def run_day(day, instance, resources, config_path: str | None = None, selection=None):
    run_config = dict(QUIET)
    if config_path:
        run_config["ops"] = {
            name: {"config": {"datagen_config_path": config_path}}
            for name in ("filtered_events", "training_events", "datagen_monitoring_report")
        }
    return materialize(
        ALL, partition_key=day, instance=instance, resources=resources, raise_on_error=False,
        run_config=run_config, selection=selection,
    )


class _CheckRun:
    """The evaluation of directly invoked checks, shaped like a run result for the tests."""

    def __init__(self, evaluations):
        self._evaluations = evaluations

    def get_asset_check_evaluations(self):
        return self._evaluations


def run_checks_only(check_defs, day, instance, resources):
    """Evaluate just these partitioned checks for one day against committed data and the instance's metadata.

    Dagster 1.13 refuses a run whose selection is only partitioned checks ("no PartitionsDefinition shared by
    all the provided assets"), so the check functions are invoked directly with a partition-aware context.
    """
    from dagster import build_op_context
    from dagster._core.execution.context.invocation import DirectAssetCheckExecutionContext

    out = []
    for check_def in check_defs:
        params = check_def.op.compute_fn.decorated_fn.__code__.co_varnames
        kwargs = {k: v for k, v in resources.items() if k in params}
        ctx = DirectAssetCheckExecutionContext(build_op_context(partition_key=day, instance=instance))
        res = check_def(ctx, **kwargs)
        out.append(SimpleNamespace(check_name=check_def.check_key.name, passed=res.passed,
                                   description=res.description, metadata=res.metadata))
    return _CheckRun(out)


def check_results(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
