"""The datagen Spark code, unchanged, submitted to a Spark standalone cluster (only resource config differs):
its output equals local mode's row for row, and its stats come back through Dagster Pipes."""

from __future__ import annotations

import json
import shutil

import pyarrow.dataset as pads
import pytest

from resources.notifier import NotifierResource
from resources.spark import SparkSubmitResource
from resources.storage import StorageResource
from resources.store import DatasetStore
from tests.helpers import DAYS, run_job
from tests.resources.standalone_cluster import standalone_cluster

pytestmark = pytest.mark.slow


def _table(store, dataset, day, sub):
    import pyarrow as pa

    t = pads.dataset(store.committed_path(dataset, day, sub), filesystem=store.fs, format="parquet").to_table()
    # Every scalar column as a sort key: quarantine rows can share (or lack) an event_id.
    keys = [(f.name, "ascending") for f in t.schema if not pa.types.is_list(f.type)]
    return t.sort_by(keys).combine_chunks()


def _stats(store, dataset, day):
    s = store.read_json(store.committed_path(dataset, day, "stats.json"))
    if "expectations" in s:  # judged on the run's own version: the rows compare, the version names differ
        s["expectations"] = s["expectations"]["rows"]
    return {k: v for k, v in s.items() if k not in ("started_at", "finished_at", "run_time_s")}


def test_datagen_submitted_to_a_standalone_cluster_equals_local_mode(raw_root, spark_resource, tmp_path, instance):
    day = DAYS[0]
    local_root, cluster_root = tmp_path / "local", tmp_path / "cluster"
    shutil.copytree(raw_root, local_root)
    shutil.copytree(raw_root, cluster_root)
    res = {
        "spark": spark_resource,
        "storage": StorageResource(data_root=str(local_root)),
        "notifier": NotifierResource(jsonl_path=str(tmp_path / "n.jsonl")),
    }
    assert run_job("datagen_job", day, instance, res).success

    (tmp_path / "cluster_logs").mkdir()
    with standalone_cluster(tmp_path / "cluster_logs") as master:
        # Submitted like production: spark-submit of recsys_assets/core/spark_job.py against the master, stats
        # handed back through Dagster Pipes (the Dataproc path uses the same job file and protocol over GCS).
        submit = SparkSubmitResource(
            master=master, shuffle_partitions=4, driver_memory="1g", spark_conf={"spark.cores.max": "2"}
        )
        res_cluster = {**res, "spark": submit, "storage": StorageResource(data_root=str(cluster_root))}
        result = run_job("datagen_job", day, instance, res_cluster)
    assert result.success
    pipes_logs = [e.user_message for e in instance.all_logs(result.run_id) if "on spark://" in (e.user_message or "")]
    assert any(f"filtered_events {day} on {master}" in m for m in pipes_logs), pipes_logs  # ran on the cluster
    md = result.asset_materializations_for_node("filtered_events")[0].metadata
    assert (
        md["dagster/row_count"].value
        == DatasetStore(str(local_root)).read_json(
            DatasetStore(str(local_root)).committed_path("filtered_events", day, "stats.json")
        )["num_events_post_filters"]
    )

    local, cluster = DatasetStore(str(local_root)), DatasetStore(str(cluster_root))
    for dataset, sub in (
        ("filtered_events", "events"),
        ("filtered_events", "quarantine"),
        ("training_events", "events"),
        ("training_events", "items"),
    ):
        a, b = _table(local, dataset, day, sub), _table(cluster, dataset, day, sub)
        assert a.num_rows == b.num_rows > 0 or sub == "quarantine"
        # pandas equality: NaN (quarantined NaN durations) equals NaN in the same place; values otherwise exact.
        assert a.schema == b.schema and a.to_pandas().equals(b.to_pandas()), f"{dataset}/{sub} differs"
    assert _stats(local, "filtered_events", day) == _stats(cluster, "filtered_events", day)
    assert json.dumps(_stats(local, "training_events", day), sort_keys=True) == json.dumps(
        _stats(cluster, "training_events", day), sort_keys=True
    )
    # The blocking expectations were computed by the submitted job on the version it wrote (handed back in its
    # stats), and the check judged from them.
    expectations = cluster.read_json(cluster.committed_path("training_events", day, "stats.json"))["expectations"]
    assert expectations["version"] == cluster.committed_version("training_events", day)
    assert len(expectations["rows"]) > 10 and all(r["success"] for r in expectations["rows"])
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["training_events_expectations"] is True
