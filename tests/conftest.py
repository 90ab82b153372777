"""Shared fixtures: one local Spark session for the whole test run, small generated raw data with dirty rows,
a temporary persistent Dagster instance, and fresh PostgreSQL databases; and the markers that keep `make test-fast`
free of Spark, database servers, daemons and browsers (RECSYS_TEST_FAST=1 makes a test that reaches for one fail)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from dagster import DagsterInstance

from recsys_assets.synthetic.generator import SyntheticConfig, generate
from resources.notifier import NotifierResource
from resources.spark import SparkResource
from resources.storage import StorageResource
from resources.store import DatasetStore
from tests.helpers import DAYS, PG_DSN, SMALL, free_port, run_job

# Tests that track do so into their own MLflow server (the `mlflow_server` fixture, MLFLOW_TRACKING_URI set by the
# test): never into a tracking server the developer's shell points at.
os.environ.pop("MLFLOW_TRACKING_URI", None)

SPARK_FIXTURES = {"spark", "spark_resource", "datagen_root", "trained_root"}
POSTGRES_FIXTURES = {"pg_database", "pg_env", "mlflow_server"}


def pytest_collection_modifyitems(items):
    # Tests that start (or share) a Spark session, or use the PostgreSQL server, are outside `make test-fast`.
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if SPARK_FIXTURES & fixtures:
            item.add_marker(pytest.mark.spark)
        if POSTGRES_FIXTURES & fixtures:
            item.add_marker(pytest.mark.postgres)


def _unavailable(what: str, marker: str):
    def refuse(*args, **kwargs):
        raise RuntimeError(f"`make test-fast` runs without {what}: mark this test `{marker}` (or `slow`)")

    return refuse


def pytest_configure(config):
    """`make test-fast` (RECSYS_TEST_FAST=1): a test outside the spark/postgres/slow markers that starts a Spark
    session or connects to PostgreSQL fails at once, so the fast selection really needs none of them."""
    if os.environ.get("RECSYS_TEST_FAST") != "1":
        return
    import psycopg2
    from pyspark.sql import SparkSession

    psycopg2.connect = _unavailable("a database server", "postgres")
    SparkSession.Builder.getOrCreate = _unavailable("a Spark session", "spark")


@pytest.fixture(scope="session")
def spark_resource() -> SparkResource:
    return SparkResource(master="local[2]", shuffle_partitions=4, driver_memory="2g")


@pytest.fixture(scope="session")
def spark(spark_resource):
    return spark_resource.get_session()


@pytest.fixture(scope="session")
def raw_root(tmp_path_factory) -> Path:
    """Three days of small synthetic raw data (read-only for tests: copy it before changing anything)."""
    root = tmp_path_factory.mktemp("raw_data")
    generate(DatasetStore(str(root)), SyntheticConfig(start_date=DAYS[0], num_days=len(DAYS), **SMALL))
    return root


@pytest.fixture()
def data_root(raw_root, tmp_path) -> Path:
    """A private copy of the generated data for one test."""
    dst = tmp_path / "data"
    shutil.copytree(raw_root, dst)
    return dst


@pytest.fixture()
def store(data_root) -> DatasetStore:
    return DatasetStore(str(data_root))


@pytest.fixture()
def instance(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    # A real persistent instance (SQLite under a temp DAGSTER_HOME), as the demo and `dagster dev` use.
    with DagsterInstance.from_config(str(home)) as inst:
        yield inst


@pytest.fixture()
def resources(spark_resource, data_root, tmp_path):
    return {
        "spark": spark_resource,
        "storage": StorageResource(data_root=str(data_root)),
        "notifier": NotifierResource(jsonl_path=str(tmp_path / "notifications.jsonl"), backoff_s=0.01),
    }


@pytest.fixture(autouse=True)
def _dagster_home(tmp_path, monkeypatch):
    # Notifier defaults and anything reading DAGSTER_HOME stay inside the test's tmp dir.
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    yield


@pytest.fixture(scope="session")
def datagen_root(raw_root, spark_resource, tmp_path_factory) -> Path:
    """The three raw days with every datagen asset and user_history materialized (read-only for tests: copy it
    first)."""
    from dagster import DagsterInstance

    root = tmp_path_factory.mktemp("datagen_data") / "data"
    shutil.copytree(raw_root, root)
    res = {
        "spark": spark_resource,
        "storage": StorageResource(data_root=str(root)),
        "notifier": NotifierResource(jsonl_path=str(root.parent / "n.jsonl")),
    }
    for day in DAYS:
        # datagen_job includes the blocking checks: a staged version is committed only when they pass.
        assert run_job("datagen_job", day, DagsterInstance.ephemeral(), res).success
    for day in DAYS:  # in date order: each day's history extends the day before's
        assert run_job("user_history_job", day, DagsterInstance.ephemeral(), res).success
    return root


@pytest.fixture()
def trained_root(datagen_root, tmp_path) -> Path:
    """A private copy of the datagen output for one training test."""
    dst = tmp_path / "data"
    shutil.copytree(datagen_root, dst)
    return dst


@pytest.fixture()
def pg_database():
    """A fresh database on the local PostgreSQL server for one test, dropped afterwards."""
    import uuid

    import psycopg2

    name = f"recsys_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(dbname="postgres", **PG_DSN)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (this venv's MLflow) on a fresh PostgreSQL database, artifacts in a temp directory; its
    URL. Waits for /health as long as the server process is alive (its start is ~20 s on a quiet host)."""
    import subprocess
    import sys
    import time
    import uuid

    import psycopg2
    import requests

    name = f"recsys_mlflow_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(dbname="postgres", **PG_DSN)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    port = free_port()
    tmp = tmp_path_factory.mktemp("mlflow")
    backend = f"postgresql+psycopg2://{PG_DSN['user']}@{PG_DSN['host']}:{PG_DSN['port']}/{name}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend]
    cmd += ["--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    log = open(tmp / "server.log", "w")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen([*cmd, "--workers", "1"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited ({proc.returncode}): {(tmp / 'server.log').read_text()[-3000:]}"
                )
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture()
def pg_env(pg_database, monkeypatch) -> dict[str, str]:
    """Environment for deploy/production/dagster.yaml pointing at the test database."""
    env = {
        "DAGSTER_PG_HOST": PG_DSN["host"],
        "DAGSTER_PG_PORT": str(PG_DSN["port"]),
        "DAGSTER_PG_DB": pg_database,
        "DAGSTER_PG_USERNAME": PG_DSN["user"],
        # The server trusts local connections, so any password works: a recognisable one lets tests prove it
        # never reaches logs, metadata or the event log.
        "DAGSTER_PG_PASSWORD": "pg-secret-5f1c2e9a",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env
