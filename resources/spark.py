"""Spark resources: run the Spark work an asset hands them, in-process (local PySpark, or a standalone/YARN
master), as a spark-submit of the same job file, or as a Dataproc job (resources/dataproc.py), by config only.

The resource is a client: it knows nothing of what a job computes. An asset builds a `SparkJob` (a function of
the session for the in-process path, and the job file + arguments that run the same function when submitted)
and the resource runs it and returns the stats dict the job produced. The in-process session is created lazily
and reused by every asset in the process (a JVM start costs seconds), with UTC as the session time zone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field

from resources.spark_conf import DEFAULT_TARGET_FILE_MB, TARGET_FILE_BYTES_CONF

# Session properties the datagen output depends on, set the same way on every backend (in-process session,
# spark-submit, the job entry point, Dataproc cluster properties): timestamps in UTC and written as micros;
# overwrites replace only the partition a job writes (we write version dirs, but be safe).
JOB_SPARK_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
}

DEFAULT_JAVA_OPTIONS = "-XX:+UseParallelGC"


def master_cores(master: str, conf: Mapping[str, str]) -> int | None:
    """Cores a master URL gives a job: local[N] / local[*] / local; for a cluster master spark.cores.max or
    executor instances x cores when set; None when the URL does not say (a cluster whose size is elsewhere)."""
    import re

    m = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", master.strip())
    if m:
        n = m.group(1)
        return 1 if n is None else (os.cpu_count() or 1) if n == "*" else int(n)
    if "spark.cores.max" in conf:
        return int(conf["spark.cores.max"])
    if "spark.executor.instances" in conf:
        return int(conf["spark.executor.instances"]) * int(conf.get("spark.executor.cores", "1"))
    return None


@dataclass(frozen=True)
class SparkJob:
    """One unit of Spark work. `run(session)` runs it in-process and returns its stats; submitted, `job_file` runs
    with `arguments` (plus `--pipes-transport gcs` on Dataproc and the Pipes bootstrap arguments) and must report
    `{"job": name, "stats": {...}}` as a Dagster Pipes custom message."""

    name: str
    run: Callable[[Any], dict]
    job_file: str
    arguments: tuple[str, ...]
    data_root: str  # where the job reads and writes (Dataproc needs a gs:// one)
    labels: Mapping[str, str] = field(default_factory=dict)


class SparkResource(ConfigurableResource):
    master: str = Field(
        default="local[*]",
        description="Spark master URL: local[*], spark://host:7077, or yarn on a Dataproc cluster.",
    )
    app_name: str = "recsys-datagen"
    shuffle_partitions: int = Field(
        default=0,
        ge=0,
        description="spark.sql.shuffle.partitions; 0 (default): partitions_per_core x the backend's cores "
        "(total_cores), with adaptive execution coalescing the small ones, so a day's shuffle is sized to the "
        "cluster it runs on (docs/scale.md).",
    )
    partitions_per_core: int = Field(default=3, ge=1, description="Shuffle partitions per core when derived.")
    cores: int = Field(
        default=0,
        ge=0,
        description="Cores of the backend when the master URL does not say (a standalone or YARN master without "
        "spark.cores.max); 0: from the master URL / spark_conf, else 8.",
    )
    target_file_mb: int = Field(
        default=DEFAULT_TARGET_FILE_MB,
        ge=1,
        description="Size each Parquet file of a day's output aims at (rows per file from the table's bytes per "
        "row); advisory partition size of adaptive execution too.",
    )
    driver_memory: str = "4g"
    java_options: str = Field(
        default=DEFAULT_JAVA_OPTIONS,
        description="JVM options of the driver and executors (spark.*.extraJavaOptions unless spark_conf sets "
        "them). The throughput collector: datagen is batch work with no latency goal (measured in "
        "docs/benchmarks.md).",
    )
    spark_conf: dict[str, str] = Field(default_factory=dict, description="Extra Spark properties.")
    class_archive: str = Field(
        default="",
        description="A JVM class-data-sharing archive of the Spark driver's classes (`python -m resources.spark "
        "[PATH]` builds one; `make install` builds it in the venv, where the default resources look). Used when "
        "the file exists: the driver JVM maps the classes Spark loads at start instead of loading and verifying "
        "them (~3 s less per session on a 2-core host, docs/benchmarks.md). A stale archive (another JDK or "
        "Spark) is ignored by the JVM.",
    )

    def total_cores(self) -> int:
        return self.cores or master_cores(self.master, self.spark_conf) or 8

    def effective_shuffle_partitions(self) -> int:
        return self.shuffle_partitions or max(2, self.partitions_per_core * self.total_cores())

    def sizing_conf(self) -> dict[str, str]:
        """Shuffle partitions for this backend, adaptive execution coalescing them towards ~target_file_mb / 2
        (in-memory shuffle blocks are larger than the Parquet they become), and the file-size target the stages
        read. spark_conf overrides any of them."""
        return {
            "spark.sql.shuffle.partitions": str(self.effective_shuffle_partitions()),
            "spark.sql.adaptive.enabled": "true",
            "spark.sql.adaptive.coalescePartitions.enabled": "true",
            "spark.sql.adaptive.advisoryPartitionSizeInBytes": f"{max(self.target_file_mb // 2, 1)}m",
            TARGET_FILE_BYTES_CONF: str(self.target_file_mb << 20),
        }

    def jvm_conf(self) -> dict[str, str]:
        driver = " ".join(o for o in (self.java_options, class_archive_options(self.class_archive)) if o)
        conf = {"spark.driver.extraJavaOptions": driver} if driver else {}
        if self.java_options:
            # never the archive for executors: on a cluster their classpath differs from the driver's
            conf["spark.executor.extraJavaOptions"] = self.java_options
        return conf

    def get_session(self):
        from pyspark.sql import SparkSession

        # pyspark's driver and python workers must use this interpreter (a venv), not whatever is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", os.sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", os.sys.executable)
        builder = (
            SparkSession.builder.master(self.master)
            .appName(self.app_name)
            .config("spark.driver.memory", self.driver_memory)
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
        )
        for k, v in {**JOB_SPARK_CONF, **self.sizing_conf(), **self.jvm_conf(), **self.spark_conf}.items():
            builder = builder.config(k, v)
        session = builder.getOrCreate()
        session.sparkContext.setLogLevel("WARN")
        return session

    def run_job(self, context, job: SparkJob) -> dict:
        """Run `job` and return its stats. In-process here; subclasses submit the job file and hand the stats
        back through Pipes."""
        return job.run(self.get_session())


# The JVM's own CDS messages (classes it cannot archive, a stale archive it ignores) are not ours to show.
_QUIET_CDS = "-Xlog:cds=off -Xlog:cds+dynamic=off"


def class_archive_options(path: str) -> str:
    """Driver JVM options that map the class archive at `path`, or "" when there is none."""
    if not path or not os.path.isfile(path):
        return ""
    return f"-XX:SharedArchiveFile={path} {_QUIET_CDS}"


def default_class_archive() -> str:
    """Where `make install` builds the archive: inside the venv, so it lives and dies with the Spark jars it
    was made from."""
    return os.path.join(os.sys.prefix, "share", "recsys-platform", "spark-classes.jsa")


def build_class_archive(path: str, master: str = "local[2]") -> str:
    """Write a class archive of the driver's classes to `path` (atomically): a child JVM runs a small job that
    touches what the datagen jobs use (parquet write/read, aggregation, join, window, arrays) and dumps every
    class it loaded when it exits. Takes ~30 s."""
    import subprocess
    import sys

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    subprocess.run([sys.executable, "-m", "resources.spark", "--dump-classes", tmp, master], check=True)
    if not os.path.isfile(tmp):
        raise RuntimeError(f"the JVM wrote no class archive to {tmp}")
    os.replace(tmp, path)
    return path


def _dump_classes(path: str, master: str) -> None:
    import tempfile

    from pyspark import SparkContext
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    resource = SparkResource(
        master=master,
        driver_memory="1g",
        shuffle_partitions=2,
        java_options=f"{DEFAULT_JAVA_OPTIONS} -XX:ArchiveClassesAtExit={path} {_QUIET_CDS}",
    )
    session = resource.get_session()
    with tempfile.TemporaryDirectory() as tmp:
        df = session.range(2000).select(
            F.col("id"), (F.col("id") % 7).alias("k"), F.timestamp_seconds(F.col("id")).alias("t")
        )
        df.write.parquet(f"{tmp}/probe")
        read = session.read.parquet(f"{tmp}/probe")
        agg = read.groupBy("k").agg(F.count("*").alias("n"), F.collect_list(F.struct("t", "id")).alias("xs"))
        ranked = read.withColumn("r", F.row_number().over(Window.partitionBy("k").orderBy("t")))
        ranked.join(agg, "k").select("k", F.explode("xs").alias("x"), "n").write.parquet(f"{tmp}/joined")
        jvm = SparkContext._gateway.proc
        session.stop()
    # The JVM writes the archive as it exits, which it does when its stdin (the gateway pipe) closes.
    jvm.stdin.close()
    if jvm.wait() != 0:
        raise SystemExit(f"the Spark JVM exited with {jvm.returncode} while writing {path}")


def stats_from_pipes(invocation, job: SparkJob) -> dict:
    """The stats a submitted job reported as its Pipes custom message."""
    messages = [m for m in invocation.get_custom_messages() if isinstance(m, dict) and m.get("job") == job.name]
    if not messages:
        raise RuntimeError(f"{job.name}: the Spark job finished without reporting its stats through Dagster Pipes")
    return messages[-1]["stats"]


class SparkSubmitResource(SparkResource):
    """Each job as its own `spark-submit` of the job file (client mode) against `master`, with Dagster Pipes over
    temp files: the Dagster step process never holds a JVM, and the job code and the hand-back are exactly those
    of the Dataproc path."""

    executor_memory: str = "1g"

    def run_job(self, context, job: SparkJob) -> dict:
        import sys
        from pathlib import Path

        import pyspark
        from dagster import PipesSubprocessClient

        submit = str(Path(pyspark.__file__).parent / "bin" / "spark-submit")
        confs = {
            **JOB_SPARK_CONF,
            "spark.ui.enabled": "false",
            "spark.executor.memory": self.executor_memory,
            "spark.log.level": "WARN",
            **self.sizing_conf(),
            **self.jvm_conf(),
            **self.spark_conf,
        }
        command = [submit, "--master", self.master, "--driver-memory", self.driver_memory]
        for k, v in confs.items():
            command += ["--conf", f"{k}={v}"]
        command += [job.job_file, *job.arguments]
        env = {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
        invocation = PipesSubprocessClient(env=env).run(context=context, command=command)
        return stats_from_pipes(invocation, job)


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 4 and sys.argv[1] == "--dump-classes":
        _dump_classes(sys.argv[2], sys.argv[3])
    elif len(sys.argv) <= 2:
        print(build_class_archive(sys.argv[1] if len(sys.argv) == 2 else default_class_archive()))
    else:
        raise SystemExit("usage: python -m resources.spark [ARCHIVE_PATH (default: in the venv)]")
