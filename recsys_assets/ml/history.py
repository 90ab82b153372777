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


HOUR_US = 3_600_000_000
_US_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1}


def day_start_us(day: str) -> int:
    """The start of `day` (local midnight, core/days.py) in microseconds since the epoch: what a history of `day` is
    strictly before."""
    from recsys_assets.core.days import window_micros, window_of

    return window_micros(window_of(day))[0]


def entry_ages(times: pa.ListArray | pa.ChunkedArray, max_len: int, day: str, name: str = "") -> np.ndarray:
    """float32 [rows, max_len]: hours from each history entry's event_ts to the start of `day` (the history's day:
    every entry is before it), 0 after a list's end. The history's time gaps as a model input: what a user watched an
    hour ago and a month ago are different evidence. The data root is untrusted: a missing time, or one at or after
    the day's start (not point-in-time), is refused naming the table."""
    if isinstance(times, pa.ChunkedArray):
        times = times.combine_chunks() if times.num_chunks else pa.array([], pa.list_(pa.timestamp("us")))
    flat = pc.list_flatten(times)
    if not pa.types.is_timestamp(flat.type):
        raise ValueError(f"user_history {name}: event_ts holds {flat.type}, not timestamps")
    if flat.null_count:
        raise ValueError(f"user_history {name}: {flat.null_count} history entries have no event_ts")
    raw = flat.cast(pa.int64()).to_numpy(zero_copy_only=False)
    us = raw // 1_000 if flat.type.unit == "ns" else raw * _US_PER_UNIT[flat.type.unit]
    start = day_start_us(day)
    if len(us) and us.max() >= start:
        raise ValueError(
            f"user_history {name}: an entry's event_ts is at or after the start of {day}: a history of {day} holds "
            "only events before it"
        )
    hours = ((start - us) / HOUR_US).astype(np.float32)
    return padded(times, max_len, hours, np.float32(0))


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
    `content_rows` are rows of the catalogue's embedding table (-1 = padding or an item outside the catalogue);
    `ages` the hours from each entry to the history's day (`entry_ages`; 0 = padding), None for a table read without
    its times."""

    user_index: pd.Index
    item_ids: np.ndarray  # int64 [users + 1, max_len]
    content_rows: np.ndarray  # int64 [users + 1, max_len]
    ages: np.ndarray | None = None  # float32 [users + 1, max_len]

    @property
    def max_len(self) -> int:
        return self.item_ids.shape[1]

    def rows_of(self, user_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        return user_rows(self.user_index, user_ids)

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(item vocab ids int64, catalogue rows int64, ages float32 or None) [len(rows), max_len] of table rows."""
        return self.item_ids[rows], self.content_rows[rows], None if self.ages is None else self.ages[rows]

    def lookup(self, user_ids: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        return self.gather(self.rows_of(user_ids))

    def lengths(self) -> np.ndarray:
        return (self.item_ids[:-1] != 0).sum(axis=1)

    @classmethod
    def empty(cls, max_len: int) -> HistoryArrays:
        return cls(
            pd.Index([], dtype=object),
            np.zeros((1, max_len), np.int64),
            np.full((1, max_len), -1, np.int64),
            np.zeros((1, max_len), np.float32),
        )


def history_arrays(table: pa.Table, max_len: int, vocab, catalog, day: str | None = None) -> HistoryArrays:
    """HistoryArrays of a user_history table (user_id, item_ids[, event_ts]) with this vocabulary and catalogue; the
    entries' ages (hours before `day`, the history's day) when the table has event_ts and `day` is given."""
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
    ages = None
    if day is not None and "event_ts" in table.column_names:
        ages = np.concatenate([entry_ages(table.column("event_ts"), max_len, day), np.zeros((1, max_len), np.float32)])
    return HistoryArrays(
        pd.Index(users, dtype=object),
        np.concatenate([item_ids, pad_row[0]]),
        np.concatenate([content_rows, pad_row[1]]),
        ages,
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
