"""The model library's training entry points: one partition day's vocabulary, ranker and two-tower, from committed
data to a result the caller writes (its files) and reports (its metrics).

Partition D trains on the committed training_events of the window before D and is validated on day D (the temporal
split, config/training.yaml), so every model carries next-day metrics that the blocking checks judge before
indexing. No Dagster here: the asset calls these functions in the run process; a torchrun worker or a cluster job
imports the same ones.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys_assets.config.training import RANKER_TASKS, TrainingSpec
from recsys_assets.core.datasets import RANKER_MODEL, RETRIEVAL_MODEL, TRAINING_EVENTS, VOCAB
from recsys_assets.core.days import shift_day, window_of
from recsys_assets.core.readers import read_final_items
from recsys_assets.core.store_dirs import PartitionVersion
from recsys_assets.ml.artifacts import ArtifactDir, fingerprint, latest_committed_before, write_vocab
from recsys_assets.ml.features import Vocab, build_item_catalog
from recsys_assets.ml.loader import BatchEncoder, committed_events_dataset
from recsys_assets.ml.trainer import CheckpointStore, FitResult, TrainSettings
from recsys_assets.ml.window_counts import WindowCounts
from recsys_assets.ml.windows import TrainingWindow, window_for, with_user_history
from resources.store import DatasetStore

Log = Callable[[str], None]


@dataclass(frozen=True)
class VocabResult:
    """A day's vocabulary over its training window (yesterday's ids kept), its dense moments and its report."""

    vocab: Vocab
    moments: dict
    stats: dict
    window: TrainingWindow

    def write(self, out: PartitionVersion) -> dict:
        write_vocab(out, self.vocab, self.moments)
        out.write_json("vocab.json", self.stats)
        return {"row_count": self.stats["num_tokens"]}


def vocab_inputs(store: DatasetStore, day: str, spec: TrainingSpec) -> tuple[TrainingWindow, str | None]:
    """The day's training window and the latest earlier vocab day (whose ids the new vocab keeps): what the vocab
    and its window counts (ml/window_counts.py) are computed from."""
    return window_for(store, day, spec), latest_committed_before(store, VOCAB, day)


def build_day_vocab(store: DatasetStore, day: str, spec: TrainingSpec, counts=None) -> VocabResult:
    """Token counts over the window's committed days, merged into the latest earlier vocab (stable ids), the dense
    moments, and each feature's OOV rate on the validation day. `counts`: the window counts of the same window
    computed on Spark (ml/window_counts.WindowCounts, what the vocab asset passes); without them the events are
    counted here in one Python pass (small data, tests)."""
    from recsys_assets.ml.features import DENSE_FEATURES, build_vocab, count_tokens, dense_moments, oov_rates

    window, previous_day = vocab_inputs(store, day, spec)
    previous: Vocab | None = None
    if previous_day is not None:
        previous, _ = ArtifactDir.committed(store, VOCAB, previous_day).read_vocab()
    retire = spec.vocab.retire_after_days
    if counts is not None and not counts.covers(window.versions):
        raise ValueError(f"vocab {day}: the window counts were taken from other training_events versions")
    if counts is not None:
        new_vocab = build_vocab(previous, counts.token_counts(), spec.vocab.min_count, day, retire)
        moments, oov = counts.moments(), counts.oov_rates(new_vocab)
    else:
        train = committed_events_dataset(store, window.train_days)
        tokens = count_tokens(train.to_batches(columns=spec.vocab.features), spec.vocab.features)
        new_vocab = build_vocab(previous, tokens, spec.vocab.min_count, day, retire)
        moments = dense_moments(train.to_batches(columns=list(DENSE_FEATURES)))
        oov = oov_rates(new_vocab, committed_events_dataset(store, [day]).to_batches(columns=new_vocab.features))
    sizes = {f: new_vocab.cardinality(f) for f in new_vocab.features}
    prev_sizes = {f: previous.cardinality(f) if previous and f in previous.tables else 2 for f in new_vocab.features}
    stats = {
        "window": window.as_dict(),
        "warm_start_from": previous_day,
        "min_count": spec.vocab.min_count,
        "cardinality": sizes,
        "new_tokens": {f: sizes[f] - prev_sizes[f] for f in sizes},
        "retired_ids": {f: new_vocab.retired(f) for f in sizes},
        "retire_after_days": retire,
        "oov_rate_validation_day": oov,
        "max_oov_rate": {f: spec.checks.oov_limit(f) for f in sizes},
        "num_tokens": sum(sizes.values()) - 2 * len(sizes),
        "counted_on": "spark" if counts is not None else "run process",
    }
    return VocabResult(new_vocab, moments, stats, window)


@dataclass
class ModelInputs:
    """What both models of a day resolve first: the window (restricted to days with a user_history when the models
    read it), the committed vocab of the day and the batch encoder over the window's catalogue."""

    day: str
    store: DatasetStore
    spec: TrainingSpec
    window: TrainingWindow
    vocab_version: str
    encoder: BatchEncoder
    counts: WindowCounts | None = None  # the vocab's window counts (Spark), when it has them

    @classmethod
    def resolve(cls, store: DatasetStore, day: str, spec: TrainingSpec, log: Log) -> ModelInputs:
        from recsys_assets.ml.history import load_histories

        window = window_for(store, day, spec)
        if spec.history.enabled:
            window = with_user_history(store, window, spec.min_window_days)
        for d, status in window.unused_days.items():
            log(f"training window of {day}: {d} not used: {status}")
        vocab_dir = ArtifactDir.committed(store, VOCAB, day)
        vocab, moments = vocab_dir.read_vocab()
        days = [*window.train_days, window.validation_day]
        catalog = build_item_catalog([partial(read_final_items, store, d) for d in days])
        history = load_histories(store, days, spec.history.max_len, vocab, catalog) if spec.history.enabled else None
        counts = WindowCounts.read(store, vocab_dir)
        if counts is not None and not counts.covers(window.versions):
            log(f"vocab {day}: window counts from other training_events versions; counting in this process")
            counts = None
        encoder = BatchEncoder(vocab, moments, catalog, spec.labels, history)
        return cls(day, store, spec, window, vocab_dir.version, encoder, counts)

    def day_positives(self, days: list[str]) -> dict:
        """The retrieval positives per day and catalogue row of `days` (window days, the validation day): from the
        window counts (Spark) when the vocab has them, else counted here (one pass over those days' item_id column,
        catalogue-sized memory). What the logQ correction, the trend inputs and the recency prior read."""
        if self.counts is not None:
            return self.counts.item_day_positives(self.encoder.catalog, days)
        from recsys_assets.ml.loader import positives_by_day

        counted = positives_by_day(committed_events_dataset(self.store, days), self.encoder)
        return {d: counted.get(d, np.zeros(len(self.encoder.catalog), np.int64)) for d in days}

    @property
    def history_len(self) -> int:
        return self.spec.history.max_len if self.spec.history.enabled else 0

    def selection(self, sizes) -> dict:
        """Early stopping arguments of a model's training: a held-out slice of the window's users, when configured."""
        if not sizes.early_stopping:
            return {}
        from recsys_assets.ml.loader import holdout_user_ids

        return {"holdout_users": holdout_user_ids(self.encoder.vocab, sizes.holdout_pct), "patience": sizes.patience}

    def checkpoints(self, name: str, hyper, settings: TrainSettings, *extra) -> tuple[str, CheckpointStore]:
        """Checkpoint dir keyed by everything that determines the weights (not the device): a retried run of the
        same config and data resumes; any other config starts fresh."""
        fp = fingerprint(
            hyper,
            # Not the device, threads or this process's rank: every rank of a data-parallel run shares one directory.
            {k: v for k, v in settings.__dict__.items() if k not in ("device", "num_threads", "rank")},
            self.window.as_dict(),
            self.vocab_version,
            *extra,
        )
        return fp, CheckpointStore(self.store, self.store.path("_checkpoints", name, f"dt={self.day}", fp))

    def train_history_free(self, name: str, train_fn, train_data, hyper, settings, *extra, log: Log, **kwargs):
        """The same model without history (same data, sizes and seed): the comparison offline_evaluation shows.
        Its checkpoints are its own (the fingerprint differs by history_len) and are dropped once it is trained."""
        hf_hyper = dataclasses.replace(hyper, history_len=0)
        fp, checkpoints = self.checkpoints(name, hf_hyper, settings, *extra)
        trained = train_fn(train_data, self.encoder, hf_hyper, settings, checkpoints, fp, log, **kwargs)
        if settings.shard.is_main:
            checkpoints.clear()
        return trained[0]

    def training_info(self, settings: TrainSettings, hyper, fit: FitResult, run_id: str, **extra) -> dict:
        return {
            **self.window.as_dict(),
            "vocab_version": self.vocab_version,
            "settings": settings.__dict__,
            "hyper": hyper.__dict__,
            "history": fit.history,
            "resumed_from_epoch": fit.resumed_from_epoch,
            "best_epoch": fit.best_epoch,
            "stopped_early": fit.stopped_early,
            "train_seconds": round(fit.train_seconds, 2),
            "samples_per_s": round(fit.samples_per_s, 1),
            "run_id": run_id,
            **extra,
        }


