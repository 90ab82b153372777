"""The Spark driver's class-data-sharing archive: built by a real JVM, mapped by the next one (its classes come from
the archive, not the jars), ignored when missing or stale, never handed to executors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from resources.spark import SparkResource, build_class_archive, class_archive_options
from tests.helpers import REPO

# Starts a fresh JVM (the test process's own session would ignore new JVM options) with the archive and the
# class-load log on, and runs a job.
CHILD = """
import sys
from resources.spark import SparkResource
r = SparkResource(master="local[1]", class_archive=sys.argv[1],
                  java_options="-XX:+UseParallelGC -Xlog:class+load=info:file=" + sys.argv[2])
s = r.get_session()
assert s.range(10).count() == 10
s.stop()
"""


def test_archive_options_only_for_an_existing_file_and_only_on_the_driver(tmp_path):
    assert class_archive_options("") == ""
    assert class_archive_options(str(tmp_path / "missing.jsa")) == ""
    archive = tmp_path / "a.jsa"
    archive.write_bytes(b"x")
    assert f"-XX:SharedArchiveFile={archive}" in class_archive_options(str(archive))

    conf = SparkResource(class_archive=str(archive)).jvm_conf()
    assert conf["spark.driver.extraJavaOptions"].startswith("-XX:+UseParallelGC -XX:SharedArchiveFile=")
    assert conf["spark.executor.extraJavaOptions"] == "-XX:+UseParallelGC"
    assert SparkResource(class_archive=str(tmp_path / "missing.jsa")).jvm_conf() == {
        "spark.driver.extraJavaOptions": "-XX:+UseParallelGC",
        "spark.executor.extraJavaOptions": "-XX:+UseParallelGC",
    }
    assert SparkResource(java_options="", class_archive=str(archive)).jvm_conf() == {
        "spark.driver.extraJavaOptions": class_archive_options(str(archive))
    }


def _classes_by_source(archive: str, log: Path) -> tuple[int, int]:
    """(Spark classes mapped from the archive, Spark classes read from the jars); classes generated at run time
    (lambdas, whose source is their defining class) are neither."""
    subprocess.run([sys.executable, "-c", CHILD, archive, str(log)], cwd=REPO, check=True, capture_output=True)
    sources = [line.split(" source: ")[1] for line in log.read_text().splitlines() if "] org.apache.spark." in line]
    shared = sum(s == "shared objects file (top)" for s in sources)
    from_jars = sum(s.startswith(("jar:", "file:")) for s in sources)
    return shared, from_jars


@pytest.mark.slow
def test_built_archive_serves_the_spark_classes_of_the_next_jvm_and_a_stale_one_is_ignored(tmp_path):
    archive = tmp_path / "classes" / "spark.jsa"
    assert build_class_archive(str(archive)) == str(archive)
    assert archive.stat().st_size > 10_000_000
    assert not list(archive.parent.glob("*.tmp-*"))  # written under a temp name, then renamed

    shared, from_jars = _classes_by_source(str(archive), tmp_path / "with.log")
    assert shared > 1000 and from_jars < 0.05 * shared, (shared, from_jars)

    # A file that is not an archive for this JVM: the session starts as without one.
    stale = tmp_path / "stale.jsa"
    stale.write_bytes(b"not a class archive")
    shared, from_jars = _classes_by_source(str(stale), tmp_path / "stale.log")
    assert from_jars > 1000 and shared == 0
