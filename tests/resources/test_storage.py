"""Atomic partition commits: readers see only committed versions; a killed writer leaves the previous one."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from resources.store import DatasetStore, PartitionNotCommittedError


def _write_version(store: DatasetStore, day: str, payload: bytes) -> str:
    v = store.new_version()
    store.fs.create_dir(store.version_path("ds", day, v), recursive=True)
    store.write_bytes_atomic(store.version_path("ds", day, v, "data.bin"), payload)
    return v


def test_uncommitted_partition_is_invisible(tmp_path):
    store = DatasetStore(str(tmp_path))
    _write_version(store, "2024-03-01", b"x")
    with pytest.raises(PartitionNotCommittedError, match="materialize it first"):
        store.committed_path("ds", "2024-03-01")


def test_a_streamed_atomic_write_replaces_the_file_only_when_it_completes(tmp_path):
    """DatasetStore.open_atomic (checkpoints are streamed through it): a writer failing mid-way leaves the old
    content and no partial file; a completed one replaces it."""
    store = DatasetStore(str(tmp_path))
    path = store.path("_checkpoints", "m", "epoch-0000.pt")
    store.write_bytes_atomic(path, b"old")
    with pytest.raises(RuntimeError, match="died"):
        with store.open_atomic(path) as f:
            f.write(b"new, partial")
            raise RuntimeError("writer died")
    with store.fs.open_input_stream(path) as f:
        assert f.read() == b"old"
    assert sorted(p.name for p in (tmp_path / "_checkpoints" / "m").iterdir()) == ["epoch-0000.pt"]
    with store.open_atomic(path) as f:
        f.write(b"new, ")
        f.write(b"whole")
    with store.fs.open_input_stream(path) as f:
        assert f.read() == b"new, whole"


def test_commit_switches_pointer_and_prunes_old_committed_versions(tmp_path):
    store = DatasetStore(str(tmp_path))
    versions = []
    for i in range(4):
        v = _write_version(store, "2024-03-01", f"v{i}".encode())
        store.commit("ds", "2024-03-01", v, row_count=i)
        versions.append(v)
    with store.fs.open_input_stream(store.committed_path("ds", "2024-03-01", "data.bin")) as f:
        assert f.read() == b"v3"
    # The previous committed version is kept for readers that resolved it a moment ago; older ones are gone.
    assert store.list_versions("ds", "2024-03-01") == versions[2:]
    assert store.read_manifest("ds", "2024-03-01")["row_count"] == 3


def test_uncommitted_versions_of_a_concurrent_writer_are_not_deleted(tmp_path):
    store = DatasetStore(str(tmp_path))
    in_progress = _write_version(store, "2024-03-01", b"writer A, still writing")
    for _ in range(3):
        store.commit("ds", "2024-03-01", _write_version(store, "2024-03-01", b"B"))
    assert in_progress in store.list_versions("ds", "2024-03-01")
    # last writer wins: A commits later and becomes visible
    store.commit("ds", "2024-03-01", in_progress)
    with store.fs.open_input_stream(store.committed_path("ds", "2024-03-01", "data.bin")) as f:
        assert f.read() == b"writer A, still writing"


def test_writer_killed_mid_write_leaves_previous_version_readable(tmp_path):
    store = DatasetStore(str(tmp_path))
    v1 = _write_version(store, "2024-03-01", b"good data")
    store.commit("ds", "2024-03-01", v1)
    # A second writer that streams a big new version and is SIGKILLed before its commit.
    script = textwrap.dedent(f"""
        import sys, time
        from resources.store import DatasetStore
        s = DatasetStore({str(tmp_path)!r})
        v = s.new_version()
        s.fs.create_dir(s.version_path("ds", "2024-03-01", v), recursive=True)
        with s.fs.open_output_stream(s.version_path("ds", "2024-03-01", v, "data.bin")) as f:
            print("writing", flush=True)
            while True:
                f.write(b"x" * 65536); time.sleep(0.001)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"writing"
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    assert len(store.list_versions("ds", "2024-03-01")) == 2  # the killed writer's partial version exists...
    assert store.committed_version("ds", "2024-03-01") == v1  # ...but readers still resolve the old one
    with store.fs.open_input_stream(store.committed_path("ds", "2024-03-01", "data.bin")) as f:
        assert f.read() == b"good data"
    # and a rerun commits normally
    v3 = _write_version(store, "2024-03-01", b"rerun")
    store.commit("ds", "2024-03-01", v3)
    assert (
        json.loads(store.fs.open_input_stream(store.partition_dir("ds", "2024-03-01") + "/_SUCCESS").read())["version"]
        == v3
    )


def test_gcs_uris_are_passed_to_spark_unchanged():
    store = DatasetStore("gs://bucket/prefix")
    assert store.raw_partition_uri("events", "2024-03-01") == "gs://bucket/prefix/raw/events/dt=2024-03-01"
    assert store.version_uri("training_events", "2024-03-01", "v1", "events") == (
        "gs://bucket/prefix/training_events/dt=2024-03-01/v=v1/events"
    )
