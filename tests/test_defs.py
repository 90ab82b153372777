"""The cheapest tests there are: the one Definitions loads, every job resolves, the asset graph is what the
snapshot says (keys, deps, partitions, groups, checks), and the layers hold (import-linter contracts)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from recsys_assets.definitions import defs

REPO = Path(__file__).resolve().parents[1]
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


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(root)},
    )


def test_the_layers_hold():
    proc = _lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken." in proc.stdout


def test_an_upward_import_breaks_the_layer_contract(tmp_path):
    for part in ("recsys_assets", "resources", "checks"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    # The datagen layer reaching up into serving, and the ground floor into the assets.
    with open(tmp_path / "recsys_assets" / "datagen" / "stages.py", "a") as f:
        f.write("\nimport recsys_assets.serving.feed  # noqa\n")
    with open(tmp_path / "resources" / "storage.py", "a") as f:
        f.write("\nimport recsys_assets.core.datasets  # noqa\n")
    proc = _lint_imports(tmp_path)
    assert proc.returncode != 0
    assert "recsys_assets.datagen.stages -> recsys_assets.serving.feed" in proc.stdout
    assert "resources.storage -> recsys_assets.core.datasets" in proc.stdout
