"""Running the real jobs and checks in tests: always selected from the one Definitions (with test resources), never
from a list of assets of the tests' own."""

from __future__ import annotations

from recsys_assets.core.partitions import partition_range_tags
from recsys_assets.definitions import build_defs, default_resources
from resources.config_files import ConfigFilesResource

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def defs_with(resources: dict):
    """The project's Definitions with the test's resources over the local defaults."""
    return build_defs({**default_resources(), **resources})


def run_job(job_name: str, day: str | None, instance, resources: dict, asset_selection=None, tags=None):
    """One partition of a job of the Definitions (or the range its tags name), through `instance`; failures are
    returned, not raised."""
    job = defs_with(resources).resolve_job_def(job_name)
    return job.execute_in_process(
        partition_key=day,
        instance=instance,
        raise_on_error=False,
        run_config=QUIET,
        asset_selection=asset_selection,
        tags=tags,
    )


def run_range(job_name: str, first: str, last: str, instance, resources: dict, asset_selection=None):
    """One run over the partition key range [first, last] (what a backfill launches with a range policy)."""
    return run_job(job_name, None, instance, resources, asset_selection, partition_range_tags(first, last))


def run_day(day, instance, resources, config_path: str | None = None):
    """datagen_job for one day (every datagen asset and check), optionally with another datagen YAML."""
    if config_path:
        resources = {**resources, "config_files": ConfigFilesResource(datagen=config_path)}
    return run_job("datagen_job", day, instance, resources)


class _CheckRun:
    """The evaluation of directly invoked checks, shaped like a run result for the tests."""

    def __init__(self, evaluations):
        self._evaluations = evaluations

    def get_asset_check_evaluations(self):
        return self._evaluations


def judge_day_checks(names, day, resources):
    """Re-judge these datagen day checks on the day's version under check, shaped like a run result."""
    from recsys_assets.datagen.day_checks import judge_day_check

    res = {**default_resources(), **resources}
    return _CheckRun([judge_day_check(name, res["storage"].store, day, spark=res.get("spark")) for name in names])


def check_results(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
