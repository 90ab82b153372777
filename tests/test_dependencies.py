"""pyproject's dependencies against the code: every declared distribution is imported by the platform's code (or is a
process / plug-in a deployment starts by name, listed below with where), and every third-party module the code
imports is provided by a declared distribution, not by whatever another package happened to pull in."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = ("recsys_assets", "resources", "checks")
# Declared but never imported, and why: (file that uses it, text there that shows the use).
USED_BY_NAME = {
    "dagster-webserver": ("Makefile", "dagster dev"),  # the webserver process
    "dagster-postgres": ("deploy/production/dagster.yaml", "postgres:"),  # instance storage, loaded by Dagster
    # pyspark.sql.connect, imported by great-expectations, exits the process without it
    "zstandard": ("pyproject.toml", "pyspark.sql.connect (imported by great-expectations)"),
}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_name(r) for r in project["dependencies"]}


def imported_modules() -> set[str]:
    """Top-level modules the platform's code imports, standard library and its own packages left out."""
    found = set()
    for package in CODE:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    found |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - set(CODE)


def test_every_declared_dependency_is_used_and_every_import_is_declared():
    deps = declared()
    providers = {m: {_name(d) for d in ds} for m, ds in md.packages_distributions().items()}
    modules = imported_modules()
    undeclared = {m: sorted(providers.get(m, {"?"})) for m in modules if not providers.get(m, set()) & deps}
    assert not undeclared, f"imported but provided by no declared dependency: {undeclared}"
    used = {d for m in modules for d in providers.get(m, ())}
    unused = deps - used - set(USED_BY_NAME)
    assert not unused, f"declared in pyproject but never imported: {sorted(unused)}"
    for dist, (where, text) in USED_BY_NAME.items():
        assert dist in deps and dist not in used, f"{dist}: drop it from USED_BY_NAME"
        assert text in (ROOT / where).read_text(), f"{dist}: {where} no longer shows its use ({text!r})"
    assert "dagster-pyspark" not in deps  # declared for years, never imported (issue 32)
