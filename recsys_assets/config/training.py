"""The training YAML (window, vocab, labels, cold start, check thresholds), loaded and validated once.

Validation names the offending key, as the datagen YAML's does, so a typo fails before any data is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from recsys_assets.config.base import ConfigFileError, StrictModel, load_config_file

DEFAULT_TRAINING_CONFIG_PATH = Path(__file__).with_name("training.yaml")

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

# A rate or AUC in [0, 1]; a layer or embedding width (wider than this is a typo, not a model: 4096-d tables of tens of
# millions of ids do not fit a GPU).
Share = Annotated[float, Field(ge=0, le=1)]
MAX_WIDTH = 4096
Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]


class VocabSpec(StrictModel):
    min_count: int = Field(default=2, ge=1)
    # A token that no window has held for this many vocab days retires to OOV and its id is reused by a new token
    # (ml/features.py): the vocab's size stays bounded by the live tokens. null: tokens never retire.
    retire_after_days: int | None = Field(default=30, ge=1, le=3650)
    features: list[str] = Field(default_factory=lambda: list(CATEGORICAL_COLUMNS), min_length=1)

    @model_validator(mode="after")
    def _known(self):
        unknown = sorted(set(self.features) - set(CATEGORICAL_COLUMNS))
        if unknown:
            raise ValueError(f"unknown vocab feature(s) {unknown}; known: {list(CATEGORICAL_COLUMNS)}")
        return self


class LabelSpec(StrictModel):
    watch_complete_min_ratio: float = Field(default=0.8, gt=0)
    retrieval_positive_min_watch_ratio: float = Field(default=0.5, ge=0)
    retrieval_positive_on_engagement: bool = True


class ColdStartSpec(StrictModel):
    max_age_days: float = Field(default=3.0, ge=0)
    max_window_events: int = Field(default=5, ge=0)


class ModelCheckSpec(StrictModel):
    max_oov_rate: dict[str, Share] = Field(default_factory=lambda: {"default": 0.35})
    ranker_min_auc: dict[str, Share] = Field(default_factory=lambda: {t: 0.55 for t in RANKER_TASKS})
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


class HistorySpec(StrictModel):
    """user_history and the models' use of it."""

    # false: both models are the history-free design (user id and attributes only) and need no user_history.
    enabled: bool = True
    keep: int = Field(default=50, ge=1, le=1000)  # entries user_history keeps per user
    max_len: int = Field(default=20, ge=1)  # newest entries the models read
    lookback_days: int = Field(default=30, ge=1, le=365)  # entries older than this are dropped
    # WARN check: share of the latest folded day's active users with a history may drop at most this much vs D-1.
    max_coverage_drop: float = Field(default=0.1, ge=0, le=1)
    # Also train the history-free variant of each model on the same data, for offline_evaluation's comparison:
    # `daily`, `weekly` (on `history_free_weekday` only: two extra trainings a week, not a day) or `never`.
    # true / false read as daily / never.
    compare_history_free: Literal["daily", "weekly", "never"] = "weekly"
    history_free_weekday: Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"] = (
        "monday"
    )

    @field_validator("compare_history_free", mode="before")
    @classmethod
    def _bool_schedule(cls, v):
        return {True: "daily", False: "never"}.get(v, v) if isinstance(v, bool) else v

    def compares_history_free(self, day: str) -> bool:
        """Whether the models of `day` also train their history-free variants."""
        import datetime as dt

        if not self.enabled or self.compare_history_free == "never":
            return False
        if self.compare_history_free == "daily":
            return True
        return dt.date.fromisoformat(day).strftime("%A").lower() == self.history_free_weekday

    @model_validator(mode="after")
    def _len(self):
        if self.max_len > self.keep:
            raise ValueError(f"history.max_len ({self.max_len}) cannot exceed history.keep ({self.keep})")
        return self


