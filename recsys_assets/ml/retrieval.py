"""Two-tower retrieval: training with in-batch negatives + logQ correction, tower inputs for the item catalogue
and evaluation users, and full-corpus evaluation with exact search against a popularity baseline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from recsys_assets.config.training import LabelSpec
from recsys_assets.ml.baselines import MethodComparison
from recsys_assets.ml.features import DENSE_FEATURES, ItemCatalog, Vocab, padded_content, standardize
from recsys_assets.ml.loader import (
    BatchEncoder,
    TrainingEventsDataset,
    batch_history_ages,
    positives_by_day,
    retrieval_positive_filter,
)
from recsys_assets.ml.metrics import group_relevant
from recsys_assets.ml.models import TowerConfig, TwoTower, in_batch_softmax_loss
from recsys_assets.ml.trainer import CheckpointStore, FitResult, TrainSettings, fit_on_events
from recsys_assets.ml.trend import TREND_FEATURES, ItemTrend, day_row_lookup, example_age

QUERY_CAT = ["user_id", "user_language", "user_region"]
QUERY_DENSE = ["user_tenure_days"]
ITEM_CAT = ["item_id", "item_author_id", "item_category", "item_language"]
ITEM_DENSE = ["item_video_length_s", "item_age_days"]
_DENSE_ORDER = list(DENSE_FEATURES)


@dataclass(frozen=True)
class RetrievalHyper:
    embedding_dim: int = 32
    hidden_sizes: tuple[int, ...] = (128,)
    output_dim: int = 64
    temperature: float = 0.05
    logq_correction: bool = True
    history_len: int = 0  # 0: the history-free query tower
    logq_by_day: bool = False  # training.yaml retrieval.logq_by_day (RetrievalSizes)
    item_trend: bool = False  # retrieval.item_trend: the item's point-in-time popularity (ml/trend.py)
    example_age: bool = False  # retrieval.example_age: the row's age as a query tower input, 0 when serving
    history_positions: bool = False  # retrieval.history_positions: a learned vector per history position
    history_time_gaps: bool = False  # retrieval.history_time_gaps: a learned vector per history entry's age bucket


def _cols(vocab: Vocab, names: list[str]) -> list[int]:
    missing = [n for n in names if n not in vocab.features]
    if missing:
        raise ValueError(f"two-tower needs vocab features {missing}; add them to vocab.features in training.yaml")
    return [vocab.features.index(n) for n in names]


def tower_configs(vocab: Vocab, hyper: RetrievalHyper) -> tuple[TowerConfig, TowerConfig]:
    common = dict(embedding_dim=hyper.embedding_dim, hidden_sizes=list(hyper.hidden_sizes), output_dim=hyper.output_dim)
    q = TowerConfig(
        QUERY_CAT,
        [vocab.cardinality(f) for f in QUERY_CAT],
        len(QUERY_DENSE) + int(hyper.example_age),
        use_content=False,
        extra_dim=2 * hyper.embedding_dim if hyper.history_len else 0,
        **common,
    )
    num_item_dense = len(ITEM_DENSE) + (len(TREND_FEATURES) if hyper.item_trend else 0)
    i = TowerConfig(ITEM_CAT, [vocab.cardinality(f) for f in ITEM_CAT], num_item_dense, use_content=True, **common)
    return q, i


class _Split:
    """Index tensors selecting each tower's columns out of the encoder's full cat/dense arrays."""

    def __init__(self, vocab: Vocab, device: str):
        self.q_cat = torch.tensor(_cols(vocab, QUERY_CAT), device=device)
        self.i_cat = torch.tensor(_cols(vocab, ITEM_CAT), device=device)
        self.q_dense = torch.tensor([_DENSE_ORDER.index(c) for c in QUERY_DENSE], device=device)
        self.i_dense = torch.tensor([_DENSE_ORDER.index(c) for c in ITEM_DENSE], device=device)


def train_two_tower(
    train: TrainingEventsDataset,
    encoder: BatchEncoder,
    hyper: RetrievalHyper,
    settings: TrainSettings,
    checkpoints: CheckpointStore | None = None,
    fingerprint: str = "",
    log: Callable[[str], None] = print,
    on_epoch_end: Callable[[int], None] | None = None,
    holdout_users=None,
    patience: int = 2,
    day_positives: dict[str, np.ndarray] | None = None,
    evaluate_epoch: Callable[[int, TwoTower], dict] | None = None,
) -> tuple[TwoTower, FitResult, np.ndarray]:
    """Trains on positive events only. Returns the model, fit result, and per-catalogue-row positive counts.
    `holdout_users`: users whose window positives select the epoch (early stopping) instead of training.
    `day_positives`: the positives per day and catalogue row when already counted (ml/window_counts.py); counted
    here in one pass otherwise. `evaluate_epoch(epoch, model)`: called after every epoch (the temporal holdout fit,
    ml/holdout_fit.py); what it returns is added to the epoch's history row."""
    positives = retrieval_positive_filter(encoder.labels)
    by_day = positives_by_day(train, encoder, day_positives)
    counts = sum(by_day.values(), np.zeros(len(encoder.catalog), np.int64))
    if counts.sum() == 0:
        raise ValueError("no positive events in the training window: cannot train the two-tower model")
    log_q = _log_q(by_day, counts, hyper, settings.device)
    torch.manual_seed(settings.seed)
    q_cfg, i_cfg = tower_configs(encoder.vocab, hyper)
    if hyper.history_len and encoder.history is None:
        raise ValueError("a history-aware two-tower needs an encoder with user_history loaded")
    trend = ItemTrend.fit(by_day, len(encoder.catalog)) if hyper.item_trend else None
    model = TwoTower(
        q_cfg,
        i_cfg,
        hyper.temperature,
        hyper.history_len,
        trend.to_dict() if trend else None,
        hyper.example_age,
        hyper.history_positions,
        hyper.history_time_gaps,
    )
    content = padded_content(encoder.catalog).to(settings.device)
    split = _Split(encoder.vocab, settings.device)
    trend_of = trend.lookup(by_day, len(encoder.catalog), settings.device) if trend else None
    age_of = example_age(sorted(by_day), settings.device) if hyper.example_age else None

    def step(m: TwoTower, b: dict[str, torch.Tensor]) -> torch.Tensor:
        rows = b["content_row"]
        hist = history_inputs(m, b, content)
        age = age_of(b) if age_of is not None else None
        q = m.query(b["cat"][:, split.q_cat], b["dense"][:, split.q_dense], *hist, example_age=age)
        i_dense, lq = b["dense"][:, split.i_dense], log_q(b)
        if trend_of is not None:
            t = trend_of(b)
            i_dense = torch.cat([i_dense, t], dim=1)
            lq = lq - m.item_score_bias(t).float()  # logits q.i / T + b(i) - log q(i)
        i = m.item_tower(b["cat"][:, split.i_cat], i_dense, content[rows])
        return in_batch_softmax_loss(q.float(), i.float(), rows, lq, m.temperature)

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
        filter=positives,
        drop_last=True,
        holdout_users=holdout_users,
        patience=patience,
        evaluate_epoch=evaluate_epoch,
    )
    return model.eval(), result, counts


