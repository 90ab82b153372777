"""The datagen YAML (filter chain + check thresholds), loaded and validated once with pydantic.

Validation fails fast and names the offending key (e.g. `filters[3].column`), so a bad config never
reaches Spark.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[1] / "config" / "datagen.yaml"

ITEM_COLUMNS = {
    "item_language",
    "item_moderation_status",
    "item_video_length_s",
    "item_created_at",
    "item_author_id",
    "item_category",
}
EVENT_COLUMNS = {
    "event_id",
    "user_id",
    "item_id",
    "event_ts",
    "feed_source",
    "client_event",
    "play_duration_s",
    "liked",
    "shared",
    "followed",
}
FILTERABLE_COLUMNS = EVENT_COLUMNS | ITEM_COLUMNS | {"item_age_days"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _FilterBase(_Strict):
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
        if self.min is None and self.max is None:
            raise ValueError(f"filter {self.name!r}: a range filter needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"filter {self.name!r}: min {self.min} > max {self.max}")
        return self


class MinItemEventsFilter(_FilterBase):
    """Drop items (and their events) with fewer than `min_events` events surviving the filters before it."""

    kind: Literal["min_item_events"]
    min_events: int = Field(ge=1)


FilterSpec = Annotated[Union[InSetFilter, RangeFilter, MinItemEventsFilter], Field(discriminator="kind")]


class LanguageSpec(_Strict):
    allowed: list[str] = Field(min_length=1)


class SampleSpec(_Strict):
    fraction: float = Field(gt=0, le=1)
    seed: int = 0


class Thresholds(_Strict):
    max_abs_delta_pct_1d: float = Field(gt=0)
    max_abs_delta_pct_7d: float = Field(gt=0)
    max_age_bucket_share_delta_pp_7d: float = Field(gt=0)
    min_new_items_pct_1d: float = Field(ge=0)
    max_item_loss_pct_embedding_join: float = Field(ge=0, le=100)


class FreshnessSpec(_Strict):
    # A day's raw data (success file) is due this many hours after the day ends in app time (Asia/Kolkata)...
    raw_due_hours_after_day_end: float = Field(default=5.0, ge=0)
    # ...and an error is sent if it is still missing this many hours after it was due.
    alert_after_hours: float = Field(default=3.0, ge=0)
    # How many recent days the freshness sensor looks at.
    lookback_days: int = Field(default=3, ge=1)


class DatagenSpec(_Strict):
    language: LanguageSpec
    sample: SampleSpec
    filters: list[FilterSpec] = Field(min_length=1)
    thresholds: Thresholds
    item_age_bucket_edges: list[float] = Field(min_length=1)
    freshness: FreshnessSpec = FreshnessSpec()

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
        return self

    @property
    def stage_names(self) -> list[str]:
        """Every stage whose counts are reported, in order."""
        return ["language", "sample"] + [f.name for f in self.filters]


class DatagenConfigError(ValueError):
    pass


def parse_datagen_spec(raw: dict, source: str = "<dict>") -> DatagenSpec:
    try:
        return DatagenSpec.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) if not isinstance(p, int) else f'[{p}]' for p in err['loc']).replace('.[', '[')}: {err['msg']}"
            for err in e.errors()
        )
        raise DatagenConfigError(f"invalid datagen config {source}: {problems}") from None


@functools.lru_cache(maxsize=16)
def load_datagen_spec(path: str | None = None) -> DatagenSpec:
    """Load and validate the datagen YAML (default: the packaged recsys_assets/config/datagen.yaml)."""
    p = Path(path) if path else DEFAULT_CONFIG_PATH
    if not p.exists():
        raise DatagenConfigError(f"datagen config file not found: {p}")
    with p.open() as f:
        raw = yaml.safe_load(f)
    return parse_datagen_spec(raw, source=str(p))
