"""Serving hand-off assets (group "serving"): model repository + registry, promotion, A/B serving config, the
published feed, training/serving skew and online evaluation. Thin wrappers over recsys_assets.serving.*."""

import datetime as dt
import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from dagster import AssetExecutionContext, AssetKey, Failure, MaterializeResult, MetadataValue, asset

from recsys_assets.core.datasets import DATASETS, FEATURE_SKEW_REPORT, ONLINE_EVALUATION, USER_HISTORY
from recsys_assets.core.metadata import md_table
from recsys_assets.core.partitions import daily_partitions, window_of
from recsys_assets.core.store_dirs import PartitionVersion
from recsys_assets.datagen.assets import training_events
from recsys_assets.datagen.stages import TRAINING_EVENTS, read_final_items
from recsys_assets.indexes.assets import cold_start_index, retrieval_index
from recsys_assets.serving import registry
from recsys_assets.serving.serving_config import (
    arm_of_buckets,
    latest_config,
    load_serving_spec,
    log_path,
    publish_config,
    resolve_arms,
    user_buckets,
    validate_serving_config,
)
from recsys_assets.training.artifacts import RANKER_MODEL, RETRIEVAL_INDEX, RETRIEVAL_MODEL, ArtifactDir
from recsys_assets.training.assets import ranker_model, retrieval_model
from recsys_assets.training.automation import SERVE_NEWEST_DAY
from resources.config_files import ConfigFilesResource
from resources.postgres import PostgresResource
from resources.storage import StorageResource

if TYPE_CHECKING:  # annotations only: the modules load where they are used
    import pandas as pd

SERVING_GROUP = "serving"


def code_version() -> str:
    """RECSYS_CODE_VERSION (set by the deployment, e.g. the image's git SHA), else the checkout's git HEAD."""
    if v := os.environ.get("RECSYS_CODE_VERSION"):
        return v
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def blocking_check_results(store, day: str) -> dict[str, bool]:
    """Every blocking check of the day's released models and index, as recorded with their committed versions.
    The storage layer commits only versions whose blocking checks all passed, so a committed version carries
    `checks` all True; a missing entry (a version committed before gates existed) counts as not passed."""
    out = {}
    for dataset in (RANKER_MODEL, RETRIEVAL_MODEL, RETRIEVAL_INDEX):
        recorded = (store.read_manifest(dataset, day) or {}).get("checks", {})
        out.update({check: bool(recorded.get(check, False)) for check in DATASETS[dataset].blocking_checks})
    return out


@asset(
    automation_condition=SERVE_NEWEST_DAY,
    partitions_def=daily_partitions,
    group_name=SERVING_GROUP,
    deps=[ranker_model, retrieval_model, retrieval_index, cold_start_index],
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
) -> MaterializeResult:
    from recsys_assets.serving.model_repository import (
        export_release,
        item_features_table,
        release_fingerprint,
        repository_path,
        source_versions,
    )
    from recsys_assets.training.features import build_item_catalog

    day, store = context.partition_key, storage.store
    spec = load_serving_spec(config_files.serving)
    sources = source_versions(store, day)
    ranker_dir, retrieval_dir = (
        ArtifactDir.committed(store, RANKER_MODEL, day),
        ArtifactDir.committed(store, RETRIEVAL_MODEL, day),
    )
    train_info = retrieval_dir.read_json("training.json")
    catalog = build_item_catalog([read_final_items(store, d) for d in [*train_info["train_days"], day]])
    r_metrics, t_metrics = ranker_dir.read_json("metrics.json"), retrieval_dir.read_json("metrics.json")
    index_info = ArtifactDir.committed(store, RETRIEVAL_INDEX, day).read_json("index.json")
    metrics = {
        "ranker_auc": r_metrics["auc"],
        "retrieval": {k: v for k, v in t_metrics.items() if isinstance(v, (int, float))},
        "index_recall_vs_exact": index_info["recall_vs_exact"],
    }
    data_versions = {TRAINING_EVENTS: train_info["data_versions"], **sources}
    code = code_version()
    checks = blocking_check_results(store, day)
    with postgres.connect() as conn:
        registry.ensure_schema(conn)
        version, created = registry.register_version(
            conn,
            spec.model_name,
            day,
            release_fingerprint(sources),
            repository_path(store),
            code,
            data_versions,
            {},
            metrics,
            context.run_id,
        )
        release = export_release(
            store,
            day,
            version,
            item_features_table(catalog),
            {"code_version": code, "data_versions": data_versions, "metrics": metrics},
        )
        registry.set_components(conn, spec.model_name, version, release["components"])
        passed = registry.record_checks(conn, spec.model_name, version, checks)
    context.log.info(
        f"release {spec.model_name} v{version} ({'new' if created else 'existing'}) in {repository_path(store)}"
    )
    return MaterializeResult(
        metadata={
            "model_name": spec.model_name,
            "version": MetadataValue.int(version),
            "newly_registered": created,
            "repository": MetadataValue.path(store.uri("model_repository")),
            "components": md_table(
                ["model", "version", "source", "files"],
                [[n, c["version"], c["source"], ", ".join(c["files"])] for n, c in release["components"].items()],
            ),
            "blocking_checks": md_table(["check", "passed"], [[k, v] for k, v in sorted(checks.items())]),
            "checks_passed": passed,
            "code_version": code,
            "dagster/row_count": MetadataValue.int(len(catalog)),
        }
    )