@dataclass
class TrainedModel:
    """A trained model partition: the files it is written as (weights, config, exported programs, the vocab it was
    trained with, metrics, lineage), what it reports, and the run's checkpoints to drop once it is published."""

    state_dict: dict
    model_config: dict
    programs: dict[str, bytes]
    metrics: dict
    training_info: dict
    fit: FitResult
    settings: TrainSettings
    window: TrainingWindow
    encoder: BatchEncoder
    checkpoints: CheckpointStore
    manifest_metrics: dict | None = None
    tables: dict[str, pa.Table] = dataclasses.field(default_factory=dict)  # e.g. the ranker's serving trend inputs

    def write(self, out: PartitionVersion) -> dict:
        out.write_torch("model.pt", self.state_dict)
        out.write_json("model_config.json", self.model_config)
        for name, data in self.programs.items():
            out.write_bytes(name, data)
        for name, table in self.tables.items():
            out.write_table(name, table)
        write_vocab(out, self.encoder.vocab, self.encoder.moments)
        out.write_json("metrics.json", self.metrics)
        out.write_json("training.json", self.training_info)
        # The training_events versions it was trained on stay on disk while this model version is live.
        holder = f"{out.dataset}.{out.day}.{out.version}"
        for day, version in self.window.versions.items():
            out.store.pin(TRAINING_EVENTS, day, version, holder)
        return {"metrics": self.metrics if self.manifest_metrics is None else self.manifest_metrics}

    def published(self) -> None:
        """The model is committed (or staged for its gate): its checkpoints are no longer needed."""
        self.checkpoints.clear()