class ModelSizes(StrictModel):
    """How one model trains, all in the training YAML (its one source; the training resource only says where it runs:
    device, precision, threads, seed). A run that needs other sizes points the config_files resource at another YAML
    (run config in the launchpad), so a model's sizes are always one file's content, recorded in its training.json."""

    epochs: int = Field(default=2, ge=1, le=1000)
    batch_size: int = Field(default=2048, ge=2, le=1 << 20)
    learning_rate: float = Field(default=2e-3, gt=0, le=10)
    weight_decay: float = Field(default=0.0, ge=0, le=10)
    # Rows the loader shuffles together (memory O(buffer), not O(window)).
    shuffle_buffer_rows: int = Field(default=1_000_000, ge=1, le=1 << 31)
    # Id embedding tables updated sparsely (SparseAdam: only the rows a batch looked up; step cost independent of the
    # table size); false: one dense AdamW over every parameter, as before.
    sparse_embeddings: bool = True
    # Epoch selection on a held-out slice of the window's users (validation-driven, never on day D): train up to
    # `epochs`, keep the epoch with the best held-out score, stop after `patience` epochs without improvement.
    early_stopping: bool = False
    patience: int = Field(default=2, ge=1)
    holdout_pct: float = Field(default=10.0, gt=0, lt=100)
    # Temporal holdout fit (ml/holdout_fit.py): a first model trains on the window without its last day for up to
    # `epochs`, is scored on that last day after every epoch (the retrieval model also at every weight of
    # retrieval_scoring.recency_prior_search), and the best epoch count (and weight) is what the model of the whole
    # window is then trained with. The validation day is never read. `epochs` is then the search space's top.
    # With early_stopping on it defaults to off (both select the epoch; setting both is an error).
    fit_on_last_window_day: bool = True

    @model_validator(mode="after")
    def _one_selection(self):
        if self.early_stopping and self.fit_on_last_window_day:
            if "fit_on_last_window_day" in self.model_fields_set:
                raise ValueError("early_stopping and fit_on_last_window_day both select the epoch: choose one")
            object.__setattr__(self, "fit_on_last_window_day", False)  # frozen model
        return self


class RankerSizes(ModelSizes):
    """The MMoE ranker's sizes, and its per-item bias: one logit per (item, task) added to the network's output,
    initialised to the item's smoothed label rate in the training rows of the window (the item-prior baseline,
    smoothed by `evaluation.item_prior_smoothing`), so training starts from the prior and learns what the user, the
    content and the history add to it (Wide & Deep's wide part, started at its closed-form value)."""

    embedding_dim: int = Field(default=16, ge=1, le=MAX_WIDTH)
    num_experts: int = Field(default=4, ge=1, le=64)
    expert_sizes: tuple[Width, ...] = Field(default=(128, 64), min_length=1)
    tower_sizes: tuple[Width, ...] = (32,)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    task_weights: tuple[Annotated[float, Field(ge=0, le=1e6)], ...] = Field(default=(1.0,) * len(RANKER_TASKS))
    item_bias: bool = True
    # The item's point-in-time popularity (ml/trend.py: log(1 + its retrieval positives on the day before the event's,
    # and the mean over the 3 days before)) as 2 more dense inputs; the release ships the served day's inputs
    # (item_trend.parquet of the ranker) so the feed's workers score with the same ones. Off by default: on MovieLens
    # as 10 days it lowered the ranker's liked AUC 0.6939 -> 0.6887 (5-day mean; docs/real_data.md).
    item_trend: bool = False
    # The history's time gaps in the ranker's target attention (as retrieval.history_time_gaps in the query tower): a
    # learned vector per age bucket of each history entry; the release's ranker program then takes hist_age. Off by
    # default: liked AUC on MovieLens 0.6939 -> 0.6948 (10 days), 0.6907 -> 0.6902 (20 days); synthetic 0.7621 -> 0.7618
    history_time_gaps: bool = False
    max_validation_rows: int = Field(default=2_000_000, ge=1)  # validation-day rows scored for AUC

    @model_validator(mode="after")
    def _one_weight_per_task(self):
        if len(self.task_weights) != len(RANKER_TASKS):
            raise ValueError(f"ranker.task_weights needs one weight per task {list(RANKER_TASKS)}")
        return self


