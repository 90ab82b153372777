"""Checks on the serving hand-off: the A/B serving config must be servable (blocking: a broken config never
reaches the feed), and online features must not drift from what the models were trained on (WARN)."""

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from recsys_assets.core.datasets import FEATURE_SKEW_REPORT
from recsys_assets.core.metadata import md_table
from recsys_assets.core.partitions import daily_partitions
from recsys_assets.serving import registry
from recsys_assets.serving.serving_config import latest_config, latest_written_config, serving_config_problems
from resources.postgres import PostgresResource
from resources.storage import StorageResource


@asset_check(
    asset="serving_config",
    partitions_def=daily_partitions,
    blocking=True,
    description="Traffic splits sum to 100, user-hash buckets are covered exactly once, every served "
    "version is registered and has a complete release in the model repository, and the production arm "
    "serves the registry's production version.",
)
def serving_config_valid(
    context: AssetCheckExecutionContext, storage: StorageResource, postgres: PostgresResource
) -> AssetCheckResult:
    store = storage.store
    cfg = latest_written_config(store)  # the newest written, so a withheld one fails here and shows why
    if cfg is None:
        return AssetCheckResult(
            passed=False, severity=AssetCheckSeverity.ERROR, description="no serving config published"
        )
    served = latest_config(store)
    with postgres.connect() as conn:
        registry.ensure_schema(conn)
        problems = serving_config_problems(store, conn, cfg)
        production = registry.production_version(conn, cfg["model_name"])
    served_version = served["config_version"] if served else None
    withheld = (
        ""
        if served_version == cfg["config_version"]
        else (
            f"WITHHELD from serving (current.json stays at v{served_version}): "
            if served_version
            else "WITHHELD from serving (no valid config is served): "
        )
    )
    return AssetCheckResult(
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        description=(withheld + "; ".join(problems)) if problems else f"config v{cfg['config_version']} is valid",
        metadata={
            "config_version": MetadataValue.int(cfg["config_version"]),
            "traffic_pct_total": MetadataValue.float(float(sum(a["traffic_pct"] for a in cfg["arms"]))),
            "production_version": MetadataValue.int(production) if production is not None else None,
            "problems": MetadataValue.int(len(problems)),
            "served_config_version": MetadataValue.int(served_version) if served_version else None,
        },
    )


@asset_check(
    asset=FEATURE_SKEW_REPORT,
    partitions_def=daily_partitions,
    blocking=False,
    description="Every feature's PSI <= skew.max_psi and every numeric feature's KS statistic <= "
    "skew.max_ks between training_events and the logged online sample.",
)
def feature_skew_within_limits(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
    store = storage.store
    report = store.read_json(store.committed_path(FEATURE_SKEW_REPORT, context.partition_key, "report.json"))
    failing = [r for r in report["features"] if not r["passed"]]
    return AssetCheckResult(
        passed=not failing,
        severity=AssetCheckSeverity.WARN,
        description=", ".join(
            f"{r['feature']} PSI {r['psi']}" + (f" KS {r['ks']}" if "ks" in r else "") for r in failing
        )
        or "no feature beyond the skew thresholds",
        metadata={
            "failing": md_table(
                ["feature", "PSI", "KS"], [[r["feature"], r["psi"], r.get("ks", "-")] for r in failing]
            ),
            "max_psi": MetadataValue.float(max((r["psi"] for r in report["features"]), default=0.0)),
            "threshold_psi": MetadataValue.float(report["max_psi"]),
            "threshold_ks": MetadataValue.float(report["max_ks"]),
        },
    )


serving_checks = [serving_config_valid, feature_skew_within_limits]
