"""Draws docs/layers.png from the code: the packages in their import-linter layers (pyproject.toml) and every
import arrow between them, counted by module pairs (grimp, the graph import-linter checks). Arrows only point down;
an upward one would be red (and `lint-imports` would fail).

    .venv/bin/python docs/layers.py            # writes docs/layers.png, prints the arrows
"""

from __future__ import annotations

import collections
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GROUND = {"recsys_assets.config", "recsys_assets.core", "resources"}


def layers() -> list[list[str]]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    contract = next(c for c in config if c["type"] == "layers")
    return [[p.strip() for p in layer.split("|")] for layer in contract["layers"]]


def package_of(module: str, packages: set[str]) -> str | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in packages:
            return ".".join(parts[:n])
    return None


def arrows(packages: set[str]) -> collections.Counter:
    import grimp

    sys.path.insert(0, str(REPO))
    graph = grimp.build_graph("recsys_assets", "resources", "checks", cache_dir=None)
    out: collections.Counter = collections.Counter()
    for module in graph.modules:
        a = package_of(module, packages)
        for imported in graph.find_modules_directly_imported_by(module):
            b = package_of(imported, packages)
            if a and b and a != b:
                out[(a, b)] += 1
    return out


def draw(rows: list[list[str]], counts: collections.Counter, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    level = {p: i for i, row in enumerate(rows) for p in row}
    pos = {}
    for i, row in enumerate(rows):
        for j, p in enumerate(row):
            pos[p] = ((j + 1) / (len(row) + 1), 1 - (i + 0.5) / len(rows))
    fig, ax = plt.subplots(figsize=(12, 13), dpi=90)
    ax.set_axis_off()
    ax.set_xlim(-0.15, 1.15)
    for k, ((a, b), n) in enumerate(sorted(counts.items(), key=lambda kv: (level[kv[0][0]], level[kv[0][1]]))):
        (xa, ya), (xb, yb) = pos[a], pos[b]
        upward = level[a] > level[b]
        # Arrows between the stacked middle column bend out to alternating sides, more the further they reach.
        rad = (0.12 + 0.05 * abs(level[a] - level[b])) * (1 if k % 2 else -1) if abs(xa - xb) < 0.01 else 0.0
        ax.annotate(
            "",
            xy=(xb, yb + 0.012),
            xytext=(xa, ya - 0.012),
            arrowprops=dict(
                arrowstyle="->",
                color="red" if upward else "0.5",
                lw=0.5 + 0.12 * min(n, 15),
                connectionstyle=f"arc3,rad={rad:.2f}",
                shrinkA=6,
                shrinkB=6,
            ),
        )
    for p, (x, y) in pos.items():
        label = p.replace("recsys_assets.", "")
        color = "#d9ead3" if p == "recsys_assets.ml" else ("#fff2cc" if p in GROUND else "#cfe2f3")
        ax.text(x, y, label, ha="center", va="center", fontsize=10, bbox=dict(boxstyle="round", fc=color, ec="0.3"))
    ax.set_title(
        "Layers, top to bottom: a package imports only packages below it (pyproject.toml contracts)\n"
        "blue: Dagster definitions; green: the model library (no Dagster); yellow: the ground\n"
        f"{len(counts)} package-level import arrows (width: module pairs), none upward",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    rows = layers()
    packages = {p for row in rows for p in row}
    counts = arrows(packages)
    for (a, b), n in sorted(counts.items()):
        print(f"{a} -> {b} ({n})")
    draw(rows, counts, REPO / "docs" / "layers.png")
    print(f"{len(counts)} arrows; docs/layers.png written")


if __name__ == "__main__":
    main()
