"""Serving hand-off assets (group "serving"): model repository + registry, promotion, A/B serving config, the
published feed, training/serving skew and online evaluation. Each resolves its day, serving.yaml and resources,
calls one function of recsys_assets/serving (releases, serving_config, feed, skew, online_eval), and reports it."""

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from recsys_assets.config.files import ConfigFilesResource
from recsys_assets.core.datasets import (
    COLD_START_INDEX,
    FEATURE_SKEW_REPORT,
    FEED_ROWS,
    ONLINE_EVALUATION,
    RANKER_MODEL,
    RETRIEVAL_INDEX,
    RETRIEVAL_MODEL,
    TRAINING_EVENTS,
    USER_HISTORY,
)
from recsys_assets.core.metadata import md_table
from recsys_assets.core.partitions import daily_partitions
from recsys_assets.core.runs import DayRun, json_file
from recsys_assets.core.spark_stages import stage_job
from recsys_assets.serving import registry
from recsys_assets.serving.automation import SERVE_NEWEST_DAY
from recsys_assets.serving.feed import feed_example, feed_row_chunks, feed_size_verdict
from recsys_assets.serving.feed_stage import feed_params
from recsys_assets.serving.feed_table import (
    drop_expired_feed_days,
    ensure_feed_table,
    previous_feed_rows,
    publish_feed,
)
from recsys_assets.serving.mlflow_mirror import sync_mlflow
from recsys_assets.serving.online_eval import online_evaluation_params
from recsys_assets.serving.releases import describe_pin, promote_day, register_release
from recsys_assets.serving.serving_config import latest_config, publish_serving_config
from recsys_assets.serving.skew import day_skew_report
from resources.mlflow import MlflowResource
from resources.postgres import PostgresResource
from resources.spark import SparkResource
from resources.storage import StorageResource

GROUP = "serving"
_HAND_OFF = dict(automation_condition=SERVE_NEWEST_DAY, partitions_def=daily_partitions, group_name=GROUP)


@asset(
    **_HAND_OFF,
    deps=[AssetKey(RANKER_MODEL), AssetKey(RETRIEVAL_MODEL), AssetKey(RETRIEVAL_INDEX), AssetKey(COLD_START_INDEX)],
    kinds={"pytorch", "postgres"},
    description="The day's ranker, towers and indexes exported as one release of a Triton-style model repository "
    "(<model>/<version>/, config.pbtxt per model) and registered in the Postgres model registry with the data "
    "partitions, code version, metrics and blocking-check outcomes it came from.",
)
def model_repository(
    context: AssetExecutionContext,
    storage: StorageResource,
    config_files: ConfigFilesResource,
    postgres: PostgresResource,
    mlflow: MlflowResource,
) -> MaterializeResult:
    run, model_name = DayRun.of(context, storage), config_files.serving_spec().model_name
    with postgres.connect() as conn:
        r = register_release(run.store, conn, model_name, run.day, run.run_id)
        mirrored = sync_mlflow(mlflow, run.store, conn, model_name, also=r.version)
    run.log(f"release {model_name} v{r.version} ({'new' if r.created else 'existing'}) in {r.repository}")
    return MaterializeResult(
        metadata={
            "model_name": model_name,
            "version": MetadataValue.int(r.version),
            "newly_registered": r.created,
            "repository": MetadataValue.path(run.store.uri("model_repository")),
            "components": md_table(
                ["model", "version", "source", "files"],
                [[n, c["version"], c["source"], ", ".join(c["files"])] for n, c in r.components.items()],
            ),
            "blocking_checks": md_table(["check", "passed"], [[k, v] for k, v in sorted(r.checks.items())]),
            "checks_passed": r.checks_passed,
            "code_version": r.code_version,
            "dagster/row_count": MetadataValue.int(r.num_items),
            **mirrored,
        }
    )


@asset(
    **_HAND_OFF,
    deps=[model_repository],
    kinds={"postgres"},
    description="Promotes the day's release to production in the registry when all its blocking model checks "
    "passed and it is newer than the current production version (one transaction, logged in model_deployments). "
    "Rollback: `python -m recsys_assets.serving.registry rollback` or the rollback_model_job in the UI.",
)
def model_promotion(
    context: AssetExecutionContext,
    storage: StorageResource,
    config_files: ConfigFilesResource,
    postgres: PostgresResource,
) -> MaterializeResult:
    run, model_name = DayRun.of(context, storage), config_files.serving_spec().model_name
    with postgres.connect() as conn:
        p = promote_day(run.store, conn, model_name, run.day, actor=f"dagster run {run.run_id}")
    run.log(p.decision)
    return MaterializeResult(
        metadata={
            "version": MetadataValue.int(p.version),
            "decision": p.decision,
            "promoted": p.promoted,
            "production_version": MetadataValue.int(p.production) if p.production is not None else None,
            "pinned": describe_pin(p.pinned),
            "recent_deployments": md_table(
                ["action", "from", "to", "reason", "at"],
                [[h["action"], h["from_version"], h["to_version"], h["reason"], str(h["at"])[:19]] for h in p.recent],
            ),
        }
    )


