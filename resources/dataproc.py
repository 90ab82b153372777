"""Google Dataproc backend for Spark jobs: create or reuse a cluster, submit the job file an asset hands over (the
datagen stages' `recsys_assets/core/spark_job.py`) with the project's wheel, get the stats back through Dagster
Pipes over GCS, and delete an ephemeral cluster after the run (the seed's create -> submit -> delete lifecycle).

Nothing here is reachable from CI (no GCP): the cluster/job requests are built by pure functions that tests check
field by field, the lifecycle is tested against an in-memory stand-in for ClusterControllerClient, and the
Pipes hand-back is the one `SparkSubmitResource` exercises for real. Set-up on GCP: docs/dataproc.md.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
from collections.abc import Iterator

from pydantic import Field

from resources.spark import JOB_SPARK_CONF, SparkJob, SparkResource, stats_from_pipes

_LABEL = re.compile(r"[^a-z0-9-]")


def _label(value: str) -> str:
    return _LABEL.sub("-", value.lower())[:63].strip("-") or "x"


def machine_vcpus(machine_type: str) -> int:
    """vCPUs of a Compute Engine machine type: the number after the family (n2-highmem-16, c3-standard-88,
    e2-custom-8-32768, custom-24-98304)."""
    m = re.search(r"(?:^|-)(?:custom-)?(\d+)(?:-\d+(?:-ext)?)?$", machine_type)
    if not m:
        raise ValueError(f"cannot tell the vCPUs of machine type {machine_type!r}: set DataprocSparkResource.cores")
    return int(m.group(1))


class DataprocSparkResource(SparkResource):
    """Spark jobs as Dataproc PySpark jobs. `data_root` of the storage resource must be gs://."""

    project_id: str = Field(description="GCP project of the cluster.")
    region: str = Field(default="asia-south1", description="Dataproc region (production data lives in Mumbai).")
    cluster_name: str = Field(
        default="recsys-datagen", description="Cluster to reuse, or the prefix of an ephemeral one."
    )
    ephemeral_cluster: bool = Field(default=True, description="Create a cluster per run and delete it afterwards.")
    image_version: str = Field(default="2.2-debian12", description="Dataproc image (Spark 3.5, Python 3.11).")
    master_machine_type: str = "n2-standard-8"
    worker_machine_type: str = "n2-highmem-16"
    num_workers: int = Field(default=4, ge=2)
    num_secondary_workers: int = Field(default=0, ge=0, description="Preemptible (spot) workers.")
    worker_disk_gb: int = 500
    idle_delete_ttl_s: int = Field(
        default=3600, description="Dataproc deletes an idle cluster after this (safety net)."
    )
    service_account: str = ""
    subnetwork_uri: str = ""
    staging_bucket: str = Field(description="Bucket for the job file, the wheel and Pipes context/messages.")
    code_prefix: str = Field(
        default="recsys/code", description="gs://<staging_bucket>/<code_prefix>/ holds spark_job.py and the wheel."
    )
    wheel_name: str = Field(default="recsys_platform-0.1.0-py3-none-any.whl")
    pipes_prefix: str = "recsys/pipes"
    labels: dict[str, str] = Field(default_factory=lambda: {"team": "recsys", "managed-by": "dagster"})
    pip_packages: list[str] = Field(
        default_factory=lambda: [
            "dagster==1.13.27",
            "dagster-pipes==1.13.27",
            "pydantic>=2.5",
            "pyyaml>=6",
            # the training_events expectations run in the job (recsys_assets/datagen/stages.py), on the driver
            "great-expectations==1.24.1",
        ]
    )

    def total_cores(self) -> int:
        """vCPUs of the primary and secondary workers (from the machine type: n2-highmem-16 -> 16,
        custom-24-... -> 24), or `cores` when set."""
        return self.cores or (self.num_workers + self.num_secondary_workers) * machine_vcpus(self.worker_machine_type)

    # ---- requests (pure) ----
    def effective_cluster_name(self, run_id: str) -> str:
        name = f"{self.cluster_name}-{run_id[:8]}" if self.ephemeral_cluster else self.cluster_name
        return _label(name)[:51]

    def cluster_spec(self, run_id: str) -> dict:
        """The google.cloud.dataproc_v1.Cluster request body."""
        # The job imports recsys_assets/resources from the wheel on the PYTHONPATH; their imports (dagster for
        # the resource base classes, dagster-pipes, pydantic, yaml) are pip-installed by the standard init action.
        gce: dict = {"internal_ip_only": True, "metadata": {"PIP_PACKAGES": " ".join(self.pip_packages)}}
        if self.service_account:
            gce["service_account"] = self.service_account
            gce["service_account_scopes"] = ["https://www.googleapis.com/auth/cloud-platform"]
        if self.subnetwork_uri:
            gce["subnetwork_uri"] = self.subnetwork_uri
        config: dict = {
            "config_bucket": self.staging_bucket,
            "gce_cluster_config": gce,
            "master_config": {
                "num_instances": 1,
                "machine_type_uri": self.master_machine_type,
                "disk_config": {"boot_disk_size_gb": 200},
            },
            "worker_config": {
                "num_instances": self.num_workers,
                "machine_type_uri": self.worker_machine_type,
                "disk_config": {"boot_disk_size_gb": self.worker_disk_gb},
            },
            "software_config": {
                "image_version": self.image_version,
                "properties": {
                    f"spark:{k}": v for k, v in {**JOB_SPARK_CONF, **self.sizing_conf(), **self.spark_conf}.items()
                },
            },
            "lifecycle_config": {"idle_delete_ttl": {"seconds": self.idle_delete_ttl_s}},
            "initialization_actions": [
                {"executable_file": f"gs://goog-dataproc-initialization-actions-{self.region}/python/pip-install.sh"}
            ],
        }
        if self.num_secondary_workers:
            config["secondary_worker_config"] = {"num_instances": self.num_secondary_workers, "preemptibility": "SPOT"}
        return {
            "project_id": self.project_id,
            "cluster_name": self.effective_cluster_name(run_id),
            "config": config,
            "labels": {_label(k): _label(v) for k, v in {**self.labels, "dagster-run": run_id[:8]}.items()},
        }

    def code_uri(self, name: str) -> str:
        return f"gs://{self.staging_bucket}/{self.code_prefix.strip('/')}/{name}"

    def job_spec(self, run_id: str, job: SparkJob) -> dict:
        """The google.cloud.dataproc_v1.Job request body (Pipes bootstrap arguments are appended by the client)."""
        if not job.data_root.startswith("gs://"):
            raise ValueError(f"Dataproc jobs need a gs:// data root, got {job.data_root!r} (set RECSYS_DATA_ROOT)")
        return {
            "placement": {"cluster_name": self.effective_cluster_name(run_id)},
            "reference": {"job_id": _label(f"{job.name}-{run_id[:8]}")[:100]},
            "pyspark_job": {
                "main_python_file_uri": self.code_uri(posixpath.basename(job.job_file)),
                # The wheel carries recsys_assets/ and resources/; its dependencies are on the image + pip.
                "python_file_uris": [self.code_uri(self.wheel_name)],
                "args": [*job.arguments, "--pipes-transport", "gcs"],
                "properties": {"spark.submit.deployMode": "client"},
            },
            "labels": {
                _label(k): _label(v) for k, v in {**self.labels, **job.labels, "dagster-run": run_id[:8]}.items()
            },
        }

    # ---- lifecycle ----
    @contextlib.contextmanager
    def cluster(self, controller, run_id: str, log=print) -> Iterator[str]:
        """Reuse the named cluster if it exists, else create it; on exit delete it if ephemeral (its name is
        scoped to the run, so nobody else uses it), on failure too."""
        name = self.effective_cluster_name(run_id)
        if not cluster_exists(controller, self.project_id, self.region, name):
            log(f"creating Dataproc cluster {name} in {self.region}")
            controller.create_cluster(
                request={"project_id": self.project_id, "region": self.region, "cluster": self.cluster_spec(run_id)}
            ).result()
        try:
            yield name
        finally:
            if self.ephemeral_cluster:
                log(f"deleting ephemeral Dataproc cluster {name}")
                controller.delete_cluster(
                    request={"project_id": self.project_id, "region": self.region, "cluster_name": name}
                ).result()

    def _clients(self):  # pragma: no cover - needs GCP credentials
        from google.cloud import dataproc_v1, storage

        endpoint = {"api_endpoint": f"{self.region}-dataproc.googleapis.com:443"}
        return (
            dataproc_v1.ClusterControllerClient(client_options=endpoint),
            dataproc_v1.JobControllerClient(client_options=endpoint),
            storage.Client(project=self.project_id),
        )

    def run_job(self, context, job: SparkJob) -> dict:
        from dagster_gcp.pipes import PipesDataprocJobClient, PipesGCSContextInjector, PipesGCSMessageReader

        clusters, jobs, gcs = self._clients()
        with self.cluster(clusters, context.run_id, context.log.info):
            client = PipesDataprocJobClient(
                client=jobs,
                context_injector=PipesGCSContextInjector(
                    bucket=self.staging_bucket, client=gcs, key_prefix=self.pipes_prefix
                ),
                message_reader=PipesGCSMessageReader(bucket=self.staging_bucket, client=gcs),
            )
            invocation = client.run(
                context=context,
                submit_job_params={
                    "project_id": self.project_id,
                    "region": self.region,
                    "job": self.job_spec(context.run_id, job),
                },
            )
        return stats_from_pipes(invocation, job)


def cluster_exists(controller, project_id: str, region: str, name: str) -> bool:
    from google.api_core.exceptions import NotFound

    try:
        controller.get_cluster(request={"project_id": project_id, "region": region, "cluster_name": name})
        return True
    except NotFound:
        return False
