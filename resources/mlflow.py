"""MLflow: the team's view of every training run and release (the PostgreSQL registry stays the serving source of
truth).

`MlflowResource(tracking_uri=...)`: empty = tracking off (the tests' default); `sqlite:///...` for the embedded demo
(`make demo`, `make ui` also starts the MLflow UI on it); `http(s)://...` for a tracking server (production: `mlflow
server` with a PostgreSQL backend store and gs:// artifacts, deploy/). A tracking server that is down never fails a
run: each call has a short deadline and no retry storm (MLflow's HTTP client would otherwise retry for minutes), the
error is returned to the caller, which reports it and queues the payload for `log_run` again later
(recsys_assets/training/tracking.py).

A run payload is plain JSON: {"experiment", "run_name", "key" (what makes it one run: a model version), "tags",
"params", "metrics": [[name, value, step], ...]}. Logging is idempotent per key: a payload whose key already has a
finished run is not logged twice (a replay after a lost answer).
"""

from __future__ import annotations

import contextlib
import os
import re
import time

from dagster import ConfigurableResource
from pydantic import Field

KEY_TAG = "recsys.key"
RELEASE_TAG = "recsys.release"
_MAX_PARAM = 6000  # MLflow's limit on a param value
# The client's own retries: off (we queue and replay), and a short deadline a request.
_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# What a step reports when tracking is off (the training assets, the registry mirror).
TRACKING_OFF = {"mlflow": "off (no tracking URI: set MLFLOW_TRACKING_URI)"}


def metric_name(name: str) -> str:
    """A name MLflow accepts for a metric or param (letters, digits, _ - . / space and :): '@' spelled '_at_',
    parentheses dropped ("two-tower (history)" -> "two-tower history"), anything else '_'."""
    return re.sub(r"[^\w\-./ :]", "_", name.replace("@", "_at_").replace("(", "").replace(")", ""))


@contextlib.contextmanager
def _bounded_http():
    saved = {k: os.environ.get(k) for k in _HTTP_ENV}
    os.environ.update(_HTTP_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class MlflowResource(ConfigurableResource):
    tracking_uri: str = Field(default="", description="MLflow tracking URI; empty = tracking off.")
    ui_url: str = Field(default="", description="Base URL of the MLflow UI for links in asset metadata.")
    artifact_root: str = Field(
        default="", description="Artifact location of new experiments (a directory, gs://...); empty = the store's."
    )

    @property
    def enabled(self) -> bool:
        return bool(self.tracking_uri)

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def run_link(self, experiment_id: str, run_id: str) -> str:
        base = (self.ui_url or (self.tracking_uri if self.tracking_uri.startswith("http") else "")).rstrip("/")
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}" if base else ""

    def log_run(self, payload: dict, artifacts: dict[str, dict] | None = None) -> tuple[str, str]:
        """Log one run (see the module doc) and `artifacts` (path in the run -> JSON document); returns (experiment
        id, run id). Raises what the tracking store raised."""
        with _bounded_http():
            client = self.client()
            exp = client.get_experiment_by_name(payload["experiment"])
            exp_id = exp.experiment_id if exp else self._create_experiment(client, payload["experiment"])
            done = client.search_runs([exp_id], filter_string=f"tags.`{KEY_TAG}` = '{payload['key']}'", max_results=5)
            finished = [r for r in done if r.info.status == "FINISHED"]
            if finished:
                return exp_id, finished[0].info.run_id
            run = client.create_run(
                exp_id, run_name=payload["run_name"], tags={**payload["tags"], KEY_TAG: payload["key"]}
            )
            rid = run.info.run_id
            from mlflow.entities import Metric, Param

            params = [Param(metric_name(k), str(v)[:_MAX_PARAM]) for k, v in sorted(payload["params"].items())]
            now = int(time.time() * 1000)
            metrics = [Metric(metric_name(n), float(v), now, int(step)) for n, v, step in payload["metrics"]]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
                client.log_batch(rid, params=params[i : i + 100])
            for i in range(0, len(metrics), 1000):
                client.log_batch(rid, metrics=metrics[i : i + 1000])
            for path, doc in (artifacts or {}).items():
                client.log_dict(rid, doc, path)
            client.set_terminated(rid, "FINISHED")
            return exp_id, rid

    def mirror_release(self, name: str, version: int, manifest: dict, tags: dict[str, str]) -> str:
        """Register release `version` as a version of registered model `name` (idempotent: found again by its tag):
        a run in the `releases` experiment holds its release.json as an artifact and the tags, and the model version
        points at it. Returns the MLflow model version."""
        with _bounded_http():
            client = self.client()
            found = self._model_version(client, name, version)
            if found is not None:
                return found
            if not client.search_registered_models(filter_string=f"name = '{name}'"):
                client.create_registered_model(name, description="Recommender releases mirrored from the platform")
            tags = {**tags, RELEASE_TAG: str(version)}
            payload = {
                "experiment": f"{name}/releases",
                "run_name": f"release {version}",
                "key": f"release/{version}",
                "tags": tags,
                "params": {},
                "metrics": [],
            }
            _, rid = self.log_run(payload, artifacts={"release/release.json": manifest})
            mv = client.create_model_version(name, source=f"runs:/{rid}/release", run_id=rid, tags=tags)
            return str(mv.version)

    def set_aliases(self, name: str, aliases: dict[str, int | None]) -> dict[str, str | None]:
        """alias -> release version of registered model `name` (None: the alias is removed); the releases must be
        mirrored. Returns alias -> MLflow model version."""
        out: dict[str, str | None] = {}
        with _bounded_http():
            client = self.client()
            for alias, release in aliases.items():
                mv = None if release is None else self._model_version(client, name, release)
                if release is not None and mv is None:
                    raise LookupError(f"release {release} is not mirrored into MLflow model {name}")
                if mv is None:
                    with contextlib.suppress(Exception):  # no such alias: nothing to remove
                        client.delete_registered_model_alias(name, alias)
                else:
                    client.set_registered_model_alias(name, alias, mv)
                out[alias] = mv
        return out

    def _create_experiment(self, client, name: str) -> str:
        location = f"{self.artifact_root.rstrip('/')}/{metric_name(name)}" if self.artifact_root else None
        return client.create_experiment(name, artifact_location=location)

    def _model_version(self, client, name: str, release: int) -> str | None:
        hits = client.search_model_versions(filter_string=f"name = '{name}' and tags.`{RELEASE_TAG}` = '{release}'")
        return str(hits[0].version) if hits else None