@asset(
    automation_condition=SERVE_NEWEST_DAY,
    partitions_def=daily_partitions,
    group_name=SERVING_GROUP,
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
    from recsys_assets.serving.model_repository import release_fingerprint, source_versions

    day, store = context.partition_key, storage.store
    spec = load_serving_spec(config_files.serving)
    checks = blocking_check_results(store, day)
    with postgres.connect() as conn:
        registry.ensure_schema(conn)
        version = registry.version_for_fingerprint(
            conn, spec.model_name, release_fingerprint(source_versions(store, day))
        )
        if version is None:
            raise Failure(f"no registered release for {day}: materialize model_repository for this partition first")
        passed = registry.record_checks(conn, spec.model_name, version, checks)
        current = registry.production_version(conn, spec.model_name)
        if not passed:
            decision = (
                f"not promoted: blocking checks failed or missing ({', '.join(k for k, v in checks.items() if not v)})"
            )
        elif current is not None and current >= version:
            decision = f"not promoted: production is already v{current} (>= v{version}); promote older versions by hand"
        else:
            registry.promote(
                conn,
                spec.model_name,
                version,
                reason=f"blocking checks passed for {day}",
                actor=f"dagster run {context.run_id}",
            )
            decision = f"promoted v{version} (replaced {current if current is not None else 'nothing'})"
        production = registry.production_version(conn, spec.model_name)
        history = registry.deployments(conn, spec.model_name)[-5:]
    context.log.info(decision)
    return MaterializeResult(
        metadata={
            "version": MetadataValue.int(version),
            "decision": decision,
            "promoted": decision.startswith("promoted"),
            "production_version": MetadataValue.int(production) if production is not None else None,
            "recent_deployments": md_table(
                ["action", "from", "to", "reason", "at"],
                [[h["action"], h["from_version"], h["to_version"], h["reason"], str(h["at"])[:19]] for h in history],
            ),
        }
    )


def publish_serving_config(store, conn, spec) -> tuple[dict, list[str]]:
    """Resolve the A/B arms against the registry and write a new config version if they changed."""
    production = registry.production_version(conn, spec.model_name)
    previous = registry.previous_production_version(conn, spec.model_name)
    arms, notes = resolve_arms(spec.ab, production, previous)
    return publish_config(
        store,
        arms,
        spec.ab,
        spec.model_name,
        notes,
        {"created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")},
        lambda cfg: serving_config_problems(store, conn, cfg),
    )


