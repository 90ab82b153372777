"""Multi-task ranker: training, scoring and export, over encoded training_events batches."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from recsys_assets.config.training import RANKER_TASKS
from recsys_assets.ml.features import DENSE_FEATURES, padded_content
from recsys_assets.ml.loader import (
    BatchEncoder,
    TrainingEventsDataset,
    batch_history_ages,
    positives_by_day,
    sequential_batches,
)
from recsys_assets.ml.metrics import roc_auc
from recsys_assets.ml.models import GroupedRanker, MMoERanker, RankerConfig, TimedGroupedRanker, ranker_loss
from recsys_assets.ml.trainer import CheckpointStore, FitResult, TrainSettings, fit_on_events
from recsys_assets.ml.trend import TREND_FEATURES, ItemTrend


@dataclass(frozen=True)
class RankerHyper:
    embedding_dim: int = 16
    num_experts: int = 4
    expert_sizes: tuple[int, ...] = (128, 64)
    tower_sizes: tuple[int, ...] = (32,)
    dropout: float = 0.0
    task_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    history_len: int = 0  # 0: the history-free ranker
    item_bias: bool = False  # a per-(item, task) logit started at the item's smoothed label rate in the window
    item_bias_smoothing: float = 20.0
    item_trend: bool = False  # ranker.item_trend: the item's point-in-time popularity as 2 more dense inputs
    history_time_gaps: bool = False  # ranker.history_time_gaps: a learned vector per history entry's age bucket


def ranker_config(encoder: BatchEncoder, hyper: RankerHyper, trend: ItemTrend | None = None) -> RankerConfig:
    return RankerConfig(
        cat_features=encoder.vocab.features,
        cardinalities=[encoder.vocab.cardinality(f) for f in encoder.vocab.features],
        num_dense=len(DENSE_FEATURES) + (len(TREND_FEATURES) if trend is not None else 0),
        tasks=list(RANKER_TASKS),
        embedding_dim=hyper.embedding_dim,
        num_experts=hyper.num_experts,
        expert_sizes=list(hyper.expert_sizes),
        tower_sizes=list(hyper.tower_sizes),
        dropout=hyper.dropout,
        history_len=hyper.history_len,
        item_bias=hyper.item_bias,
        grouped_history=hyper.history_len > 0,
        item_trend=trend.to_dict() if trend is not None else None,
        history_time_gaps=hyper.history_time_gaps and hyper.history_len > 0,
    )


def trend_inputs(
    model: MMoERanker, days: list[str], encoder: BatchEncoder, day_positives: dict[str, np.ndarray] | None, device="cpu"
) -> Callable[[dict[str, torch.Tensor]], torch.Tensor] | None:
    """batch -> the standardized trend inputs of each row's item on its event's day (one of `days`), from the
    positives of the days before it; None for a ranker without trend inputs."""
    if model.cfg.item_trend is None:
        return None
    if day_positives is None:
        raise ValueError("this ranker reads the items' recent positives: pass the days' positives (day_positives)")
    return ItemTrend.from_dict(model.cfg.item_trend).lookup(day_positives, len(encoder.catalog), device, days)


def ranker_dense(b: dict[str, torch.Tensor], trend_of) -> torch.Tensor:
    """The ranker's dense input of a batch: the DENSE_FEATURES, then the trend inputs when the model reads them."""
    return b["dense"] if trend_of is None else torch.cat([b["dense"], trend_of(b).to(b["dense"].dtype)], dim=1)


