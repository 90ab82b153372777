"""Point-in-time item popularity and example age: what lets the two-tower score "popular right now" itself.

A training row is an item at its event's day d. Its trend inputs are computed from the item's retrieval positives
on the days strictly before d (never d or later, so the model never sees the day it predicts):
- log(1 + positives on d - 1),
- log(1 + mean daily positives over d - 3 .. d - 1),
over the days the caller counted (the training window; the index adds its own days). A day of those three that was
not counted (before the window's first day, or withheld) is left out of the mean; the d - 1 input falls back to
that mean, and a row with none of the three days counted gets zeros (the window's first day). At evaluation and
serving the inputs are those of the scored day, from the days before it.

Example age (YouTube's candidate generation, Covington et al. 2016): a training row's age is the days from its
event's day to the window's last day (0 for that day's rows); the query tower reads it, and it is 0 at evaluation and
serving, so the model can learn how popularity moves with time instead of averaging the window's days.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import torch

from recsys_assets.core.days import day_number, shift_day

TREND_FEATURES = ("item_positives_last_day", "item_positives_last_3_days")
TREND_LOOKBACK_DAYS = 3
EXAMPLE_AGE_SCALE_DAYS = 7.0  # the query tower reads age / 7 (a 7-day window's rows span 1/7 .. 1)
RANKER_ITEM_TREND = "item_trend.parquet"  # a ranker's serving trend inputs (serving_trend_table), in its artifact


def raw_trend(by_day: dict[str, np.ndarray], day: str, num_rows: int) -> np.ndarray:
    """[catalogue rows, 2] float32 trend inputs of `day` from the counted days before it (`by_day`: day -> positives
    per catalogue row); only days < `day` are read."""
    prior = [shift_day(day, -k) for k in range(1, TREND_LOOKBACK_DAYS + 1)]
    known = [by_day[d] for d in prior if d in by_day]
    if not known:
        return np.zeros((num_rows, len(TREND_FEATURES)), np.float32)
    mean = np.mean(np.stack(known).astype(np.float64), axis=0)
    last = by_day[prior[0]].astype(np.float64) if prior[0] in by_day else mean
    return np.stack([np.log1p(last), np.log1p(mean)], axis=1).astype(np.float32)


@dataclass(frozen=True)
class ItemTrend:
    """The trend inputs' standardisation, fitted on the training rows (each (item, day) weighted by its positives:
    the two-tower's rows), saved in the model config so evaluation and the index use the training's."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, by_day: dict[str, np.ndarray], num_rows: int) -> ItemTrend:
        total = np.zeros(len(TREND_FEATURES))
        square = np.zeros(len(TREND_FEATURES))
        n = 0.0
        for d, counts in by_day.items():
            w = counts.astype(np.float64)
            raw = raw_trend(by_day, d, num_rows).astype(np.float64)
            total += w @ raw
            square += w @ (raw * raw)
            n += w.sum()
        if n == 0:
            return cls(tuple([0.0] * len(TREND_FEATURES)), tuple([0.0] * len(TREND_FEATURES)))  # nothing learnable
        mean = total / n
        std = np.sqrt(np.maximum(square / n - mean * mean, 0.0))
        # A feature with no spread in training (a window of one day: no day before it counted, every input 0) taught
        # the model nothing: std 0 marks it, and standardized() gives it 0 at evaluation and serving too, never
        # (value - mean) / tiny (a one-day window's model scored its validation day with inputs of ~1e6).
        return cls(tuple(float(v) for v in mean), tuple(float(v) if v > 1e-6 else 0.0 for v in std))

    @classmethod
    def from_dict(cls, d: dict | None) -> ItemTrend | None:
        return None if d is None else cls(tuple(d["mean"]), tuple(d["std"]))

    def to_dict(self) -> dict:
        return asdict(self)

    def standardized(self, raw: np.ndarray) -> np.ndarray:
        std = np.asarray(self.std, np.float32)
        centred = raw - np.asarray(self.mean, np.float32)
        return np.where(std > 0, centred / np.where(std > 0, std, 1.0), 0.0).astype(np.float32)

    def of_day(self, by_day: dict[str, np.ndarray], day: str, num_rows: int) -> np.ndarray:
        """Standardized trend inputs [rows, 2] of every catalogue row on `day` (evaluation, the index)."""
        return self.standardized(raw_trend(by_day, day, num_rows))

    def lookup(self, by_day: dict[str, np.ndarray], num_rows: int, device: str = "cpu", days: list[str] | None = None):
        """batch -> [rows, 2] standardized trend inputs of each row's item on its event's day: a table of the inputs
        of `days` (default: every counted day, the training window; evaluation passes the scored day, whose inputs
        read the counted days before it) x catalogue rows x 2 floats, looked up by (event_day, content_row)."""
        return day_row_lookup({d: self.of_day(by_day, d, num_rows) for d in (by_day if days is None else days)}, device)


