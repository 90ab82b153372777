"""Training metadata and models: vocab -> ranker_model, retrieval_model -> offline_evaluation.

Partition D trains on training_events of the window_days before D and is validated on day D (see
config/training.yaml), so every model carries next-day metrics that the blocking checks judge before indexing.
"""

import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    Config,
    MaterializeResult,
    MetadataValue,
    TimeWindowPartitionMapping,
    asset,
)
from pydantic import Field

from recsys_assets.core.datasets import USER_HISTORY
from recsys_assets.core.metadata import md_table, numeric_metadata
from recsys_assets.core.partitions import PER_DAY, daily_partitions, window_of
from recsys_assets.datagen.assets import training_events
from recsys_assets.datagen.stages import read_final_items
from recsys_assets.training.artifacts import (
    RANKER_MODEL,
    RETRIEVAL_MODEL,
    VOCAB,
    ArtifactDir,
    fingerprint,
    latest_committed_before,
)
from recsys_assets.training.automation import TRAIN_AFTER_DATAGEN, TRAIN_AFTER_VOCAB
from recsys_assets.training.config import RANKER_TASKS, TrainingSpec, load_training_spec
from recsys_assets.training.windows import TrainingWindow, window_dep, window_for, with_user_history
from resources.config_files import ConfigFilesResource
from resources.storage import DatasetStore, StorageResource
from resources.training import TrainingResource

if TYPE_CHECKING:  # annotations only: the modules load where they are used
    from recsys_assets.training.loader import BatchEncoder
    from recsys_assets.training.trainer import CheckpointStore


class RankerTrainingConfig(Config):
    epochs: int | None = Field(default=None, description="Overrides the training resource's epochs.")
    embedding_dim: int = 16
    num_experts: int = 4
    expert_sizes: list[int] = Field(default_factory=lambda: [128, 64])
    tower_sizes: list[int] = Field(default_factory=lambda: [32])
    dropout: float = 0.0
    task_weights: list[float] = Field(default_factory=lambda: [1.0] * len(RANKER_TASKS))
    max_validation_rows: int = Field(default=2_000_000, description="Validation-day rows scored for AUC.")


class RetrievalTrainingConfig(Config):
    epochs: int | None = None
    batch_size: int | None = Field(default=None, description="In-batch negatives per positive = batch_size - 1.")
    embedding_dim: int = 32
    hidden_sizes: list[int] = Field(default_factory=lambda: [128])
    output_dim: int = 64
    temperature: float = 0.05
    logq_correction: bool = True
    validation_user_sample_pct: float = Field(default=100.0, gt=0, le=100)


def _catalog(store, window: TrainingWindow):
    from recsys_assets.training.features import build_item_catalog

    return build_item_catalog([read_final_items(store, d) for d in [*window.train_days, window.validation_day]])


def _encoder(store, window: TrainingWindow, vocab_dir: ArtifactDir, spec):
    from recsys_assets.training.history import load_histories
    from recsys_assets.training.loader import BatchEncoder

    vocab, moments = vocab_dir.read_vocab()
    catalog = _catalog(store, window)
    history = None
    if spec.history.enabled:
        days = [*window.train_days, window.validation_day]
        history = load_histories(store, days, spec.history.max_len, vocab, catalog)
    return BatchEncoder(vocab, moments, catalog, spec.labels, history)


def _selection(sizes, encoder) -> dict:
    """Early stopping arguments of a model's training: a held-out slice of the window's users, when configured."""
    if not sizes.early_stopping:
        return {}
    from recsys_assets.training.loader import holdout_user_ids

    return {"holdout_users": holdout_user_ids(encoder.vocab, sizes.holdout_pct), "patience": sizes.patience}


def _history_len(spec: TrainingSpec) -> int:
    return spec.history.max_len if spec.history.enabled else 0


def _history_table(history: list[dict]) -> MetadataValue:
    return md_table(
        ["epoch", "loss", "holdout loss", "samples", "seconds", "samples/s"],
        [
            [
                h["epoch"],
                round(h["loss"], 5),
                round(h["holdout_loss"], 5) if "holdout_loss" in h else "-",
                h["samples"],
                h["seconds"],
                h["samples_per_s"],
            ]
            for h in history
        ],
    )


