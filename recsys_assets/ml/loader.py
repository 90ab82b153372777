"""Columnar training-data loading: committed training_events Parquet -> encoded numpy blocks -> torch batches.

Record batches are encoded with vectorised Arrow/numpy operations (no per-row Python) and shuffled through a
bounded buffer, so memory is O(buffer), not O(window). Batch order depends only on (seed, epoch): an epoch is
reproducible, which is what makes resuming from a checkpoint give the same model as an uninterrupted run.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from recsys_assets.config.training import RANKER_TASKS, LabelSpec
from recsys_assets.core.datasets import TRAINING_EVENTS
from recsys_assets.core.days import day_number
from recsys_assets.ml.distributed import SINGLE, Rank
from recsys_assets.ml.features import DENSE_FEATURES, NOT_WIDENED, ItemCatalog, Vocab, positions_in, standardize
from recsys_assets.ml.history import HistoryArrays
from resources.store import DatasetStore

LABEL_COLUMNS = ["liked", "shared", "followed", "watch_ratio"]


# Column chunks read through a 1 MiB buffer, page by page, instead of each row group's chunks read whole before its
# first batch: the loader's memory then follows its blocks, not the row group's size (-70 to -90 MB at 346k-row row
# groups, 3 pieces in flight; sequential 1 MiB reads suit object stores as well).
STREAMED_PARQUET = pads.ParquetFragmentScanOptions(use_buffered_stream=True, buffer_size=1 << 20, pre_buffer=False)


class DayFragment:
    """One Parquet file of a day's training_events events, read widened with that day's item columns."""

    def __init__(self, owner: TrainingEventsDataset, day: str, fragment: pads.Fragment):
        self.owner, self.day, self.fragment = owner, day, fragment

    def to_batches(
        self,
        columns: list[str] | None = None,
        filter: pc.Expression | None = None,
        batch_size: int = 131_072,
        dictionary_items: bool = False,
    ) -> Iterator[pa.RecordBatch]:
        """`dictionary_items`: item string columns come as dictionary arrays over the day's items (a take of int
        indices instead of strings; the vocab lookup then hashes each distinct value once, not every row)."""
        columns = self.owner.columns_of(columns)
        on_events = [c for c in columns if c in self.owner.event_columns]
        from_items = [c for c in columns if c not in self.owner.event_columns]
        read = on_events + (["item_id"] if from_items and "item_id" not in on_events else [])
        for b in self.fragment.to_batches(
            columns=read, filter=filter, batch_size=batch_size, fragment_scan_options=STREAMED_PARQUET
        ):
            yield self.owner.widen(self.day, b, columns, from_items, dictionary_items)


class TrainingEventsDataset:
    """The committed training_events of some days as one dataset of event rows, each widened with its day's item
    columns (catalogue attributes, item-level normalised features) from the day's items table, looked up by
    item_id: the events table holds them once per item, readers see them per event. Fragments (files) are in day
    order, so reads are deterministic. The subset of pyarrow.dataset.Dataset the training code uses."""

    def __init__(self, store: DatasetStore, days: list[str]):
        self.store = store
        self._fragments: list[tuple[str, pads.Fragment]] = []
        self._items: dict[str, tuple[pd.Index, pa.Table, pa.Table]] = {}
        self._pieces: list[DayFragment] | None = None
        event_schema, item_schema = None, None
        for d in days:
            files = self._parquet_files(d, "events")
            if not files:
                continue
            ds = pads.dataset(files, filesystem=store.fs, format="parquet")
            event_schema = event_schema or ds.schema
            self._fragments += [(d, f) for f in ds.get_fragments()]
            if item_schema is None:
                item_schema = pq.read_schema(self._parquet_files(d, "items")[0], filesystem=store.fs)
        self.event_columns = list(event_schema.names) if event_schema is not None else []
        self.item_columns = [
            n
            for n in (item_schema.names if item_schema is not None else [])
            if n not in NOT_WIDENED and n not in self.event_columns
        ]

    def _parquet_files(self, day: str, table: str) -> list[str]:
        """The Parquet files of a committed training_events table ("events" or "items") of `day`, sorted."""
        infos = self.store.fs.get_file_info(pafs.FileSelector(self.store.committed_path(TRAINING_EVENTS, day, table)))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet"))

    def columns_of(self, columns: list[str] | None) -> list[str]:
        if columns is None:
            return self.event_columns + self.item_columns
        unknown = [c for c in columns if c not in self.event_columns and c not in self.item_columns]
        if unknown:
            raise KeyError(
                f"training_events has no column(s) {unknown}; events: {self.event_columns}, items: {self.item_columns}"
            )
        return list(columns)

    def _item_table(self, day: str) -> tuple[pd.Index, pa.Table, pa.Table]:
        """(item_id index, the day's item columns, the same with string columns dictionary-encoded)."""
        if day not in self._items:
            t = (
                pads.dataset(self._parquet_files(day, "items"), filesystem=self.store.fs, format="parquet")
                .to_table(columns=["item_id", *self.item_columns])
                .combine_chunks()
            )
            coded = pa.table(
                {
                    n: pc.dictionary_encode(c) if pa.types.is_string(c.type) else c
                    for n, c in zip(t.column_names, t.columns)
                }
            )
            self._items[day] = (pd.Index(t.column("item_id").to_numpy(zero_copy_only=False)), t, coded)
        return self._items[day]

    def widen(
        self, day: str, batch: pa.RecordBatch, columns: list[str], from_items: list[str], dictionary_items: bool = False
    ) -> pa.RecordBatch:
        if not from_items:
            return batch.select(columns)
        index, plain, coded = self._item_table(day)
        table = coded if dictionary_items else plain
        rows = positions_in(index, batch.column("item_id"))
        if (rows < 0).any():
            missing = pc.filter(batch.column("item_id"), pa.array(rows < 0))[0]
            raise ValueError(f"training_events {day}: item {missing} has events but no row in the day's items table")
        taken = table.select(from_items).take(pa.array(rows))
        arrays = [taken.column(c).combine_chunks() if c in from_items else batch.column(c) for c in columns]
        return pa.RecordBatch.from_arrays(arrays, names=columns)

    @property
    def days(self) -> list[str]:
        """The days that have events, in order."""
        return list(dict.fromkeys(d for d, _ in self._fragments))

    def get_fragments(self, filter: pc.Expression | None = None) -> list[DayFragment]:
        return [DayFragment(self, d, f) for d, f in self._fragments]

    def get_pieces(self) -> list[DayFragment]:
        """The row groups of every file, in day and file order: the loader's unit of reading, shuffling and sharding
        (memory per piece in flight is one row group, never a whole file)."""
        if self._pieces is None:
            self._pieces = [DayFragment(self, d, rg) for d, f in self._fragments for rg in f.split_by_row_group()]
        return self._pieces

    def piece_rows(self) -> np.ndarray:
        """Rows of each piece (Parquet footer metadata, no data read)."""
        return np.array([p.fragment.row_groups[0].num_rows for p in self.get_pieces()], np.int64)

    def to_batches(
        self, columns: list[str] | None = None, filter: pc.Expression | None = None, batch_size: int = 131_072
    ) -> Iterator[pa.RecordBatch]:
        for f in self.get_fragments():
            yield from f.to_batches(columns=columns, filter=filter, batch_size=batch_size)

    def count_rows(self, filter: pc.Expression | None = None) -> int:
        return sum(f.count_rows(filter=filter) for _, f in self._fragments)

    def to_table(self, columns: list[str] | None = None, filter: pc.Expression | None = None) -> pa.Table:
        columns = self.columns_of(columns)
        batches = list(self.to_batches(columns=columns, filter=filter))
        if batches:
            return pa.Table.from_batches(batches)
        return pa.table({c: pa.array([]) for c in columns})


def committed_events_dataset(store: DatasetStore, days: list[str]) -> TrainingEventsDataset:
    """The committed training_events of `days`, events widened with their day's item columns."""
    return TrainingEventsDataset(store, days)


def retrieval_positive_filter(labels: LabelSpec) -> pc.Expression:
    positive = pc.field("watch_ratio") >= labels.retrieval_positive_min_watch_ratio
    if labels.retrieval_positive_on_engagement:
        positive = positive | pc.field("liked") | pc.field("shared") | pc.field("followed")
    return positive


@dataclass
class BatchEncoder:
    """Turns a record batch of training_events into model arrays with one vocabulary and catalogue."""

    vocab: Vocab
    moments: dict[str, dict[str, float]]
    catalog: ItemCatalog
    labels: LabelSpec
    # user_history of each day the encoder reads (as of that day: point-in-time per event); None: no history inputs.
    history: dict[str, HistoryArrays] | None = None

    @property
    def columns(self) -> list[str]:
        return sorted({*self.vocab.features, *DENSE_FEATURES, *LABEL_COLUMNS, "item_id", "user_id"})

    def encode(self, batch: pa.RecordBatch, day: str | None = None) -> dict[str, np.ndarray]:
        """Model arrays of a batch of `day`'s events. Ids and rows are int32 (what a shuffle buffer holds: ~72 B a
        row); with history, `hist_user` is each event's user's row in the day's history table (int32): the history
        itself, `hist_ids` (item_id vocab ids), `hist_rows` (catalogue rows, -1 = none) and `hist_age` (hours before
        the day, ml/history.entry_ages) [rows, max_len], is
        gathered per batch from that (memory-mapped) table by `gather_history`, never held in the buffer.
        `batch_tensors` does both for a batch and widens the ids to int64."""
        out = self._encode(batch)
        if day is not None:  # the events' day (days since 1970-01-01): per-day sampling rates key on it
            out["event_day"] = np.full(batch.num_rows, day_number(day), np.int32)
        if self.history is not None:
            if day not in self.history:
                raise KeyError(f"no user_history loaded for {day}: the encoder has {sorted(self.history)}")
            out["hist_user"] = self.history[day].rows_of(batch.column("user_id")).astype(np.int32)
        return out

    def gather_history(self, block: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`block` with its `hist_user` rows replaced by the users' `hist_ids`, `hist_rows` and `hist_age` as of each
        event's day (unchanged without history; no `hist_age` from tables read without their times)."""
        if "hist_user" not in block:
            return block
        out = {k: v for k, v in block.items() if k != "hist_user"}
        rows, days = block["hist_user"], block["event_day"]
        by_number = {day_number(d): h for d, h in self.history.items()}
        length = next(iter(self.history.values())).max_len
        ids = np.zeros((len(rows), length), np.int64)
        content = np.full((len(rows), length), -1, np.int64)
        ages = np.zeros((len(rows), length), np.float32)
        timed = True
        for number in np.unique(days):
            m = days == number
            i, c, a = by_number[int(number)].gather(rows[m])
            ids[m], content[m] = i, c
            if a is None:
                timed = False
            else:
                ages[m] = a
        out["hist_ids"], out["hist_rows"] = ids, content
        if timed:  # a history table read with its times (the memory-mapped caches always are)
            out["hist_age"] = ages
        return out

    def _encode(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        content_row = self.catalog.rows(batch.column("item_id"))
        if (content_row < 0).any():
            missing = pc.filter(batch.column("item_id"), pa.array(content_row < 0))[0]
            raise ValueError(f"training_events item {missing} has no row in the item catalogue (items table)")
        watch = batch.column("watch_ratio").to_numpy(zero_copy_only=False)
        flags = [
            pc.fill_null(batch.column(c), False).to_numpy(zero_copy_only=False).astype(np.float32)
            for c in ("liked", "shared", "followed")
        ]
        return {
            "cat": np.stack([self.vocab.encode(f, batch.column(f)) for f in self.vocab.features], axis=1).astype(
                np.int32
            ),
            "dense": np.stack(
                [standardize(f, batch.column(f).to_numpy(zero_copy_only=False), self.moments) for f in DENSE_FEATURES],
                axis=1,
            ),
            "content_row": content_row.astype(np.int32),
            "labels": np.stack([*flags, (watch >= self.labels.watch_complete_min_ratio).astype(np.float32)], axis=1),
        }


assert RANKER_TASKS == ("liked", "shared", "followed", "watch_complete"), "label order in BatchEncoder.encode"


def batch_history_ages(batch: dict, setting: str):
    """The batch's `hist_age` for a model that reads the history's time gaps (`setting` names its switch); refused by
    name when the batch's history was read without the entries' times (`gather_history` then gives none)."""
    if "hist_age" not in batch:
        raise ValueError(
            f"this model reads the history's time gaps ({setting}), but its history was read without the entries' times"
        )
    return batch["hist_age"]


def batch_tensors(
    block: dict[str, np.ndarray], encoder: BatchEncoder, idx: np.ndarray | None = None
) -> dict[str, torch.Tensor]:
    """A model batch from encoded arrays (rows `idx` of them, or all): the users' histories gathered
    (`BatchEncoder.gather_history`) and the encoder's int32 ids and rows widened to the int64 that embedding lookups
    and indexing take."""
    rows = block if idx is None else {k: v[idx] for k, v in block.items()}
    out = {}
    for k, a in encoder.gather_history(rows).items():
        out[k] = torch.from_numpy(a.astype(np.int64) if a.dtype == np.int32 else np.ascontiguousarray(a))
    return out


# Rows of an encoded block at most (a Parquet batch of a piece). Each loader thread holds a batch being decoded and
# up to PIECE_QUEUE_BLOCKS encoded ones: on the 16x synthetic world (docs/scale.md) 65,536-row blocks cost the
# loader 279 MB over the shuffle buffer's rows, 16,384-row ones 208 MB (8,192: 183 MB), for ~15% more loader time.
ENCODED_BLOCK_ROWS = 16_384

# Pieces (row groups) decoded + encoded at once. Parquet decode and the Arrow dictionary lookups release the GIL, so
# threads scale; blocks are still yielded in piece order, so batches do not depend on thread timing.
LOADER_THREADS = min(4, os.cpu_count() or 1)


def shard_pieces(piece_rows: np.ndarray, order: np.ndarray, shard: Rank) -> np.ndarray:
    """This rank's pieces, in `order`: each piece goes to the rank with the fewest rows so far (lowest rank on a tie),
    so the shares are disjoint, cover every piece, and differ by at most one piece's rows. Every rank computes the
    same assignment from the same order and the footers' row counts."""
    if not shard.distributed:
        return order
    load = np.zeros(shard.world_size, np.int64)
    mine = []
    for i in order:
        r = int(np.argmin(load))
        load[r] += piece_rows[i]
        if r == shard.rank:
            mine.append(i)
    return np.array(mine, np.int64)


def local_batch_size(global_batch_size: int, piece_rows: np.ndarray, mine: np.ndarray) -> int:
    """A rank's batch: the global batch times its share of the rows (footer counts), so the ranks' step counts match
    however unevenly whole pieces divide (a few pieces per rank at demo scale)."""
    total = int(piece_rows.sum())
    if total == 0:
        return global_batch_size
    return max(1, round(global_batch_size * int(piece_rows[mine].sum()) / total))


def encoded_blocks(
    dataset: TrainingEventsDataset,
    encoder: BatchEncoder,
    filter: pc.Expression | None = None,
    read_rows: int = ENCODED_BLOCK_ROWS,
    order: np.ndarray | None = None,
    threads: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Encoded blocks (at most `read_rows` rows each) of the pieces in `order` (default: all, in storage order), in
    that order. With threads, each piece is read by a pool thread into its own queue of at most PIECE_QUEUE_BLOCKS
    blocks: at most `threads` + 1 pieces in flight and at most `threads` x (PIECE_QUEUE_BLOCKS + 1) blocks decoded
    ahead, however large a piece (row group) is. The blocks and their order do not depend on the threads."""
    pieces = dataset.get_pieces()
    order = order if order is not None else np.arange(len(pieces))

    def blocks_of(i: int) -> Iterator[dict[str, np.ndarray]]:
        for b in pieces[i].to_batches(
            columns=encoder.columns, filter=filter, batch_size=read_rows, dictionary_items=True
        ):
            if b.num_rows:
                yield encoder.encode(b, pieces[i].day)

    threads = LOADER_THREADS if threads is None else threads
    if threads <= 1 or len(order) <= 1:
        for i in order:
            yield from blocks_of(i)
        return
    stop = threading.Event()

    def fill(i: int, q: queue.Queue) -> None:
        try:
            for block in blocks_of(i):
                if not put_unless_stopped(q, block, stop):
                    return
            item = _END
        except BaseException as e:  # handed to the consumer, raised there
            item = e
        put_unless_stopped(q, item, stop)

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="loader") as pool:
        pending: deque = deque()
        ahead = iter(order)
        try:
            for i in ahead:
                q: queue.Queue = queue.Queue(maxsize=PIECE_QUEUE_BLOCKS)
                pool.submit(fill, int(i), q)
                pending.append(q)
                if len(pending) > threads:
                    yield from _drain_piece(pending.popleft())
            while pending:
                yield from _drain_piece(pending.popleft())
        finally:
            stop.set()  # a consumer that stops early (max_rows) releases the producers blocked on full queues


_END = object()


def put_unless_stopped(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put `item` into a bounded queue unless the consumer has stopped (`stop` set; False then): a producer thread
    never blocks forever on a queue nobody reads."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


PIECE_QUEUE_BLOCKS = 2


def _drain_piece(q: queue.Queue) -> Iterator[dict[str, np.ndarray]]:
    while True:
        item = q.get()
        if item is _END:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


class ShuffleBuffer:
    """The rows a shuffle draws from, in one set of arrays written block by block as blocks arrive: no list of blocks
    concatenated at each drain (which held the buffer twice), and a batch is one fancy-index gather. Allocated at
    the first block for `rows` + one block's rows; only the rows written are ever touched, so a window smaller than
    the buffer costs its own rows (the untouched pages of the allocation are never resident)."""

    def __init__(self, rows: int, max_block_rows: int):
        self.capacity, self.size = rows + max_block_rows, 0
        self.arrays: dict[str, np.ndarray] | None = None

    def add(self, block: dict[str, np.ndarray]) -> None:
        n = len(block["content_row"])
        if self.arrays is None:
            self.arrays = {k: np.empty((self.capacity, *v.shape[1:]), v.dtype) for k, v in block.items()}
        if self.size + n > self.capacity:
            raise ValueError(f"a block of {n} rows overflows the shuffle buffer ({self.size} of {self.capacity})")
        for k, v in block.items():
            self.arrays[k][self.size : self.size + n] = v
        self.size += n

    def take(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Rows `idx` (positions in the buffer), copied out."""
        return {k: v[idx] for k, v in self.arrays.items()}

    def keep(self, idx: np.ndarray) -> None:
        """Keep rows `idx`, in that order, at the front; drop the rest."""
        for v in self.arrays.values():
            v[: len(idx)] = v[idx]
        self.size = len(idx)


def shuffled_batches(
    dataset: TrainingEventsDataset,
    encoder: BatchEncoder,
    batch_size: int,
    seed: int,
    epoch: int,
    filter: pc.Expression | None = None,
    shuffle_buffer_rows: int = 1_000_000,
    drop_last: bool = False,
    shard: Rank = SINGLE,
) -> Iterator[dict[str, torch.Tensor]]:
    """Training batches: pieces in a (seed, epoch) permutation, rows shuffled within a bounded buffer.

    With a data-parallel `shard`: this rank's disjoint share of the pieces (`shard_pieces`), its rows shuffled by
    its own (seed, epoch, rank) stream, in batches of its share of the global `batch_size` (`local_batch_size`):
    every rank then takes about as many steps, and each global batch mixes every rank's pieces in proportion, as
    one process's batches mix the whole window."""
    rng = np.random.default_rng([seed, epoch])
    rows = dataset.piece_rows()
    order = shard_pieces(rows, rng.permutation(len(rows)), shard)
    if shard.distributed:
        rng = np.random.default_rng([seed, epoch, shard.rank])
        batch_size = local_batch_size(batch_size, rows, order)
    buffer = ShuffleBuffer(shuffle_buffer_rows, ENCODED_BLOCK_ROWS)

    def drain(final: bool) -> Iterator[dict[str, torch.Tensor]]:
        perm = rng.permutation(buffer.size)
        n_out = buffer.size if final else (buffer.size // batch_size) * batch_size
        for s in range(0, n_out, batch_size):
            idx = perm[s : s + batch_size]
            if len(idx) < batch_size and drop_last:
                break
            yield batch_tensors(buffer.take(idx), encoder)
        buffer.keep(perm[n_out:])

    for block in encoded_blocks(dataset, encoder, filter, read_rows=ENCODED_BLOCK_ROWS, order=order):
        buffer.add(block)
        if buffer.size >= shuffle_buffer_rows:
            yield from drain(final=False)
    if buffer.size:
        yield from drain(final=True)


def sequential_batches(
    dataset: TrainingEventsDataset,
    encoder: BatchEncoder,
    batch_size: int,
    filter: pc.Expression | None = None,
    shard: Rank = SINGLE,
) -> Iterator[dict[str, torch.Tensor]]:
    """Evaluation batches in storage order (this rank's share of the pieces with a data-parallel `shard`, in
    batches of its share of `batch_size`)."""
    rows = dataset.piece_rows()
    order = shard_pieces(rows, np.arange(len(rows)), shard)
    if shard.distributed:
        batch_size = local_batch_size(batch_size, rows, order)
    for block in encoded_blocks(dataset, encoder, filter, read_rows=batch_size, order=order):
        yield batch_tensors(block, encoder)


def empty_batch(dataset: TrainingEventsDataset, encoder: BatchEncoder) -> dict[str, torch.Tensor]:
    """A batch of no rows with the shapes and dtypes of the encoder's batches: what a data-parallel rank whose share
    is used up steps with while the others finish theirs."""
    for piece in dataset.get_pieces():
        for b in piece.to_batches(columns=encoder.columns, dictionary_items=True):
            return batch_tensors(encoder.encode(b.slice(0, 0), piece.day), encoder)
    raise ValueError("no training rows: cannot build a batch template")


def item_frequencies(
    dataset: TrainingEventsDataset, catalog: ItemCatalog, filter: pc.Expression | None = None
) -> np.ndarray:
    """Occurrences of each catalogue item in the (filtered) stream: the in-batch sampling distribution."""
    return sum(item_day_frequencies(dataset, catalog, filter).values(), np.zeros(len(catalog), np.int64))


def item_day_frequencies(
    dataset: TrainingEventsDataset, catalog: ItemCatalog, filter: pc.Expression | None = None
) -> dict[str, np.ndarray]:
    """Occurrences of each catalogue item per day of the (filtered) stream: day -> counts [catalogue rows]."""
    out: dict[str, np.ndarray] = {}
    for fragment in dataset.get_fragments(filter=filter):
        counts = out.setdefault(fragment.day, np.zeros(len(catalog), np.int64))
        for b in fragment.to_batches(columns=["item_id"], filter=filter):
            rows = catalog.rows(b.column("item_id"))
            counts += np.bincount(rows[rows >= 0], minlength=len(catalog))
    return out


def positives_by_day(
    data: TrainingEventsDataset, encoder: BatchEncoder, given: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """The retrieval positives per day and catalogue row of `data`: `given` when the caller already counted them (the
    Spark window counts), else counted here in one pass (catalogue-sized memory). What the logQ correction, the trend
    inputs and the recency prior read."""
    if given is not None:
        return given
    return item_day_frequencies(data, encoder.catalog, retrieval_positive_filter(encoder.labels))


def holdout_user_ids(vocab: Vocab, pct: float) -> pa.Array:
    """A stable hash-chosen `pct`% of the window's users (the vocab's user_id tokens): their events are held out of
    training to select the epoch (never the validation day, which stays untouched for the gate)."""
    tokens = vocab.live_tokens("user_id")
    bucket = pd.util.hash_array(tokens, categorize=False) % 10_000
    return pa.array(tokens[bucket < pct * 100], pa.string())


def split_holdout(
    filter: pc.Expression | None, holdout_users: pa.Array | None
) -> tuple[pc.Expression | None, pc.Expression | None]:
    """(training filter, holdout filter): the rows of `filter` without / with the held-out users."""
    if holdout_users is None:
        return filter, None
    held = pc.field("user_id").isin(holdout_users)
    if filter is None:
        return ~held, held
    return filter & ~held, filter & held
