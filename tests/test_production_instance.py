"""The production instance (deploy/production/dagster.yaml) on the local PostgreSQL server, driven by a real
dagster-daemon: a sensor tick on an upstream success file queues datagen, the queued run executes with its
checks, and everything is read back from PostgreSQL. Secrets never reach logs, metadata or stored events."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest
from dagster import AssetCheckKey, AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter

from tests.helpers import DAYS, PG_DSN, REPO, file_size, production_home, stop_process_tree, tail, wait_until

pytestmark = pytest.mark.slow

WEBHOOK_SECRET = "hooks-secret-0b7e4d"


def _datagen_runs(instance: DagsterInstance, statuses=None) -> list:
    """Runs of the datagen assets, whatever job launched them (Declarative Automation uses the asset job)."""
    return [
        r
        for r in instance.get_runs(RunsFilter(statuses=statuses) if statuses else None)
        if r.asset_selection and AssetKey("filtered_events") in r.asset_selection
    ]


def _datagen_progress(instance: DagsterInstance, log: Path):
    """What moves while the daemon works: its log (ticks, launches) and the datagen runs' statuses and events."""
    runs = _datagen_runs(instance)
    events = sum(len(instance.get_records_for_run(r.run_id, limit=10_000).records) for r in runs)
    return file_size(log), tuple(r.status for r in runs), events


# The daemon keeps running (and logging every tick) when the code location cannot load: that is a failure, not
# progress.
LOAD_ERRORS = ("Error loading repository location", "Error while importing code")


def _datagen_failed(instance: DagsterInstance, proc: subprocess.Popen, log: Path) -> str | None:
    if proc.poll() is not None:
        return f"dagster-daemon exited ({proc.returncode})"
    if any(e in tail(log, 200_000) for e in LOAD_ERRORS):
        return "the code location failed to load"
    bad = _datagen_runs(instance, [DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED])
    return f"datagen run {bad[0].run_id} ended {bad[0].status.value}" if bad else None


def test_daemon_sensor_tick_queues_datagen_and_postgres_holds_runs_events_checks_and_ticks(raw_root, tmp_path, pg_env):
    home, data = production_home(tmp_path, raw_root)
    for day in DAYS[1:]:  # upstream has delivered only the first day
        (data / "raw" / "daily_success_files" / day).unlink()
    env = {
        **os.environ,
        **pg_env,
        "DAGSTER_HOME": str(home),
        "RECSYS_DATA_ROOT": str(data),
        "RECSYS_SPARK_MASTER": "local[2]",
        "RECSYS_TRAINING_DEVICE": "cpu",
        "RECSYS_ERROR_WEBHOOK_URL": f"http://127.0.0.1:9/error?token={WEBHOOK_SECRET}",
        "RECSYS_INFO_WEBHOOK_URL": f"http://127.0.0.1:9/info?token={WEBHOOK_SECRET}",
        "PYSPARK_PYTHON": sys.executable,
        # The test's days are in 2024: Declarative Automation's lookback (default 60 days before today) must
        # reach them.
        "RECSYS_AUTOMATION_LOOKBACK_DAYS": "3650",
    }
    log = tmp_path / "daemon.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        instance = DagsterInstance.from_config(str(home))
        # Waits as long as the daemon and the run make progress (a loaded CI host is slow, not stuck), fails at once
        # when the daemon exits or the run fails.
        runs = wait_until(
            lambda: _datagen_runs(instance, [DagsterRunStatus.SUCCESS]),
            lambda: _datagen_progress(instance, log),
            "a successful datagen run",
            stall_s=300,
            limit_s=2400,
            failed=lambda: _datagen_failed(instance, proc, log),
            context=lambda: tail(log),
        )
    finally:
        stop_process_tree(proc)  # the daemon and the code server it started (in a session of its own)

    run = runs[0]
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    # The success-file sensor reported the day's raw inputs; Declarative Automation launched the day's datagen.
    assert run.tags["dagster/partition"] == DAYS[0]
    assert run.tags.get("dagster/from_automation_condition") == "true" or "dagster/backfill" in run.tags, run.tags
    # Exactly one datagen run: one success file, one report, one request (later ticks see it handled).
    assert len(_datagen_runs(instance)) == 1
    raw = instance.fetch_materializations(AssetKey(["raw", "events"]), limit=10).records
    assert [r.partition_key for r in raw] == [DAYS[0]]

    # The sensors' ticks, in PostgreSQL schedule storage.
    names = {s.instigator_name: s for s in instance.all_instigator_state()}
    assert {"raw_success_file_sensor", "declarative_automation"} <= set(names)
    auto = names["declarative_automation"]
    assert instance.get_ticks(auto.instigator_origin_id, auto.selector_id)

    # Materializations and check evaluations of that partition, read back from the PostgreSQL event log.
    mat = instance.get_latest_materialization_event(AssetKey("training_events")).asset_materialization
    assert mat.partition == DAYS[0] and mat.metadata["dagster/row_count"].value > 0
    checks = {}
    for key in instance.event_log_storage.get_asset_check_summary_records([k for k in _check_keys()]).values():
        if key.last_check_execution_record is not None:
            checks[key.asset_check_key.name] = key.last_check_execution_record.status.value
    assert checks["embedding_join_item_loss"] == "SUCCEEDED"
    assert checks["filter_item_loss_within_limits"] == "SUCCEEDED"

    # No secret anywhere: stored events, run config/tags, daemon log, compute logs.
    conn = psycopg2.connect(dbname=pg_env["DAGSTER_PG_DB"], **PG_DSN)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT event FROM event_logs")
        stored = "\n".join(r[0] for r in cur.fetchall())
        cur.execute("SELECT run_body FROM runs")
        stored += "\n".join(r[0] for r in cur.fetchall())
    conn.close()
    texts = [stored, log.read_text()] + [
        p.read_text(errors="ignore")
        for p in home.rglob("*")
        if p.is_file() and p.suffix in (".out", ".err", ".jsonl", ".log", ".txt")
    ]
    assert len(stored) > 10_000  # the event log was actually read
    for secret in (pg_env["DAGSTER_PG_PASSWORD"], WEBHOOK_SECRET):
        assert not any(secret in t for t in texts), secret


def _check_keys():
    from recsys_assets.datagen.day_checks import DAY_CHECKS

    return [AssetCheckKey(AssetKey(c.dataset), c.name) for c in DAY_CHECKS]
