"""The offline evaluation report as one PNG: recall@10 and NDCG@10 of every retrieval method, and the AUC of every
ranker variant per task, so a day's comparison with the baselines reads at a glance in the UI (embedded in the asset's
markdown metadata as a data URI, the way Dagster's own examples show plots) and in the artifact (`comparison.png`)."""

from __future__ import annotations

import io
import math


def comparison_png(report: dict, dpi: int = 80) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # no display; set before pyplot is imported
    import matplotlib.pyplot as plt

    methods = report["retrieval"]["methods"]
    names = list(methods)
    ranker = report["ranker"]
    variants = {
        "ranker": ranker["auc"],
        "history-free ranker": ranker.get("auc_history_free") or {},
        "item prior": ranker.get("auc_item_prior") or {},
    }
    variants = {v: aucs for v, aucs in variants.items() if aucs}
    tasks = [t for t, v in ranker["auc"].items() if v is not None and not math.isnan(v)]

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), gridspec_kw={"width_ratios": [1, 1, 1.1]})
    for k, (ax, metric) in enumerate(zip(axes[:2], ("recall@10", "ndcg@10"))):
        values = [methods[n].get(metric, 0.0) for n in names]
        bars = ax.barh(range(len(names)), values, color=["#2a6f97" if "two-tower" in n else "#a9a9a9" for n in names])
        ax.set_yticks(range(len(names)), names if k == 0 else [], fontsize=8)  # the method names once
        ax.invert_yaxis()
        ax.set_title(metric, fontsize=10)
        ax.bar_label(bars, fmt="%.4f", fontsize=7, padding=2)
        ax.set_xlim(0, max(values + [1e-9]) * 1.3)
    ax = axes[2]
    width = 0.8 / max(len(variants), 1)
    for i, (variant, aucs) in enumerate(variants.items()):
        xs = [j + i * width for j in range(len(tasks))]
        ax.bar(xs, [aucs.get(t, float("nan")) for t in tasks], width, label=variant)
    ax.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(tasks))], tasks, fontsize=8)
    ax.set_ylim(0.5, 1.0)
    ax.set_title("ranker AUC per task", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(
        f"offline evaluation {report['validation_day']}: {report['retrieval']['num_queries']:,} users, "
        f"{report['retrieval']['corpus_size']:,} items",
        fontsize=10,
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