def serving_config_problems(store, conn, cfg: dict) -> list[str]:
    """validate_serving_config against what the registry and the model repository hold now."""
    from recsys_assets.serving.model_repository import release_versions

    registered = {v.version for v in registry.list_versions(conn, cfg["model_name"])}
    production = registry.production_version(conn, cfg["model_name"])
    return validate_serving_config(cfg, registered, set(release_versions(store)), production)


@asset(
    automation_condition=SERVE_NEWEST_DAY,
    partitions_def=daily_partitions,
    group_name=SERVING_GROUP,
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
) -> MaterializeResult:
    store = storage.store
    spec = load_serving_spec(config_files.serving)
    with postgres.connect() as conn:
        registry.ensure_schema(conn)
        cfg, problems = publish_serving_config(store, conn, spec)
    return MaterializeResult(
        metadata={
            "config_version": MetadataValue.int(cfg["config_version"]),
            "arms": md_table(
                ["arm", "model", "version", "traffic %", "buckets"],
                [
                    [
                        a["name"],
                        str(a["model"]),
                        a["model_version"],
                        a["traffic_pct"],
                        f"[{a['buckets'][0]}, {a['buckets'][1]})",
                    ]
                    for a in cfg["arms"]
                ],
            ),
            "notes": "; ".join(cfg.get("notes", [])) or "-",
            "problems": "; ".join(problems) or "none",
            "served": MetadataValue.bool(not problems),
            "path": MetadataValue.path(store.uri("serving_config", f"serving_config.v{cfg['config_version']}.json")),
        }
    )


def active_users(store, day: str) -> "pd.DataFrame":
    """Distinct users with events on the day and their latest attributes."""
    from recsys_assets.serving.feed import USER_COLUMNS
    from recsys_assets.training.loader import committed_events_dataset

    t = committed_events_dataset(store, [day]).to_table(columns=[*USER_COLUMNS, "event_ts"])
    df = t.to_pandas().sort_values("event_ts", kind="stable")
    return (
        df.drop_duplicates("user_id", keep="last")
        .drop(columns="event_ts")
        .sort_values("user_id")
        .reset_index(drop=True)
    )


@asset(
    automation_condition=SERVE_NEWEST_DAY,
    partitions_def=daily_partitions,
    group_name=SERVING_GROUP,
    deps=[serving_config, training_events, AssetKey(USER_HISTORY)],
    kinds={"postgres"},
    description="Top-K recommendations per active user of the day (retrieval -> ranker with the user's A/B arm's "
    "model version), replacing the day's rows of the Postgres `feed` table in one transaction.",
)
def feed(
    context: AssetExecutionContext,
    storage: StorageResource,
    config_files: ConfigFilesResource,
    postgres: PostgresResource,
) -> MaterializeResult:
    import pandas as pd

    from recsys_assets.serving.feed import ensure_feed_table, generate_feed, publish_feed, stratified_users
    from recsys_assets.serving.model_repository import load_release

    day, store = context.partition_key, storage.store
    spec = load_serving_spec(config_files.serving)
    cfg = latest_config(store)
    if cfg is None:
        raise Failure("no serving config published yet: materialize serving_config first")
    users = active_users(store, day)
    n_active = len(users)
    if spec.feed.sample_users_per_segment:
        users = stratified_users(users, spec.feed.stratify_by, spec.feed.sample_users_per_segment, spec.ab.salt)
    arms, versions = arm_of_buckets(
        user_buckets(users["user_id"].to_numpy(dtype=object), cfg["salt"], cfg["buckets"]), cfg
    )
    as_of = pd.Timestamp(window_of(day).end)
    history = None
    if store.is_committed(USER_HISTORY, day):  # each user's history as of the serving day
        from recsys_assets.training.history import read_history_table

        history = read_history_table(store, day)
    parts, per_arm, t0 = [], [], time.perf_counter()
    for version in sorted(set(versions.tolist())):
        release = load_release(store, int(version))
        mask = versions == version
        rows = generate_feed(
            release,
            users[mask].reset_index(drop=True),
            spec.feed.k_retrieve,
            spec.feed.k_feed,
            spec.feed.task_weights,
            spec.feed.feed_source,
            as_of,
            history=history,
        )
        arm_by_user = pd.Series(arms[mask], index=users.loc[mask, "user_id"].to_numpy())
        rows = rows.assign(model_version=int(version), arm=rows["user_id"].map(arm_by_user))
        parts.append(rows)
        for arm in sorted(set(arms[mask].tolist())):
            per_arm.append([arm, int(version), int((arms[mask] == arm).sum()), int((rows["arm"] == arm).sum())])
    rows = pd.concat(parts, ignore_index=True).assign(strategy_name=spec.feed.strategy_name, dt=day)
    gen_s = time.perf_counter() - t0
    with postgres.connect() as conn:
        ensure_feed_table(conn)
        written = publish_feed(conn, rows, spec.feed.strategy_name, day)
    example_user = rows["user_id"].iloc[0] if len(rows) else None
    example = rows[rows["user_id"] == example_user].head(10)
    return MaterializeResult(
        metadata={
            "dagster/row_count": MetadataValue.int(written),
            "active_users": MetadataValue.int(n_active),
            "published_users": MetadataValue.int(int(rows["user_id"].nunique())),
            "strategy_name": spec.feed.strategy_name,
            "serving_config_version": MetadataValue.int(cfg["config_version"]),
            "per_arm": md_table(["arm", "model version", "users", "rows"], per_arm),
            "example_feed": md_table(
                ["user", "rank", "item", "score"],
                [[r.user_id, int(r.rank), r.item_id, round(float(r.score), 4)] for r in example.itertuples()],
            ),
            "generate_seconds": MetadataValue.float(round(gen_s, 2)),
            "users_per_s": MetadataValue.float(round(len(users) / max(gen_s, 1e-9), 1)),
            "table": postgres.describe() + "#feed",
            "user_history": f"as of {day}" if history is not None else "none committed (history-free releases only)",
        }
    )


