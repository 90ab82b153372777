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
    before = last_json("datagen_local2.json")["rows"]  # cached filter chain (2026-11-22)
    after = last_json("datagen_local2_after.json")["results"]  # no event-sized cache (2026-11-23)
    star = last_json("datagen_local2_star.json")["results"]  # catalogue columns once per item (2026-11-23)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for rows, label, rss_py, rss_jvm in (
        (before, "cached day", "python_peak_rss_mb", "jvm_peak_rss_mb"),
        (after, "no event-sized cache", "driver_python_peak_rss_mb", "spark_jvm_peak_rss_mb"),
        (star, "+ item columns once per item", "driver_python_peak_rss_mb", "spark_jvm_peak_rss_mb"),
    ):
        n = [r["raw_events"] / 1e6 for r in rows]
        a.plot(n, [r["raw_events_per_s"] / 1e3 for r in rows], "o-", label=label)
        b.plot(n, [r[rss_py] for r in rows], "o--", label=f"Python driver, {label}")
        b.plot(n, [r[rss_jvm] for r in rows], "s-", label=f"Spark JVM, {label}")
    a.axhline(250, color="red", ls="--", label="target 250k/s")
    a.set_xscale("log")
    a.set_xlabel("raw events in the day (millions)")
    a.set_ylabel("raw events/s (thousands)")
    a.set_title("Datagen throughput, local[2]")
    a.legend()
    b.set_xscale("log")
    b.set_xlabel("raw events in the day (millions)")
    b.set_ylabel("peak RSS (MB)")
    b.set_title("Peak memory")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "datagen_throughput.png", dpi=110)


def training() -> None:
    series = {
        "CPU, 2 cores": last_json("training_cpu2.json"),
        "H100, 1 loader thread": last_json("training_h100_prefetch.json"),
        "H100, 4 loader threads": last_json("training_h100_loader4.json"),
    }
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, title in zip(
        axes, ("loader", "ranker", "two_tower"), ("loader only", "ranker (MMoE) training", "two-tower training")
    ):
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