def serving_trend_table(by_day: dict[str, np.ndarray], day: str, catalog) -> pa.Table:
    """The raw trend inputs of serving `day` (from the counted days before it) as (item_id, *TREND_FEATURES), the
    items with any positives only: what a release ships so the feed's workers give the ranker the same inputs it was
    trained with (an item not listed had no positives on those days: raw inputs 0). Catalogue-sized."""
    raw = raw_trend(by_day, day, len(catalog))
    keep = np.flatnonzero(raw.any(axis=1))
    return pa.table(
        {
            "item_id": pa.array(np.asarray(catalog.item_ids, dtype=object)[keep], pa.string()),
            **{f: pa.array(raw[keep, i], pa.float32()) for i, f in enumerate(TREND_FEATURES)},
        }
    )


def trend_rows(table: pa.Table, catalog) -> np.ndarray:
    """[catalogue rows, 2] raw trend inputs from a serving_trend_table (rows of items it does not list: 0). The table
    comes from the data root (untrusted): a missing column or a non-finite value is an error naming it."""
    missing = [c for c in ("item_id", *TREND_FEATURES) if c not in table.column_names]
    if missing:
        raise ValueError(f"item trend table lacks column(s) {missing} (has {table.column_names})")
    out = np.zeros((len(catalog), len(TREND_FEATURES)), np.float32)
    rows = catalog.rows(table.column("item_id"))
    for i, f in enumerate(TREND_FEATURES):
        values = table.column(f).to_numpy(zero_copy_only=False).astype(np.float32)
        if not np.isfinite(values).all():
            raise ValueError(f"item trend table column {f} has non-finite values")
        out[rows[rows >= 0], i] = values[rows >= 0]
    return out


def day_row_lookup(per_day: dict[str, np.ndarray], device: str = "cpu"):
    """batch -> per_day[the row's event day][its content_row]: one [days, catalogue rows, ...] table on the device,
    indexed by (event_day, content_row). Every row's day must be a key (the rows are those days' events; no per-step
    check: no GPU sync)."""
    days = sorted(per_day)
    numbers = np.array([day_number(d) for d in days])
    table = torch.from_numpy(np.stack([per_day[d] for d in days])).to(device)
    first = int(numbers.min())
    slot = torch.full((int(numbers.max()) - first + 1,), -1, dtype=torch.long, device=device)
    slot[torch.from_numpy(numbers - first).to(device)] = torch.arange(len(days), device=device)
    return lambda b: table[slot[b["event_day"].long() - first], b["content_row"]]


def example_age(days: list[str], device: str = "cpu"):
    """batch -> [rows, 1] example age of each row: (the window's last day - its event's day) / 7: 0 for the newest
    day's rows, what evaluation and serving pass (so they stay inside the range the tower was trained on)."""
    end = day_number(max(days))

    def of_batch(b: dict[str, torch.Tensor]) -> torch.Tensor:
        return ((end - b["event_day"].to(device).float()) / EXAMPLE_AGE_SCALE_DAYS).unsqueeze(1)

    return of_batch
