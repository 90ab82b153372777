"""One run, many days: how a datagen asset processes a partition key range (a backfill) and reports each day.

The days of the run's range are processed in date order, each written, judged by the asset's checks and committed
(or withheld) on its own, exactly as a one-day run would: a range run leaves the same partitions, stats and check
verdicts as one run per day. What Dagster records:

- one-day run: the usual `MaterializeResult` with the day's metadata and check results;
- range run: Dagster's own materialization of every partition of the range (no metadata), then, per day, an
  `AssetMaterialization(partition=day)` with that day's metadata (so it is the partition's latest, the one the UI
  shows) and an `AssetCheckEvaluation(partition=day)` per check (what the check-failure sensor and the UI's
  partition view read). Dagster 1.13 alone records one unpartitioned evaluation per check for a ranged run
  (docs/backfills.md), which is why the checks are evaluated here.

A day that raises, or fails a blocking check, stops the run there: the days before it stay committed and
reported, that day is withheld (blocking failure) or never staged (error), later days are not started, and the step
fails naming them, so its downstream steps do not run and a re-launched backfill redoes the missing days only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    AssetMaterialization,
    Failure,
    MaterializeResult,
    MetadataValue,
)

from recsys_assets.core.dagster_compat import latest_materialization_target
from recsys_assets.core.runs import DayRun
from recsys_assets.datagen.day_checks import blocking_failures, evaluate_day


@dataclass(frozen=True)
class DayWritten:
    """What writing one day produced: the version written (staged or committed), what its checks judge, and the
    day's materialization metadata."""

    version: str
    stats: dict
    metadata: dict


@dataclass(frozen=True)
class DayDone:
    day: str
    metadata: dict
    checks: list[AssetCheckResult]


def run_days(
    context: AssetExecutionContext,
    dataset: str,
    storage,
    write_day: Callable[[DayRun], DayWritten],
    spark=None,
) -> Iterator:
    """Write, judge and report each day of the run's partition range in date order (see the module docstring)."""
    key = AssetKey(dataset)
    if key not in context.selected_asset_keys:
        raise Failure(
            f"{dataset}'s checks judge each day as {dataset} writes it: select the asset {dataset} with its checks"
        )
    days = sorted(context.partition_keys)
    done: list[DayDone] = []
    stopped: str | None = None  # why the run stopped, naming the day
    stopped_day: str | None = None
    error: BaseException | None = None
    for day in days:
        try:
            t0 = time.perf_counter()
            written = write_day(DayRun.of(context, storage, day))
            t1 = time.perf_counter()
            results = evaluate_day(dataset, storage.store, day, written.version, written.stats, spark, context)
            t2 = time.perf_counter()
        except Exception as exc:  # reported with the days done below, then re-raised as the step's failure
            stopped, stopped_day, error = f"{day} failed: {type(exc).__name__}: {exc}", day, exc
            break
        timing = {"write_s": MetadataValue.float(round(t1 - t0, 3)), "checks_s": MetadataValue.float(round(t2 - t1, 3))}
        done.append(DayDone(day, {**written.metadata, **timing}, results))
        if failed := blocking_failures(results):
            stopped = f"{day} failed blocking check(s) {', '.join(failed)}: version {written.version} withheld"
            stopped_day = day
            break
        if len(days) > 1:
            context.log.info(f"{dataset} {day}: committed ({len(done)}/{len(days)} days of the range)")

    selected = {k.name for k in context.selected_asset_check_keys if k.asset_key == key}
    if len(days) == 1 and done:
        # blocking failures are reported here and fail the step below: the same as any Dagster blocking check
        yield MaterializeResult(
            asset_key=key,
            metadata=done[0].metadata,
            check_results=[r for r in done[0].checks if r.check_name in selected],
        )
    elif len(days) > 1:
        if stopped is None:
            yield MaterializeResult(asset_key=key)  # Dagster's per-partition record; the per-day ones follow
        for d in done:
            yield AssetMaterialization(asset_key=key, partition=d.day, metadata=d.metadata)
            # stored by now (Dagster logs each yielded event before resuming the step): the evaluations judge it
            target = latest_materialization_target(context.instance, key, d.day)
            for r in d.checks:
                if r.check_name in selected:
                    yield AssetCheckEvaluation(
                        asset_key=key,
                        check_name=r.check_name,
                        passed=r.passed,
                        severity=r.severity,
                        description=r.description,
                        metadata=r.metadata,
                        partition=d.day,
                        target_materialization_data=target,
                    )
    if error is not None and len(days) == 1:
        raise error  # a one-day run fails exactly as the day's error says
    if stopped is not None:
        committed = [d.day for d in done if d.day != stopped_day]
        not_started = [day for day in days if day > stopped_day]
        raise Failure(
            description=f"{dataset}: {stopped}. Committed in this run: {', '.join(committed) or 'none'}; "
            f"not started: {', '.join(not_started) or 'none'}",
            metadata={
                "days_committed": MetadataValue.json(committed),
                "day_stopped": stopped_day,
                "days_not_started": MetadataValue.json(not_started),
            },
        ) from error