class RetrievalSizes(ModelSizes):
    """The two-tower's sizes, and how its logQ correction counts: a training row is an item at its event's time (the
    item tower sees its age then), so its in-batch sampling probability is that of (item, day) among the window's
    positives (`logq_by_day`), not the item's window total. Where popularity moves within days of publishing (a
    short-video catalogue) the window total over-corrects an item's older days against its fresh one and teaches the
    tower that young items are less likely than they are; where per-day counts are a handful per item (MovieLens laid
    out as days) the per-day counts are noise (docs/real_data.md has both measurements). In-batch negatives per
    positive: batch_size - 1."""

    embedding_dim: int = Field(default=32, ge=1, le=MAX_WIDTH)
    hidden_sizes: tuple[Width, ...] = (128,)
    output_dim: int = Field(default=64, ge=1, le=MAX_WIDTH)
    temperature: float = Field(default=0.05, gt=0, le=100)
    logq_correction: bool = True
    logq_by_day: bool = True
    # Point-in-time popularity of the item as inputs of the item tower (ml/trend.py): log(1 + its positives on the
    # day before the event's) and log(1 + its mean daily positives over the 3 days before), so the model itself can
    # score "popular right now"; and the example's age (days from its event to the window's end, 0 when serving:
    # YouTube's candidate generation) as an input of the query tower.
    # Off by default: on the synthetic demo it lowered the two-tower's recall@10 0.3631 -> 0.3193 (docs/real_data.md).
    item_trend: bool = True
    example_age: bool = False
    # A learned vector per history position (newest first) added to each history entry before the query tower pools
    # them: the pooling can weight recent positives over old ones (recency-weighted pooling, learned). Off by
    # default: no gain measured (synthetic recall@10 0.3669 without, 0.3631 with).
    history_positions: bool = False
    # The history's time gaps: a learned vector per age bucket of each history entry (log2 of the hours from it to the
    # history's day; ml/models.history_age_buckets) added to it before the query tower pools the history, so an hour-
    # old positive and a month-old one count differently. The entries' times come from user_history's event_ts, into
    # the memory-mapped history caches, the exported query tower (hist_age) and the feed. Off by default: MovieLens
    # served recall@10 0.0524 -> 0.0531 (10 days), 0.0680 -> 0.0685 (20 days), synthetic 0.3671 -> 0.3411 (its
    # validation day's histories are older than its training days': young data; docs/real_data.md).
    history_time_gaps: bool = False


class RetrievalScoring(StrictModel):
    # score(u, i) = q.i / temperature + recency_prior * log(1 + positives of i on the most recent day). The two-tower's
    # logQ-corrected score estimates the item's probability over the whole window (popularity as of the window); this
    # adds the newest day's popularity at scoring time (MovieLens days follow what is popular right now).
    # 0: the model's score alone. Applied in evaluation (last window day) and in the retrieval index (the index's
    # own day: the newest data at serving), so served and evaluated scores have the same form.
    # `fit` (the default): chosen at every training among `recency_prior_search` on the window's last day by a model
    # trained without it (retrieval.fit_on_last_window_day, ml/holdout_fit.py); a number pins it (no search).
    recency_prior: Literal["fit"] | Annotated[float, Field(ge=0)] = "fit"
    recency_prior_search: tuple[Annotated[float, Field(ge=0)], ...] = Field(
        default=(0.0, 0.5, 1.0, 2.0, 4.0, 8.0), min_length=1
    )
    # What the holdout fit maximises on the window's last day: `recall@10` (then NDCG@10: the goal metric; on a day of
    # ~100 users it moves by whole hits) or `log_likelihood` (the mean log-probability of the held-out positives under
    # the blended score's softmax over the catalogue: every positive counts, smooth in the weight, but a proxy: on
    # MovieLens as 10 days it chose smaller weights and served 0.0521 vs 0.0542 recall@10, docs/real_data.md).
    holdout_objective: Literal["log_likelihood", "recall@10"] = "recall@10"
    # How many held-out days the weight is chosen on (recall@10 objective): this training's, and those of the fits of
    # the previous (N - 1) committed retrieval models (their training.json tables at their chosen epochs; every one of
    # those days is before this partition's). One day of ~100 users is a noisy judge; the mean over N days is less so,
    # at no extra training. 1 (the default): this training's held-out day alone. Measured with 3 on MovieLens: 10 days
    # served recall@10 / NDCG@10 0.0524 / 0.3780 -> 0.0551 / 0.3905, 20 days 0.0680 / 0.3534 -> 0.0658 / 0.3546 (helps
    # one layout's recall, hurts the other's: not a default; docs/real_data.md).
    recency_prior_pooled_days: int = Field(default=1, ge=1, le=30)