def _read_parquet_dir(store, path: str, what: str) -> "pd.DataFrame":
    import posixpath

    import pyarrow.dataset as pads

    if not store.exists(posixpath.join(path, "_SUCCESS")):
        raise Failure(f"{what} not found (no _SUCCESS under {path}); the serving side's log export writes it")
    return pads.dataset(path, filesystem=store.fs, format="parquet").to_table().to_pandas()


@asset(
    automation_condition=SERVE_NEWEST_DAY,
    partitions_def=daily_partitions,
    group_name=SERVING_GROUP,
    deps=[training_events, AssetKey(USER_HISTORY)],
    kinds={"pandas"},
    description="Per-feature PSI and KS between the day's training_events and the logged online feature sample "
    "(serving.yaml skew.online_feature_log); judged by the feature_skew_within_limits check.",
)
def feature_skew_report(
    context: AssetExecutionContext, storage: StorageResource, config_files: ConfigFilesResource
) -> MaterializeResult:
    import pandas as pd
    import pyarrow as pa

    from recsys_assets.serving.skew import HISTORY_LENGTH, feature_skew
    from recsys_assets.training.history import history_lengths
    from recsys_assets.training.loader import committed_events_dataset

    day, store = context.partition_key, storage.store
    spec = load_serving_spec(config_files.serving).skew
    online = _read_parquet_dir(store, log_path(spec.online_feature_log, store, day), "online feature log")
    cols = sorted({*spec.numeric_features, *spec.categorical_features, "user_id", "item_id"})
    offline = committed_events_dataset(store, [day]).to_table(columns=cols).to_pandas()
    if len(offline) > spec.max_offline_rows:  # hash sample: the same rows on every rerun
        h = pd.util.hash_array(
            offline["user_id"].to_numpy(dtype=object) + "|" + offline["item_id"].to_numpy(dtype=object)
        )
        offline = offline[h % len(offline) < spec.max_offline_rows]
    numeric = list(spec.numeric_features)
    # The history the models read: its length per row, offline from user_history (as of the day), online as the
    # server logged it. Compared when both sides have it (logs written before history existed do not).
    history_note = "not compared: no committed user_history for the day"
    if store.is_committed(USER_HISTORY, day):
        if HISTORY_LENGTH in online.columns:
            offline[HISTORY_LENGTH] = history_lengths(store, day, pa.array(offline["user_id"], pa.string()))
            numeric.append(HISTORY_LENGTH)
            history_note = "compared"
        else:
            history_note = f"not compared: the online feature log has no {HISTORY_LENGTH} column"
    rows = feature_skew(offline, online, numeric, spec.categorical_features, spec.bins, spec.max_psi, spec.max_ks)
    report = {
        "day": day,
        "max_psi": spec.max_psi,
        "max_ks": spec.max_ks,
        "features": rows,
        "offline_rows": int(len(offline)),
        "online_rows": int(len(online)),
        "history_length": history_note,
    }
    out = PartitionVersion.new(store, FEATURE_SKEW_REPORT, day, context.run_id)
    out.write_json("report.json", report)
    out.publish(row_count=len(rows))
    return MaterializeResult(
        metadata={
            "skew": md_table(
                ["feature", "kind", "PSI", "KS / max share diff", "passed"],
                [[r["feature"], r["kind"], r["psi"], r.get("ks", r.get("max_share_diff")), r["passed"]] for r in rows],
            ),
            "max_psi_observed": MetadataValue.float(max((r["psi"] for r in rows), default=0.0)),
            "max_ks_observed": MetadataValue.float(max((r.get("ks", 0.0) for r in rows), default=0.0)),
            "online_rows": MetadataValue.int(len(online)),
            "offline_rows": MetadataValue.int(len(offline)),
            "history_length": history_note,
        }
    )


