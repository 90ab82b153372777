"""Two runs of the same partition at the same time (separate processes, as two run workers would be): the
committed output is one complete version, readable, equal to what a single run produces."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from recsys_assets.ml.artifacts import ArtifactDir
from resources.store import DatasetStore
from tests.helpers import REPO, populate

DAYS = ["2024-05-01", "2024-05-02", "2024-05-03"]

RUN = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from dagster import AssetKey
    from tests.helpers import defs_with
    from recsys_assets.config.files import ConfigFilesResource
    from resources.storage import StorageResource

    defs = defs_with({{"storage": StorageResource(data_root={root!r}),
                      "config_files": ConfigFilesResource(training={cfg!r})}})
    result = defs.resolve_job_def("training_job").execute_in_process(partition_key={day!r},
                                                                    asset_selection=[AssetKey("vocab")])
    print("VERSION", result.asset_materializations_for_node("vocab")[0].metadata["version"].value)
    """
)


@pytest.mark.slow  # two Dagster runs in subprocesses
def test_concurrent_runs_of_one_partition_commit_one_complete_version(tmp_path):
    store = DatasetStore(str(tmp_path / "data"))
    populate(store, DAYS, events_per_day=20_000, num_users=3000, num_items=2000)
    # Two earlier days in this world: a window of 2 is enough here (the packaged minimum is 5 of 7).
    cfg = tmp_path / "training.yaml"
    cfg.write_text("min_window_days: 2\n")
    code = RUN.format(repo=str(REPO), day=DAYS[-1], root=store.root_uri, cfg=str(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    versions = {line.split()[1] for out, _ in outs for line in out.splitlines() if line.startswith("VERSION")}
    assert len(versions) == 2  # both really wrote

    committed = store.committed_version("vocab", DAYS[-1])
    assert committed in versions  # last writer wins, with a whole version
    winner, loser = committed, (versions - {committed}).pop()
    got, _ = ArtifactDir(store, "vocab", DAYS[-1], winner).read_vocab()
    # The other run's version is complete too (not deleted under a reader, kept as the previous version).
    other, _ = ArtifactDir(store, "vocab", DAYS[-1], loser).read_vocab()
    # (Empty only if both commits read the pointer before either replaced it: still no version deleted.)
    assert store.read_manifest("vocab", DAYS[-1])["previous_versions"] in ([loser], [])
    assert sorted(store.list_versions("vocab", DAYS[-1])) == sorted(versions)
    for f in got.features:
        assert got.tables[f].equals(other.tables[f])
    assert got.cardinality("user_id") > 1000