class EvaluationSpec(StrictModel):
    # Exclude items the user already interacted with in the window from every method's top-K (on for catalogues
    # where re-consumption is rare, like MovieLens). The report says which was used.
    exclude_seen: bool = False
    # Smoothing of the ranker's item-prior baseline: (positives + m * global rate) / (events + m).
    item_prior_smoothing: float = Field(default=20.0, ge=0)
    # Every retrieval method is scored on one fixed hash sample of the validation day's users with a positive: the
    # `validation_users` with the smallest user keys (the same users on every rerun and for every method; all of
    # them when fewer). The report says how many were scored.
    validation_users: int = Field(default=50_000, ge=1, le=10_000_000)
    # Item-kNN scores from each item's `knn_neighbours` most similar items (cosine over the histories of a fixed hash
    # sample of at most `knn_population_users` users as of the day): its cost per query does not grow with the user
    # population, and building the lists is bounded by the sample.
    knn_neighbours: int = Field(default=200, ge=1, le=100_000)
    knn_population_users: int = Field(default=1_000_000, ge=1, le=100_000_000)
    # The served score against every other method: per-user paired differences of recall@10 / NDCG@10, with a
    # percentile bootstrap 95% interval from this many resamples of the users (metrics.paired_bootstrap).
    bootstrap_samples: int = Field(default=1000, ge=100, le=100_000)


class TrainingSpec(StrictModel):
    window_days: int = Field(default=7, ge=1, le=90)
    # A model trains only when at least this many of the window's days have a committed training_events version
    # (missing days and days withheld by a failed blocking check do not count); otherwise it fails naming them.
    min_window_days: int = Field(default=5, ge=1)
    vocab: VocabSpec = VocabSpec()
    labels: LabelSpec = LabelSpec()
    cold_start: ColdStartSpec = ColdStartSpec()
    checks: ModelCheckSpec = ModelCheckSpec()
    history: HistorySpec = HistorySpec()
    ranker: RankerSizes = RankerSizes()
    retrieval: RetrievalSizes = RetrievalSizes()
    evaluation: EvaluationSpec = EvaluationSpec()
    retrieval_scoring: RetrievalScoring = RetrievalScoring()

    @model_validator(mode="after")
    def _prior_fit_needs_holdout(self):
        if self.retrieval_scoring.recency_prior == "fit" and not self.retrieval.fit_on_last_window_day:
            raise ValueError(
                "retrieval_scoring.recency_prior: fit needs retrieval.fit_on_last_window_day: true (the weight is "
                "chosen on the window's last day); or pin a number"
            )
        return self


class TrainingConfigError(ConfigFileError):
    pass


def load_training_spec(path: str | None = None) -> TrainingSpec:
    return load_config_file(path or DEFAULT_TRAINING_CONFIG_PATH, TrainingSpec, "training", TrainingConfigError)
