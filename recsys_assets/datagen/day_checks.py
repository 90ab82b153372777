"""The datagen checks: production's error alerts, judged per day by the asset that wrote the day.

Why here and not as separate `@asset_check`s: a range run (one run, one Spark session, N days) must give every day
its own evaluation of every check, and a day that fails a blocking check must be withheld before the next day is
written. Dagster 1.13 records a separate partitioned check of a ranged run as one evaluation without a partition
(docs/backfills.md), so each datagen asset declares its checks as `check_specs` and judges each day right after
writing it, in one-day and range runs alike. A blocking check's verdict gates the commit of the version it judged
(recsys_assets/core/gating.py): a failed day is never read downstream, in any run.

Each judge is a plain function of the day's written version (its stats or report) and the committed stats of
earlier days, so it can be called without Dagster (tests/datagen/test_day_checks.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MetadataValue

from recsys_assets.core.datasets import DATASETS, FILTERED_EVENTS, MONITORING_REPORT, TRAINING_EVENTS
from recsys_assets.core.days import shift_day
from recsys_assets.core.gating import gate, judged_version
from recsys_assets.core.metadata import md_table
from recsys_assets.core.partitions import daily_partitions
from recsys_assets.datagen.quarantine import judge_input_losses
from resources.store import DatasetStore


@dataclass(frozen=True)
class DayInput:
    """What a judge sees: the day's version under check and what it wrote (stats.json, or report.json for the
    monitoring report)."""

    store: DatasetStore
    day: str
    version: str
    stats: dict
    spark: object | None = None  # SparkResource, for checks that run a stage on the written rows
    context: object | None = None  # the Dagster context a submitted stage reports through (Pipes)


@dataclass(frozen=True)
class DayCheck:
    name: str
    dataset: str
    description: str
    judge: Callable[[DayInput], AssetCheckResult]

    @property
    def blocking(self) -> bool:
        """Blocking exactly when the dataset's declaration says it gates the commit (core/datasets.py)."""
        return self.name in DATASETS[self.dataset].blocking_checks

    def spec(self) -> AssetCheckSpec:
        return AssetCheckSpec(
            self.name,
            asset=self.dataset,
            blocking=self.blocking,
            description=self.description,
            partitions_def=daily_partitions,
        )


def judge_filter_item_loss(d: DayInput) -> AssetCheckResult:
    stats = d.stats
    limits: dict = stats["max_item_loss_pct"]
    breaches = {
        n: stats[f"item_loss_percentage_{n}"] for n, lim in limits.items() if stats[f"item_loss_percentage_{n}"] > lim
    }
    return AssetCheckResult(
        passed=not breaches,
        severity=AssetCheckSeverity.ERROR,
        description=("item loss above limit: " + ", ".join(f"{n} {v}% > {limits[n]}%" for n, v in breaches.items()))
        if breaches
        else "all filters within item-loss limits",
        metadata={
            "breaches": md_table(["filter", "item loss %", "max %"], [[n, v, limits[n]] for n, v in breaches.items()]),
            "worst_filter_loss_pct": MetadataValue.float(
                max((stats[f"item_loss_percentage_{n}"] for n in limits), default=0.0)
            ),
        },
    )


def judge_input_losses_within_limits(d: DayInput) -> AssetCheckResult:
    stats = d.stats
    rows, breaches = judge_input_losses(stats, stats["input_limits"])
    return AssetCheckResult(
        passed=not breaches,
        severity=AssetCheckSeverity.ERROR,
        description="; ".join(breaches) or "quarantine, language and sample within limits",
        metadata={
            "input_losses": md_table(["stage", "what", "events", "of", "% (sample: pp off)", "limit", "result"], rows),
            "num_raw_events": MetadataValue.int(stats["num_raw_events"]),
            "num_quarantined_events": MetadataValue.int(stats["num_quarantined_events"]),
            "num_breaches": MetadataValue.int(len(breaches)),
        },
    )


def judge_embedding_join_item_loss(d: DayInput) -> AssetCheckResult:
    stats = d.stats
    loss, limit = stats["item_loss_post_embedding_join"], stats["thresholds"]["max_item_loss_pct_embedding_join"]
    return AssetCheckResult(
        passed=loss <= limit,
        severity=AssetCheckSeverity.ERROR,
        description=f"embedding-join item loss {loss}% (max {limit}%)",
        metadata={
            "item_loss_post_embedding_join": MetadataValue.float(loss),
            "max_item_loss_pct": MetadataValue.float(limit),
            "num_embeddings_rejected": MetadataValue.int(stats["num_embeddings_rejected"]),
        },
    )