def _previous_ranker_aucs(
    inputs: ModelInputs, max_rows: int, log: Log, day_positives: dict | None
) -> tuple[str | None, dict]:
    """The last model that passed its own AUC gate (the one serving), scored on this validation day with its own
    vocabulary and this run's item catalogue: a same-data comparison. A failed model is never the baseline."""
    from recsys_assets.ml.history import load_histories
    from recsys_assets.ml.models import MMoERanker, RankerConfig
    from recsys_assets.ml.ranker import ranker_gate, score_ranker, task_aucs

    store, day = inputs.store, inputs.day
    prev_day = day
    for _ in range(30):
        prev_day = latest_committed_before(store, RANKER_MODEL, prev_day)
        if prev_day is None:
            return None, {}
        prev = ArtifactDir.committed(store, RANKER_MODEL, prev_day)
        if ranker_gate(prev.read_json("metrics.json"))[0]:
            break
        log(f"previous ranker {prev_day} failed its gate; looking further back")
    else:
        return None, {}
    model = MMoERanker(RankerConfig(**prev.read_json("model_config.json")))
    model.load_state_dict(prev.read_torch("model.pt"))
    vocab, moments = prev.read_vocab()
    history = None
    if model.cfg.history_len:  # its own vocabulary's ids for the history items
        history = load_histories(store, [day], model.cfg.history_len, vocab, inputs.encoder.catalog)
    encoder = BatchEncoder(vocab, moments, inputs.encoder.catalog, inputs.spec.labels, history)
    if model.cfg.item_trend is not None and day_positives is None:
        day_positives = inputs.day_positives(inputs.window.train_days)
    scores, labels = score_ranker(
        model, committed_events_dataset(store, [day]), encoder, max_rows=max_rows, day_positives=day_positives
    )
    log(f"previous ranker ({prev_day}) scored on {day}")
    return prev_day, task_aucs(scores, labels)


