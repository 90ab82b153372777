"""serving.yaml, typed and validated once: the model name, the A/B arms, the feed sizes, the skew and online
evaluation settings (what recsys_assets/serving does with them is there)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from recsys_assets.config.base import ConfigFileError, StrictModel, load_config_file

DEFAULT_SERVING_CONFIG = Path(__file__).with_name("serving.yaml")


class ArmSpec(StrictModel):
    name: str
    model: Literal["production", "previous_production"] | int
    traffic_pct: float = Field(ge=0, le=100)


class ABSpec(StrictModel):
    salt: str
    buckets: int = Field(default=100, ge=1, le=100_000)
    arms: list[ArmSpec] = Field(min_length=1)


class FeedSpec(StrictModel):
    strategy_name: str
    k_retrieve: int = Field(ge=1)
    k_feed: int = Field(ge=1)
    feed_source: str
    task_weights: dict[str, float]
    stratify_by: str = "user_region"
    sample_users_per_segment: int | None = Field(default=None, ge=1)
    # The day's feed is refused (blocking check feed_rows_within_limits, the served one stays) when it has no rows or
    # fewer than this share of the previous day's rows of the same strategy.
    min_rows_share_of_previous: float = Field(default=0.5, ge=0, le=1)
    # Days of feed kept in the table: partitions of days more than this before the day published are dropped.
    retention_days: int = Field(default=14, ge=1)
    # COPY streams loading a day into PostgreSQL at once, each on its own connection (serving/feed_table.py).
    copy_streams: int = Field(default=1, ge=1, le=32)

    @model_validator(mode="after")
    def _k(self):
        if self.k_feed > self.k_retrieve:
            raise ValueError(f"k_feed ({self.k_feed}) > k_retrieve ({self.k_retrieve})")
        bad = sorted(t for t, w in self.task_weights.items() if not (math.isfinite(w) and w >= 0))
        if bad:
            raise ValueError(f"task_weights of {bad} must be finite and >= 0")
        if not any(w > 0 for w in self.task_weights.values()):
            raise ValueError("task_weights needs at least one weight > 0 (the feed's score is their blend)")
        return self


class SkewSpec(StrictModel):
    online_feature_log: str
    numeric_features: list[str]
    categorical_features: list[str]
    bins: int = Field(default=10, ge=2)
    max_psi: float = Field(gt=0)
    max_ks: float = Field(gt=0, le=1)
    max_offline_rows: int = Field(default=500_000, ge=1000)


class OnlineEvalSpec(StrictModel):
    impressions_log: str
    plays_window_minutes: int = Field(default=60, ge=1)


class ServingSpec(StrictModel):
    model_name: str
    ab: ABSpec
    feed: FeedSpec
    skew: SkewSpec
    online_evaluation: OnlineEvalSpec


class ServingConfigError(ConfigFileError):
    pass


def load_serving_spec(path: str | None = None) -> ServingSpec:
    return load_config_file(path or DEFAULT_SERVING_CONFIG, ServingSpec, "serving", ServingConfigError)
