"""A day's user histories on local disk, memory-mapped, looked up per batch: what training reads instead of every
user's arrays of every window day in RAM.

`HistoryArrays` (ml/history.py) holds a day as int64 arrays plus a pandas index of the user id strings: at tens of
millions of users that is ~10 GB a day, ~100 GB for a window, in every training process. `MappedHistory` is the
same table as four files: the users' 64-bit keys, sorted (8 bytes a user), int32 [users + 1, max_len] item vocab
ids and catalogue rows and float32 entry ages (hours before the history's day, ml/history.entry_ages) in that order
(the last row is the padding row of users without a history). A lookup
hashes the batch's user ids and binary-searches the keys; only the pages a batch touches are read, and the page
cache is shared by every process on the host that maps the same files.

The files are built once per (user_history version, vocabulary, catalogue, max_len) by the first process that
needs them, streaming the day's Parquet in record batches (memory: the keys and their sort order, 16 bytes a user,
plus one batch), under a lock, into a per-host cache directory (RECSYS_CACHE_DIR, default <tmp>/recsys-cache);
entries unused for CACHE_MAX_AGE_S are removed when another is built.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys_assets.ml.history import entry_ages, padded

CACHE_MAX_AGE_S = 3 * 86_400
# Part of every cache key: a file layout change (v2: the entries' ages) never reads an entry built by older code.
CACHE_FORMAT = 2
_ROWS_PER_CHUNK = 1 << 20  # rows permuted at a time when the files are sorted


def user_keys(user_ids: pa.Array | pa.ChunkedArray | np.ndarray) -> np.ndarray:
    """64-bit keys of user ids: pandas' SipHash-2-4 of each string with its fixed key, the same in every process,
    host and run."""
    if isinstance(user_ids, pa.ChunkedArray):
        user_ids = user_ids.combine_chunks() if user_ids.num_chunks else pa.array([], pa.string())
    values = user_ids.to_numpy(zero_copy_only=False) if isinstance(user_ids, pa.Array) else user_ids
    return pd.util.hash_array(np.asarray(values, dtype=object), categorize=True).astype(np.uint64)


class MappedHistory:
    """One day's histories, memory-mapped (the interface of HistoryArrays the loader and evaluation use)."""

    def __init__(self, directory: str):
        self.directory = directory
        self.keys = np.load(os.path.join(directory, "keys.npy"), mmap_mode="r")
        self.item_ids = np.load(os.path.join(directory, "item_ids.npy"), mmap_mode="r")
        self.content_rows = np.load(os.path.join(directory, "content_rows.npy"), mmap_mode="r")
        self.ages = np.load(os.path.join(directory, "ages.npy"), mmap_mode="r")

    @property
    def max_len(self) -> int:
        return self.item_ids.shape[1]

    @property
    def num_users(self) -> int:
        return len(self.keys)

    def rows_of(self, user_ids: pa.Array | pa.ChunkedArray | np.ndarray) -> np.ndarray:
        """Row of each user; num_users (the padding row) for users without a history."""
        keys = user_keys(user_ids)
        n = self.num_users
        if n == 0:
            return np.zeros(len(keys), np.int64)
        pos = np.minimum(np.searchsorted(self.keys, keys), n - 1)
        return np.where(self.keys[pos] == keys, pos, n).astype(np.int64)

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(item vocab ids, catalogue rows as int64, ages as float32) [len(rows), max_len] of table rows."""
        return self.item_ids[rows].astype(np.int64), self.content_rows[rows].astype(np.int64), self.ages[rows]

    def lookup(self, user_ids: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As HistoryArrays.lookup returns them."""
        return self.gather(self.rows_of(user_ids))

    def lengths(self) -> np.ndarray:
        return (np.asarray(self.item_ids[:-1]) != 0).sum(axis=1)


