"""Spark session resource: local PySpark by default, a standalone/YARN master or Dataproc by config only.

The session is created lazily on first use and reused by every asset in the same process (starting a JVM
costs seconds), with UTC as the session time zone so timestamps never depend on the host.
"""

from __future__ import annotations

import os

from dagster import ConfigurableResource
from pydantic import Field


class SparkResource(ConfigurableResource):
    master: str = Field(
        default="local[*]",
        description="Spark master URL: local[*], spark://host:7077, or yarn on a Dataproc cluster.",
    )
    app_name: str = "recsys-datagen"
    shuffle_partitions: int = Field(default=8, description="spark.sql.shuffle.partitions for day-sized jobs.")
    driver_memory: str = "4g"
    spark_conf: dict[str, str] = Field(default_factory=dict, description="Extra Spark properties.")

    def get_session(self):
        from pyspark.sql import SparkSession

        # pyspark's driver and python workers must use this interpreter (a venv), not whatever is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", os.sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", os.sys.executable)
        builder = (
            SparkSession.builder.master(self.master)
            .appName(self.app_name)
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.shuffle.partitions", str(self.shuffle_partitions))
            .config("spark.driver.memory", self.driver_memory)
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
            # Overwrites replace only the partition a job writes (we write version dirs, but be safe).
            .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        )
        for k, v in self.spark_conf.items():
            builder = builder.config(k, v)
        session = builder.getOrCreate()
        session.sparkContext.setLogLevel("WARN")
        return session
