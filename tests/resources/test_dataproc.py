"""Dataproc backend without GCP: the cluster and job requests it would send (validated by the real
google-cloud-dataproc message types), the create/reuse/delete lifecycle against an in-memory controller, and
that the job's arguments are the ones the shared job entry point parses."""

from __future__ import annotations

import json

import pytest
from google.api_core.exceptions import NotFound
from google.cloud import dataproc_v1

from recsys_assets.core.spark_job import build_parser
from resources.dataproc import DataprocSparkResource

RUN_ID = "3f2a9c1e-0000-4000-8000-000000000000"


def resource(**kw) -> DataprocSparkResource:
    return DataprocSparkResource(project_id="josh-recsys", staging_bucket="josh-recsys-staging", **kw)


def test_cluster_request_carries_the_configured_shape_and_is_a_valid_dataproc_cluster():
    r = resource(
        num_workers=6,
        worker_machine_type="n2-highmem-32",
        num_secondary_workers=4,
        region="asia-south1",
        spark_conf={"spark.executor.memory": "40g"},
        service_account="dp@josh.iam.gserviceaccount.com",
    )
    spec = r.cluster_spec(RUN_ID)
    cluster = dataproc_v1.Cluster(spec)  # raises on any unknown field or wrong type
    assert cluster.cluster_name == "recsys-datagen-3f2a9c1e"  # ephemeral: scoped to the run
    assert cluster.config.worker_config.num_instances == 6
    assert cluster.config.worker_config.machine_type_uri == "n2-highmem-32"
    assert cluster.config.secondary_worker_config.num_instances == 4
    assert cluster.config.software_config.image_version == "2.2-debian12"
    props = cluster.config.software_config.properties
    assert props["spark:spark.executor.memory"] == "40g"
    # Shuffle sized to the cluster: 3 partitions per vCPU of (6 + 4) n2-highmem-32 workers, coalesced adaptively.
    assert props["spark:spark.sql.shuffle.partitions"] == str(3 * 10 * 32)
    assert props["spark:spark.sql.adaptive.enabled"] == "true"
    assert props["spark:spark.sql.adaptive.coalescePartitions.enabled"] == "true"
    assert props["spark:spark.recsys.targetFileBytes"] == str(256 << 20)
    assert cluster.config.lifecycle_config.idle_delete_ttl.seconds == 3600
    assert cluster.config.initialization_actions[0].executable_file.startswith(
        "gs://goog-dataproc-initialization-actions-asia-south1/"
    )
    assert "dagster-pipes==1.13.27" in cluster.config.gce_cluster_config.metadata["PIP_PACKAGES"]
    assert cluster.labels["dagster-run"] == "3f2a9c1e" and cluster.labels["managed-by"] == "dagster"
    assert resource(ephemeral_cluster=False).cluster_spec(RUN_ID)["cluster_name"] == "recsys-datagen"


def test_spark_sizing_follows_the_backend_and_config_overrides_it():
    from resources.dataproc import machine_vcpus
    from resources.spark import SparkResource, master_cores

    assert [machine_vcpus(m) for m in ("n2-highmem-16", "c3-standard-88", "e2-custom-8-32768", "custom-24-98304")] == [
        16,
        88,
        8,
        24,
    ]
    with pytest.raises(ValueError, match="set DataprocSparkResource.cores"):
        machine_vcpus("a3-highgpu-8g")
    assert resource().total_cores() == 4 * 16  # the default cluster: 4 x n2-highmem-16
    assert resource().effective_shuffle_partitions() == 192
    assert resource(cores=100).effective_shuffle_partitions() == 300
    assert resource(shuffle_partitions=50).effective_shuffle_partitions() == 50
    assert master_cores("local[3]", {}) == 3 and master_cores("local", {}) == 1
    assert master_cores("spark://h:7077", {"spark.cores.max": "12"}) == 12
    assert master_cores("yarn", {"spark.executor.instances": "5", "spark.executor.cores": "4"}) == 20
    assert master_cores("yarn", {}) is None and SparkResource(master="yarn").total_cores() == 8
    conf = SparkResource(master="local[2]", target_file_mb=64).sizing_conf()
    assert conf["spark.sql.shuffle.partitions"] == "6" and conf["spark.recsys.targetFileBytes"] == str(64 << 20)
    assert conf["spark.sql.adaptive.advisoryPartitionSizeInBytes"] == "32m"