def train_day_ranker(inputs: ModelInputs, runtime: dict, run_id: str, log: Log) -> TrainedModel | None:
    """The multi-task ranker of the day, with its validation-day AUCs beside the previous model's, the history-free
    ranker's and the item prior's on the same rows. Data-parallel (runtime rank / world_size): every rank trains its
    share, rank 0 alone evaluates and returns the model (the others return None)."""
    from recsys_assets.ml.baselines import item_prior_aucs
    from recsys_assets.ml.loader import sequential_batches, split_holdout
    from recsys_assets.ml.ranker import (
        RankerHyper,
        item_priors,
        ranker_program,
        score_ranker,
        task_aucs,
        task_positive_rates,
        train_ranker,
    )
    from recsys_assets.ml.trend import RANKER_ITEM_TREND, serving_trend_table

    day, store, spec, window, encoder = inputs.day, inputs.store, inputs.spec, inputs.window, inputs.encoder
    sizes = spec.ranker
    hyper = RankerHyper(
        embedding_dim=sizes.embedding_dim,
        num_experts=sizes.num_experts,
        expert_sizes=tuple(sizes.expert_sizes),
        tower_sizes=tuple(sizes.tower_sizes),
        dropout=sizes.dropout,
        task_weights=tuple(sizes.task_weights),
        history_len=inputs.history_len,
        item_bias=sizes.item_bias,
        item_bias_smoothing=spec.evaluation.item_prior_smoothing,
        item_trend=sizes.item_trend,
        history_time_gaps=sizes.history_time_gaps,
    )
    settings = TrainSettings.of(sizes, runtime)
    # The trend inputs' counts: the window's positives per day (training, and the validation day's inputs) and the
    # validation day's own (with the two before it, the inputs of the day the release serves).
    positives = inputs.day_positives([*window.train_days, day]) if hyper.item_trend else None
    window_positives = {d: positives[d] for d in window.train_days} if positives is not None else None
    fitted = None
    if sizes.fit_on_last_window_day:  # the epoch count, chosen on the window's last day (ml/holdout_fit.py)
        from recsys_assets.ml.holdout_fit import fit_ranker

        if (fitted := fit_ranker(inputs, hyper, settings, log, window_positives)) is not None:
            settings = dataclasses.replace(settings, epochs=fitted.epochs)
    train_data = committed_events_dataset(store, window.train_days)
    valid_data = committed_events_dataset(store, [day])
    selection = inputs.selection(sizes)
    # One pass over the window for the item prior: the item-bias start of both rankers and the item-prior baseline,
    # all on the training rows (never the held-out users of early stopping).
    smoothing = spec.evaluation.item_prior_smoothing
    priors = None
    if inputs.counts is not None:  # from the window counts (Spark), when taken with this ranker's holdout
        held_pct = sizes.holdout_pct if "holdout_users" in selection else 0.0
        priors = inputs.counts.item_priors(encoder, window.train_days, smoothing, held_pct)
    if priors is None:
        train_rows, _ = split_holdout(None, selection.get("holdout_users"))
        priors = item_priors(train_data, encoder, smoothing, train_rows)
    if hyper.item_bias:
        selection["item_bias_start"] = priors.bias_logits
    if window_positives is not None:
        selection["day_positives"] = window_positives
    fp, checkpoints = inputs.checkpoints(RANKER_MODEL, hyper, settings, sizes.model_dump())
    model, fit = train_ranker(train_data, encoder, hyper, settings, checkpoints, fp, log, **selection)
    # The history-free ranker (same data, sizes and seed): a cheap baseline on the same protocol.
    hf_model = None
    if hyper.history_len and spec.history.compares_history_free(day):
        hf_model = inputs.train_history_free(
            RANKER_MODEL, train_ranker, train_data, hyper, settings, sizes.model_dump(), log=log, **selection
        )
    if not settings.shard.is_main:
        return None  # a data-parallel rank other than 0: its share is trained, rank 0 evaluates and writes
    t0 = time.perf_counter()
    scored = {"max_rows": sizes.max_validation_rows, "day_positives": window_positives}
    scores, labels = score_ranker(model, valid_data, encoder, **scored)
    aucs, rates = task_aucs(scores, labels), task_positive_rates(labels)
    prev_day, prev_aucs = _previous_ranker_aucs(inputs, sizes.max_validation_rows, log, window_positives)
    # The same protocol for the cheap baselines: the history-free ranker and the item prior (the item's smoothed
    # label rate in the window).
    history_free_aucs: dict = {}
    if hf_model is not None:
        history_free_aucs = task_aucs(*score_ranker(hf_model, valid_data, encoder, **scored))
    plain = dataclasses.replace(encoder, history=None)  # the prior needs items and labels, not the history gather
    prior_aucs = item_prior_aucs(
        priors.catalog_rates, sequential_batches(valid_data, plain, 8192), RANKER_TASKS, sizes.max_validation_rows
    )
    metrics = {
        "validation_day": day,
        "validation_rows": int(len(labels)),
        "auc": aucs,
        "positive_rate": rates,
        "previous_model_day": prev_day,
        "previous_model_auc": prev_aucs,
        "history_len": hyper.history_len,
        "item_bias": hyper.item_bias,  # both rankers start from the item prior's logits when true
        "item_trend": hyper.item_trend,
        "history_time_gaps": hyper.history_time_gaps and hyper.history_len > 0,
        "auc_history_free": history_free_aucs,
        "auc_item_prior": prior_aucs,
        "min_auc": spec.checks.ranker_min_auc,
        "max_auc_drop": spec.checks.ranker_max_auc_drop,
        "epochs": settings.epochs,
        "epochs_fitted_on": fitted.holdout_day if fitted else None,
        "eval_seconds": round(time.perf_counter() - t0, 2),
    }
    return TrainedModel(
        state_dict=model.state_dict(),
        model_config=model.cfg.to_dict(),
        programs={"ranker.pt2": ranker_program(model)},
        # The trend inputs of the day the release serves (D + 1: from D and the two days before), for the feed.
        tables=(
            {RANKER_ITEM_TREND: serving_trend_table(positives, shift_day(day, 1), encoder.catalog)}
            if positives is not None
            else {}
        ),
        metrics=metrics,
        training_info=inputs.training_info(
            settings, hyper, fit, run_id, holdout_fit=fitted.as_dict() if fitted else None
        ),
        fit=fit,
        settings=settings,
        window=window,
        encoder=encoder,
        checkpoints=checkpoints,
    )


