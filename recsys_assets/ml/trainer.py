"""The training loop shared by both models: device placement, optional bf16 autocast on GPU, per-epoch
checkpoints with resume, determinism on CPU, and throughput logging.

A run killed mid-training (OOM, preemption, a lost SSH session in the seed's runbook) resumes from the last
complete epoch on the next attempt: checkpoints carry model + optimizer state, and each epoch's randomness is
derived from (seed, epoch) alone, so a resumed run ends with the same weights as an uninterrupted one on CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import posixpath
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyarrow.fs as pafs
import torch
from torch import nn

from recsys_assets.ml.distributed import SINGLE, GradientSync, Rank, all_gather_objects, all_sum
from recsys_assets.ml.memory import release_memory
from recsys_assets.ml.sparse_optim import LazyAdam
from resources.store import DatasetStore


@dataclass(frozen=True)
class TrainSettings:
    """How one model trains: its sizes (the training YAML's ranker/retrieval section) and where it runs (the
    training resource's runtime: device, bf16, threads, seed)."""

    epochs: int = 2
    batch_size: int = 2048
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    seed: int = 7
    device: str = "cpu"  # resolved: "cpu" or "cuda[:n]"
    mixed_precision: bool = False  # bf16 autocast, GPU only
    num_threads: int = 0  # 0 = torch default
    shuffle_buffer_rows: int = 1_000_000
    # Id embedding tables get sparse gradients and a lazy (row-wise) Adam: a step updates only the rows its batch
    # looked up, so its cost does not grow with the table (dense AdamW touches every row of every table every step).
    sparse_embeddings: bool = True
    # Data-parallel place of this process (ml/distributed.py): batch_size stays the global batch.
    rank: int = 0
    world_size: int = 1

    @property
    def shard(self) -> Rank:
        return Rank(self.rank, self.world_size)

    @classmethod
    def of(cls, sizes, runtime: dict) -> TrainSettings:
        """A model's sizes (config.training.ModelSizes) on a runtime (TrainingResource.runtime())."""
        return cls(
            epochs=sizes.epochs,
            batch_size=sizes.batch_size,
            learning_rate=sizes.learning_rate,
            weight_decay=sizes.weight_decay,
            shuffle_buffer_rows=sizes.shuffle_buffer_rows,
            sparse_embeddings=sizes.sparse_embeddings,
            **runtime,
        )


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    resumed_from_epoch: int | None = None
    best_epoch: int | None = None  # with a holdout: the epoch whose weights the model ends with
    stopped_early: bool = False
    train_seconds: float = 0.0
    trained_samples: int = 0

    @property
    def samples_per_s(self) -> float:
        return self.trained_samples / self.train_seconds if self.train_seconds else 0.0


class _HashingWriter(io.RawIOBase):
    """A write-only stream that passes what it is given to `out` and keeps its SHA-256."""

    def __init__(self, out):
        self.out, self.hash = out, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.hash.update(b)
        self.out.write(b)
        return len(b)


class CheckpointStore:
    """Per-epoch checkpoints under one directory of the data root (local or gs://), written atomically.

    The data root is a trust boundary: a file planted there must not run code. Each `epoch-NNNN.pt` has a JSON
    sidecar `epoch-NNNN.json` (fingerprint of the run, SHA-256 of the .pt) written after it; `latest` reads only
    sidecars whose fingerprint matches this run, checks the hash, and loads with `weights_only=True` (tensors and
    plain containers only; the checkpoint format needs nothing else)."""

    _NAME = re.compile(r"^epoch-(\d{4})\.pt$")

    def __init__(self, store: DatasetStore, directory: str):
        self.store, self.directory = store, directory

    def _epochs(self) -> list[int]:
        if not self.store.exists(self.directory):
            return []
        infos = self.store.fs.get_file_info(pafs.FileSelector(self.directory))
        return sorted(int(m.group(1)) for i in infos if (m := self._NAME.match(i.base_name)))

    def _path(self, epoch: int, ext: str) -> str:
        return posixpath.join(self.directory, f"epoch-{epoch:04d}.{ext}")

    def save(self, epoch: int, state: dict) -> str:
        """Streamed to the store as torch serialises it (hashed on the way): the checkpoint, whose tables and
        optimizer states grow with the users, is never also held as one bytes object (twice, with its buffer)."""
        path = self._path(epoch, "pt")
        with self.store.open_atomic(path) as f:
            sink = _HashingWriter(f)
            torch.save(state, sink)
        self.store.write_json_atomic(
            self._path(epoch, "json"),
            {"epoch": epoch, "fingerprint": state.get("fingerprint", ""), "sha256": sink.hash.hexdigest()},
        )
        for old in self._epochs()[:-2]:  # keep the last two: the newest may be unreadable if the disk filled
            for ext in ("pt", "json"):
                if self.store.exists(self._path(old, ext)):
                    self.store.fs.delete_file(self._path(old, ext))
        return path

    def latest(self, fingerprint: str) -> dict | None:
        for epoch in reversed(self._epochs()):
            try:
                meta = self.store.read_json(self._path(epoch, "json"))
                if not isinstance(meta, dict) or meta.get("fingerprint") != fingerprint:
                    continue  # another run's checkpoint, or one without a sidecar: never unpickled
                with self.store.fs.open_input_stream(self._path(epoch, "pt")) as f:
                    data = f.read()
                if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
                    continue  # torn, corrupt or replaced since the sidecar was written
                state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            except Exception:  # a torn, corrupt or foreign file: fall back to the previous epoch
                continue
            if isinstance(state, dict) and state.get("fingerprint") == fingerprint:
                return state
        return None

    def clear(self) -> None:
        """Delete this run's checkpoints (after the model is committed) and the partition's dir if now empty."""
        if self.store.exists(self.directory):
            self.store.fs.delete_dir(self.directory)
        self.store.delete_dir_if_empty(posixpath.dirname(self.directory))


class _LoaderError:
    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()


def prefetched(
    batches: Iterator[dict[str, torch.Tensor]], depth: int = 3, pin_memory: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Produce batches on a background thread (pyarrow decode and numpy gather release the GIL) so reading the
    next batch overlaps the training step; order is unchanged, so training stays deterministic. With
    pin_memory, host tensors are page-locked so the copy to the GPU can be asynchronous."""
    from recsys_assets.ml.loader import put_unless_stopped

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        return put_unless_stopped(q, item, stop)

    def produce() -> None:
        try:
            for b in batches:
                if pin_memory:
                    b = {k: v.pin_memory() for k, v in b.items()}
                if not put(b):
                    return
        except BaseException as e:  # handed to the consumer, raised there
            put(_LoaderError(e))
        put(_END)

    worker = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    worker.start()
    try:
        while (item := q.get()) is not _END:
            if isinstance(item, _LoaderError):
                raise item.exc
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


# A non-finite loss is checked every this many steps: checking every step forces a GPU sync per step.
FINITE_CHECK_EVERY = 50


class Optimizers:
    """The model's optimizers: AdamW for the dense layers and, with `sparse_embeddings`, LazyAdam (AdamW's trajectory,
    reading and writing only the rows a batch looks up; ml/sparse_optim.py) for every nn.Embedding table, whose
    lookups then produce sparse gradients. `sync` brings every row up to date (before weights are saved or read);
    `done` also restores the tables to plain dense lookups, so exports see ordinary modules."""

    def __init__(self, model: nn.Module, settings: TrainSettings):
        self.tables = [m for m in model.modules() if isinstance(m, nn.Embedding)] if settings.sparse_embeddings else []
        table_params = {id(m.weight) for m in self.tables}
        dense = [p for p in model.parameters() if id(p) not in table_params]
        self.all = [torch.optim.AdamW(dense, lr=settings.learning_rate, weight_decay=settings.weight_decay)]
        if self.tables:
            for m in self.tables:
                m.sparse = True
            weights = list({id(m.weight): m.weight for m in self.tables}.values())
            self.lazy = LazyAdam(weights, lr=settings.learning_rate, weight_decay=settings.weight_decay)
            self.lazy.watch(self.tables)
            self.all.append(self.lazy)

    def zero_grad(self) -> None:
        for o in self.all:
            o.zero_grad(set_to_none=True)

    def step(self) -> None:
        for o in self.all:
            o.step()

    def state_dict(self) -> list[dict]:
        return [o.state_dict() for o in self.all]

    def load_state_dict(self, states: list[dict]) -> None:
        for o, s in zip(self.all, states, strict=True):
            o.load_state_dict(s)

    def sync(self) -> None:
        if self.tables:
            self.lazy.catch_up_all()

    def done(self) -> None:
        self.sync()
        if self.tables:
            self.lazy.unwatch()
        for m in self.tables:
            m.sparse = False


def fit(
    model: nn.Module,
    step_loss: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor],
    batches: Callable[[int], Iterator[dict[str, torch.Tensor]]],
    settings: TrainSettings,
    checkpoints: CheckpointStore | None = None,
    fingerprint: str = "",
    log: Callable[[str], None] = print,
    on_epoch_end: Callable[[int], None] | None = None,
    holdout: Callable[[], Iterator[dict[str, torch.Tensor]]] | None = None,
    patience: int = 2,
    empty_batch: Callable[[], dict[str, torch.Tensor]] | None = None,
    evaluate_epoch: Callable[[int, nn.Module], dict] | None = None,
) -> FitResult:
    """Train for settings.epochs. With `holdout` (batches of a held-out slice of the training window, never the
    validation day): after each epoch the mean training loss on it is measured, the model ends with the weights of
    the best epoch, and training stops after `patience` epochs without improvement (validation-driven selection
    instead of a fixed epoch count).

    Data-parallel (settings.world_size > 1, the process group initialised): `batches` / `holdout` yield this rank's
    share, `empty_batch` a batch of no rows (what a rank steps with once its share is used up); gradients are those
    of the global batch (ml/distributed.py), rank 0 alone writes checkpoints, and every rank ends with the same
    weights.

    `evaluate_epoch(epoch, model)` (every rank: the weights are the same on each) scores the epoch's weights on
    data outside the training rows (the temporal holdout fit, ml/holdout_fit.py); its dict joins the epoch's row."""
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    device = torch.device(settings.device)
    model.to(device)
    opt = Optimizers(model, settings)
    shard = settings.shard
    sync = GradientSync(model) if shard.distributed else None
    if shard.distributed and empty_batch is None:
        raise ValueError("data-parallel training needs an empty_batch template")
    result = FitResult()
    start_epoch = 0
    best: dict | None = None  # {"epoch", "loss", "model"} of the best holdout epoch so far
    if checkpoints is not None and (state := checkpoints.latest(fingerprint)) is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        result.history = state["history"]
        best = state.get("best")
        start_epoch = state["epoch"] + 1
        result.resumed_from_epoch = state["epoch"]
        log(f"resumed from checkpoint after epoch {state['epoch']}")
    use_amp = settings.mixed_precision and device.type == "cuda"
    for epoch in range(start_epoch, settings.epochs):
        torch.manual_seed(settings.seed * 1000 + epoch + 7919 * shard.rank)
        model.train()
        # The loss sum stays on the device (no per-step .item() sync), so the GPU queue never drains.
        total_loss, samples, t0 = torch.zeros((), dtype=torch.float64, device=device), 0, time.perf_counter()
        for step, (batch, n, n_global) in enumerate(_joined(batches(epoch), shard, device, empty_batch)):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = step_loss(model, batch)
            if step % FINITE_CHECK_EVERY == 0 and not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss at epoch {epoch} step {step}: {loss.item()}")
            opt.zero_grad()
            # Data-parallel: my rows' share of the global batch's mean loss; the gradient sum is the global mean's.
            (loss * (n / n_global) if sync is not None else loss).backward()
            if sync is not None:
                sync()
            opt.step()
            total_loss += loss.detach().double() * n
            samples += n
        opt.sync()  # every table row up to date: the holdout, the best-epoch copy and the checkpoint read them
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        release_memory()  # the epoch's shuffle buffer and batches are freed: hand them back (not in the epoch's time)
        rank_rates = [round(samples / seconds, 1) if seconds else 0.0]
        if shard.distributed:
            total, all_samples = all_sum([float(total_loss), float(samples)], device)
            rank_rates = all_gather_objects(rank_rates[0])
        else:
            total, all_samples = float(total_loss), samples
        if not math.isfinite(total):
            raise FloatingPointError(f"non-finite training loss in epoch {epoch}")
        samples = int(all_samples)
        result.train_seconds += seconds
        result.trained_samples += samples
        row = {
            "epoch": epoch,
            "loss": total / max(samples, 1),
            "samples": samples,
            "seconds": round(seconds, 3),
            "samples_per_s": round(samples / seconds, 1) if seconds else 0.0,
        }
        if shard.distributed:
            row["rank_samples_per_s"] = rank_rates
        if holdout is not None:
            row["holdout_loss"] = _holdout_loss(model, step_loss, holdout, device, use_amp, shard, empty_batch)
            if best is None or row["holdout_loss"] < best["loss"]:
                best = {
                    "epoch": epoch,
                    "loss": row["holdout_loss"],
                    "model": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
                }
        if evaluate_epoch is not None:
            model.eval()
            row.update(evaluate_epoch(epoch, model))
            model.train()
        result.history.append(row)
        log(
            f"epoch {epoch}: loss {row['loss']:.5f}, {samples:,} samples, {row['samples_per_s']:,.0f} samples/s"
            + (f", holdout loss {row['holdout_loss']:.5f}" if holdout is not None else "")
        )
        if checkpoints is not None and shard.is_main:
            checkpoints.save(
                epoch,
                {
                    "epoch": epoch,
                    "fingerprint": fingerprint,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "history": result.history,
                    "best": best,
                },
            )
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        if best is not None and epoch - best["epoch"] >= patience:
            result.stopped_early = epoch + 1 < settings.epochs
            log(f"no holdout improvement for {patience} epochs since epoch {best['epoch']}: stopping")
            break
    opt.done()
    model.to("cpu")
    if best is not None:
        model.load_state_dict(best["model"])
        result.best_epoch = best["epoch"]
    return result


def fit_on_events(
    model: nn.Module,
    step_loss: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor],
    train,
    encoder,
    settings: TrainSettings,
    checkpoints: CheckpointStore | None = None,
    fingerprint: str = "",
    log: Callable[[str], None] = print,
    on_epoch_end: Callable[[int], None] | None = None,
    *,
    filter=None,
    drop_last: bool = False,
    holdout_users=None,
    patience: int = 2,
    evaluate_epoch: Callable[[int, nn.Module], dict] | None = None,
) -> FitResult:
    """`fit` over the (filtered) events of a training_events dataset: shuffled batches per epoch, and with
    `holdout_users` those users' events held out of training to select the epoch (sequential batches)."""
    from recsys_assets.ml.loader import sequential_batches, shuffled_batches, split_holdout

    train_filter, holdout_filter = split_holdout(filter, holdout_users)
    shard = settings.shard
    batch_size = settings.batch_size  # global: a rank's loader takes its share

    def batches(epoch: int):
        return shuffled_batches(
            train,
            encoder,
            batch_size,
            settings.seed,
            epoch,
            filter=train_filter,
            shuffle_buffer_rows=settings.shuffle_buffer_rows,
            drop_last=drop_last,
            shard=shard,
        )

    def holdout():
        return sequential_batches(train, encoder, batch_size, filter=holdout_filter, shard=shard)

    return fit(
        model,
        step_loss,
        batches,
        settings,
        checkpoints,
        fingerprint,
        log,
        on_epoch_end,
        holdout if holdout_filter is not None else None,
        patience,
        _EmptyBatch(train, encoder) if shard.distributed else None,
        evaluate_epoch,
    )


