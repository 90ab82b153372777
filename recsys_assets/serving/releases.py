"""A day's release and its promotion: the committed models and indexes exported as one version of the model
repository (recsys_assets/ml/release.py) and registered in the PostgreSQL registry with the data partitions, code
version, metrics and blocking-check outcomes it came from; promoted to production only when every blocking check
passed and it is newer than production. Plain functions over the store and a registry connection."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from dagster import Failure

from recsys_assets.core.datasets import DATASETS, RANKER_MODEL, RETRIEVAL_INDEX, RETRIEVAL_MODEL, TRAINING_EVENTS
from recsys_assets.core.readers import read_final_items
from recsys_assets.core.store_dirs import PartitionVersion
from recsys_assets.serving import registry
from resources.store import DatasetStore


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


def blocking_check_results(store: DatasetStore, day: str) -> dict[str, bool]:
    """Every blocking check of the day's released models and index, as recorded with their committed versions.
    The storage layer commits only versions whose blocking checks all passed, so a committed version carries
    `checks` all True; a missing entry (a version committed before gates existed) counts as not passed."""
    out = {}
    for dataset in (RANKER_MODEL, RETRIEVAL_MODEL, RETRIEVAL_INDEX):
        recorded = (store.read_manifest(dataset, day) or {}).get("checks", {})
        out.update({check: bool(recorded.get(check, False)) for check in DATASETS[dataset].blocking_checks})
    return out


@dataclass(frozen=True)
class RegisteredRelease:
    version: int
    created: bool
    components: dict
    checks: dict[str, bool]
    checks_passed: bool
    code_version: str
    num_items: int
    repository: str


def register_release(store: DatasetStore, conn, model_name: str, day: str, run_id: str) -> RegisteredRelease:
    """Register the day's committed artifacts (one registry version per set of source versions: a rerun finds the
    same version), export them as that version of the repository and record their blocking checks."""
    from recsys_assets.ml.features import build_item_catalog
    from recsys_assets.ml.release import (
        export_release,
        item_features_table,
        release_fingerprint,
        repository_path,
        source_versions,
    )

    sources = source_versions(store, day)
    train_info = PartitionVersion.committed(store, RETRIEVAL_MODEL, day).read_json("training.json")
    catalog = build_item_catalog([partial(read_final_items, store, d) for d in [*train_info["train_days"], day]])
    r_metrics = PartitionVersion.committed(store, RANKER_MODEL, day).read_json("metrics.json")
    t_metrics = PartitionVersion.committed(store, RETRIEVAL_MODEL, day).read_json("metrics.json")
    index_info = PartitionVersion.committed(store, RETRIEVAL_INDEX, day).read_json("index.json")
    metrics = {
        "ranker_auc": r_metrics["auc"],
        "retrieval": {k: v for k, v in t_metrics.items() if isinstance(v, (int, float))},
        "index_recall_vs_exact": index_info["recall_vs_exact"],
    }
    data_versions = {TRAINING_EVENTS: train_info["data_versions"], **sources}
    code, checks = code_version(), blocking_check_results(store, day)
    registry.ensure_schema(conn)
    version, created = registry.register_version(
        conn,
        model_name,
        day,
        release_fingerprint(sources),
        repository_path(store),
        code,
        data_versions,
        {},
        metrics,
        run_id,
    )
    extra = {"code_version": code, "data_versions": data_versions, "metrics": metrics}
    release = export_release(store, day, version, item_features_table(catalog), extra)
    registry.set_components(conn, model_name, version, release["components"])
    passed = registry.record_checks(conn, model_name, version, checks)
    return RegisteredRelease(
        version, created, release["components"], checks, passed, code, len(catalog), repository_path(store)
    )


@dataclass(frozen=True)
class Promotion:
    version: int
    decision: str
    production: int | None
    pinned: dict | None  # the rollback that pins production, if any
    recent: list[dict]

    @property
    def promoted(self) -> bool:
        return self.decision.startswith("promoted")


def describe_pin(pin: dict | None) -> str:
    if pin is None:
        return "no"
    return f"v{pin['to_version']} by rollback ({pin['reason'] or 'no reason'}; {pin['actor']}; {str(pin['at'])[:19]})"


def _refuse_unservable(store: DatasetStore, version: int, what: str) -> None:
    from recsys_assets.ml.release import release_problems

    if problems := release_problems(store, version):
        raise registry.PromotionRefused(f"{what} refused, nothing changed: {'; '.join(problems)}")


def promote_day(store: DatasetStore, conn, model_name: str, day: str, actor: str) -> Promotion:
    """Promote the day's registered release when all its blocking checks passed, its release is whole (every file,
    every hash), it is newer than production and no rollback pins production (one transaction, logged in
    model_deployments); otherwise say why not."""
    from recsys_assets.ml.release import release_fingerprint, source_versions

    checks = blocking_check_results(store, day)
    registry.ensure_schema(conn)
    version = registry.version_for_fingerprint(conn, model_name, release_fingerprint(source_versions(store, day)))
    if version is None:
        raise Failure(f"no registered release for {day}: materialize model_repository for this partition first")
    passed = registry.record_checks(conn, model_name, version, checks)
    current, pinned = registry.production_version(conn, model_name), registry.pin(conn, model_name)
    if not passed:
        decision = (
            f"not promoted: blocking checks failed or missing ({', '.join(k for k, v in checks.items() if not v)})"
        )
    elif current is not None and current >= version:
        decision = f"not promoted: production is already v{current} (>= v{version}); promote older versions by hand"
    elif pinned is not None:
        decision = (
            f"not promoted: production pinned to {describe_pin(pinned)}; a person unpins it by promoting a version "
            "(python -m recsys_assets.serving.registry promote --version N)"
        )
    else:
        try:
            _refuse_unservable(store, version, f"promotion of v{version}")
        except registry.PromotionRefused as e:
            raise Failure(str(e)) from None
        registry.promote(conn, model_name, version, reason=f"blocking checks passed for {day}", actor=actor)
        decision = f"promoted v{version} (replaced {current if current is not None else 'nothing'})"
    production = registry.production_version(conn, model_name)
    return Promotion(version, decision, production, pinned, registry.deployments(conn, model_name)[-5:])


def _registry_and_config_together(store: DatasetStore, conn, spec) -> dict:
    """Inside the caller's open registry transaction: the serving config the change implies, validated before
    anything is written, then written and the transaction committed; on any problem the transaction is rolled back
    and nothing is written (registry and served config never split)."""
    from recsys_assets.serving.serving_config import (
        publish_serving_config,
        resolved_serving_config,
        serving_config_problems,
    )

    try:
        draft, _ = resolved_serving_config(conn, spec)
        if problems := serving_config_problems(store, conn, draft):
            raise registry.PromotionRefused(f"the serving config it implies is invalid: {'; '.join(problems)}")
        cfg, problems = publish_serving_config(store, conn, spec)
        if problems:
            raise registry.PromotionRefused(f"the serving config it implies is invalid: {'; '.join(problems)}")
    except BaseException:
        conn.rollback()
        raise
    conn.commit()
    return cfg


def rollback_production(store: DatasetStore, conn, spec, reason: str, actor: str) -> tuple[int, int, dict]:
    """Production back to the version it replaced, and the serving config for the new arms, together: the target
    release is verified first (every file present with its recorded hash), and a refusal changes nothing. The
    rollback pins production (promote_day leaves it alone) until a person promotes a version. Returns
    (from_version, to_version, the published serving config)."""
    registry.ensure_schema(conn)
    current, target = registry.rollback_target(conn, spec.model_name)
    _refuse_unservable(store, target, f"rollback v{current} -> v{target}")
    registry.rollback(conn, spec.model_name, reason, actor, commit=False)
    return current, target, _registry_and_config_together(store, conn, spec)


def promote_version(store: DatasetStore, conn, spec, version: int, reason: str, actor: str) -> tuple[int | None, dict]:
    """A person makes `version` production (unpinning a rollback): verified, registry and serving config together."""
    registry.ensure_schema(conn)
    _refuse_unservable(store, version, f"promotion of v{version}")
    replaced = registry.promote(conn, spec.model_name, version, reason, actor, commit=False)
    return replaced, _registry_and_config_together(store, conn, spec)