@asset(
    partitions_def=daily_partitions,
    group_name=SERVING_GROUP,
    deps=[feed],
    kinds={"pandas"},
    description="CTR of the day's published feed from the serving logs: impressions (served on the next day) "
    "followed by a play of the item within plays_window_minutes, and the share of users with at least one such "
    "play, per A/B arm and model version.",
)
def online_evaluation(
    context: AssetExecutionContext, storage: StorageResource, config_files: ConfigFilesResource
) -> MaterializeResult:
    import pandas as pd

    from recsys_assets.serving.online_eval import online_metrics, read_raw_plays

    day, store = context.partition_key, storage.store
    spec = load_serving_spec(config_files.serving).online_evaluation
    impressions = _read_parquet_dir(store, log_path(spec.impressions_log, store, day), "impressions log")
    d0 = dt.date.fromisoformat(day)
    play_days = [(d0 + dt.timedelta(days=i)).isoformat() for i in (1, 2)]
    present = [d for d in play_days if store.exists(store.raw_partition_path("events", d))]
    if not present:
        raise Failure(f"no raw events for {play_days[0]}: plays after the feed was served are not in yet")
    plays = pd.concat([read_raw_plays(store, d) for d in present], ignore_index=True)
    window = pd.Timedelta(minutes=spec.plays_window_minutes)
    rows = online_metrics(impressions, plays, window)
    out = PartitionVersion.new(store, ONLINE_EVALUATION, day, context.run_id)
    out.write_json(
        "report.json", {"day": day, "window_minutes": spec.plays_window_minutes, "play_days": present, "arms": rows}
    )
    out.publish(row_count=len(impressions))
    return MaterializeResult(
        metadata={
            "online_ctr": md_table(
                ["arm", "model version", "impressions", "users", "clicks", "CTR", "user hit rate"],
                [
                    [
                        r["arm"],
                        r["model_version"],
                        r["impressions"],
                        r["users"],
                        r["clicks"],
                        round(r["ctr"], 5),
                        round(r["user_hit_rate"], 4),
                    ]
                    for r in rows
                ],
            ),
            "dagster/row_count": MetadataValue.int(len(impressions)),
            **{f"ctr_{r['arm']}": MetadataValue.float(round(r["ctr"], 6)) for r in rows},
            "play_days": ", ".join(present),
        }
    )


serving_assets = [model_repository, model_promotion, serving_config, feed, feature_skew_report, online_evaluation]