class _EmptyBatch:
    """The empty batch a rank steps with once its share is used up, read once (one row of the window) and reused."""

    def __init__(self, train, encoder):
        self.train, self.encoder, self.batch = train, encoder, None

    def __call__(self) -> dict[str, torch.Tensor]:
        if self.batch is None:
            from recsys_assets.ml.loader import empty_batch

            self.batch = empty_batch(self.train, self.encoder)
        return self.batch


def _joined(
    batches: Iterator[dict[str, torch.Tensor]], shard: Rank, device: torch.device, empty_batch
) -> Iterator[tuple[dict[str, torch.Tensor], int, int]]:
    """(batch, its rows, the global batch's rows) per step. Data-parallel: one all-reduce per step of
    [my rows, 1 if I have a batch]; a rank whose share is used up yields empty batches until every rank's is (all
    ranks take part in every collective; no rows are dropped to even the shares out)."""
    with contextlib.closing(prefetched(batches, pin_memory=device.type == "cuda")) as stream:
        while True:
            batch = next(stream, None)
            n = len(next(iter(batch.values()))) if batch is not None else 0
            if not shard.distributed:
                if batch is None:
                    return
                yield batch, n, n
                continue
            n_global, active = all_sum([float(n), float(batch is not None)], device)
            if active == 0:
                return
            yield (batch if batch is not None else empty_batch()), n, int(n_global)


@torch.no_grad()
def _holdout_loss(
    model: nn.Module, step_loss, holdout, device, use_amp: bool, shard: Rank = SINGLE, empty_batch=None
) -> float:
    """Mean loss over the holdout rows (every rank's share, when data-parallel), in batches like training's."""
    model.eval()
    total, n = 0.0, 0
    for batch, size, _ in _joined(holdout(), shard, device, empty_batch):
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = step_loss(model, batch)
        total += float(loss) * size
        n += size
    if shard.distributed:
        total, n = all_sum([total, float(n)], device)
    model.train()
    return total / n if n else float("inf")