@asset(
    **_HAND_OFF,
    deps=[model_promotion],
    kinds={"json"},
    description="Versioned A/B serving config (serving_config/serving_config.v<N>.json + current.json): traffic "
    "split between model versions by user-hash buckets, resolved from serving.yaml and the registry.",
)
def serving_config(
    context: AssetExecutionContext,
    storage: StorageResource,
    config_files: ConfigFilesResource,
    postgres: PostgresResource,
    mlflow: MlflowResource,
) -> MaterializeResult:
    store, spec = storage.store, config_files.serving_spec()
    with postgres.connect() as conn:
        registry.ensure_schema(conn)
        cfg, problems = publish_serving_config(store, conn, spec)
        pinned = registry.pin(conn, spec.model_name)
        mirrored = sync_mlflow(mlflow, store, conn, spec.model_name)
    arm_rows = [
        [a["name"], str(a["model"]), a["model_version"], a["traffic_pct"], f"[{a['buckets'][0]}, {a['buckets'][1]})"]
        for a in cfg["arms"]
    ]
    return MaterializeResult(
        metadata={
            "config_version": MetadataValue.int(cfg["config_version"]),
            "arms": md_table(["arm", "model", "version", "traffic %", "buckets"], arm_rows),
            "notes": "; ".join(cfg.get("notes", [])) or "-",
            "problems": "; ".join(problems) or "none",
            "served": MetadataValue.bool(not problems),
            "production_pinned": describe_pin(pinned),
            "path": MetadataValue.path(store.uri("serving_config", f"serving_config.v{cfg['config_version']}.json")),
            **mirrored,
        }
    )


FEED_ROWS_CHECK = "feed_rows_within_limits"


@asset(
    **_HAND_OFF,
    deps=[serving_config, AssetKey(TRAINING_EVENTS), AssetKey(USER_HISTORY)],
    kinds={"spark", "postgres"},
    check_specs=[
        AssetCheckSpec(
            FEED_ROWS_CHECK,
            asset="feed",
            blocking=True,
            description="The day's feed is not empty and has at least feed.min_rows_share_of_previous of the "
            "previous published day's rows; judged before the table is touched: a refused feed never replaces the "
            "served one.",
        )
    ],
    description="Top-K recommendations per active user of the day (retrieval -> ranker with the user's A/B arm's "
    "model version), loaded into a staging table and swapped in for the day's partition of the Postgres `feed` "
    "table in one transaction; partitions past feed.retention_days are dropped.",
)
def feed(
    context: AssetExecutionContext,
    storage: StorageResource,
    config_files: ConfigFilesResource,
    postgres: PostgresResource,
    spark: SparkResource,
):
    run, spec = DayRun.of(context, storage), config_files.serving_spec()
    cfg = latest_config(run.store)
    if cfg is None:
        raise Failure("no serving config published yet: materialize serving_config first")
    # Scored on the Spark backend (serving/feed_stage.py): the run process holds neither the users nor the rows.
    out = run.new_version(FEED_ROWS)
    stats = spark.run_job(context, stage_job(FEED_ROWS, run.store, run.day, out.version, feed_params(spec, cfg)))
    with postgres.connect() as conn:
        ensure_feed_table(conn)
        previous_day, previous_rows = previous_feed_rows(conn, spec.feed.strategy_name, run.day)
        ok, why = feed_size_verdict(stats["rows"], previous_day, previous_rows, spec.feed.min_rows_share_of_previous)
        verdict = AssetCheckResult(check_name=FEED_ROWS_CHECK, passed=ok, description=why)
        if not ok:
            yield verdict
            raise Failure(f"feed of {run.day} refused, the served feed is unchanged: {why}")
        chunks = feed_row_chunks(run.store, run.day, out.version)
        timings: dict = {}
        written = publish_feed(
            conn,
            chunks,
            spec.feed.strategy_name,
            run.day,
            timings=timings,
            streams=spec.feed.copy_streams,
            connect=postgres.connect,
        )
        dropped = drop_expired_feed_days(conn, spec.feed.strategy_name, run.day, spec.feed.retention_days)
    out.publish(row_count=written)
    metadata = feed_metadata(run.day, stats, feed_example(run.store, run.day, out.version), cfg, spec.feed)
    metadata["copy_seconds"] = MetadataValue.float(timings["copy_s"])
    metadata["swap_lock_seconds"] = MetadataValue.float(timings["swap_lock_s"])  # readers of the feed wait this long
    metadata["copy_streams"] = MetadataValue.int(spec.feed.copy_streams)
    metadata["retention"] = MetadataValue.md(
        f"partitions older than {spec.feed.retention_days} days are dropped; dropped now: "
        + (", ".join(dropped) if dropped else "none")
    )
    yield MaterializeResult(metadata={**metadata, "table": postgres.describe() + "#feed"}, check_results=[verdict])


