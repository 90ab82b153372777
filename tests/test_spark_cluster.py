"""The datagen Spark code, unchanged, on a Spark standalone cluster (master URL only in resource config): its
output equals local mode's row for row."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from dagster import materialize

from recsys_assets.datagen.assets import datagen_assets
from recsys_assets.datagen.raw_sources import raw_specs
from resources.notifier import NotifierResource
from resources.storage import DatasetStore, StorageResource
from tests.conftest import DAYS
from tests.spark_cluster import standalone_cluster

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

# The cluster run happens in its own process: one JVM holds one SparkContext, and this test process already
# has the local-mode session.
CLUSTER_RUN = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from dagster import materialize
    from recsys_assets.datagen.assets import datagen_assets
    from recsys_assets.datagen.raw_sources import raw_specs
    from resources.notifier import NotifierResource
    from resources.spark import SparkResource
    from resources.storage import StorageResource

    spark = SparkResource(master={master!r}, shuffle_partitions=4, driver_memory="1g",
                          spark_conf={{"spark.executor.memory": "1g", "spark.cores.max": "2"}})
    res = {{"spark": spark, "storage": StorageResource(data_root={root!r}),
           "notifier": NotifierResource(jsonl_path={root!r} + "/n.jsonl")}}
    assert materialize([*raw_specs, *datagen_assets], partition_key={day!r}, resources=res).success
    session = spark.get_session()
    print("MASTER", session.sparkContext.master, "EXECUTORS", session.sparkContext._jsc.sc().getExecutorMemoryStatus().size())
    """
)


def _table(store, dataset, day, sub):
    import pyarrow as pa

    t = pads.dataset(store.committed_path(dataset, day, sub), filesystem=store.fs, format="parquet").to_table()
    # Every scalar column as a sort key: quarantine rows can share (or lack) an event_id.
    keys = [(f.name, "ascending") for f in t.schema if not pa.types.is_list(f.type)]
    return t.sort_by(keys).combine_chunks()


def _stats(store, dataset, day):
    s = store.read_json(store.committed_path(dataset, day, "stats.json"))
    return {k: v for k, v in s.items() if k not in ("started_at", "finished_at", "run_time_s")}


def test_datagen_on_a_standalone_cluster_equals_local_mode(raw_root, spark_resource, tmp_path):
    day = DAYS[0]
    local_root, cluster_root = tmp_path / "local", tmp_path / "cluster"
    shutil.copytree(raw_root, local_root)
    shutil.copytree(raw_root, cluster_root)
    res = {"spark": spark_resource, "storage": StorageResource(data_root=str(local_root)),
           "notifier": NotifierResource(jsonl_path=str(tmp_path / "n.jsonl"))}
    assert materialize([*raw_specs, *datagen_assets], partition_key=day, resources=res).success

    (tmp_path / "cluster_logs").mkdir()
    with standalone_cluster(tmp_path / "cluster_logs") as master:
        code = CLUSTER_RUN.format(repo=str(REPO), master=master, root=str(cluster_root), day=day)
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"MASTER {master}" in proc.stdout  # really ran on the cluster, not a silent local fallback
    assert "EXECUTORS 2" in proc.stdout  # the driver + one executor on the worker

    local, cluster = DatasetStore(str(local_root)), DatasetStore(str(cluster_root))
    for dataset, sub in (("filtered_events", "events"), ("filtered_events", "quarantine"),
                         ("training_events", "events"), ("training_events", "items")):
        a, b = _table(local, dataset, day, sub), _table(cluster, dataset, day, sub)
        assert a.num_rows == b.num_rows > 0 or sub == "quarantine"
        # pandas equality: NaN (quarantined NaN durations) equals NaN in the same place; values otherwise exact.
        assert a.schema == b.schema and a.to_pandas().equals(b.to_pandas()), f"{dataset}/{sub} differs"
    assert _stats(local, "filtered_events", day) == _stats(cluster, "filtered_events", day)
    assert json.dumps(_stats(local, "training_events", day), sort_keys=True) == json.dumps(
        _stats(cluster, "training_events", day), sort_keys=True)
