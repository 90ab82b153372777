"""MLflow tracking against a real `mlflow server` on the local PostgreSQL (the `mlflow_server` fixture): a training
run logged once and read back, a down server never failing the caller, its runs queued and replayed."""

from __future__ import annotations

from dagster import build_sensor_context

from recsys_assets.training.sensors import mlflow_replay_sensor
from recsys_assets.training.tracking import PENDING_DIR, pending_payloads, replay_pending, track, training_payload
from resources.mlflow import MlflowResource
from resources.storage import StorageResource
from resources.store import DatasetStore
from tests.helpers import free_port

DAY = "2024-03-03"
INFO = {
    "train_days": ["2024-03-01", "2024-03-02"],
    "validation_day": DAY,
    "vocab_version": "vocab-v7",
    "data_versions": {"2024-03-01": "te-a", "2024-03-02": "te-b", DAY: "te-c"},
    "hyper": {"embedding_dim": 16, "history_len": 20, "expert_sizes": [128, 64]},
    "settings": {"seed": 7, "batch_size": 512, "device": "cpu"},
    "history": [
        {"epoch": 0, "loss": 0.71, "holdout_loss": 0.69, "samples": 1000, "seconds": 1.0, "samples_per_s": 1000.0},
        {"epoch": 1, "loss": 0.62, "holdout_loss": 0.66, "samples": 1000, "seconds": 0.8, "samples_per_s": 1250.0},
    ],
    "best_epoch": 1,
}
METRICS = {
    "validation_day": DAY,
    "auc": {"liked": 0.75, "shared": 0.7},
    "auc_history_free": {"liked": float("nan")},  # not finite: not logged
    "methods": {"two-tower (history)": {"recall@10": 0.37}},
    "history_len": 20,
}


def payload(model: str, version: str) -> dict:
    uri = f"file:///data/{model}/dt={DAY}/v={version}"
    return training_payload(model, DAY, uri, version, INFO, METRICS, "dagster-run-1")


def test_a_training_run_is_logged_once_and_read_back(mlflow_server, tmp_path):
    mlflow, store = MlflowResource(tracking_uri=mlflow_server), DatasetStore(str(tmp_path))
    p = payload("ranker_model", "v1")
    meta = track(mlflow, store, p)
    client = mlflow.client()
    run = client.get_run(meta["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == f"ranker_model {DAY}"
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["train_days"] == "2024-03-01,2024-03-02" and params["training_events.2024-03-02"] == "te-b"
    assert (
        params["hyper.history_len"] == "20" and params["settings.seed"] == "7" and params["vocab_version"] == "vocab-v7"
    )
    assert metrics["auc.liked"] == 0.75 and metrics["methods.two-tower history.recall_at_10"] == 0.37
    assert "auc_history_free.liked" not in metrics
    losses = client.get_metric_history(run.info.run_id, "epoch.loss")
    assert sorted((m.step, m.value) for m in losses) == [(0, 0.71), (1, 0.62)]
    assert tags["recsys.artifact_uri"] == f"file:///data/ranker_model/dt={DAY}/v=v1" and tags["recsys.version"] == "v1"
    assert meta["mlflow_run"].url == f"{mlflow_server}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    # Idempotent per model version: a replay of the same payload finds the run instead of logging a second one.
    assert track(mlflow, store, p)["mlflow_run_id"] == run.info.run_id
    # (the server is the session's: other tests' runs share the experiment, so count this model version's)
    same_key = client.search_runs([run.info.experiment_id], filter_string=f"tags.`recsys.key` = '{p['key']}'")
    assert [r.info.run_id for r in same_key] == [run.info.run_id]
    assert pending_payloads(store) == []
    assert track(MlflowResource(), store, p) == {"mlflow": "off (no tracking URI: set MLFLOW_TRACKING_URI)"}


def test_a_down_server_queues_the_run_and_the_replay_sensor_logs_it(mlflow_server, tmp_path):
    store = DatasetStore(str(tmp_path))
    down, up = (
        MlflowResource(tracking_uri=f"http://127.0.0.1:{free_port()}"),
        MlflowResource(tracking_uri=mlflow_server),
    )
    p = payload("retrieval_model", "v9")
    meta = track(down, store, p)  # returns: the training run goes on
    assert "mlflow_run_id" not in meta and "queued at" in meta["mlflow"]
    assert [q for _, q in pending_payloads(store)] == [p]
    store.write_json_atomic(store.path(PENDING_DIR, "zz_foreign.json"), {"not": "ours"})  # untrusted data root

    def tick(mlflow: MlflowResource) -> str:
        resources = {"storage": StorageResource(data_root=str(tmp_path)), "mlflow": mlflow}
        return mlflow_replay_sensor(build_sensor_context(resources=resources)).skip_message

    assert "still fails" in tick(down) and len(pending_payloads(store)) == 2
    assert tick(up).startswith("logged 1 queued MLflow run(s): retrieval_model/2024-03-03/v9")
    left = pending_payloads(store)
    assert [q for _, q in left] == [None] and left[0][0].endswith("zz_foreign.json")  # reported, never logged
    runs = up.client().search_runs(
        [up.client().get_experiment_by_name("recsys/retrieval_model").experiment_id],
        filter_string="tags.`recsys.version` = 'v9'",
    )
    assert len(runs) == 1 and runs[0].data.metrics["auc.shared"] == 0.7
    assert replay_pending(up, store) == {"logged": [], "invalid": [left[0][0]], "error": None}
