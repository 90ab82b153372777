"""Training benchmark on committed training_events (run `make demo` first, or point --data-root at any datagen
output): loader-only samples/s, and ranker / two-tower training samples/s per batch size on the current device.
Prints one JSON object.

    .venv/bin/python benchmarks/training.py --data-root ./data [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from recsys_assets.config.training import load_training_spec
from recsys_assets.core.datasets import VOCAB
from recsys_assets.core.readers import read_final_items
from recsys_assets.ml.artifacts import ArtifactDir
from recsys_assets.ml.features import DENSE_FEATURES, build_item_catalog, build_vocab, count_tokens, dense_moments
from recsys_assets.ml.history import load_histories
from recsys_assets.ml.loader import BatchEncoder, committed_events_dataset, retrieval_positive_filter, shuffled_batches
from recsys_assets.ml.ranker import RankerHyper, train_ranker
from recsys_assets.ml.retrieval import RetrievalHyper, train_two_tower
from recsys_assets.ml.trainer import TrainSettings
from resources.devices import resolve_device
from resources.store import DatasetStore


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-root", default="./data")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-sizes", default="1024,4096")
    p.add_argument("--days", type=int, default=7, help="trailing committed training_events days to use")
    p.add_argument("--loader-threads", type=int, default=0, help="fragments encoded at once (0: the default)")
    p.add_argument(
        "--history",
        action="store_true",
        help="history-aware models: the loader joins each event with its day's user_history (training.yaml "
        "history.max_len); every train day needs a committed user_history",
    )
    a = p.parse_args()
    if a.loader_threads:
        import recsys_assets.ml.loader as loader_module

        loader_module.LOADER_THREADS = a.loader_threads
    store = DatasetStore(a.data_root)
    days = sorted(
        d.name[3:]
        for d in (os.scandir(store.path("training_events")))
        if store.read_manifest("training_events", d.name[3:])
    )
    train_days = days[-a.days :]
    spec = load_training_spec()
    ds = committed_events_dataset(store, train_days)
    vocab_day = next((d for d in reversed(days) if store.read_manifest(VOCAB, d)), None)
    if vocab_day:
        vocab, moments = ArtifactDir.committed(store, VOCAB, vocab_day).read_vocab()
    else:
        vocab = build_vocab(None, count_tokens(ds.to_batches(columns=spec.vocab.features), spec.vocab.features), 2)
        moments = dense_moments(ds.to_batches(columns=list(DENSE_FEATURES)))
    catalog = build_item_catalog([read_final_items(store, d) for d in train_days])
    history_len = spec.history.max_len if a.history else 0
    history = load_histories(store, train_days, history_len, vocab, catalog) if a.history else None
    enc = BatchEncoder(vocab, moments, catalog, spec.labels, history)
    device = resolve_device(a.device)
    rows = ds.count_rows()
    out = {
        "benchmark": "training",
        "rows": rows,
        "train_days": train_days,
        "device": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "loader_threads": __import__("recsys_assets.ml.loader", fromlist=["x"]).LOADER_THREADS,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "history_len": history_len,
        "loader": {},
        "ranker": {},
        "two_tower": {},
    }
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(0)

    if device.startswith("cuda"):
        # CUDA context, cuBLAS handles and the caching allocator are set up by the first epoch: not steady state.
        warm = TrainSettings(epochs=1, batch_size=4096, device=device, mixed_precision=True)
        train_ranker(ds, enc, RankerHyper(history_len=history_len), warm, log=lambda m: None)
        train_two_tower(ds, enc, RetrievalHyper(history_len=history_len), warm, log=lambda m: None)
    for bs in [int(x) for x in a.batch_sizes.split(",")]:
        t0 = time.perf_counter()
        n = sum(len(b["content_row"]) for b in shuffled_batches(ds, enc, bs, seed=1, epoch=0))
        out["loader"][bs] = round(n / (time.perf_counter() - t0), 1)
        settings = TrainSettings(epochs=1, batch_size=bs, device=device, mixed_precision=device.startswith("cuda"))
        _, fit = train_ranker(ds, enc, RankerHyper(history_len=history_len), settings, log=lambda m: None)
        out["ranker"][bs] = round(fit.samples_per_s, 1)
        _, fit, _ = train_two_tower(ds, enc, RetrievalHyper(history_len=history_len), settings, log=lambda m: None)
        out["two_tower"][bs] = round(fit.samples_per_s, 1)
        print(
            json.dumps(
                {
                    "batch_size": bs,
                    "loader": out["loader"][bs],
                    "ranker": out["ranker"][bs],
                    "two_tower": out["two_tower"][bs],
                }
            ),
            flush=True,
        )
    positives = ds.count_rows(filter=retrieval_positive_filter(spec.labels))
    out["two_tower_positive_rows"] = positives
    out["loader_over_ranker_step"] = {bs: round(out["loader"][bs] / out["ranker"][bs], 2) for bs in out["ranker"]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
