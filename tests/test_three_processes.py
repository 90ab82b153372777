"""The deployment topology as three processes, the way compose and the Helm chart run it: the code location's gRPC
server (started with the image's own ENTRYPOINT arguments), `dagster-webserver` and `dagster-daemon` loading nothing
but deploy/production/workspace.yaml (a grpc_server entry), on the production instance (PostgreSQL). A job launched
through the webserver's GraphQL API is queued, dequeued by the daemon and executed by a run worker the code server
starts; its materializations and check evaluations are read back from PostgreSQL."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from dagster import AssetCheckKey, AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, EventRecordsFilter

from tests.helpers import DAYS, REPO, file_size, free_port, production_home, stop_process_tree, tail, wait_until

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
LOCATIONS = """
{ workspaceOrError { ... on Workspace { locationEntries {
    name loadStatus displayMetadata { key value }
    locationOrLoadError { __typename ... on PythonError { message } }
} } } }"""


def image_entrypoint() -> list[str]:
    """The code-location image's ENTRYPOINT (deploy/code-location.Dockerfile), as the container would run it."""
    text = (REPO / "deploy" / "code-location.Dockerfile").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("ENTRYPOINT "))
    return json.loads(line[len("ENTRYPOINT ") :])


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def test_webserver_daemon_and_code_server_as_three_processes_on_postgres(raw_root, tmp_path, pg_env):
    home, data = production_home(tmp_path, raw_root)
    # No success files: no sensor reports a day, so the only run is the one launched through the API.
    shutil.rmtree(data / "raw" / "daily_success_files")
    grpc_port, web_port = free_port(), free_port()
    env = {
        **os.environ,
        **pg_env,
        "DAGSTER_HOME": str(home),
        "RECSYS_DATA_ROOT": str(data),
        "RECSYS_SPARK_MASTER": "local[2]",
        "PYSPARK_PYTHON": sys.executable,
        "RECSYS_CODE_SERVER_HOST": "127.0.0.1",
        "RECSYS_CODE_SERVER_PORT": str(grpc_port),
    }
    workspace = str(REPO / "deploy" / "production" / "workspace.yaml")
    entry = image_entrypoint()
    assert entry[:3] == ["dagster", "code-server", "start"]
    args = entry[3:]
    args[args.index("-h") + 1], args[args.index("-p") + 1] = "127.0.0.1", str(grpc_port)
    logs = {name: tmp_path / f"{name}.log" for name in ("code", "webserver", "daemon")}
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["code"] = start([str(BIN / "dagster"), "code-server", "start", *args], env, logs["code"])

        def alive() -> str | None:
            dead = [f"{n} exited ({p.returncode}): {tail(logs[n])}" for n, p in procs.items() if p.poll() is not None]
            return dead[0] if dead else None

        health = [str(BIN / "dagster"), "api", "grpc-health-check", "-p", str(grpc_port), "--host", "127.0.0.1"]
        wait_until(
            lambda: subprocess.run(health, capture_output=True, env=env).returncode == 0,
            lambda: file_size(logs["code"]),
            "the code server to serve",
            failed=alive,
            context=lambda: tail(logs["code"]),
        )
        procs["webserver"] = start(
            [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(web_port), "-w", workspace],
            env,
            logs["webserver"],
        )
        procs["daemon"] = start([str(BIN / "dagster-daemon"), "run", "-w", workspace], env, logs["daemon"])
        url = f"http://127.0.0.1:{web_port}/graphql"

        def graphql(query: str, variables: dict | None = None) -> dict:
            r = requests.post(url, json={"query": query, "variables": variables or {}}, timeout=60)
            r.raise_for_status()
            return r.json()["data"]

        def loaded():
            try:
                entries = graphql(LOCATIONS)["workspaceOrError"]["locationEntries"]
            except (requests.RequestException, KeyError, TypeError):
                return None
            return entries if entries and entries[0]["loadStatus"] == "LOADED" else None

        entries = wait_until(
            loaded, lambda: file_size(logs["webserver"]), "the webserver to load the gRPC location", failed=alive
        )
        # The webserver loaded the location from the gRPC server, not from code of its own.
        assert [e["name"] for e in entries] == ["recsys_platform"]
        assert entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation"
        meta = {m["key"]: m["value"] for m in entries[0]["displayMetadata"]}
        assert meta.get("port") == str(grpc_port) and meta.get("host") == "127.0.0.1", meta

        params = {
            "selector": {
                "repositoryLocationName": "recsys_platform",
                "repositoryName": "__repository__",
                "jobName": "datagen_job",
            },
            "runConfigData": {},
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": DAYS[0]}]},
        }
        launched = graphql(LAUNCH, {"params": params})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        assert launched["run"]["status"] == "QUEUED"  # the production instance queues; the daemon dequeues

        instance = DagsterInstance.from_config(str(home))

        def status():
            run = instance.get_run_by_id(run_id)
            return run.status if run else None

        def ended():
            return status() in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)

        wait_until(
            ended,
            lambda: (status(), len(instance.all_logs(run_id)), file_size(logs["daemon"])),
            "the launched run to finish",
            stall_s=300,
            limit_s=2400,
            failed=alive,
            context=lambda: "\n".join(f"--- {n}\n{tail(p)}" for n, p in logs.items()),
        )
    finally:
        for proc in procs.values():
            stop_process_tree(proc)

    assert status() == DagsterRunStatus.SUCCESS, "\n".join(f"--- {n}\n{tail(p)}" for n, p in logs.items())
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    events = [e.dagster_event for e in instance.all_logs(run_id) if e.dagster_event]
    types = [e.event_type for e in events]
    # Queued (the webserver's launch only enqueues), then started by the daemon's run queue (no other process
    # dequeues), then executed by a run worker process of its own.
    assert types.index(DagsterEventType.RUN_ENQUEUED) < types.index(DagsterEventType.RUN_STARTING)
    assert types.index(DagsterEventType.RUN_STARTING) < types.index(DagsterEventType.RUN_START)
    step_pids = {
        e.dagster_event.pid for e in instance.all_logs(run_id) if e.dagster_event and e.dagster_event.is_step_event
    }
    assert step_pids and not step_pids & {p.pid for p in procs.values()}  # a run worker of its own

    # Materializations and check evaluations of the partition, read back from PostgreSQL.
    mats = instance.get_event_records(
        EventRecordsFilter(DagsterEventType.ASSET_MATERIALIZATION, asset_key=AssetKey("training_events")), limit=5
    )
    assert [m.asset_materialization.partition for m in mats] == [DAYS[0]]
    assert mats[0].asset_materialization.metadata["dagster/row_count"].value > 0
    key = AssetCheckKey(AssetKey("filtered_events"), "filter_item_loss_within_limits")
    summary = instance.event_log_storage.get_asset_check_summary_records([key])[key]
    assert summary.last_check_execution_record.status.value == "SUCCEEDED"
    assert shlex.join(entry[3:]).startswith("-h 0.0.0.0 -p 4000 -m recsys_assets.definitions")