def train_ranker(
    train: TrainingEventsDataset,
    encoder: BatchEncoder,
    hyper: RankerHyper,
    settings: TrainSettings,
    checkpoints: CheckpointStore | None = None,
    fingerprint: str = "",
    log: Callable[[str], None] = print,
    on_epoch_end: Callable[[int], None] | None = None,
    holdout_users=None,
    patience: int = 2,
    item_bias_start: np.ndarray | None = None,
    evaluate_epoch: Callable[[int, MMoERanker], dict] | None = None,
    day_positives: dict[str, np.ndarray] | None = None,
) -> tuple[MMoERanker, FitResult]:
    """`holdout_users`: users whose window events select the epoch (early stopping) instead of training.
    `item_bias_start`: the item-bias logits when the caller has them (item_priors of the same rows: the training rows
    without the held-out users), else computed here. `day_positives`: the window's retrieval positives per day and
    catalogue row (the trend inputs' counts) when already counted; with hyper.item_trend they are counted otherwise.
    The trend standardisation is fitted on the window's positives (ItemTrend.fit), saved in the model config."""
    torch.manual_seed(settings.seed)  # initial weights
    if hyper.history_len and encoder.history is None:
        raise ValueError("a history-aware ranker needs an encoder with user_history loaded")
    trend = None
    if hyper.item_trend:
        day_positives = positives_by_day(train, encoder, day_positives)
        trend = ItemTrend.fit(day_positives, len(encoder.catalog))
    model = MMoERanker(ranker_config(encoder, hyper, trend))
    trend_of = trend_inputs(model, train.days, encoder, day_positives, settings.device) if trend else None
    if hyper.item_bias:
        if item_bias_start is None:
            from recsys_assets.ml.loader import split_holdout

            train_rows, _ = split_holdout(None, holdout_users)  # never the held-out users' labels
            item_bias_start = item_prior_logits(train, encoder, hyper.item_bias_smoothing, train_rows)
        with torch.no_grad():
            model.item_bias.weight.copy_(torch.from_numpy(item_bias_start))
    content = padded_content(encoder.catalog).to(settings.device)
    weights = list(hyper.task_weights)

    def step(m: MMoERanker, b: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = m(b["cat"], ranker_dense(b, trend_of), content[b["content_row"]], *history_inputs(m, b, content))
        return ranker_loss(m, logits.float(), b["labels"], weights)

    result = fit_on_events(
        model,
        step,
        train,
        encoder,
        settings,
        checkpoints,
        fingerprint,
        log,
        on_epoch_end,
        holdout_users=holdout_users,
        patience=patience,
        evaluate_epoch=evaluate_epoch,
    )
    return model.eval(), result


@dataclass(frozen=True)
class ItemPriors:
    """Each item's smoothed label rate per task in a set of training rows, keyed two ways from one pass:
    `bias_logits` [item_id vocab size, tasks] (logits, the ranker's item-bias start: ids with no events get the overall
    rate, the OOV id pools the items the vocabulary does not know, as the model sees them) and `catalog_rates`
    [catalogue rows, tasks] (rates, the item-prior baseline's score)."""

    bias_logits: np.ndarray
    catalog_rates: np.ndarray


def item_priors(
    data: TrainingEventsDataset, encoder: BatchEncoder, smoothing: float, filter=None, clip: float = 1e-4
) -> ItemPriors:
    """baselines.smoothed_label_rates of `data` (rows of `filter`) by item_id vocab id and by catalogue row, in one
    pass over encoded batches without the history gather."""
    import dataclasses

    from recsys_assets.ml.baselines import smoothed_label_rates

    item_pos = encoder.vocab.features.index("item_id")
    num_ids, num_rows, tasks = encoder.vocab.cardinality("item_id"), len(encoder.catalog), len(RANKER_TASKS)
    # Vocab ids and catalogue rows of one batch, stacked into one key space: [0, num_ids) ids, [num_ids, +rows) rows.
    keyed = (
        (
            np.concatenate([b["cat"][:, item_pos].numpy(), num_ids + b["content_row"].numpy()]),
            np.concatenate([b["labels"].numpy()] * 2),
        )
        for b in sequential_batches(data, dataclasses.replace(encoder, history=None), 8192, filter=filter)
    )
    rate = smoothed_label_rates(keyed, num_ids + num_rows, tasks, smoothing)
    # The overall rate of the stacked keys is each keying's overall rate (every row is counted once in both halves).
    by_id = np.clip(rate[:num_ids], clip, 1 - clip)
    return ItemPriors(np.log(by_id / (1 - by_id)).astype(np.float32), rate[num_ids:])


def item_prior_logits(
    data: TrainingEventsDataset, encoder: BatchEncoder, smoothing: float, filter=None, clip: float = 1e-4
) -> np.ndarray:
    """[item_id vocab size, tasks] logit of each item's smoothed label rate in `data` (ItemPriors.bias_logits)."""
    return item_priors(data, encoder, smoothing, filter, clip).bias_logits


@torch.no_grad()
def score_ranker(
    model: MMoERanker,
    data: TrainingEventsDataset,
    encoder: BatchEncoder,
    batch_size: int = 8192,
    max_rows: int | None = None,
    day_positives: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted probabilities and labels [rows, tasks] in storage order (up to max_rows). A ranker with trend inputs
    reads the items' positives of the days before each scored day from `day_positives` (day -> per catalogue row)."""
    model.eval()
    content = padded_content(encoder.catalog)
    trend_of = trend_inputs(model, data.days, encoder, day_positives)
    scores, labels, n = [], [], 0
    for b in sequential_batches(data, encoder, batch_size):
        logits = model(
            b["cat"], ranker_dense(b, trend_of), content[b["content_row"]], *history_inputs(model, b, content)
        )
        scores.append(torch.sigmoid(logits).numpy())
        labels.append(b["labels"].numpy())
        n += len(labels[-1])
        if max_rows is not None and n >= max_rows:
            break
    if not scores:
        return np.zeros((0, len(RANKER_TASKS))), np.zeros((0, len(RANKER_TASKS)))
    return np.concatenate(scores)[:max_rows], np.concatenate(labels)[:max_rows]


def task_aucs(scores: np.ndarray, labels: np.ndarray, tasks: tuple[str, ...] = RANKER_TASKS) -> dict[str, float]:
    return {t: roc_auc(labels[:, i], scores[:, i]) for i, t in enumerate(tasks)}


def task_positive_rates(labels: np.ndarray, tasks: tuple[str, ...] = RANKER_TASKS) -> dict[str, float]:
    return {t: float(labels[:, i].mean()) if len(labels) else float("nan") for i, t in enumerate(tasks)}


def history_inputs(model: MMoERanker, batch: dict[str, torch.Tensor], content: torch.Tensor) -> tuple:
    """(hist_ids, hist_content[, hist_age]) of a batch for a history-aware ranker, () for a history-free one."""
    if not model.cfg.history_len:
        return ()
    hist = (batch["hist_ids"], content[batch["hist_rows"]])
    if not model.cfg.history_time_gaps:
        return hist
    return (*hist, batch_history_ages(batch, "ranker.history_time_gaps"))


def ranker_program(model: MMoERanker) -> bytes:
    """The ranker as a release serves it (torch.export .pt2): (cat, dense, content) for [P] pairs, and with history
    (hist_ids [U, L], hist_content [U, L, content_dim], pair_user [P]): each of U users' history once
    (GroupedRanker; a config with grouped_history False exports the older one-history-per-pair form)."""
    from recsys_assets.ml.export import export_program

    cfg, pairs, users = model.cfg, 6, 3
    base = (
        torch.ones(pairs, len(cfg.cardinalities), dtype=torch.long),
        torch.zeros(pairs, cfg.num_dense),
        torch.zeros(pairs, cfg.content_dim),
    )
    if not cfg.history_len:
        return export_program(model, base)
    rows = users if cfg.grouped_history else pairs
    hist = (torch.ones(rows, cfg.history_len, dtype=torch.long), torch.zeros(rows, cfg.history_len, cfg.content_dim))
    age = (torch.zeros(rows, cfg.history_len),) if cfg.history_time_gaps else ()
    if not cfg.grouped_history:
        return export_program(model, (*base, *hist, *age))
    pair_user = torch.arange(pairs) % users
    dims = ("batch",) * 3 + ("users",) * 2 + ("batch",) + ("users",) * len(age)
    module = TimedGroupedRanker(model) if age else GroupedRanker(model)
    return export_program(module, (*base, *hist, pair_user, *age), dims)


def ranker_gate(metrics: dict) -> tuple[bool, list[list]]:
    """Per task: AUC >= floor, and >= previous model's AUC on the same validation events minus the margin."""
    rows, ok = [], True
    for task, auc in metrics["auc"].items():
        floor = metrics["min_auc"].get(task)
        prev = metrics["previous_model_auc"].get(task)
        below_floor = floor is not None and not (auc >= floor)
        regressed = prev is not None and not math.isnan(prev) and auc < prev - metrics["max_auc_drop"]
        ok &= not (below_floor or regressed)
        rows.append(
            [
                task,
                round(auc, 4),
                floor if floor is not None else "-",
                round(prev, 4) if prev is not None else "n/a",
                "FAIL" if below_floor or regressed else "ok",
            ]
        )
    return ok, rows
