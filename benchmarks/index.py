"""Index benchmark: N x 128-d L2-normalised clustered vectors (item-tower-like), exact IndexFlatIP vs IVF and HNSW
settings: build seconds, recall@10 against exact search, QPS in batch and single-query mode. Prints one JSON.

    .venv/bin/python benchmarks/index.py --items 1000000 --queries 2000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import faiss
import numpy as np

from recsys_assets.ml.faiss_index import IndexSpec, build_ip_index, l2_normalize
from recsys_assets.ml.metrics import exact_top_k


def clustered(n: int, d: int, clusters: int, seed: int, noise: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 200_000):  # chunked: no n x d float64 temporaries
        m = min(200_000, n - s)
        out[s : s + m] = centres[rng.integers(0, clusters, m)] + noise * rng.normal(size=(m, d)).astype(np.float32)
    return l2_normalize(out)


def qps(index, queries: np.ndarray, k: int, single: int) -> tuple[float, float, np.ndarray]:
    t0 = time.perf_counter()
    _, ids = index.search(queries, k)
    batch = len(queries) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for q in queries[:single]:
        index.search(q[None, :], k)
    return batch, single / (time.perf_counter() - t0), ids


def recall(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / truth.shape[1] for a, b in zip(ids, truth)]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--queries", type=int, default=2_000)
    p.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--clusters", type=int, default=2_000)
    p.add_argument(
        "--noise",
        type=float,
        default=1.0,
        help="per-dimension noise around cluster centres (1.0: neighbours are not trivially separable)",
    )
    p.add_argument("--hnsw", action="store_true", help="also build HNSW (slow to build on 2 cores at 1M)")
    a = p.parse_args()
    data = clustered(a.items + a.queries, a.dim, a.clusters, seed=0, noise=a.noise)
    corpus, queries = data[: a.items], data[a.items :]
    truth = exact_top_k(queries, corpus, a.k)
    results = []

    def record(name, index, build_s, params):
        b, s, ids = qps(index, queries, a.k, a.single)
        results.append(
            {
                "index": name,
                **params,
                "build_s": round(build_s, 2),
                "recall_at_k": round(recall(ids, truth), 4),
                "batch_qps": round(b, 1),
                "single_qps": round(s, 1),
            }
        )
        print(json.dumps(results[-1]), flush=True)

    t0 = time.perf_counter()
    flat, _ = build_ip_index(corpus, IndexSpec(ivf_min_items=a.items + 1))
    record("IndexFlatIP", flat, time.perf_counter() - t0, {})

    t0 = time.perf_counter()
    ivf, desc = build_ip_index(corpus, IndexSpec(ivf_min_items=1))  # the platform's IVF default (nlist 4*sqrt(n))
    build_s = time.perf_counter() - t0
    for nprobe in (8, 16, 32, 64, 128):
        ivf.nprobe = nprobe
        record("IndexIVFFlat", ivf, build_s, {"nlist": desc["nlist"], "nprobe": nprobe})

    if a.hnsw:
        t0 = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(a.dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 80
        hnsw.add(corpus)
        build_s = time.perf_counter() - t0
        for ef in (32, 64, 128):
            hnsw.hnsw.efSearch = ef
            record("IndexHNSWFlat", hnsw, build_s, {"M": 32, "efConstruction": 80, "efSearch": ef})

    flat_qps = results[0]["batch_qps"]
    eligible = [r for r in results[1:] if r["recall_at_k"] >= 0.95]
    best = max(eligible, key=lambda r: r["batch_qps"], default=None)
    print(
        json.dumps(
            {
                "benchmark": "index",
                "items": a.items,
                "dim": a.dim,
                "noise": a.noise,
                "clusters": a.clusters,
                "queries": a.queries,
                "k": a.k,
                "machine": {
                    "cpus": os.cpu_count(),
                    "faiss_threads": faiss.omp_get_max_threads(),
                    "platform": platform.platform(),
                },
                "results": results,
                "best_with_recall_ge_0.95": best,
                "speedup_vs_exact": round(best["batch_qps"] / flat_qps, 2) if best else None,
            }
        )
    )


if __name__ == "__main__":
    main()
