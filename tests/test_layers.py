"""The layers hold (import-linter contracts: no upward import, no Dagster in the model library or the Spark stages),
a worker imports the library without Dagster, and asset bodies stay thin."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO


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
    assert "Contracts: 2 kept, 0 broken." in proc.stdout


def test_an_upward_import_breaks_the_layer_contract(tmp_path):
    for part in ("recsys_assets", "resources", "checks"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    # The datagen layer reaching up into serving, and the ground floor into the assets.
    with open(tmp_path / "recsys_assets" / "datagen" / "stages.py", "a") as f:
        f.write("\nimport recsys_assets.serving.feed  # noqa\n")
    with open(tmp_path / "resources" / "storage.py", "a") as f:
        f.write("\nimport recsys_assets.core.datasets  # noqa\n")
    # The library reaching Dagster through a ground module that uses it (the partitions definition).
    with open(tmp_path / "recsys_assets" / "ml" / "metrics.py", "a") as f:
        f.write("\nimport recsys_assets.core.partitions  # noqa\n")
    proc = _lint_imports(tmp_path)
    assert proc.returncode != 0
    assert "recsys_assets.datagen.stages -> recsys_assets.serving.feed" in proc.stdout
    assert "resources.storage -> recsys_assets.core.datasets" in proc.stdout
    assert "recsys_assets.ml is not allowed to import dagster" in proc.stdout
    assert "recsys_assets.ml.metrics -> recsys_assets.core.partitions" in proc.stdout


def test_a_worker_imports_the_library_entry_points_without_dagster():
    """What a torchrun worker or a Spark executor imports: training, indexing, scoring, releases and the Spark
    stages, in a fresh interpreter, with no Dagster module loaded."""
    code = (
        "import sys\n"
        "import recsys_assets.ml.train, recsys_assets.ml.indexing, recsys_assets.ml.scoring, recsys_assets.ml.release\n"
        "import recsys_assets.datagen.stages, recsys_assets.history.stage\n"
        "import recsys_assets.ml.worker, recsys_assets.ml.launch, recsys_assets.ml.distributed\n"
        "from recsys_assets.ml.train import build_day_vocab, train_day_ranker, train_day_retrieval\n"
        "from recsys_assets.ml.scoring import generate_feed\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0].startswith('dagster'))\n"
        "print(len(sys.modules), loaded)\n"
        "assert not loaded, loaded\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("[]")


ASSET_DECORATORS = {"asset", "multi_asset", "asset_check", "op"}
MAX_BODY_LINES = 40


def test_asset_and_check_bodies_stay_thin():
    """Each asset, check and op body resolves its inputs, calls one function, publishes and reports: the work lives
    in plain modules (no body over MAX_BODY_LINES lines, docstring excluded)."""
    too_long = []
    for path in [*REPO.glob("recsys_assets/**/*.py"), *REPO.glob("checks/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            names = {ast.unparse(d).split("(")[0].split(".")[-1] for d in node.decorator_list}
            if not names & ASSET_DECORATORS:
                continue
            body = node.body[1:] if isinstance(node.body[0], ast.Expr) else node.body
            lines = body[-1].end_lineno - body[0].lineno + 1
            if lines > MAX_BODY_LINES:
                too_long.append(f"{path.relative_to(REPO)}:{node.name} ({lines} lines)")
    assert not too_long, too_long