def judge_training_events_expectations(d: DayInput) -> AssetCheckResult:
    """From the expectations the training_events stage computed on the Spark backend as it wrote this version
    (stats["expectations"]); a version whose stats lack them for it is validated by a stage run on the same backend
    (Dataproc in production), never by a Spark session of the Dagster process."""
    from recsys_assets.core.spark_stages import TRAINING_EVENTS_EXPECTATIONS, stage_job

    found = d.stats.get("expectations") or {}
    if found.get("version") != d.version:
        if d.spark is None:
            raise ValueError("training_events_expectations of a version without them needs the Spark resource")
        job = stage_job(TRAINING_EVENTS_EXPECTATIONS, d.store, d.day, d.version, {})
        found = d.spark.run_job(d.context, job)["expectations"]
    rows = found["rows"]
    failed = [r for r in rows if not r["success"]]
    return AssetCheckResult(
        passed=not failed,
        severity=AssetCheckSeverity.ERROR,
        description=f"{len(rows) - len(failed)}/{len(rows)} expectations met"
        + (
            ": failed " + ", ".join(f"{r['table']}.{r['expectation']}({r['column']})" for r in failed) if failed else ""
        ),
        metadata={
            "expectations": md_table(
                ["table", "expectation", "column", "success", "unexpected / observed"],
                [[r["table"], r["expectation"], r["column"], r["success"], r["unexpected"]] for r in rows],
            ),
            "num_failed_expectations": MetadataValue.int(len(failed)),
        },
    )


def _delta_pct(now: float, before: float) -> float:
    return 100.0 * (now - before) / before if before else 0.0


def judge_events_items_delta(d: DayInput) -> AssetCheckResult:
    """Deltas compare with the committed stats of earlier days: a day withheld by a failed blocking check is no
    baseline."""
    store, day, stats = d.store, d.day, d.stats
    th = stats["thresholds"]
    rows, breaches = [], []
    for label, offset, limit in (("1d", -1, th["max_abs_delta_pct_1d"]), ("7d", -7, th["max_abs_delta_pct_7d"])):
        base_day = shift_day(day, offset)
        if not store.is_committed(TRAINING_EVENTS, base_day):
            rows.append([label, base_day, "no baseline (no committed version)", "", "", limit])
            continue
        prev = store.read_json(store.committed_path(TRAINING_EVENTS, base_day, "stats.json"))
        for metric, now_key in (("events", "num_final_rows"), ("items", "num_items_post_embed_join")):
            delta = round(_delta_pct(stats[now_key], prev[now_key]), 2)
            rows.append([label, base_day, metric, prev[now_key], stats[now_key], f"{delta:+}% (max ±{limit}%)"])
            if abs(delta) > limit:
                breaches.append(f"{metric} {label} {delta:+}%")
    return AssetCheckResult(
        passed=not breaches,
        severity=AssetCheckSeverity.WARN,
        description=("delta beyond threshold: " + ", ".join(breaches))
        if breaches
        else "events/items deltas within thresholds",
        metadata={"deltas": md_table(["window", "baseline day", "metric", "before", "now", "delta"], rows)},
    )


def _no_baseline(what: str) -> AssetCheckResult:
    """A day-over-day WARN check with nothing to compare against (a deployment's first days): passed, and says so."""
    return AssetCheckResult(
        passed=True,
        severity=AssetCheckSeverity.WARN,
        description=f"{what}: nothing to compare",
        metadata={"baseline_available": False},
    )


def judge_item_age_bucket_delta_7d(d: DayInput) -> AssetCheckResult:
    report = d.stats
    limit = report["thresholds"]["max_age_bucket_share_delta_pp_7d"]
    deltas = report["item_age_bucket_share_delta_pp_7d"]
    if deltas is None:
        return _no_baseline("no report 7 days before")
    breaches = {k: v for k, v in deltas.items() if abs(v) > limit}
    return AssetCheckResult(
        passed=not breaches,
        severity=AssetCheckSeverity.WARN,
        description=(f"age buckets beyond ±{limit}pp: " + ", ".join(f"{k} {v:+}pp" for k, v in breaches.items()))
        if breaches
        else f"all age-bucket shares within ±{limit}pp of 7 days ago",
        metadata={
            "share_delta_pp_7d": md_table(["bucket", "share delta (pp)"], [[k, v] for k, v in deltas.items()]),
            "max_abs_share_delta_pp": MetadataValue.float(max(abs(v) for v in deltas.values())),
        },
    )


