"""The cheapest tests there are: the one Definitions loads, every job resolves, the asset graph is what the
snapshot says (keys, deps, partitions, groups, checks), groups are named as their folders, and the training window
has one source (the lineage, automation and training agree, and a run that disagrees is refused)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys_assets.definitions import defs
from tests.helpers import REPO

SNAPSHOT = Path(__file__).with_name("snapshots") / "asset_graph.json"


def graph_snapshot() -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "partitions": type(partitions).__name__ if partitions else None,
            "backfill": repr(node.backfill_policy) if node.backfill_policy else None,
            "pool": node.pools and sorted(node.pools) or None,
        }
    checks = {
        key.to_user_string(): {"blocking": graph.get_check_spec(key).blocking}
        for key in sorted(graph.asset_check_keys, key=lambda k: k.to_user_string())
    }
    jobs = sorted(j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__"))
    return {
        "assets": assets,
        "checks": checks,
        "jobs": jobs,
        "sensors": sorted(s.name for s in defs.sensors),
        "schedules": sorted(s.name for s in defs.schedules),
    }


def test_defs_can_load_and_every_job_resolves():
    repo = defs.get_repository_def()
    jobs = {j.name: j for j in defs.resolve_all_job_defs()}
    assert {
        "datagen_job",
        "training_job",
        "serving_job",
        "online_evaluation_job",
        "rollback_model_job",
        "retention_job",
    } <= set(jobs)
    for job in jobs.values():
        job.get_job_snapshot()  # raises if a selection, resource or config schema does not resolve
    assert {s.name for s in repo.sensor_defs} >= {
        "raw_success_file_sensor",
        "check_failure_sensor",
        "notification_delivery_sensor",
    }


def test_the_code_location_loads_through_dagsters_own_loader():
    """What `dagster dev`, the daemon and the webserver do with workspace.yaml (importing the object above is not the
    same: the loader also rejects, for example, more than one Definitions at module scope)."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and "All code locations passed validation" in proc.stdout + proc.stderr, (
        proc.stdout[-3000:] + proc.stderr[-3000:]
    )


def test_asset_graph_matches_the_snapshot():
    """A change to the graph (an asset, a dependency, a check, blocking or not) must be deliberate: regenerate with
    RECSYS_UPDATE_SNAPSHOT=1 and review the diff."""
    current = graph_snapshot()
    if os.environ.get("RECSYS_UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text())


def test_every_asset_group_is_named_as_its_folder():
    """A group in the UI is a folder in the code: datagen/, history/, training/, indexes/, evaluation/, serving/,
    maintenance/ (the raw inputs are external assets: group raw)."""
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        if key.path[0] == "raw":
            assert node.group_name == "raw"
            continue
        fn = defs.get_assets_def(key).op.compute_fn.decorated_fn
        folder = fn.__module__.split(".")[1]
        assert node.group_name == folder, f"{key.to_user_string()}: group {node.group_name!r}, defined in {folder}/"


WINDOW_PROBE = """
import json, sys
from recsys_assets.definitions import defs, default_resources
from recsys_assets.ml.windows import NoTrainingDataError, window_for
from resources.store import DatasetStore

graph = defs.resolve_asset_graph()
offsets = {}
for key in graph.get_all_asset_keys():
    for dep in defs.get_assets_def(key).specs_by_key[key].deps:
        if dep.asset_key.to_user_string() == "training_events" and dep.partition_mapping is not None:
            offsets[key.to_user_string()] = getattr(dep.partition_mapping, "start_offset", None)
spec = default_resources()["config_files"].process_config_and_initialize().training_spec()
try:
    window_for(DatasetStore(sys.argv[1]), "2024-03-20", spec)
except NoTrainingDataError as e:
    message = str(e)
print(json.dumps({"offsets": offsets, "window_days": spec.window_days, "message": message}))
"""


def test_a_deployment_window_of_14_days_sets_lineage_automation_and_training_alike(tmp_path):
    """window_days read once at load from the deployment's training YAML (RECSYS_TRAINING_CONFIG): every window
    dependency spans 14 days, and training reads the same 14 days."""
    config = tmp_path / "training.yaml"
    config.write_text("window_days: 14\nmin_window_days: 10\n")
    proc = subprocess.run(
        [sys.executable, "-c", WINDOW_PROBE, str(tmp_path / "data")],
        cwd=REPO,
        env={**os.environ, "RECSYS_TRAINING_CONFIG": str(config), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    # vocab, both models, both indexes: the lineage (and the automation conditions built on it) is 14 days.
    assert probe["offsets"] == {
        "vocab": -14,
        "ranker_model": -14,
        "retrieval_model": -14,
        "retrieval_index": -14,
        "cold_start_index": -14,
        "user_history": -1,  # yesterday's events, not a window
    }
    assert probe["window_days"] == 14
    assert "(2024-03-06..2024-03-19)" in probe["message"]  # the 14 days before the 20th


def test_a_run_whose_training_yaml_sets_another_window_is_refused_naming_both(tmp_path, instance):
    from dagster import AssetKey

    from recsys_assets.config.files import ConfigFilesResource
    from recsys_assets.config.training import TrainingConfigError
    from resources.storage import StorageResource
    from tests.helpers import run_job

    config = tmp_path / "training.yaml"
    config.write_text("window_days: 14\n")
    with pytest.raises(TrainingConfigError, match="sets window_days 14.*loaded with window_days 7"):
        ConfigFilesResource(training=str(config)).training_spec()
    resources = {
        "storage": StorageResource(data_root=str(tmp_path / "data")),
        "config_files": ConfigFilesResource(training=str(config)),
    }
    result = run_job("training_job", "2024-03-20", instance, resources, asset_selection=[AssetKey("vocab")])
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "sets window_days 14" in str(failure.step_failure_data.error)
    assert "loaded with window_days 7" in str(failure.step_failure_data.error)
