"""The training YAML (window, vocab, labels, cold start, check thresholds), loaded and validated once.

Validation names the offending key, as the datagen YAML's does, so a typo fails before any data is read.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from recsys_assets.core.config import ConfigFileError, StrictModel, load_config_file

DEFAULT_TRAINING_CONFIG_PATH = Path(__file__).resolve().parents[1] / "config" / "training.yaml"

# Categorical columns of training_events a vocabulary can be built for.
CATEGORICAL_COLUMNS = (
    "user_id",
    "item_id",
    "item_author_id",
    "item_category",
    "item_language",
    "user_language",
    "user_region",
    "feed_source",
)
RANKER_TASKS = ("liked", "shared", "followed", "watch_complete")


_Strict = StrictModel


class VocabSpec(_Strict):
    min_count: int = Field(default=2, ge=1)
    features: list[str] = Field(default_factory=lambda: list(CATEGORICAL_COLUMNS), min_length=1)

    @model_validator(mode="after")
    def _known(self):
        unknown = sorted(set(self.features) - set(CATEGORICAL_COLUMNS))
        if unknown:
            raise ValueError(f"unknown vocab feature(s) {unknown}; known: {list(CATEGORICAL_COLUMNS)}")
        return self


class LabelSpec(_Strict):
    watch_complete_min_ratio: float = Field(default=0.8, gt=0)
    retrieval_positive_min_watch_ratio: float = Field(default=0.5, ge=0)
    retrieval_positive_on_engagement: bool = True


class ColdStartSpec(_Strict):
    max_age_days: float = Field(default=3.0, ge=0)
    max_window_events: int = Field(default=5, ge=0)


class ModelCheckSpec(_Strict):
    max_oov_rate: dict[str, float] = Field(default_factory=lambda: {"default": 0.35})
    ranker_min_auc: dict[str, float] = Field(default_factory=lambda: {t: 0.55 for t in RANKER_TASKS})
    ranker_max_auc_drop: float = Field(default=0.02, ge=0)
    retrieval_k: int = Field(default=50, ge=1)
    retrieval_min_recall: float = Field(default=0.05, ge=0, le=1)
    retrieval_min_lift_over_popularity: float = Field(default=1.1, ge=0)
    index_min_recall_vs_exact: float = Field(default=0.95, ge=0, le=1)

    @model_validator(mode="after")
    def _tasks(self):
        unknown = sorted(set(self.ranker_min_auc) - set(RANKER_TASKS))
        if unknown:
            raise ValueError(f"ranker_min_auc: unknown task(s) {unknown}; tasks: {list(RANKER_TASKS)}")
        return self

    def oov_limit(self, feature: str) -> float:
        return self.max_oov_rate.get(feature, self.max_oov_rate.get("default", 1.0))


class TrainingSpec(_Strict):
    window_days: int = Field(default=7, ge=1, le=90)
    # A model trains only when at least this many of the window's days have a committed training_events version
    # (missing days and days withheld by a failed blocking check do not count); otherwise it fails naming them.
    min_window_days: int = Field(default=5, ge=1)
    vocab: VocabSpec = VocabSpec()
    labels: LabelSpec = LabelSpec()
    cold_start: ColdStartSpec = ColdStartSpec()
    checks: ModelCheckSpec = ModelCheckSpec()


class TrainingConfigError(ConfigFileError):
    pass


def load_training_spec(path: str | None = None) -> TrainingSpec:
    return load_config_file(path or DEFAULT_TRAINING_CONFIG_PATH, TrainingSpec, "training", TrainingConfigError)
