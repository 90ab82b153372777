"""PNG plots for docs/benchmarks.md from the JSON outputs in benchmarks/results/ (the last JSON line of each file).

    .venv/bin/pip install -e ".[bench]" && .venv/bin/python benchmarks/plots.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OUT = HERE.parent / "docs" / "benchmarks"


def last_json(name: str) -> dict:
    lines = [line for line in (RESULTS / name).read_text().splitlines() if line.strip().startswith("{")]
    return json.loads(lines[-1])


def datagen() -> None:
    rows = last_json("datagen_local2.json")["rows"]
    n = [r["raw_events"] / 1e6 for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(n, [r["raw_events_per_s"] / 1e3 for r in rows], "o-", label="measured (local[2])")
    a.axhline(250, color="red", ls="--", label="target 250k/s")
    a.set_xscale("log")
    a.set_xlabel("raw events in the day (millions)")
    a.set_ylabel("raw events/s (thousands)")
    a.set_title("Datagen throughput, 2 cores")
    a.legend()
    b.plot(n, [r["python_peak_rss_mb"] for r in rows], "o-", label="Python driver")
    b.plot(n, [r["jvm_peak_rss_mb"] for r in rows], "s-", label="Spark JVM (driver+executor)")
    b.set_xscale("log")
    b.set_xlabel("raw events in the day (millions)")
    b.set_ylabel("peak RSS (MB)")
    b.set_title("Peak memory")
    b.legend()
    fig.tight_layout()
    fig.savefig(OUT / "datagen_throughput.png", dpi=110)


def training() -> None:
    series = {"CPU, 2 cores": last_json("training_cpu2.json"),
              "H100, 1 loader thread": last_json("training_h100_prefetch.json"),
              "H100, 4 loader threads": last_json("training_h100_loader4.json")}
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, title in zip(axes, ("loader", "ranker", "two_tower"), ("loader only", "ranker (MMoE) training", "two-tower training")):
        for label, d in series.items():
            bs = sorted(int(b) for b in d[key])
            ax.plot(bs, [d[key][str(b)] / 1e3 for b in bs], "o-", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("samples/s (thousands)")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "training_samples_per_s.png", dpi=110)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    datagen()
    training()
    print(json.dumps({"plots": sorted(p.name for p in OUT.glob("*.png"))}))


if __name__ == "__main__":
    main()