def test_job_request_submits_the_shared_job_file_with_arguments_it_parses():
    from recsys_assets.config.datagen import load_datagen_spec
    from recsys_assets.core.spark_stages import stage_job
    from recsys_assets.datagen.stages import datagen_params
    from resources.store import DatasetStore

    r = resource()
    spec = load_datagen_spec()
    job = stage_job(
        "filtered_events",
        DatasetStore("gs://josh-recsys-data/recsys"),
        "2024-03-01",
        "20240302T010203000000-abcd",
        datagen_params(spec),
    )
    request = dataproc_v1.Job(r.job_spec(RUN_ID, job))
    assert request.placement.cluster_name == "recsys-datagen-3f2a9c1e"
    assert request.pyspark_job.main_python_file_uri == "gs://josh-recsys-staging/recsys/code/spark_job.py"
    assert list(request.pyspark_job.python_file_uris) == [
        "gs://josh-recsys-staging/recsys/code/recsys_platform-0.1.0-py3-none-any.whl"
    ]
    assert request.labels["stage"] == "filtered-events" and request.labels["partition"] == "2024-03-01"
    # What PipesDataprocJobClient appends, then what spark_job.py sees.
    argv = [*request.pyspark_job.args, "--dagster-pipes-context", "e30=", "--dagster-pipes-messages", "e30="]
    args, unknown = build_parser().parse_known_args(argv)
    assert (args.stage, args.day, args.version, args.data_root, args.pipes_transport) == (
        "filtered_events",
        "2024-03-01",
        "20240302T010203000000-abcd",
        "gs://josh-recsys-data/recsys",
        "gcs",
    )
    # The validated datagen spec travels as content: the job reads no YAML file on the cluster.
    assert json.loads(args.params_json)["datagen_spec"] == spec.model_dump(mode="json")
    assert unknown[0] == "--dagster-pipes-context"
    local = stage_job("filtered_events", DatasetStore("/local/data"), "2024-03-01", "v", datagen_params(spec))
    with pytest.raises(ValueError, match="gs:// data root"):
        r.job_spec(RUN_ID, local)


class _Operation:
    def __init__(self, log, what):
        self.log, self.what = log, what

    def result(self):
        self.log.append(self.what)


class FakeClusterController:
    """The three ClusterControllerClient calls the lifecycle makes, over an in-memory set of clusters."""

    def __init__(self, existing=()):
        self.clusters, self.calls = set(existing), []

    def get_cluster(self, request):
        self.calls.append(("get", request["cluster_name"]))
        if request["cluster_name"] not in self.clusters:
            raise NotFound("cluster not found")

    def create_cluster(self, request):
        dataproc_v1.CreateClusterRequest(request)  # a valid request message
        self.clusters.add(request["cluster"]["cluster_name"])
        return _Operation(self.calls, ("created", request["cluster"]["cluster_name"]))

    def delete_cluster(self, request):
        self.clusters.discard(request["cluster_name"])
        return _Operation(self.calls, ("deleted", request["cluster_name"]))


def test_ephemeral_cluster_is_created_for_the_run_and_deleted_even_when_the_job_fails():
    controller = FakeClusterController()
    with pytest.raises(RuntimeError, match="job failed"):
        with resource().cluster(controller, RUN_ID, log=lambda m: None) as name:
            assert name in controller.clusters
            raise RuntimeError("job failed")
    assert controller.calls == [("get", name), ("created", name), ("deleted", name)]
    assert controller.clusters == set()


def test_a_standing_cluster_is_reused_and_left_running():
    controller = FakeClusterController(existing={"recsys-datagen"})
    with resource(ephemeral_cluster=False).cluster(controller, RUN_ID, log=lambda m: None) as name:
        assert name == "recsys-datagen"
    assert controller.calls == [("get", "recsys-datagen")]
    assert controller.clusters == {"recsys-datagen"}