def train_day_retrieval(inputs: ModelInputs, runtime: dict, run_id: str, log: Log) -> TrainedModel | None:
    """The two-tower of the day, with full-corpus recall/NDCG on the validation day for every method on one protocol
    (the model with and without history and the recency prior, most-popular, recent-popular, item-kNN).
    Data-parallel: every rank trains its share, rank 0 alone evaluates and returns the model."""
    import torch

    from recsys_assets.ml.baselines import seen_items
    from recsys_assets.ml.export import export_program
    from recsys_assets.ml.retrieval import (
        ItemTowerModule,
        RetrievalHyper,
        compare_retrieval,
        evaluation_queries,
        query_tower_program,
        train_two_tower,
    )

    day, store, spec, window, encoder = inputs.day, inputs.store, inputs.spec, inputs.window, inputs.encoder
    sizes = spec.retrieval
    hyper = RetrievalHyper(
        embedding_dim=sizes.embedding_dim,
        hidden_sizes=tuple(sizes.hidden_sizes),
        output_dim=sizes.output_dim,
        temperature=sizes.temperature,
        logq_correction=sizes.logq_correction,
        logq_by_day=sizes.logq_by_day,
        history_len=inputs.history_len,
        item_trend=sizes.item_trend,
        example_age=sizes.example_age,
        history_positions=sizes.history_positions,
        history_time_gaps=sizes.history_time_gaps,
    )
    settings = TrainSettings.of(sizes, runtime)
    train_data = committed_events_dataset(store, window.train_days)
    selection = inputs.selection(sizes)
    # The window's positives per day and catalogue row, counted once: the logQ correction, the trend inputs, the
    # recency prior, and the holdout fit's days (from the window counts on Spark when the vocab has them).
    selection["day_positives"] = inputs.day_positives(window.train_days)
    # The epoch count and the recency prior's weight, chosen on the window's last day (ml/holdout_fit.py), or pinned.
    pinned = spec.retrieval_scoring.recency_prior
    prior, fitted = (0.0 if pinned == "fit" else float(pinned)), None
    if sizes.fit_on_last_window_day:
        from recsys_assets.ml.holdout_fit import fit_retrieval

        fitted = fit_retrieval(inputs, train_two_tower, hyper, settings, selection["day_positives"], log)
        if fitted is not None:
            settings = dataclasses.replace(settings, epochs=fitted.epochs)
            prior = fitted.recency_prior
    extra = (spec.labels.model_dump(), sizes.model_dump())
    fp, checkpoints = inputs.checkpoints(RETRIEVAL_MODEL, hyper, settings, *extra)
    model, fit, positive_counts = train_two_tower(
        train_data, encoder, hyper, settings, checkpoints, fp, log, **selection
    )
    primary = "two-tower (history)" if hyper.history_len else "two-tower"
    models = {primary: model}
    if hyper.history_len and spec.history.compares_history_free(day):
        models["two-tower (history-free)"] = inputs.train_history_free(
            RETRIEVAL_MODEL, train_two_tower, train_data, hyper, settings, *extra, log=log, **selection
        )
    if not settings.shard.is_main:
        return None
    t0 = time.perf_counter()
    queries = evaluation_queries(
        committed_events_dataset(store, [day]), encoder, spec.labels, spec.evaluation.validation_users
    )
    k = spec.checks.retrieval_k
    ks = sorted({10, k})
    recent_counts = selection["day_positives"][window.train_days[-1]]
    seen = seen_items(train_data, queries.user_ids, encoder.catalog) if spec.evaluation.exclude_seen else None
    as_of = pd.Timestamp(window_of(day).end)
    ev = spec.evaluation
    comparison = compare_retrieval(
        models,
        queries,
        encoder,
        as_of,
        positive_counts,
        recent_counts,
        ks,
        seen,
        prior,
        ev.knn_neighbours,
        ev.knn_population_users,
        day_positives=selection["day_positives"],
    )
    if prior:  # the served score (the index adds the same prior): what the gate judges
        primary = f"{primary} + recency prior"
    methods = comparison.metrics
    # The served score against every other method, user by user: "beats" only where the interval is above 0.
    paired = comparison.paired(primary, ev.bootstrap_samples, seed=settings.seed)
    # The gate's keys: the model vs most-popular, under the same protocol as every other method.
    metrics = {f"model_{m}": v for m, v in methods[primary].items()}
    metrics |= {f"popularity_{m}": v for m, v in methods["most-popular"].items()}
    metrics |= {
        "methods": methods,
        "primary_method": primary,
        "paired_vs_served": paired,
        "history_len": hyper.history_len,
        "recency_prior": prior,
        "recency_prior_fitted_on": fitted.holdout_day if fitted else None,
        "epochs": settings.epochs,
        "epochs_fitted_on": fitted.holdout_day if fitted else None,
        "item_trend": hyper.item_trend,
        "example_age": hyper.example_age,
        "history_positions": hyper.history_positions,
        "history_time_gaps": hyper.history_time_gaps,
        "exclude_seen": spec.evaluation.exclude_seen,
        "num_queries": int(sum(1 for r in queries.relevant if len(r))),
        "validation_users_sample": spec.evaluation.validation_users,  # the fixed hash sample's size (at most)
        "knn_neighbours": spec.evaluation.knn_neighbours,
        "corpus_size": len(encoder.catalog),
        "validation_day": day,
        "k": k,
        "ks": ks,
        "min_recall": spec.checks.retrieval_min_recall,
        "min_lift_over_popularity": spec.checks.retrieval_min_lift_over_popularity,
        "eval_seconds": round(time.perf_counter() - t0, 2),
    }
    i_cfg = model.item_tower.cfg
    item_inputs = (
        torch.ones(4, len(i_cfg.cardinalities), dtype=torch.long),
        torch.zeros(4, i_cfg.num_dense),
        torch.zeros(4, i_cfg.content_dim),
    )
    return TrainedModel(
        state_dict=model.state_dict(),
        model_config=model.config(),
        programs={
            "query_tower.pt2": query_tower_program(model),
            "item_tower.pt2": export_program(ItemTowerModule(model), item_inputs),
        },
        metrics=metrics,
        training_info=inputs.training_info(
            settings,
            hyper,
            fit,
            run_id,
            positive_events=int(positive_counts.sum()),
            holdout_fit=fitted.as_dict() if fitted else None,
        ),
        fit=fit,
        settings=settings,
        window=window,
        encoder=encoder,
        checkpoints=checkpoints,
        manifest_metrics={k_: v for k_, v in metrics.items() if k_ not in ("ks", "methods", "paired_vs_served")},
    )