def feed_metadata(day: str, stats: dict, example, cfg: dict, feed_spec) -> dict:
    return {
        "dagster/row_count": MetadataValue.int(stats["rows"]),
        "active_users": MetadataValue.int(stats["active_users"]),
        "published_users": MetadataValue.int(sum(users for _, _, users, _ in stats["per_arm"])),
        "strategy_name": feed_spec.strategy_name,
        "serving_config_version": MetadataValue.int(cfg["config_version"]),
        "per_arm": md_table(["arm", "model version", "users", "rows"], stats["per_arm"]),
        "example_feed": md_table(
            ["user", "rank", "item", "score"],
            [[r.user_id, int(r.rank), r.item_id, round(float(r.score), 4)] for r in example.itertuples()],
        ),
        "generate_seconds": MetadataValue.float(stats["generate_seconds"]),
        "users_per_s": MetadataValue.float(round(stats["scored_users"] / max(stats["generate_seconds"], 1e-9), 1)),
        # the Python workers' scoring rate per core (one task = one core), fixed costs excluded: what sizes a cluster
        "users_per_task_second": MetadataValue.float(stats.get("users_per_task_second", 0.0)),
        "user_history": f"as of {day}" if stats["with_history"] else "none committed (history-free releases only)",
    }


@asset(
    **_HAND_OFF,
    deps=[AssetKey(TRAINING_EVENTS), AssetKey(USER_HISTORY)],
    kinds={"pandas"},
    description="Per-feature PSI and KS between the day's training_events and the logged online feature sample "
    "(serving.yaml skew.online_feature_log); judged by the feature_skew_within_limits check.",
)
def feature_skew_report(
    context: AssetExecutionContext, storage: StorageResource, config_files: ConfigFilesResource
) -> MaterializeResult:
    run = DayRun.of(context, storage)
    report = day_skew_report(run.store, run.day, config_files.serving_spec().skew)
    run.write(FEATURE_SKEW_REPORT, json_file("report.json", report, row_count=len(report["features"])))
    rows = report["features"]
    return MaterializeResult(
        metadata={
            "skew": md_table(
                ["feature", "kind", "PSI", "KS / max share diff", "passed"],
                [[r["feature"], r["kind"], r["psi"], r.get("ks", r.get("max_share_diff")), r["passed"]] for r in rows],
            ),
            "max_psi_observed": MetadataValue.float(max((r["psi"] for r in rows), default=0.0)),
            "max_ks_observed": MetadataValue.float(max((r.get("ks", 0.0) for r in rows), default=0.0)),
            "online_rows": MetadataValue.int(report["online_rows"]),
            "offline_rows": MetadataValue.int(report["offline_rows"]),
            "history_length": report["history_length"],
        }
    )


@asset(
    partitions_def=daily_partitions,
    group_name=GROUP,
    deps=[feed],
    kinds={"spark"},
    description="CTR of the day's published feed from the serving logs: impressions (served on the next day) "
    "followed by a play of the item within plays_window_minutes, and the share of users with at least one such "
    "play, per A/B arm and model version.",
)
def online_evaluation(
    context: AssetExecutionContext, storage: StorageResource, config_files: ConfigFilesResource, spark: SparkResource
) -> MaterializeResult:
    run = DayRun.of(context, storage)
    params = online_evaluation_params(run.store, run.day, config_files.serving_spec().online_evaluation)
    # On the Spark backend (serving/online_eval.py): the impressions and plays never reach this process.
    out = run.new_version(ONLINE_EVALUATION)
    stats = spark.run_job(context, stage_job(ONLINE_EVALUATION, run.store, run.day, out.version, params))
    report, impressions = stats["report"], stats["impressions"]
    out.publish(row_count=impressions)
    ctr_columns = ["arm", "model_version", "impressions", "users", "clicks", "ctr", "user_hit_rate"]
    digits = {"ctr": 5, "user_hit_rate": 4}
    return MaterializeResult(
        metadata={
            "online_ctr": md_table(
                ["arm", "model version", "impressions", "users", "clicks", "CTR", "user hit rate"],
                [[round(r[c], digits[c]) if c in digits else r[c] for c in ctr_columns] for r in report["arms"]],
            ),
            "dagster/row_count": MetadataValue.int(impressions),
            **{f"ctr_{r['arm']}": MetadataValue.float(round(r["ctr"], 6)) for r in report["arms"]},
            "play_days": ", ".join(report["play_days"]),
        }
    )


serving_assets = [model_repository, model_promotion, serving_config, feed, feature_skew_report, online_evaluation]
