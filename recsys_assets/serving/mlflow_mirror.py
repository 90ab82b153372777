"""Releases mirrored into MLflow registered models, and the `production` / `holdback` aliases kept equal to the
PostgreSQL registry (which stays the serving source of truth; MLflow is the team's view).

Both are state, not events: every `model_repository`, `serving_config` and rollback sets them from the registry
again (mirroring any release MLflow lacks), so a tracking server that was down when a release was promoted is
brought up to date by the next of those; nothing here fails a run.
"""

from __future__ import annotations

import json
import logging

from recsys_assets.ml.release import RELEASE_FILE, RELEASE_MODEL, version_dir
from recsys_assets.serving import registry
from resources.mlflow import TRACKING_OFF, MlflowResource
from resources.store import DatasetStore

log = logging.getLogger("recsys.mlflow")


def mirror(mlflow: MlflowResource, store: DatasetStore, name: str, version: int) -> str:
    release_dir = version_dir(store, RELEASE_MODEL, version)
    manifest = release_dir.read_json(RELEASE_FILE)
    tags = {"recsys.partition": str(manifest.get("partition_day")), "recsys.repository": store.uri_of(release_dir.root)}
    return mlflow.mirror_release(name, version, manifest, tags)


def sync_mlflow(mlflow: MlflowResource, store: DatasetStore, conn, name: str, also: int | None = None) -> dict:
    """Mirror `also` (a release just registered) and the registry's production and previous-production releases,
    then point the aliases at them. Asset metadata saying what happened."""
    if not mlflow.enabled:
        return dict(TRACKING_OFF)
    aliases = {
        "production": registry.production_version(conn, name),
        "holdback": registry.previous_production_version(conn, name),
    }
    try:
        mirrored = {v: mirror(mlflow, store, name, v) for v in sorted({also, *aliases.values()} - {None})}
        set_to = mlflow.set_aliases(name, aliases)
    except Exception as e:  # a down tracking server never fails the run; the next sync retries
        log.warning("MLflow registry of %s not updated (%s)", name, type(e).__name__)
        return {"mlflow": f"registry not updated ({type(e).__name__}: {str(e)[:200]}); the next sync retries"}
    return {
        "mlflow_model": name,
        "mlflow_versions": json.dumps({str(k): v for k, v in mirrored.items()}),
        "mlflow_aliases": json.dumps(set_to),
    }