def judge_new_items_1d(d: DayInput) -> AssetCheckResult:
    report = d.stats
    limit = report["thresholds"]["min_new_items_pct_1d"]
    pct = report["new_items_pct_1d"]
    if pct is None:
        return _no_baseline("no final items yesterday")
    return AssetCheckResult(
        passed=pct >= limit,
        severity=AssetCheckSeverity.WARN,
        description=f"new items vs yesterday {pct}% (min {limit}%)",
        metadata={
            "new_items_pct_1d": MetadataValue.float(pct),
            "num_new_items_1d": MetadataValue.int(report["num_new_items_1d"]),
            "min_new_items_pct_1d": MetadataValue.float(limit),
        },
    )


DAY_CHECKS: tuple[DayCheck, ...] = (
    DayCheck(
        "filter_item_loss_within_limits",
        FILTERED_EVENTS,
        "Every filter's item loss % is at most its max_item_loss_pct in the datagen YAML.",
        judge_filter_item_loss,
    ),
    DayCheck(
        "input_losses_within_limits",
        FILTERED_EVENTS,
        "Losses before the filter chain stay within the datagen YAML's limits: quarantined events in total and per "
        "reason, the language stage's event and item loss, and the sample's kept share vs its fraction. Judged the "
        "same on a deployment's first day (absolute limits, no previous day needed).",
        judge_input_losses_within_limits,
    ),
    DayCheck(
        "embedding_join_item_loss",
        TRAINING_EVENTS,
        "Items lost for lack of a valid 128-d content embedding stay under the configured max.",
        judge_embedding_join_item_loss,
    ),
    DayCheck(
        "training_events_expectations",
        TRAINING_EVENTS,
        "great-expectations: column types, non-null and unique ids, value ranges, 128-d finite embeddings.",
        judge_training_events_expectations,
    ),
    DayCheck(
        "events_items_delta_1d_7d",
        TRAINING_EVENTS,
        "Final events and items change by at most the configured % vs 1 and 7 days before (the committed versions "
        "of those days: a day withheld by a failed blocking check is no baseline).",
        judge_events_items_delta,
    ),
    DayCheck(
        "item_age_bucket_delta_7d",
        MONITORING_REPORT,
        "No item-age bucket's share of final items moves more than the configured points vs 7 days ago.",
        judge_item_age_bucket_delta_7d,
    ),
    DayCheck(
        "new_items_1d",
        MONITORING_REPORT,
        "At least the configured % of today's final items are new (absent from yesterday's).",
        judge_new_items_1d,
    ),
)
DAY_CHECK_BY_NAME = {c.name: c for c in DAY_CHECKS}


def checks_of(dataset: str) -> tuple[DayCheck, ...]:
    return tuple(c for c in DAY_CHECKS if c.dataset == dataset)


def check_specs(dataset: str) -> list[AssetCheckSpec]:
    return [c.spec() for c in checks_of(dataset)]


def evaluate_day(
    dataset: str, store: DatasetStore, day: str, version: str, stats: dict, spark=None, context=None
) -> list[AssetCheckResult]:
    """Judge every check of `dataset` on the day's version `version`; each blocking verdict is recorded on the
    version (the storage layer commits it when all pass, recsys_assets/core/gating.py). Results carry the asset key
    and check name."""
    return [_evaluate(check, DayInput(store, day, version, stats, spark, context)) for check in checks_of(dataset)]


def _evaluate(check: DayCheck, d: DayInput) -> AssetCheckResult:
    """Judge `d`'s version, record a blocking verdict on it, and name the result as Dagster records it."""
    result = check.judge(d)
    if check.blocking:
        result = gate(d.store, check.dataset, d.day, d.version, check.name, result)
    return AssetCheckResult(
        asset_key=check.dataset,
        check_name=check.name,
        passed=result.passed,
        severity=result.severity,
        description=result.description,
        metadata=result.metadata,
    )


def blocking_failures(results: list[AssetCheckResult]) -> list[str]:
    return [r.check_name for r in results if not r.passed and DAY_CHECK_BY_NAME[r.check_name].blocking]


def judge_day_check(name: str, store: DatasetStore, day: str, spark=None, context=None) -> AssetCheckResult:
    """Re-judge one check on the day's version under check (the staged candidate, else the committed version), as
    the asset does after writing it; a blocking verdict is recorded. For operators and tests: re-evaluating a day
    after a threshold change or a repaired baseline without rewriting it."""
    check = DAY_CHECK_BY_NAME[name]
    version = judged_version(store, check.dataset, day)
    stats_file = "report.json" if check.dataset == MONITORING_REPORT else "stats.json"
    stats = store.read_json(store.version_path(check.dataset, day, version, stats_file))
    return _evaluate(check, DayInput(store, day, version, stats, spark, context))
