"""Spark session resource: local PySpark by default, a standalone/YARN master or Dataproc by config only.

The session is created lazily on first use and reused by every asset in the same process (starting a JVM
costs seconds), with UTC as the session time zone so timestamps never depend on the host.
"""

from __future__ import annotations

import os

from dagster import ConfigurableResource
from pydantic import Field

# Session properties the datagen output depends on, set the same way on every backend (in-process session,
# spark-submit, the job entry point, Dataproc cluster properties): timestamps in UTC and written as micros;
# overwrites replace only the partition a job writes (we write version dirs, but be safe).
JOB_SPARK_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
}


class SparkResource(ConfigurableResource):
    master: str = Field(
        default="local[*]",
        description="Spark master URL: local[*], spark://host:7077, or yarn on a Dataproc cluster.",
    )
    app_name: str = "recsys-datagen"
    shuffle_partitions: int = Field(default=8, description="spark.sql.shuffle.partitions for day-sized jobs.")
    driver_memory: str = "4g"
    java_options: str = Field(
        default="-XX:+UseParallelGC",
        description="JVM options of the driver and executors (spark.*.extraJavaOptions unless spark_conf sets "
        "them). The throughput collector: datagen is batch work with no latency goal, and on the 20M-event "
        "benchmark day it ran ~5% faster than the default G1 (benchmarks/datagen.py, docs/benchmarks.md).",
    )
    spark_conf: dict[str, str] = Field(default_factory=dict, description="Extra Spark properties.")

    def jvm_conf(self) -> dict[str, str]:
        if not self.java_options:
            return {}
        return {"spark.driver.extraJavaOptions": self.java_options, "spark.executor.extraJavaOptions": self.java_options}

    def get_session(self):
        from pyspark.sql import SparkSession

        # pyspark's driver and python workers must use this interpreter (a venv), not whatever is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", os.sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", os.sys.executable)
        builder = (
            SparkSession.builder.master(self.master)
            .appName(self.app_name)
            .config("spark.sql.shuffle.partitions", str(self.shuffle_partitions))
            .config("spark.driver.memory", self.driver_memory)
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
        )
        for k, v in {**JOB_SPARK_CONF, **self.jvm_conf(), **self.spark_conf}.items():
            builder = builder.config(k, v)
        session = builder.getOrCreate()
        session.sparkContext.setLogLevel("WARN")
        return session

    def run_stage(self, context, stage: str, store, day: str, version: str, params: dict) -> dict:
        """Run one datagen Spark stage (recsys_assets.datagen.stages) and return its stats. In-process here;
        subclasses run the same stage function in a submitted job and hand the stats back through Pipes."""
        from recsys_assets.datagen.stages import run_stage

        return run_stage(self.get_session(), stage, store, day, version, params)


def stats_from_pipes(invocation, stage: str, day: str) -> dict:
    """The stats a submitted stage reported as its Pipes custom message."""
    messages = [m for m in invocation.get_custom_messages() if isinstance(m, dict) and m.get("stage") == stage]
    if not messages:
        raise RuntimeError(f"{stage} {day}: the Spark job finished without reporting its stats through Dagster Pipes")
    return messages[-1]["stats"]


def stage_arguments(stage: str, data_root: str, day: str, version: str, params: dict) -> list[str]:
    import json

    return ["--stage", stage, "--data-root", data_root, "--day", day, "--version", version,
            "--params-json", json.dumps(params, sort_keys=True)]


class SparkSubmitResource(SparkResource):
    """Each stage as its own `spark-submit` of recsys_assets/datagen/spark_job.py (client mode) against `master`,
    with Dagster Pipes over temp files: the Dagster step process never holds a JVM, and the job code and the
    hand-back are exactly those of the Dataproc path."""

    executor_memory: str = "1g"

    def run_stage(self, context, stage: str, store, day: str, version: str, params: dict) -> dict:
        import sys
        from pathlib import Path

        import pyspark
        from dagster import PipesSubprocessClient

        import recsys_assets.datagen.spark_job as job

        submit = str(Path(pyspark.__file__).parent / "bin" / "spark-submit")
        confs = {
            **JOB_SPARK_CONF, "spark.ui.enabled": "false", "spark.executor.memory": self.executor_memory,
            "spark.log.level": "WARN", **self.jvm_conf(), **self.spark_conf,
        }
        command = [submit, "--master", self.master, "--driver-memory", self.driver_memory]
        for k, v in confs.items():
            command += ["--conf", f"{k}={v}"]
        command += [job.__file__, *stage_arguments(stage, store.root_uri, day, version, params),
                    "--shuffle-partitions", str(self.shuffle_partitions)]
        env = {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
        invocation = PipesSubprocessClient(env=env).run(context=context, command=command)
        return stats_from_pipes(invocation, stage, day)
