"""Each trained model version as one MLflow run (resources/mlflow.py), and the queue of runs a tracking server that
was down did not take.

The payload is built from what the model asset already publishes (training.json's window, versions, settings,
hyperparameters and epoch history; metrics.json's validation metrics): params (window days, the training_events
version of each day, vocab version, settings, hyperparameters), metrics (per epoch: loss, holdout loss, samples/s;
final: every numeric validation metric, per task and per method), tags (model, partition, version, the version's
URI in the data root: the artifacts stay there, MLflow links to them). When logging fails the payload is written to
`mlflow_pending/` in the data root, the asset reports it, and `mlflow_replay_sensor` logs it once the server answers
(idempotent: a run is keyed by its model version).
"""

from __future__ import annotations

import logging
import math
import re

import pyarrow.fs as pafs
from dagster import MetadataValue

from resources.mlflow import TRACKING_OFF, MlflowResource
from resources.store import DatasetStore

log = logging.getLogger("recsys.tracking")
PENDING_DIR = "mlflow_pending"
PAYLOAD_KEYS = {"experiment", "run_name", "key", "tags", "params", "metrics"}


def _flat(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def training_payload(model: str, day: str, uri: str, version: str, info: dict, metrics: dict, run_id: str) -> dict:
    params: dict = {
        "train_days": ",".join(info["train_days"]),
        "validation_day": info["validation_day"],
        "vocab_version": info.get("vocab_version"),
        **{f"training_events.{d}": v for d, v in (info.get("data_versions") or {}).items()},
    }
    _flat("hyper", info.get("hyper", {}), params)
    _flat("settings", info.get("settings", {}), params)
    rows = []
    for h in info.get("history", []):
        for name in ("loss", "holdout_loss", "samples_per_s"):
            if isinstance(h.get(name), int | float):
                rows.append([f"epoch.{name}", float(h[name]), int(h["epoch"])])
    final: dict = {}
    _flat("", metrics, final)
    for name, v in sorted(final.items()):
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            rows.append([name, float(v), 0])
    return {
        "experiment": f"recsys/{model}",
        "run_name": f"{model} {day}",
        "key": f"{model}/{day}/{version}",
        "tags": {
            "recsys.model": model,
            "recsys.partition": day,
            "recsys.version": version,
            "recsys.artifact_uri": uri,
            "dagster.run_id": run_id,
            **({"best_epoch": str(info["best_epoch"])} if info.get("best_epoch") is not None else {}),
        },
        "params": {k: v for k, v in params.items() if v is not None},
        "metrics": rows,
    }


def pending_path(store: DatasetStore, key: str) -> str:
    return store.path(PENDING_DIR, re.sub(r"[^\w.-]", "_", key) + ".json")


def track(mlflow: MlflowResource, store: DatasetStore, payload: dict) -> dict:
    """Log the payload; the asset metadata saying what happened. Never raises for the tracking store."""
    if not mlflow.enabled:
        return dict(TRACKING_OFF)
    try:
        exp_id, run_id = mlflow.log_run(payload)
    except Exception as e:  # a down or failing tracking server never fails the training run
        path = pending_path(store, payload["key"])
        store.write_json_atomic(path, payload)
        log.warning("MLflow run %s not logged (%s); queued at %s", payload["key"], type(e).__name__, path)
        reason = f"{type(e).__name__}: {str(e)[:200]}"
        return {
            "mlflow": f"not logged ({reason}); queued at {path}, mlflow_replay_sensor logs it once the server answers"
        }
    link = mlflow.run_link(exp_id, run_id)
    return {"mlflow_run_id": run_id, **({"mlflow_run": MetadataValue.url(link)} if link else {})}


def pending_payloads(store: DatasetStore) -> list[tuple[str, dict | None]]:
    """(path, payload) for each queued run, oldest name first; payload None for a file that is not one of ours (the
    data root is untrusted: such a file is reported, never logged)."""
    infos = store.fs.get_file_info(pafs.FileSelector(store.path(PENDING_DIR), allow_not_found=True))
    out = []
    for info in sorted((i for i in infos if i.base_name.endswith(".json")), key=lambda i: i.base_name):
        try:
            payload = store.read_json(info.path)
        except (OSError, ValueError):
            payload = None
        if not isinstance(payload, dict) or set(payload) != PAYLOAD_KEYS:
            payload = None
        out.append((info.path, payload))
    return out


def replay_pending(mlflow: MlflowResource, store: DatasetStore) -> dict:
    """Log every queued run the server takes now; stops at the first failure (the server is still down)."""
    logged, invalid, error = [], [], None
    for path, payload in pending_payloads(store):
        if payload is None:
            invalid.append(path)
            continue
        try:
            mlflow.log_run(payload)
        except Exception as e:
            error = f"{type(e).__name__}: {str(e)[:200]}"
            break
        store.fs.delete_file(path)
        logged.append(payload["key"])
    return {"logged": logged, "invalid": invalid, "error": error}
