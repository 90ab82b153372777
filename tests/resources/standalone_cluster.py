"""A Spark standalone master + one worker on 127.0.0.1, started from the pyspark install (spark-class), for
tests that must run the same job code on a cluster rather than in local mode."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pyspark

from tests.helpers import file_size, free_port, stop_process_tree, wait_until


@contextlib.contextmanager
def standalone_cluster(log_dir: Path, worker_cores: int = 2, worker_memory: str = "2g"):
    """Yields the master URL once the worker has registered; stops both processes afterwards."""
    spark_home = Path(pyspark.__file__).parent
    spark_class = str(spark_home / "bin" / "spark-class")
    port, ui = free_port(), free_port()
    env = {
        **os.environ,
        "SPARK_HOME": str(spark_home),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_WORKER_DIR": str(log_dir / "work"),
    }
    master_url = f"spark://127.0.0.1:{port}"
    procs = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    spark_class,
                    "org.apache.spark.deploy.master.Master",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--webui-port",
                    str(ui),
                ],
                env=env,
                stdout=open(log_dir / "master.log", "w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        procs.append(
            subprocess.Popen(
                [
                    spark_class,
                    "org.apache.spark.deploy.worker.Worker",
                    master_url,
                    "--host",
                    "127.0.0.1",
                    "--cores",
                    str(worker_cores),
                    "--memory",
                    worker_memory,
                    "--webui-port",
                    str(free_port()),
                ],
                env=env,
                stdout=open(log_dir / "worker.log", "w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

        def worker_alive() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=2) as r:
                    return sum(w.get("state") == "ALIVE" for w in json.load(r).get("workers", [])) >= 1
            except OSError:
                return False

        # Waits while the master's and worker's logs grow (JVM start on a loaded host), fails if either exits.
        logs = [log_dir / "master.log", log_dir / "worker.log"]
        wait_until(
            worker_alive,
            lambda: [file_size(p) for p in logs],
            "the Spark standalone cluster",
            stall_s=120,
            limit_s=900,
            failed=lambda: "a Spark daemon exited" if any(p.poll() is not None for p in procs) else None,
            context=lambda: f"see {log_dir}/master.log, worker.log",
        )
        yield master_url
    finally:
        for p in reversed(procs):  # the worker (and its executors), then the master
            stop_process_tree(p)