@dataclass
class _ModelInputs:
    """What both model assets resolve first: the day, window, committed vocab and the batch encoder."""

    day: str
    store: DatasetStore
    spec: TrainingSpec
    window: TrainingWindow
    vocab_dir: ArtifactDir
    encoder: "BatchEncoder"

    def checkpoints(self, asset_name: str, hyper, settings, *extra) -> tuple[str, "CheckpointStore"]:
        """Checkpoint dir keyed by everything that determines the weights (not the device): a retried run of the
        same config and data resumes; any other config starts fresh."""
        from recsys_assets.training.trainer import CheckpointStore

        fp = fingerprint(
            hyper,
            {k: v for k, v in settings.__dict__.items() if k not in ("device", "num_threads")},
            self.window.as_dict(),
            self.vocab_dir.version,
            *extra,
        )
        return fp, CheckpointStore(self.store, self.store.path("_checkpoints", asset_name, f"dt={self.day}", fp))

    def train_history_free(self, asset_name: str, train_fn, train_data, hyper, settings, *extra, log, **kwargs):
        """The same model without history (same data, sizes and seed): the comparison offline_evaluation shows.
        Its checkpoints are its own (the fingerprint differs by history_len) and are dropped once it is trained."""
        hf_hyper = dataclasses.replace(hyper, history_len=0)
        fp, checkpoints = self.checkpoints(asset_name, hf_hyper, settings, *extra)
        trained = train_fn(train_data, self.encoder, hf_hyper, settings, checkpoints, fp, log, **kwargs)
        checkpoints.clear()
        return trained[0]

    def training_info(self, settings, hyper, fit, run_id: str, **extra) -> dict:
        return {
            **self.window.as_dict(),
            "vocab_version": self.vocab_dir.version,
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

    def commit_model(
        self,
        asset_name: str,
        run_id: str,
        *,
        state_dict: dict,
        model_config: dict,
        programs: dict[str, bytes],
        metrics: dict,
        training_info: dict,
        checkpoints: "CheckpointStore",
        manifest_metrics: dict | None = None,
    ) -> ArtifactDir:
        """Write a model partition (weights, config, exported programs, the vocab it was trained with, metrics,
        lineage), commit it, then drop the run's checkpoints."""
        out = ArtifactDir.new(self.store, asset_name, self.day, run_id)
        out.write_torch("model.pt", state_dict)
        out.write_json("model_config.json", model_config)
        for name, data in programs.items():
            out.write_bytes(name, data)
        out.write_vocab(self.encoder.vocab, self.encoder.moments)
        out.write_json("metrics.json", metrics)
        out.write_json("training.json", training_info)
        out.publish(metrics=metrics if manifest_metrics is None else manifest_metrics)
        checkpoints.clear()
        return out

    def training_metadata(self, fit, settings, out: ArtifactDir) -> dict:
        return {
            "training_history": _history_table(fit.history),
            "train_days": ", ".join(self.window.train_days),
            "window": window_table(self.window),
            "device": settings.device,
            "path": MetadataValue.path(out.uri),
            "version": out.version,
            "samples_per_s": MetadataValue.float(round(fit.samples_per_s, 1)),
            "train_seconds": MetadataValue.float(round(fit.train_seconds, 2)),
            "resumed_from_epoch": MetadataValue.int(-1 if fit.resumed_from_epoch is None else fit.resumed_from_epoch),
        }


def window_table(window: TrainingWindow) -> MetadataValue:
    """Each day of the window and what happened to it (used, withheld by a failed check, missing)."""
    return md_table(["day", "training_events"], [[d, s] for d, s in window.status.items()])


def _model_inputs(
    context: AssetExecutionContext, storage: StorageResource, config_files: ConfigFilesResource
) -> _ModelInputs:
    day, store = context.partition_key, storage.store
    spec = load_training_spec(config_files.training)
    window = window_for(store, day, spec)
    if spec.history.enabled:
        window = with_user_history(store, window, spec.min_window_days)
    for d, status in window.unused_days.items():
        context.log.warning(f"training window of {day}: {d} not used: {status}")
    vocab_dir = ArtifactDir.committed(store, VOCAB, day)
    return _ModelInputs(day, store, spec, window, vocab_dir, _encoder(store, window, vocab_dir, spec))


@asset(
    partitions_def=daily_partitions,
    automation_condition=TRAIN_AFTER_DATAGEN,
    group_name="training",
    # Self-dependency on the previous day: ids extend yesterday's vocab, so backfills run days in order.
    deps=[
        window_dep(training_events),
        # The day's datagen finished (its report is written from a committed training_events day): what starts it.
        AssetKey("datagen_monitoring_report"),
        AssetDep(
            AssetKey("vocab"),
            partition_mapping=TimeWindowPartitionMapping(
                start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True
            ),
        ),
    ],
    kinds={"python", "parquet"},
    backfill_policy=PER_DAY,
    description="Vocabularies of the categorical features over the training window with stable ids (yesterday's "
    "ids kept, new tokens appended), reserved padding/OOV ids, counts, dense-feature moments, and the OOV rate of "
    "each feature on the validation day.",
)
def vocab(
    context: AssetExecutionContext, storage: StorageResource, config_files: ConfigFilesResource
) -> MaterializeResult:
    from recsys_assets.training.features import (
        DENSE_FEATURES,
        Vocab,
        build_vocab,
        count_tokens,
        dense_moments,
        oov_rates,
    )
    from recsys_assets.training.loader import committed_events_dataset

    day, store = context.partition_key, storage.store
    spec = load_training_spec(config_files.training)
    window = window_for(store, day, spec)
    train = committed_events_dataset(store, window.train_days)
    previous_day = latest_committed_before(store, VOCAB, day)
    previous: Vocab | None = None
    if previous_day is not None:
        previous, _ = ArtifactDir.committed(store, VOCAB, previous_day).read_vocab()
    counts = count_tokens(train.to_batches(columns=spec.vocab.features), spec.vocab.features)
    new_vocab = build_vocab(previous, counts, spec.vocab.min_count)
    moments = dense_moments(train.to_batches(columns=list(DENSE_FEATURES)))
    validation = committed_events_dataset(store, [day])
    oov = oov_rates(new_vocab, validation.to_batches(columns=new_vocab.features))
    sizes = {f: new_vocab.cardinality(f) for f in new_vocab.features}
    prev_sizes = {f: previous.cardinality(f) if previous and f in previous.tables else 2 for f in new_vocab.features}
    stats = {
        "window": window.as_dict(),
        "warm_start_from": previous_day,
        "min_count": spec.vocab.min_count,
        "cardinality": sizes,
        "new_tokens": {f: sizes[f] - prev_sizes[f] for f in sizes},
        "oov_rate_validation_day": oov,
        "max_oov_rate": {f: spec.checks.oov_limit(f) for f in sizes},
        "num_tokens": sum(sizes.values()) - 2 * len(sizes),
    }
    out = ArtifactDir.new(store, VOCAB, day, context.run_id)
    out.write_vocab(new_vocab, moments)
    out.write_json("vocab.json", stats)
    out.publish(row_count=stats["num_tokens"])
    return MaterializeResult(
        metadata={
            "dagster/row_count": MetadataValue.int(stats["num_tokens"]),
            "features": md_table(
                ["feature", "ids (incl. 2 reserved)", "new ids", "OOV rate on " + day, "max OOV rate"],
                [[f, sizes[f], stats["new_tokens"][f], round(oov[f], 4), stats["max_oov_rate"][f]] for f in sizes],
            ),
            "train_days": ", ".join(window.train_days),
            "window": window_table(window),
            "warm_start_from": previous_day or "none (first vocab)",
            "path": MetadataValue.path(out.uri),
            "version": out.version,
            **numeric_metadata({f"cardinality_{f}": v for f, v in sizes.items()}),
            **numeric_metadata({f"oov_rate_{f}": float(v) for f, v in oov.items()}),
        }
    )


def _previous_ranker_aucs(inputs: _ModelInputs, max_rows: int, log) -> tuple[str | None, dict]:
    """The last model that passed its own AUC gate (the one serving), scored on this validation day with its own
    vocabulary and this run's item catalogue: a same-data comparison. A failed model is never the baseline."""
    from recsys_assets.training.loader import BatchEncoder, committed_events_dataset
    from recsys_assets.training.models import MMoERanker, RankerConfig
    from recsys_assets.training.ranker import ranker_gate, score_ranker, task_aucs

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
        from recsys_assets.training.history import load_histories

        history = load_histories(store, [day], model.cfg.history_len, vocab, inputs.encoder.catalog)
    encoder = BatchEncoder(vocab, moments, inputs.encoder.catalog, inputs.spec.labels, history)
    scores, labels = score_ranker(model, committed_events_dataset(store, [day]), encoder, max_rows=max_rows)
    log(f"previous ranker ({prev_day}) scored on {day}")
    return prev_day, task_aucs(scores, labels)


@asset(
    partitions_def=daily_partitions,
    automation_condition=TRAIN_AFTER_VOCAB,
    group_name="training",
    deps=[vocab, window_dep(training_events), window_dep(AssetKey(USER_HISTORY))],
    kinds={"pytorch"},
    backfill_policy=PER_DAY,
    pool="training",
    description="Multi-task MMoE ranker (liked, shared, followed, watch_complete) over vocab embeddings, the "
    "128-d content embedding and dense features. AUC per task on the validation day, also for the previous "
    "partition's model on the same day. Weights + exported program + vocab in a versioned directory.",
)
def ranker_model(
    context: AssetExecutionContext,
    config: RankerTrainingConfig,
    storage: StorageResource,
    training: TrainingResource,
    config_files: ConfigFilesResource,
) -> MaterializeResult:
    from recsys_assets.training.baselines import item_prior_aucs
    from recsys_assets.training.loader import committed_events_dataset, sequential_batches, split_holdout
    from recsys_assets.training.ranker import (
        RankerHyper,
        export_program,
        item_priors,
        ranker_example_inputs,
        score_ranker,
        task_aucs,
        task_positive_rates,
        train_ranker,
    )

    inputs = _model_inputs(context, storage, config_files)
    day, store, spec, window, encoder = inputs.day, inputs.store, inputs.spec, inputs.window, inputs.encoder
    hyper = RankerHyper(
        embedding_dim=spec.ranker.embedding_dim or config.embedding_dim,
        num_experts=config.num_experts,
        expert_sizes=tuple(config.expert_sizes),
        tower_sizes=tuple(config.tower_sizes),
        dropout=config.dropout,
        task_weights=tuple(config.task_weights),
        history_len=_history_len(spec),
        item_bias=spec.ranker.item_bias,
        item_bias_smoothing=spec.evaluation.item_prior_smoothing,
    )
    settings = training.settings(
        epochs=config.epochs or spec.ranker.epochs,
        batch_size=spec.ranker.batch_size,
        learning_rate=spec.ranker.learning_rate,
    )
    train_data = committed_events_dataset(store, window.train_days)
    valid_data = committed_events_dataset(store, [day])
    selection = _selection(spec.ranker, encoder)
    # One pass over the window for the item prior: the item-bias start of both rankers and the item-prior baseline,
    # all on the training rows (never the held-out users of early stopping).
    train_rows, _ = split_holdout(None, selection.get("holdout_users"))
    priors = item_priors(train_data, encoder, spec.evaluation.item_prior_smoothing, train_rows)
    if hyper.item_bias:
        selection["item_bias_start"] = priors.bias_logits
    fp, checkpoints = inputs.checkpoints(RANKER_MODEL, hyper, settings, spec.ranker.model_dump())
    model, fit = train_ranker(train_data, encoder, hyper, settings, checkpoints, fp, context.log.info, **selection)
    t0 = time.perf_counter()
    scores, labels = score_ranker(model, valid_data, encoder, max_rows=config.max_validation_rows)
    aucs, rates = task_aucs(scores, labels), task_positive_rates(labels)
    prev_day, prev_aucs = _previous_ranker_aucs(inputs, config.max_validation_rows, context.log.info)
    # The same protocol for the cheap baselines: the history-free ranker (same data, sizes and seed) and the item
    # prior (the item's smoothed label rate in the window).
    history_free_aucs: dict = {}
    if hyper.history_len and spec.history.compare_history_free:
        hf_model = inputs.train_history_free(
            RANKER_MODEL,
            train_ranker,
            train_data,
            hyper,
            settings,
            spec.ranker.model_dump(),
            log=context.log.info,
            **selection,
        )
        history_free_aucs = task_aucs(*score_ranker(hf_model, valid_data, encoder, max_rows=config.max_validation_rows))
    plain = dataclasses.replace(encoder, history=None)  # the prior needs items and labels, not the history gather
    prior_aucs = item_prior_aucs(
        priors.catalog_rates, sequential_batches(valid_data, plain, 8192), RANKER_TASKS, config.max_validation_rows
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
        "auc_history_free": history_free_aucs,
        "auc_item_prior": prior_aucs,
        "min_auc": spec.checks.ranker_min_auc,
        "max_auc_drop": spec.checks.ranker_max_auc_drop,
        "eval_seconds": round(time.perf_counter() - t0, 2),
    }
    training_info = inputs.training_info(settings, hyper, fit, context.run_id)
    out = inputs.commit_model(
        RANKER_MODEL,
        context.run_id,
        state_dict=model.state_dict(),
        model_config=model.cfg.to_dict(),
        programs={"ranker.pt2": export_program(model, ranker_example_inputs(model.cfg))},
        metrics=metrics,
        training_info=training_info,
        checkpoints=checkpoints,
    )

    def r4(v):
        return round(v, 4) if v is not None else "n/a"

    return MaterializeResult(
        metadata={
            "validation_auc": md_table(
                [
                    "task",
                    "AUC" + (" (history)" if hyper.history_len else ""),
                    "history-free ranker",
                    "item prior",
                    f"previous model ({prev_day or 'none'})",
                    "floor",
                    "positive rate",
                ],
                [
                    [
                        t,
                        r4(aucs[t]),
                        r4(history_free_aucs.get(t)),
                        r4(prior_aucs.get(t)),
                        r4(prev_aucs.get(t)),
                        spec.checks.ranker_min_auc.get(t, "-"),
                        r4(rates[t]),
                    ]
                    for t in RANKER_TASKS
                ],
            ),
            **inputs.training_metadata(fit, settings, out),
            **numeric_metadata({f"auc_{t}": float(v) for t, v in aucs.items()}),
            **numeric_metadata({f"auc_history_free_{t}": float(v) for t, v in history_free_aucs.items()}),
            **numeric_metadata({f"auc_item_prior_{t}": float(v) for t, v in prior_aucs.items()}),
        }
    )


@asset(
    partitions_def=daily_partitions,
    automation_condition=TRAIN_AFTER_VOCAB,
    group_name="training",
    deps=[vocab, window_dep(training_events), window_dep(AssetKey(USER_HISTORY))],
    kinds={"pytorch"},
    backfill_policy=PER_DAY,
    pool="training",
    description="Two-tower retrieval model (user query tower, item tower with content embedding) trained on "
    "positive events with in-batch negatives and logQ correction; cosine similarity (L2-normalised dot product), "
    "the index's metric. Full-corpus recall/NDCG@K on the validation day vs a most-popular baseline.",
)
def retrieval_model(
    context: AssetExecutionContext,
    config: RetrievalTrainingConfig,
    storage: StorageResource,
    training: TrainingResource,
    config_files: ConfigFilesResource,
) -> MaterializeResult:
    import pandas as pd
    import torch

    from recsys_assets.training.baselines import seen_items
    from recsys_assets.training.loader import committed_events_dataset, item_frequencies, retrieval_positive_filter
    from recsys_assets.training.ranker import export_program
    from recsys_assets.training.retrieval import (
        ItemTowerModule,
        RetrievalHyper,
        compare_retrieval,
        evaluation_queries,
        query_tower_program,
        train_two_tower,
    )

    inputs = _model_inputs(context, storage, config_files)
    day, store, spec, window, encoder = inputs.day, inputs.store, inputs.spec, inputs.window, inputs.encoder
    hyper = RetrievalHyper(
        embedding_dim=spec.retrieval.embedding_dim or config.embedding_dim,
        hidden_sizes=tuple(config.hidden_sizes),
        output_dim=config.output_dim,
        temperature=config.temperature,
        logq_correction=config.logq_correction,
        logq_by_day=spec.retrieval.logq_by_day,
        history_len=_history_len(spec),
    )
    settings = training.settings(
        epochs=config.epochs or spec.retrieval.epochs,
        batch_size=config.batch_size or spec.retrieval.batch_size,
        learning_rate=spec.retrieval.learning_rate,
    )
    train_data = committed_events_dataset(store, window.train_days)
    selection = _selection(spec.retrieval, encoder)
    fp, checkpoints = inputs.checkpoints(
        RETRIEVAL_MODEL, hyper, settings, spec.labels.model_dump(), spec.retrieval.model_dump()
    )
    model, fit, positive_counts = train_two_tower(
        train_data, encoder, hyper, settings, checkpoints, fp, context.log.info, **selection
    )
    primary = "two-tower (history)" if hyper.history_len else "two-tower"
    models = {primary: model}
    if hyper.history_len and spec.history.compare_history_free:
        models["two-tower (history-free)"] = inputs.train_history_free(
            RETRIEVAL_MODEL,
            train_two_tower,
            train_data,
            hyper,
            settings,
            spec.labels.model_dump(),
            spec.retrieval.model_dump(),
            log=context.log.info,
            **selection,
        )
    t0 = time.perf_counter()
    queries = evaluation_queries(
        committed_events_dataset(store, [day]), encoder, spec.labels, config.validation_user_sample_pct
    )
    k = spec.checks.retrieval_k
    ks = sorted({10, k})
    positives = retrieval_positive_filter(spec.labels)
    recent_counts = item_frequencies(
        committed_events_dataset(store, window.train_days[-1:]), encoder.catalog, positives
    )
    seen = seen_items(train_data, queries.user_ids, encoder.catalog) if spec.evaluation.exclude_seen else None
    prior = spec.retrieval_scoring.recency_prior
    methods = compare_retrieval(
        models, queries, encoder, pd.Timestamp(window_of(day).end), positive_counts, recent_counts, ks, seen, prior
    )
    if prior:  # the served score (the index adds the same prior): what the gate judges
        primary = f"{primary} + recency prior"
    # The gate's keys: the model vs most-popular, under the same protocol as every other method.
    metrics = {f"model_{m}": v for m, v in methods[primary].items()}
    metrics |= {f"popularity_{m}": v for m, v in methods["most-popular"].items()}
    metrics |= {
        "methods": methods,
        "primary_method": primary,
        "history_len": hyper.history_len,
        "recency_prior": prior,
        "exclude_seen": spec.evaluation.exclude_seen,
        "num_queries": int(sum(1 for r in queries.relevant if len(r))),
        "corpus_size": len(encoder.catalog),
        "validation_day": day,
        "k": k,
        "ks": ks,
        "min_recall": spec.checks.retrieval_min_recall,
        "min_lift_over_popularity": spec.checks.retrieval_min_lift_over_popularity,
        "eval_seconds": round(time.perf_counter() - t0, 2),
    }
    training_info = inputs.training_info(
        settings, hyper, fit, context.run_id, positive_events=int(positive_counts.sum())
    )
    i_cfg = model.item_tower.cfg
    i_ids = torch.ones(4, len(i_cfg.cardinalities), dtype=torch.long)
    out = inputs.commit_model(
        RETRIEVAL_MODEL,
        context.run_id,
        state_dict=model.state_dict(),
        model_config=model.config(),
        programs={
            "query_tower.pt2": query_tower_program(model),
            "item_tower.pt2": export_program(
                ItemTowerModule(model), (i_ids, torch.zeros(4, i_cfg.num_dense), torch.zeros(4, i_cfg.content_dim))
            ),
        },
        metrics=metrics,
        training_info=training_info,
        checkpoints=checkpoints,
        manifest_metrics={k_: v for k_, v in metrics.items() if k_ not in ("ks", "methods")},
    )
    names = list(methods)
    rows = [[f"{m}@{x}", *[round(methods[n][f"{m}@{x}"], 4) for n in names]] for m in ("recall", "ndcg") for x in ks]
    rows.append(["coverage@10", *[round(methods[n]["coverage@10"], 4) for n in names]])
    return MaterializeResult(
        metadata={
            "validation_retrieval": md_table(["metric", *names], rows),
            "protocol": f"day {day}, full corpus ({len(encoder.catalog):,} items), exact top-K, "
            + ("items seen in the window excluded" if spec.evaluation.exclude_seen else "seen items not excluded"),
            "recall_plot": _recall_plot(methods, ks),
            **inputs.training_metadata(fit, settings, out),
            "num_validation_users": MetadataValue.int(metrics["num_queries"]),
            "corpus_size": MetadataValue.int(metrics["corpus_size"]),
            **numeric_metadata({k_: v for k_, v in metrics.items() if k_.startswith(("model_", "popularity_"))}),
        }
    )


def _recall_plot(methods: dict, ks: list[int]) -> MetadataValue:
    """recall@k of every method as a bar chart (markdown: the UI renders it without a plotting library)."""
    lines = []
    for x in ks:
        top = max(m[f"recall@{x}"] for m in methods.values()) or 1.0
        lines.append(f"**recall@{x}**\n")
        for name, m in methods.items():
            bar = "#" * round(30 * m[f"recall@{x}"] / top)
            lines.append(f"    {name:<26} {bar:<30} {m[f'recall@{x}']:.4f}")
        lines.append("")
    return MetadataValue.md("\n".join(lines))


training_assets = [vocab, ranker_model, retrieval_model]
