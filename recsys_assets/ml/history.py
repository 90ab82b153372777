"""user_history: per user, the last `keep` positive interactions strictly before a day, newest first.

Partition D holds, for every user with a positive event in [D - lookback_days, D), up to `keep` of those events
(item, time, which positive, watch ratio, event id), ordered by (time, event id) descending. Point-in-time by
construction: nothing at or after the start of D is ever read into D's history.

Two ways to build D, which give the same rows (tests/history/test_user_history.py):
- full: the positive events of the committed training_events days in [D - lookback_days, D - 1];
- incremental: the entries of user_history[D - 1] still inside the lookback, plus the positives of
  training_events[D - 1]. Any entry of D's top `keep` that is older than D - 1 is also in D - 1's top `keep`
  (everything newer than it lies in the same lookback), so nothing the full path keeps is missing.

The Spark side (building a partition) is recsys_assets/history/stage.py, a stage of the Spark job like the
datagen stages (in-process, spark-submit or Dataproc). This module is the reader: a committed partition as padded
arrays the loader and the feed gather rows from, without per-row Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def padded(lists: pa.ListArray | pa.ChunkedArray, max_len: int, values: np.ndarray, pad) -> np.ndarray:
    """[rows, max_len] array of the first `max_len` elements of each list, mapped through `values` (one value per
    flattened element), `pad` after a list's end. Vectorised over the flattened values."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks() if lists.num_chunks else pa.array([], lists.type)
    offsets = lists.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = offsets - offsets[0] if len(offsets) else offsets
    n = len(lists)
    lengths = np.minimum(np.diff(offsets), max_len) if n else np.zeros(0, np.int64)
    out = np.full((n, max_len), pad, dtype=values.dtype)
    rows = np.repeat(np.arange(n), lengths)
    cols = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    src = np.repeat(offsets[:-1], lengths) + cols
    out[rows, cols] = values[src]
    return out


def user_rows(user_index: pd.Index, user_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Row of each user in a history table indexed by `user_index`; len(user_index) (one padding row past the
    end, the "no history" row) for users without one."""
    from recsys_assets.ml.features import positions_in

    pos = positions_in(user_index, user_ids)
    return np.where(pos < 0, len(user_index), pos)


@dataclass
class HistoryArrays:
    """A day's histories as padded arrays over one vocabulary and catalogue: row r is user `user_ids[r]`, and one
    extra last row of padding for users without a history. `item_ids` are item_id vocab ids (0 = padding, 1 = OOV);
    `content_rows` are rows of the catalogue's embedding table (-1 = padding or an item outside the catalogue)."""

    user_index: pd.Index
    item_ids: np.ndarray  # int64 [users + 1, max_len]
    content_rows: np.ndarray  # int64 [users + 1, max_len]

    @property
    def max_len(self) -> int:
        return self.item_ids.shape[1]

    def rows_of(self, user_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        return user_rows(self.user_index, user_ids)

    def lookup(self, user_ids: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        rows = self.rows_of(user_ids)
        return self.item_ids[rows], self.content_rows[rows]

    def lengths(self) -> np.ndarray:
        return (self.item_ids[:-1] != 0).sum(axis=1)

    @classmethod
    def empty(cls, max_len: int) -> HistoryArrays:
        return cls(pd.Index([], dtype=object), np.zeros((1, max_len), np.int64), np.full((1, max_len), -1, np.int64))


def history_arrays(table: pa.Table, max_len: int, vocab, catalog) -> HistoryArrays:
    """HistoryArrays of a user_history table (user_id, item_ids) with this vocabulary and catalogue."""
    item_lists = table.column("item_ids")
    if isinstance(item_lists, pa.ChunkedArray):
        item_lists = item_lists.combine_chunks() if item_lists.num_chunks else pa.array([], pa.list_(pa.string()))
    flat = pc.list_flatten(item_lists)
    ids = vocab.encode("item_id", flat) if len(flat) else np.zeros(0, np.int64)
    rows = catalog.rows(flat) if len(flat) else np.zeros(0, np.int64)
    item_ids = padded(item_lists, max_len, ids.astype(np.int64), 0)
    content_rows = padded(item_lists, max_len, rows.astype(np.int64), -1)
    pad_row = (np.zeros((1, max_len), np.int64), np.full((1, max_len), -1, np.int64))
    users = table.column("user_id").to_numpy(zero_copy_only=False)
    return HistoryArrays(
        pd.Index(users, dtype=object),
        np.concatenate([item_ids, pad_row[0]]),
        np.concatenate([content_rows, pad_row[1]]),
    )


def load_histories(store, days: list[str], max_len: int, vocab, catalog) -> dict:
    """The committed user_history of each day (each event is joined with its own day's), memory-mapped from the
    host's cache and looked up per batch (ml/mapped_history.py): no user-sized array is held in RAM."""
    from recsys_assets.ml.mapped_history import mapped_history

    return {d: mapped_history(store, d, max_len, vocab, catalog) for d in days}


def history_lengths(store, day: str, user_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The committed user_history length of each user as of `day` (0 for users without one)."""
    from recsys_assets.core.readers import read_history_table

    table = read_history_table(store, day)
    lengths = np.append(pc.list_value_length(table.column("item_ids")).to_numpy(zero_copy_only=False), 0)
    index = pd.Index(table.column("user_id").to_numpy(zero_copy_only=False), dtype=object)
    return lengths[user_rows(index, user_ids)].astype(np.float64)