def build_mapped_history(
    batches: Iterable[pa.RecordBatch],
    num_rows: int,
    max_len: int,
    vocab,
    catalog,
    directory: str,
    day: str,
    name: str = "",
) -> MappedHistory:
    """Write the files of `day`'s history table (record batches of user_id, item_ids, event_ts; `num_rows` in all)
    into `directory` (atomically: a temporary sibling renamed at the end)."""
    tmp = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".tmp-", dir=os.path.dirname(directory))
    try:
        unsorted_ids = np.lib.format.open_memmap(os.path.join(tmp, "u_ids.npy"), "w+", np.int32, (num_rows, max_len))
        unsorted_rows = np.lib.format.open_memmap(os.path.join(tmp, "u_rows.npy"), "w+", np.int32, (num_rows, max_len))
        unsorted_ages = np.lib.format.open_memmap(
            os.path.join(tmp, "u_ages.npy"), "w+", np.float32, (num_rows, max_len)
        )
        keys = np.empty(num_rows, np.uint64)
        at = 0
        for b in batches:
            k = b.num_rows
            if at + k > num_rows:
                raise ValueError(f"user_history {name}: more rows than the {num_rows} its footers count")
            lists = b.column("item_ids")
            flat = pc.list_flatten(lists)
            ids = vocab.encode("item_id", flat).astype(np.int32) if len(flat) else np.zeros(0, np.int32)
            rows = catalog.rows(flat).astype(np.int32) if len(flat) else np.zeros(0, np.int32)
            keys[at : at + k] = user_keys(b.column("user_id"))
            unsorted_ids[at : at + k] = padded(lists, max_len, ids, 0)
            unsorted_rows[at : at + k] = padded(lists, max_len, rows, -1)
            unsorted_ages[at : at + k] = entry_ages(b.column("event_ts"), max_len, day, name)
            at += k
        if at != num_rows:
            raise ValueError(f"user_history {name}: {at} rows read, its footers count {num_rows}")
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        same = np.nonzero(keys[1:] == keys[:-1])[0]
        if len(same):
            i, j = order[same[0]], order[same[0] + 1]
            raise ValueError(
                f"user_history {name}: rows {i} and {j} have the same user key (the same user id twice, or a 64-bit "
                "hash collision): a history table holds one row per user"
            )
        np.save(os.path.join(tmp, "keys.npy"), keys)
        for src, out_name, pad in (
            (unsorted_ids, "item_ids.npy", 0),
            (unsorted_rows, "content_rows.npy", -1),
            (unsorted_ages, "ages.npy", 0),
        ):
            out = np.lib.format.open_memmap(os.path.join(tmp, out_name), "w+", src.dtype, (num_rows + 1, max_len))
            for s in range(0, num_rows, _ROWS_PER_CHUNK):
                chunk = order[s : s + _ROWS_PER_CHUNK]
                ascending = np.argsort(chunk)  # read the source in file order, place in key order
                out[s + ascending] = src[chunk[ascending]]
            out[num_rows] = pad
            out.flush()
            del out
        del unsorted_ids, unsorted_rows, unsorted_ages
        for f in ("u_ids.npy", "u_rows.npy", "u_ages.npy"):
            os.remove(os.path.join(tmp, f))
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({"name": name, "users": num_rows, "max_len": max_len}, f)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return MappedHistory(directory)


def cache_root() -> str:
    return os.environ.get("RECSYS_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "recsys-cache")


def _fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(pd.util.hash_array(np.asarray(a, dtype=object))).tobytes())
    return h.hexdigest()


def mapped_history(store, day: str, max_len: int, vocab, catalog) -> MappedHistory:
    """The committed user_history of `day` with this vocabulary and catalogue, from the host's cache (built on first
    use; concurrent processes wait for the one building it)."""
    import pyarrow.dataset as pads

    from recsys_assets.core.datasets import USER_HISTORY

    version = store.committed_version(USER_HISTORY, day)
    item_vocab = vocab.tables["item_id"]
    key = hashlib.sha256(
        json.dumps(
            [
                CACHE_FORMAT,
                store.root_uri,
                day,
                version,
                max_len,
                _fingerprint(item_vocab["token"].to_numpy(), item_vocab["index"].to_numpy()),
                _fingerprint(catalog.item_ids),
            ]
        ).encode()
    ).hexdigest()[:32]
    root = os.path.join(cache_root(), "history")
    os.makedirs(root, exist_ok=True)
    directory = os.path.join(root, key)
    with open(os.path.join(root, key + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(directory, "meta.json")):
            _prune(root)
            ds = pads.dataset(store.committed_path(USER_HISTORY, day, "history"), filesystem=store.fs, format="parquet")
            build_mapped_history(
                ds.to_batches(columns=["user_id", "item_ids", "event_ts"], batch_size=65_536),
                ds.count_rows(),
                max_len,
                vocab,
                catalog,
                directory,
                day,
                f"{day} (version {version})",
            )
        os.utime(os.path.join(directory, "meta.json"))  # in use: not pruned
    return MappedHistory(directory)


def _prune(root: str, max_age_s: float = CACHE_MAX_AGE_S) -> None:
    """Remove cache entries unused for `max_age_s` (and leftovers of interrupted builds)."""
    now = time.time()
    for entry in os.listdir(root):
        path = os.path.join(root, entry)
        if not os.path.isdir(path):
            continue
        meta = os.path.join(path, "meta.json")
        with contextlib.suppress(OSError):
            age = now - os.path.getmtime(meta if os.path.exists(meta) else path)
            if age > max_age_s:
                shutil.rmtree(path, ignore_errors=True)
