"""The datagen YAML (filter chain, input limits + check thresholds), loaded and validated once with pydantic.

Validation fails fast and names the offending key (e.g. `filters[3].column`), so a bad config never
reaches Spark: a filter on an unknown column, or whose kind does not fit the column's type (a `range` on a
string column, an `in_set` on a number column), is rejected with the filter's name.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

import pyarrow as pa
from pydantic import Field, model_validator

from recsys_assets.config.base import ConfigFileError, StrictModel, load_config_file, parse_config
from recsys_assets.core.schemas import RAW_EVENTS, RAW_ITEMS

DEFAULT_CONFIG_PATH = Path(__file__).with_name("datagen.yaml")

# The id alphabet (event, user, item ids): 1..quarantine.max_id_length characters of any Unicode text except control
# characters (C0 U+0000-U+001F incl. NUL/TAB/LF/CR, DEL U+007F, C1 U+0080-U+009F) and the line/paragraph separators
# U+2028/U+2029. As a Java regular expression (Spark's rlike) matching a forbidden character:
ID_FORBIDDEN_CHARACTERS = r"[\x00-\x1F\x7F-\x9F\u2028\u2029]"

# Why a raw event is invalid input, in precedence order (an event gets the first that applies). Invalid events
# are counted per reason and written to filtered_events' quarantine/, never dropped silently.
QUARANTINE_REASONS = (
    "null_event_id",
    "null_user_id",
    "null_item_id",
    "null_event_ts",
    # Ids outside the id alphabet: empty, longer than quarantine.max_id_length, or with a control character.
    "invalid_event_id",
    "invalid_user_id",
    "invalid_item_id",
    # play_duration_s null, NaN, +-inf or negative: one such value would make the day's moments non-finite.
    "invalid_play_duration",
    "play_duration_over_max",
    "event_ts_outside_day",
    # A later copy of an event_id whose first *valid* copy is kept (an invalid copy keeps its own reason).
    "duplicate_event_id",
)

# Columns a filter can use, with their types: the raw event columns, the day's catalogue columns prefixed `item_`
# (derived from the raw contract, never restated), and the item's age at event time.
FILTERABLE_COLUMN_TYPES: dict[str, pa.DataType] = {
    **{f.name: f.type for f in RAW_EVENTS},
    **{f"item_{f.name}": f.type for f in RAW_ITEMS if f.name != "item_id"},
    "item_age_days": pa.float64(),
}
FILTERABLE_COLUMNS = set(FILTERABLE_COLUMN_TYPES)


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_floating(t) or pa.types.is_integer(t)


class _FilterBase(StrictModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    max_item_loss_pct: float = Field(default=100.0, ge=0, le=100)


class _ColumnFilter(_FilterBase):
    column: str

    @model_validator(mode="after")
    def _known_column(self):
        if self.column not in FILTERABLE_COLUMNS:
            raise ValueError(
                f"filter {self.name!r}: unknown column {self.column!r}; known: {sorted(FILTERABLE_COLUMNS)}"
            )
        t = FILTERABLE_COLUMN_TYPES[self.column]
        if isinstance(self, RangeFilter) and not _numeric(t):
            raise ValueError(f"filter {self.name!r}: kind 'range' needs a numeric column; {self.column!r} is {t}")
        if isinstance(self, InSetFilter) and not pa.types.is_string(t):
            raise ValueError(
                f"filter {self.name!r}: kind 'in_set' (string values) needs a string column; {self.column!r} is {t}"
            )
        return self


class InSetFilter(_ColumnFilter):
    """Keep rows whose column value is in `values` (null is never in the set)."""

    kind: Literal["in_set"]
    values: list[str] = Field(min_length=1)


class RangeFilter(_ColumnFilter):
    """Keep rows with min <(=) column <(=) max; null and NaN fail."""

    kind: Literal["range"]
    min: float | None = None
    max: float | None = None
    min_inclusive: bool = True
    max_inclusive: bool = True

    @model_validator(mode="after")
    def _has_bound(self):
        bad = [b for b in ("min", "max") if getattr(self, b) is not None and math.isnan(getattr(self, b))]
        if bad:
            raise ValueError(f"filter {self.name!r}: {' and '.join(bad)} must be a number, not NaN (omit for no bound)")
        if self.min is None and self.max is None:
            raise ValueError(f"filter {self.name!r}: a range filter needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"filter {self.name!r}: min {self.min} > max {self.max}")
        return self


class MinItemEventsFilter(_FilterBase):
    """Drop items (and their events) with fewer than `min_events` events surviving the filters before it."""

    kind: Literal["min_item_events"]
    min_events: int = Field(ge=1)


FilterSpec = Annotated[InSetFilter | RangeFilter | MinItemEventsFilter, Field(discriminator="kind")]


class QuarantineSpec(StrictModel):
    """What makes a raw event invalid input, and how much of a day may be invalid before the day is judged
    malformed upstream (blocking check `input_losses_within_limits`)."""

    # play_duration_s above this is absurd (not a measurement): quarantined like NaN, negative or infinite ones.
    max_play_duration_s: float = Field(default=86_400.0, gt=0)
    # Longest event/user/item id kept (characters); longer ones, empty ones and ones with NUL cannot be stored in
    # the serving tables and are quarantined.
    max_id_length: int = Field(default=256, ge=1, le=10_000)
    max_event_pct: float = Field(default=5.0, ge=0, le=100)
    # Per reason; `default` applies to reasons not listed.
    max_event_pct_per_reason: dict[str, Annotated[float, Field(ge=0, le=100)]] = Field(
        default_factory=lambda: {"default": 2.0}
    )


class LanguageSpec(StrictModel):
    allowed: list[str] = Field(min_length=1)
    # Share of valid events / of their items that the language stage may drop.
    max_event_loss_pct: float = Field(default=100.0, ge=0, le=100)
    max_item_loss_pct: float = Field(default=100.0, ge=0, le=100)


class SampleSpec(StrictModel):
    fraction: float = Field(gt=0, le=1)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)  # Spark's hash seed is a 32-bit int
    # The kept share of events may differ from `fraction` by this many percentage points, widened on small days
    # by 4 binomial standard errors (a 550-event day's sample is noisier than a 20M-event day's).
    max_deviation_pp: float = Field(default=1.0, ge=0, le=100)


class Thresholds(StrictModel):
    max_abs_delta_pct_1d: float = Field(gt=0)
    max_abs_delta_pct_7d: float = Field(gt=0)
    max_age_bucket_share_delta_pp_7d: float = Field(gt=0)
    min_new_items_pct_1d: float = Field(ge=0)
    max_item_loss_pct_embedding_join: float = Field(ge=0, le=100)


class FreshnessSpec(StrictModel):
    # A day's raw data (success file) is due this many hours after the day ends in app time (Asia/Kolkata)...
    raw_due_hours_after_day_end: float = Field(default=5.0, ge=0, le=24 * 14)
    # ...and an error is sent if it is still missing this many hours after it was due.
    alert_after_hours: float = Field(default=3.0, ge=0, le=24 * 14)
    # How many recent days the freshness sensor looks at.
    lookback_days: int = Field(default=3, ge=1, le=365)


# The numeric columns of the training rows the embedding join can standardise.
NORMALIZABLE_COLUMNS = ("play_duration_s", "item_video_length_s", "item_age_days", "user_tenure_days", "watch_ratio")


class TrainingEventsSpec(StrictModel):
    """What the embedding join normalises and fills. Column names refer to the training_events output."""

    normalized_columns: tuple[str, ...] = (
        "play_duration_s",
        "item_video_length_s",
        "item_age_days",
        "user_tenure_days",
        "watch_ratio",
    )
    # log1p before standardising: durations and ages are heavy-tailed.
    log_columns: tuple[str, ...] = ("play_duration_s", "item_video_length_s", "user_tenure_days")
    string_fill: str = "unknown"
    float_fill: float = Field(default=0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _known_columns(self):
        unknown = sorted(set(self.normalized_columns) - set(NORMALIZABLE_COLUMNS))
        if not self.normalized_columns or unknown:
            raise ValueError(
                f"normalized_columns needs one or more of {list(NORMALIZABLE_COLUMNS)}"
                + (f"; unknown: {unknown}" if unknown else "")
            )
        outside = sorted(set(self.log_columns) - set(self.normalized_columns))
        if outside:
            raise ValueError(f"log_columns {outside} are not in normalized_columns")
        return self


class DatagenSpec(StrictModel):
    quarantine: QuarantineSpec = QuarantineSpec()
    language: LanguageSpec
    sample: SampleSpec
    filters: list[FilterSpec] = Field(min_length=1)
    thresholds: Thresholds
    item_age_bucket_edges: list[float] = Field(min_length=1)
    freshness: FreshnessSpec = FreshnessSpec()
    training_events: TrainingEventsSpec = TrainingEventsSpec()

    @model_validator(mode="after")
    def _unique_names_sorted_edges(self):
        names = [f.name for f in self.filters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate filter names: {dupes}")
        reserved = {"language", "sample", "raw", "quarantine"} & set(names)
        if reserved:
            raise ValueError(f"filter names {sorted(reserved)} are reserved for built-in stages")
        if list(self.item_age_bucket_edges) != sorted(set(self.item_age_bucket_edges)):
            raise ValueError("item_age_bucket_edges must be strictly increasing")
        unknown = sorted(set(self.quarantine.max_event_pct_per_reason) - {"default", *QUARANTINE_REASONS})
        if unknown:
            raise ValueError(
                f"quarantine.max_event_pct_per_reason: unknown reason(s) {unknown}; known: {list(QUARANTINE_REASONS)}"
            )
        return self

    def input_limits(self) -> dict:
        """The limits `input_losses_within_limits` judges, as recorded with each day's stats."""
        per_reason = self.quarantine.max_event_pct_per_reason
        return {
            "max_quarantined_pct": self.quarantine.max_event_pct,
            "max_quarantined_pct_per_reason": {
                r: per_reason.get(r, per_reason.get("default", 100.0)) for r in QUARANTINE_REASONS
            },
            "max_language_event_loss_pct": self.language.max_event_loss_pct,
            "max_language_item_loss_pct": self.language.max_item_loss_pct,
            "sample_fraction": self.sample.fraction,
            "sample_max_deviation_pp": self.sample.max_deviation_pp,
        }

    @property
    def stage_names(self) -> list[str]:
        """Every stage whose counts are reported, in order."""
        return ["language", "sample"] + [f.name for f in self.filters]


class DatagenConfigError(ConfigFileError):
    pass


def parse_datagen_spec(raw: dict, source: str = "<dict>") -> DatagenSpec:
    return parse_config(raw, DatagenSpec, "datagen", source, DatagenConfigError)


def load_datagen_spec(path: str | None = None) -> DatagenSpec:
    """Load and validate the datagen YAML (default: the packaged recsys_assets/config/datagen.yaml)."""
    return load_config_file(path or DEFAULT_CONFIG_PATH, DatagenSpec, "datagen", DatagenConfigError)