def _log_q(by_day: dict[str, np.ndarray], counts: np.ndarray, hyper: RetrievalHyper, device: str):
    """batch -> log of each row's in-batch sampling probability (logQ correction; zeros without it).

    A row is an item at its event's time (the item tower sees its age then), so with `logq_by_day` the probability
    is that of (item, day) among the window's positives, not the item's window total: a fresh item's first day is
    most of its events, and the window total would over-correct its older days relative to its fresh one, teaching
    the tower that young items are less likely than they are."""
    total = counts.sum()
    if not hyper.logq_correction:
        return lambda b: torch.zeros(len(b["content_row"]), device=device)
    if not hyper.logq_by_day:
        window = torch.from_numpy(np.log(np.maximum(counts, 1) / total).astype(np.float32)).to(device)
        return lambda b: window[b["content_row"]]
    return day_row_lookup({d: np.log(np.maximum(c, 1) / total).astype(np.float32) for d, c in by_day.items()}, device)


def item_tower_inputs(
    catalog: ItemCatalog, vocab: Vocab, moments: dict, as_of: pd.Timestamp, trend: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Item tower inputs for every catalogue row, item age measured at `as_of` (the index build time); `trend`: the
    standardized trend inputs [rows, 2] of the scored day (ItemTrend.of_day), for a model that reads them."""
    cat = np.stack([catalog.encode(vocab, f) for f in ITEM_CAT], axis=1)
    dense = np.stack(
        [
            standardize("item_video_length_s", catalog.attributes["item_video_length_s"].to_numpy(np.float64), moments),
            standardize("item_age_days", catalog.age_days(as_of), moments),
        ],
        axis=1,
    )
    if trend is not None:
        dense = np.hstack([dense, trend.astype(dense.dtype)])
    return torch.from_numpy(cat), torch.from_numpy(dense), torch.from_numpy(catalog.embeddings)


@torch.no_grad()
def item_vectors(
    model: TwoTower,
    catalog: ItemCatalog,
    vocab: Vocab,
    moments: dict,
    as_of: pd.Timestamp,
    batch_size: int = 65_536,
    day_positives: dict[str, np.ndarray] | None = None,
    day: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(every catalogue row's item vector for scoring `day` (items aged at `as_of`), the model's learned popularity
    logit per row or None for a model without one: what the served score adds to q.i / T). A model with trend inputs
    reads the items' positives of the days before `day` from `day_positives` (day -> positives per catalogue row)."""
    trend = None
    if model.item_trend:
        if day_positives is None or day is None:
            raise ValueError("this two-tower reads the items' recent positives: pass day_positives and the day")
        trend = ItemTrend.from_dict(model.item_trend).of_day(day_positives, day, len(catalog))
    cat, dense, content = item_tower_inputs(catalog, vocab, moments, as_of, trend)
    bias = model.item_score_bias(torch.from_numpy(trend)).numpy() if trend is not None else None
    return _vectors(model, cat, dense, content, batch_size), bias


def _vectors(model: TwoTower, cat, dense, content, batch_size: int) -> np.ndarray:
    out = [
        model.item_tower(cat[s : s + batch_size], dense[s : s + batch_size], content[s : s + batch_size])
        for s in range(0, len(cat), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, model.item_tower.cfg.output_dim), np.float32)


def query_tower_inputs(users: pd.DataFrame, vocab: Vocab, moments: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Query tower inputs (QUERY_CAT ids, standardized tenure) for one row per user: evaluation and the feed."""
    cat = (
        np.stack([vocab.encode(f, pa.array(users[f].to_numpy(dtype=object), pa.string())) for f in QUERY_CAT], axis=1)
        if len(users)
        else np.zeros((0, len(QUERY_CAT)), np.int64)
    )
    dense = standardize("user_tenure_days", users["user_tenure_days"].to_numpy(np.float64), moments)[:, None]
    return torch.from_numpy(cat), torch.from_numpy(dense)


@dataclass
class EvalQueries:
    """Sampled users of the evaluation day: query-tower inputs, their history as of that day (when the encoder has
    one), and the catalogue rows they engaged with."""

    user_ids: np.ndarray
    cat: torch.Tensor
    dense: torch.Tensor
    relevant: list[np.ndarray]
    num_positive_events: int
    hist_ids: np.ndarray | None = None
    hist_rows: np.ndarray | None = None
    day: str | None = None
    hist_age: np.ndarray | None = None  # hours from each entry to the day (tables read with their times)


def sampled_user_keys(day: TrainingEventsDataset, labels: LabelSpec, max_users: int) -> np.ndarray:
    """The `max_users` smallest user keys (ml/mapped_history.user_keys) among the day's users with a positive event:
    a fixed hash sample, the same on every rerun, read in one streamed pass (memory: the sample plus one batch)."""
    from recsys_assets.ml.mapped_history import user_keys

    kept = np.zeros(0, np.uint64)
    for b in day.to_batches(columns=["user_id"], filter=retrieval_positive_filter(labels)):
        kept = np.unique(np.concatenate([kept, user_keys(b.column("user_id"))]))[:max_users]
    return kept


def evaluation_queries(
    day: TrainingEventsDataset, encoder: BatchEncoder, labels: LabelSpec, max_users: int = 50_000
) -> EvalQueries:
    """The users of the evaluation day with >= 1 positive event, at most `max_users` of them (a fixed hash sample:
    `sampled_user_keys`), with their positives. Two streamed passes; only the sample's rows are kept."""
    from recsys_assets.ml.mapped_history import user_keys

    cols = ["user_id", "user_language", "user_region", "user_tenure_days", "item_id"]
    sample = sampled_user_keys(day, labels, max_users)
    parts = []
    for b in day.to_batches(columns=cols, filter=retrieval_positive_filter(labels)):
        keys = user_keys(b.column("user_id"))
        pos = np.minimum(np.searchsorted(sample, keys), max(len(sample) - 1, 0))
        inside = (sample[pos] == keys) if len(sample) else np.zeros(len(keys), bool)
        if inside.any():
            parts.append(b.filter(pa.array(inside)).to_pandas())
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
    users = df.drop_duplicates("user_id").reset_index(drop=True)
    cat, dense = query_tower_inputs(users, encoder.vocab, encoder.moments)
    user_row = pd.Index(users["user_id"]).get_indexer(df["user_id"])
    item_row = encoder.catalog.rows(pa.array(df["item_id"].to_numpy(dtype=object), pa.string()))
    ok = item_row >= 0
    relevant = group_relevant(user_row[ok], item_row[ok], len(users))
    user_ids = users["user_id"].to_numpy(dtype=object)
    hist_ids = hist_rows = hist_age = None
    days = {f.day for f in day.get_fragments()}
    if len(days) > 1:
        raise ValueError(f"evaluation queries come from one day, got {sorted(days)}")
    eval_day = next(iter(days), None)
    if encoder.history is not None and eval_day is not None:
        hist_ids, hist_rows, hist_age = encoder.history[eval_day].lookup(pa.array(user_ids, pa.string()))
    return EvalQueries(user_ids, cat, dense, relevant, int(len(df)), hist_ids, hist_rows, eval_day, hist_age)


@torch.no_grad()
def query_vectors(
    model: TwoTower, queries: EvalQueries, catalog: ItemCatalog | None = None, batch_size: int = 8192
) -> np.ndarray:
    """Query vectors of the evaluation users (in batches: the history's content is gathered per batch)."""
    if model.history_len and (queries.hist_ids is None or catalog is None):
        raise ValueError("a history-aware two-tower needs the queries' history and the catalogue")
    content = padded_content(catalog) if model.history_len else None
    out = []
    for s in range(0, len(queries.cat), batch_size):
        sl = slice(s, s + batch_size)
        batch = (
            {} if queries.hist_ids is None else {"hist_ids": queries.hist_ids[sl], "hist_rows": queries.hist_rows[sl]}
        )
        if queries.hist_age is not None:
            batch["hist_age"] = queries.hist_age[sl]
        hist = history_inputs(model, {k: torch.from_numpy(v) for k, v in batch.items()}, content)
        out.append(model.query(queries.cat[sl], queries.dense[sl], *hist))
    return torch.cat(out).numpy() if out else np.zeros((0, model.query_tower.cfg.output_dim), np.float32)


class QueryTowerModule(torch.nn.Module):
    """The query tower alone, as served: (user cat ids, user dense) -> L2-normalised query vector."""

    def __init__(self, model: TwoTower):
        super().__init__()
        self.model = model

    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.model.query(cat, dense)


def history_inputs(model: TwoTower, batch: dict[str, torch.Tensor], content: torch.Tensor | None) -> tuple:
    """(hist_ids, hist_content, hist_age) of a batch for the query tower: the ids, the content of the catalogue rows,
    and the entries' ages when the model reads the history's time gaps (None for parts it does not read)."""
    if not model.history_len:
        return None, None, None
    age = batch_history_ages(batch, "retrieval.history_time_gaps") if model.history_time_gaps else None
    return batch["hist_ids"], content[batch["hist_rows"]], age


class HistoryQueryTowerModule(torch.nn.Module):
    """The history-aware query tower as served: (user cat ids, user dense, history item_id vocab ids [B, L],
    history content embeddings [B, L, 128]) -> L2-normalised query vector."""

    def __init__(self, model: TwoTower):
        super().__init__()
        self.model = model

    def forward(
        self, cat: torch.Tensor, dense: torch.Tensor, hist_ids: torch.Tensor, hist_content: torch.Tensor
    ) -> torch.Tensor:
        return self.model.query(cat, dense, hist_ids, hist_content)


def query_tower_program(model: TwoTower) -> bytes:
    """The exported query tower (.pt2): the history-aware signature when the model has one."""
    from recsys_assets.ml.export import export_program

    cfg = model.query_tower.cfg
    cat, dense = torch.ones(4, len(cfg.cardinalities), dtype=torch.long), torch.zeros(4, model.query_dense_inputs)
    if not model.history_len:
        return export_program(QueryTowerModule(model), (cat, dense))
    hist = (torch.ones(4, model.history_len, dtype=torch.long), torch.zeros(4, model.history_len, cfg.content_dim))
    if model.history_time_gaps:
        age = torch.zeros(4, model.history_len)
        return export_program(TimedHistoryQueryTowerModule(model), (cat, dense, *hist, age))
    return export_program(HistoryQueryTowerModule(model), (cat, dense, *hist))


class TimedHistoryQueryTowerModule(HistoryQueryTowerModule):
    """The history-aware query tower with the history's time gaps, as served: HistoryQueryTowerModule's inputs and the
    entries' ages (hours before the serving day [B, L])."""

    def forward(  # type: ignore[override]
        self,
        cat: torch.Tensor,
        dense: torch.Tensor,
        hist_ids: torch.Tensor,
        hist_content: torch.Tensor,
        hist_age: torch.Tensor,
    ) -> torch.Tensor:
        return self.model.query(cat, dense, hist_ids, hist_content, hist_age)


class ItemTowerModule(torch.nn.Module):
    def __init__(self, model: TwoTower):
        super().__init__()
        self.tower = model.item_tower

    def forward(self, cat: torch.Tensor, dense: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        return self.tower(cat, dense, content)


def with_recency_prior(
    queries: np.ndarray,
    items: np.ndarray,
    recent_counts: np.ndarray,
    weight: float,
    temperature: float,
    bias: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Query and item vectors with one extra dimension so that their inner product is
    q.i + temperature * (weight * log(1 + recent count) + bias), i.e. temperature x (q.i / T + w log(1 + recent) +
    b(i)): the same ranking as the served score, servable by an inner-product index (the index stores the item side).
    `bias`: the model's learned popularity logit per item (TwoTower.item_score_bias), when it has one."""
    extra = weight * np.log1p(np.asarray(recent_counts, np.float64))
    if bias is not None:
        extra = extra + np.asarray(bias, np.float64)
    prior = (temperature * extra).astype(np.float32)
    q = np.hstack([queries.astype(np.float32), np.ones((len(queries), 1), np.float32)])
    i = np.hstack([items.astype(np.float32), prior[:, None]])
    return q, i


def compare_retrieval(
    models: dict[str, TwoTower],
    queries: EvalQueries,
    encoder: BatchEncoder,
    as_of: pd.Timestamp,
    window_counts: np.ndarray,
    recent_counts: np.ndarray,
    ks: list[int],
    seen: list[np.ndarray] | None = None,
    recency_prior: float = 0.0,
    knn_neighbours: int = 200,
    knn_population_users: int = 1_000_000,
    day_positives: dict[str, np.ndarray] | None = None,
) -> MethodComparison:
    """Every method on the same day-D, full-corpus protocol (recsys_assets/ml/baselines.py): the given
    two-tower models (with `recency_prior`, each also as `<name> + recency prior`: q.i / T + w log(1 + recent)),
    most-popular over the window, recent-popular (last window day), and item-kNN over the users' histories as of the
    day when the encoder has them (each item's `knn_neighbours` nearest items over a fixed hash sample of at most
    `knn_population_users` users' histories). `day_positives`: the window's positives per day and catalogue row, the
    trend inputs of a model that reads them (for the queries' day)."""
    from recsys_assets.ml.baselines import (
        compare_methods,
        count_scores,
        item_neighbours,
        neighbour_scores,
        vector_scores,
    )

    catalog = encoder.catalog
    methods = {}
    for name, m in models.items():
        q = query_vectors(m, queries, catalog)
        items, bias = item_vectors(
            m,
            catalog,
            encoder.vocab,
            encoder.moments,
            as_of,
            day_positives=day_positives,
            day=queries.day,
        )
        methods[name] = (
            vector_scores(*with_recency_prior(q, items, recent_counts, 0.0, m.temperature, bias))
            if bias is not None
            else vector_scores(q, items)
        )
        if recency_prior:
            q_aug, items_aug = with_recency_prior(q, items, recent_counts, recency_prior, m.temperature, bias)
            methods[f"{name} + recency prior"] = vector_scores(q_aug, items_aug)
    methods["most-popular"] = count_scores(window_counts)
    methods["recent-popular"] = count_scores(recent_counts)
    if queries.hist_rows is not None:
        # The first rows of a mapped history are the users with the smallest keys: a fixed hash sample.
        history = encoder.history[queries.day]
        population = np.asarray(history.content_rows[: min(knn_population_users, len(history.content_rows) - 1)])
        neighbours = item_neighbours(population, len(catalog), knn_neighbours)
        methods["item-kNN"] = neighbour_scores(queries.hist_rows, neighbours, window_counts)
    return compare_methods(methods, queries.relevant, ks, len(catalog), seen)
