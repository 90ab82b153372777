"""Shared fixtures: one local Spark session for the whole test run, small generated raw data with dirty rows,
and a temporary persistent Dagster instance."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from dagster import DagsterInstance

from recsys_assets.synthetic.generator import SyntheticConfig, generate
from resources.notifier import NotifierResource
from resources.spark import SparkResource
from resources.storage import DatasetStore, StorageResource

SPARK_FIXTURES = {"spark", "spark_resource", "datagen_root", "trained_root"}


def pytest_collection_modifyitems(items):
    # Tests that start (or share) a Spark session are outside `make test-fast`.
    for item in items:
        if SPARK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.spark)


SMALL = dict(events_per_day=30_000, num_users=4_000, initial_items=2_500, new_items_per_day=60, num_authors=400)
DAYS = ["2024-03-01", "2024-03-02", "2024-03-03"]


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

    from tests.dagster_helpers import run_job

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


PG_DSN = dict(host="127.0.0.1", port=5432, user="postgres")


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
