"""PyTorch models: a multi-task MMoE ranker and a two-tower retrieval model (query tower, item tower).

Both take (categorical ids, dense floats, content embedding) tensors, so the same modules train here and are
exported for serving. Model configs are plain dicts stored beside the weights, enough to rebuild the module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from recsys_assets.config.training import RANKER_TASKS
from recsys_assets.core.schemas import EMBEDDING_DIM


def _mlp(sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


@dataclass
class RankerConfig:
    cat_features: list[str]
    cardinalities: list[int]
    num_dense: int
    tasks: list[str] = field(default_factory=lambda: list(RANKER_TASKS))
    embedding_dim: int = 16
    num_experts: int = 4
    expert_sizes: list[int] = field(default_factory=lambda: [128, 64])
    tower_sizes: list[int] = field(default_factory=lambda: [32])
    dropout: float = 0.0
    content_dim: int = EMBEDDING_DIM
    # Newest history entries the model attends over (0: the history-free design; configs saved before history
    # existed load as 0, so old releases keep working).
    history_len: int = 0
    # A learned logit per (item_id, task) added to the output (configs saved before it existed load as False).
    item_bias: bool = False
    # The exported program takes each user's history once (hist_ids [U, L], hist_content [U, L, c]) and pair_user
    # [P], the row of each (user, candidate) pair's user: forward_grouped. Programs exported before it existed take
    # one history per pair (configs load as False).
    grouped_history: bool = False
    # The item's point-in-time popularity (ml/trend.py): the standardisation (ItemTrend.to_dict) of the 2 trend inputs
    # appended to `dense` after the DENSE_FEATURES (num_dense counts them); None: no trend inputs (older configs).
    item_trend: dict | None = None
    # The history's time gaps (ranker.history_time_gaps): a learned vector per age bucket of each history entry
    # (history_age_buckets) added to it before the target attention; the program then takes hist_age [U, L] after
    # pair_user (configs saved before it existed load as False).
    history_time_gaps: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


# Age buckets of a history entry: floor(log2(1 + hours before the history's day)), the last one open-ended (2^11 h is
# ~85 days, beyond any lookback_days a history keeps by default).
HISTORY_AGE_BUCKETS = 12


def history_age_buckets(hours: torch.Tensor) -> torch.Tensor:
    """int64 bucket of each age in hours (negative ages, which a point-in-time history never has, count as 0)."""
    return torch.floor(torch.log2(1.0 + hours.float().clamp(min=0))).long().clamp(0, HISTORY_AGE_BUCKETS - 1)


def with_age_vectors(h: torch.Tensor, vectors: torch.Tensor, hist_age: torch.Tensor | None, model: str) -> torch.Tensor:
    """History entries h [B, L, d] plus the learned vector of each entry's age bucket (vectors [HISTORY_AGE_BUCKETS,
    d]; hist_age [B, >= L] hours): both models' reading of the history's time gaps."""
    if hist_age is None:
        raise ValueError(f"this {model} reads the history's time gaps: give hist_age (hours) with the history")
    return h + vectors[history_age_buckets(hist_age[:, : h.shape[1]])]


def masked_attention_pool(scores: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_j softmax(scores)_j * values_j over the unmasked j ([B, L] scores, [B, L, d] values); a row with nothing
    unmasked pools to zeros (a user without history), never NaN."""
    weights = torch.softmax(scores.masked_fill(~mask, -1e9), dim=1) * mask
    return (weights.unsqueeze(-1) * values).sum(dim=1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(values.dtype)
    return (values * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class TargetAttention(nn.Module):
    """DIN-style attention of a candidate item over the history: weight_j = MLP([h_j, t, h_j * t, h_j - t])."""

    def __init__(self, dim: int, hidden: int = 32):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, history: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = target.unsqueeze(1).expand_as(history)
        scores = self.mlp(torch.cat([history, t, history * t, history - t], dim=-1)).squeeze(-1)
        return masked_attention_pool(scores, history, mask)

    def forward_grouped(
        self, history: torch.Tensor, pair_user: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """forward for [P] candidates of [U] users, each user's history given once ([U, L, d], mask [U, L]) and
        pair_user [P] naming each candidate's user. The first layer splits by linearity,
        W [h, t, h*t, h-t] = (W_h + W_d) h + (W_t - W_d) t + W_p (h*t), so the history term is computed once per user
        and only the product term (d x hidden instead of 4d x hidden) once per pair and history entry."""
        first, act, last = self.mlp
        w_h, w_t, w_p, w_d = first.weight.split(history.shape[-1], dim=1)
        per_user = history @ (w_h + w_d).T + first.bias  # [U, L, hidden]
        h = history[pair_user]  # [P, L, d]
        pre = per_user[pair_user] + (target @ (w_t - w_d).T).unsqueeze(1) + (h * target.unsqueeze(1)) @ w_p.T
        return masked_attention_pool(last(act(pre)).squeeze(-1), h, mask[pair_user])


class MMoERanker(nn.Module):
    """Multi-gate mixture of experts over [embeddings, pairwise dot interactions, dense features].

    The dot interactions (DLRM-style) let user x item affinity reach the experts directly instead of being
    rediscovered by an MLP from concatenated embeddings.
    """

    def __init__(self, cfg: RankerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embedding_dim
        self.embeddings = nn.ModuleList(nn.Embedding(c, d, padding_idx=0) for c in cfg.cardinalities)
        self.content_proj = nn.Linear(cfg.content_dim, d)
        n_vec = len(cfg.cardinalities) + 1 + int(cfg.history_len > 0)
        if cfg.history_len or cfg.item_bias:
            self.item_pos = cfg.cat_features.index("item_id")
        if cfg.history_len:
            # The history's items are represented like the candidate: its item_id embedding + projected content.
            self.target_attention = TargetAttention(d)
        if cfg.history_len and cfg.history_time_gaps:
            self.history_age = nn.Parameter(torch.zeros(HISTORY_AGE_BUCKETS, d))  # dense, small
        if cfg.item_bias:
            self.item_bias = nn.Embedding(cfg.cardinalities[self.item_pos], len(cfg.tasks))
            nn.init.zeros_(self.item_bias.weight)
        iu = torch.triu_indices(n_vec, n_vec, offset=1)
        self.register_buffer("_iu0", iu[0], persistent=False)
        self.register_buffer("_iu1", iu[1], persistent=False)
        in_dim = n_vec * d + iu.shape[1] + cfg.num_dense
        self.experts = nn.ModuleList(_mlp([in_dim, *cfg.expert_sizes], cfg.dropout) for _ in range(cfg.num_experts))
        self.gates = nn.ModuleList(nn.Linear(in_dim, cfg.num_experts) for _ in cfg.tasks)
        self.towers = nn.ModuleList(
            nn.Sequential(
                _mlp([cfg.expert_sizes[-1], *cfg.tower_sizes], cfg.dropout), nn.Linear(cfg.tower_sizes[-1], 1)
            )
            for _ in cfg.tasks
        )
        for e in self.embeddings:
            nn.init.normal_(e.weight, std=0.05)

    def forward(
        self,
        cat: torch.Tensor,
        dense: torch.Tensor,
        content: torch.Tensor,
        hist_ids: torch.Tensor | None = None,
        hist_content: torch.Tensor | None = None,
        hist_age: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [batch, tasks]. With history_len: hist_ids [batch, L] item_id vocab ids (0 = padding) and
        hist_content [batch, L, content_dim], newest first (and hist_age [batch, L], hours before the day, with
        history_time_gaps)."""
        vecs = self._vectors(cat, content)
        if self.cfg.history_len:
            history, mask = self._history(hist_ids, hist_content, hist_age)
            vecs.append(self.target_attention(history, self._target(vecs), mask))
        return self._head(vecs, cat, dense)

    def forward_grouped(
        self,
        cat: torch.Tensor,
        dense: torch.Tensor,
        content: torch.Tensor,
        hist_ids: torch.Tensor,
        hist_content: torch.Tensor,
        pair_user: torch.Tensor,
        hist_age: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """forward for [P] (user, candidate) pairs with each of [U] users' history given once: hist_ids [U, L],
        hist_content [U, L, content_dim], pair_user [P] the row of each pair's user. Equals forward with the
        histories repeated per pair (up to float rounding) without projecting or gathering them per pair: serving
        scores ~100 candidates a user, so the per-pair history work was most of the ranker's cost."""
        vecs = self._vectors(cat, content)
        if self.cfg.history_len:
            history, mask = self._history(hist_ids, hist_content, hist_age)
            vecs.append(self.target_attention.forward_grouped(history, pair_user, self._target(vecs), mask))
        return self._head(vecs, cat, dense)

    def _vectors(self, cat: torch.Tensor, content: torch.Tensor) -> list[torch.Tensor]:
        return [*(emb(cat[:, i]) for i, emb in enumerate(self.embeddings)), self.content_proj(content)]

    def _history(
        self, hist_ids: torch.Tensor, hist_content: torch.Tensor, hist_age: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The history's items represented like the candidate (item_id embedding + projected content; + their age
        bucket's vector with history_time_gaps) and its mask."""
        ids, hc = hist_ids[:, : self.cfg.history_len], hist_content[:, : self.cfg.history_len]
        h = self.embeddings[self.item_pos](ids) + self.content_proj(hc)
        if self.cfg.history_time_gaps:
            h = with_age_vectors(h, self.history_age, hist_age, "ranker")
        return h, ids != 0

    def _target(self, vecs: list[torch.Tensor]) -> torch.Tensor:
        return vecs[self.item_pos] + vecs[len(self.embeddings)]

    def _head(self, vecs: list[torch.Tensor], cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack(vecs, dim=1)  # [B, n_vec, d]
        dots = torch.bmm(stacked, stacked.transpose(1, 2))[:, self._iu0, self._iu1]
        x = torch.cat([stacked.flatten(1), dots, dense], dim=1)
        expert_out = torch.stack([e(x) for e in self.experts], dim=1)  # [B, E, h]
        logits = []
        for gate, tower in zip(self.gates, self.towers):
            w = torch.softmax(gate(x), dim=1).unsqueeze(-1)
            logits.append(tower((w * expert_out).sum(dim=1)))
        out = torch.cat(logits, dim=1)
        if self.cfg.item_bias:
            out = out + self.item_bias(cat[:, self.item_pos])
        return out


class GroupedRanker(nn.Module):
    """The exported serving form of a history-aware ranker: MMoERanker.forward_grouped as its forward."""

    def __init__(self, model: MMoERanker):
        super().__init__()
        self.model = model

    def forward(self, cat, dense, content, hist_ids, hist_content, pair_user):
        return self.model.forward_grouped(cat, dense, content, hist_ids, hist_content, pair_user)


class TimedGroupedRanker(GroupedRanker):
    """GroupedRanker of a ranker that reads the history's time gaps: hist_age [U, L] after pair_user."""

    def forward(self, cat, dense, content, hist_ids, hist_content, pair_user, hist_age):  # type: ignore[override]
        return self.model.forward_grouped(cat, dense, content, hist_ids, hist_content, pair_user, hist_age)


def ranker_loss(
    model: MMoERanker, logits: torch.Tensor, labels: torch.Tensor, task_weights: list[float]
) -> torch.Tensor:
    # A mean over the rows that is 0, not NaN, for a batch of none (a data-parallel rank whose share is used up).
    per_task = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").sum(dim=0) / max(len(labels), 1)
    return (per_task * torch.tensor(task_weights, device=logits.device, dtype=per_task.dtype)).sum()


@dataclass
class TowerConfig:
    cat_features: list[str]
    cardinalities: list[int]
    num_dense: int
    use_content: bool
    embedding_dim: int = 32
    hidden_sizes: list[int] = field(default_factory=lambda: [128])
    output_dim: int = 64
    content_dim: int = EMBEDDING_DIM
    extra_dim: int = 0  # width of extra input vectors (the query tower's pooled history)

    def to_dict(self) -> dict:
        return asdict(self)


class Tower(nn.Module):
    """Embeddings (+ projected content embedding) + dense -> MLP -> L2-normalised vector.

    Normalised outputs make the dot product a cosine similarity: the retrieval index uses inner product on the
    same vectors, so training and serving rank by the same metric."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embedding_dim
        self.embeddings = nn.ModuleList(nn.Embedding(c, d, padding_idx=0) for c in cfg.cardinalities)
        self.content_proj = nn.Linear(cfg.content_dim, d) if cfg.use_content else None
        in_dim = d * (len(cfg.cardinalities) + int(cfg.use_content)) + cfg.num_dense + cfg.extra_dim
        self.mlp = nn.Sequential(_mlp([in_dim, *cfg.hidden_sizes]), nn.Linear(cfg.hidden_sizes[-1], cfg.output_dim))
        for e in self.embeddings:
            nn.init.normal_(e.weight, std=0.05)

    def forward(
        self, cat: torch.Tensor, dense: torch.Tensor, content: torch.Tensor, extra: torch.Tensor | None = None
    ) -> torch.Tensor:
        parts = [emb(cat[:, i]) for i, emb in enumerate(self.embeddings)]
        if self.content_proj is not None:
            parts.append(self.content_proj(content))
        parts.append(dense)
        if extra is not None:
            parts.append(extra)
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=1)


class TwoTower(nn.Module):
    """Query tower (user features [+ pooled history]) and item tower (item features + content embedding).

    With history_len, the query tower also sees the user's last positives, each represented by the item tower's own
    item_id embedding + content projection (shared weights: what a user watched and what is retrieved live in one
    space), pooled two ways: a masked mean and a learned attention. Users without history pool to zeros."""

    def __init__(
        self,
        query: TowerConfig,
        item: TowerConfig,
        temperature: float = 0.05,
        history_len: int = 0,
        item_trend: dict | None = None,
        example_age: bool = False,
        history_positions: bool = False,
        history_time_gaps: bool = False,
    ):
        super().__init__()
        self.history_len = history_len
        # ml/trend.py: the item tower's last two dense inputs are the item's point-in-time popularity (standardized
        # with these moments), and the query tower's last one the example's age (0 when serving: `query` appends it).
        self.item_trend = item_trend
        self.example_age = example_age
        if item_trend is not None:
            # The item's popularity right now as a logit of its own: b(i) = w . trend(i) + c, added to q.i / T in
            # training's softmax and served as one extra index dimension (retrieval.with_recency_prior's bias).
            # Started at b(i) = log(1 + the item's positives on the day before): recent-popular's score, which the
            # training then adjusts (the ranker's item bias starts at the item prior the same way).
            self.trend_score = nn.Linear(len(item_trend["mean"]), 1)
            with torch.no_grad():
                self.trend_score.weight.zero_()
                self.trend_score.weight[0, 0] = item_trend["std"][0]
                self.trend_score.bias.fill_(item_trend["mean"][0])
        if history_len and query.extra_dim != 2 * item.embedding_dim:
            raise ValueError("query tower extra_dim must be 2 * item embedding_dim for history pooling")
        self.query_tower = Tower(query)
        self.item_tower = Tower(item)
        self.temperature = temperature
        if history_len:
            self.history_attention = nn.Linear(item.embedding_dim, 1)
        # A learned vector per history position (0 = newest), added to each entry before pooling: the attention can
        # weight recent entries over old ones (the history is newest first; zeros at the start: position-blind).
        self.history_positions = bool(history_positions and history_len)
        if self.history_positions:
            self.history_position = nn.Parameter(torch.zeros(history_len, item.embedding_dim))  # dense, small
        # The history's time gaps: a learned vector per age bucket (log2 of the hours from the entry to the history's
        # day, history_age_buckets), added to each entry before pooling: a positive of an hour ago and one of a month
        # ago weigh (and mean) differently, whatever their positions.
        self.history_time_gaps = bool(history_time_gaps and history_len)
        if self.history_time_gaps:
            self.history_age = nn.Parameter(torch.zeros(HISTORY_AGE_BUCKETS, item.embedding_dim))  # dense, small

    def history_vector(
        self, hist_ids: torch.Tensor, hist_content: torch.Tensor, hist_age: torch.Tensor | None = None
    ) -> torch.Tensor:
        ids, hc = hist_ids[:, : self.history_len], hist_content[:, : self.history_len]
        h = self.item_tower.embeddings[0](ids) + self.item_tower.content_proj(hc)
        if self.history_positions:
            h = h + self.history_position[: h.shape[1]].unsqueeze(0)
        if self.history_time_gaps:
            h = with_age_vectors(h, self.history_age, hist_age, "two-tower")
        mask = ids != 0
        return torch.cat(
            [masked_mean(h, mask), masked_attention_pool(self.history_attention(h).squeeze(-1), h, mask)], 1
        )

    def query(
        self,
        cat: torch.Tensor,
        dense: torch.Tensor,
        hist_ids: torch.Tensor | None = None,
        hist_content: torch.Tensor | None = None,
        hist_age: torch.Tensor | None = None,
        example_age: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The query vector. `dense`: the user's dense inputs without the example age, which is appended here when
        the model reads it: the training row's `example_age` [B, 1], or 0 (evaluation, serving, the exported tower).
        `hist_age` [B, L]: hours from each history entry to the history's day (read with history_time_gaps)."""
        extra = self.history_vector(hist_ids, hist_content, hist_age) if self.history_len else None
        if self.example_age:
            age = example_age if example_age is not None else torch.zeros_like(dense[:, :1])
            dense = torch.cat([dense, age], dim=1)
        return self.query_tower(cat, dense, dense[:, :0], extra)

    def item_score_bias(self, trend: torch.Tensor) -> torch.Tensor:
        """[items] the learned popularity logit of items with standardized trend inputs [items, 2]."""
        return self.trend_score(trend).squeeze(-1)

    @property
    def query_dense_inputs(self) -> int:
        """Width of the dense input a caller (and the exported query tower) gives: without the example age."""
        return self.query_tower.cfg.num_dense - int(self.example_age)

    def config(self) -> dict:
        return {
            "query": self.query_tower.cfg.to_dict(),
            "item": self.item_tower.cfg.to_dict(),
            "temperature": self.temperature,
            "history_len": self.history_len,
            "item_trend": self.item_trend,
            "example_age": self.example_age,
            "history_positions": self.history_positions,
            "history_time_gaps": self.history_time_gaps,
        }

    @classmethod
    def from_config(cls, cfg: dict) -> TwoTower:
        """From a saved model_config.json (one saved before history, the trend inputs or the example age existed
        loads without them)."""
        return cls(
            TowerConfig(**cfg["query"]),
            TowerConfig(**cfg["item"]),
            cfg["temperature"],
            cfg.get("history_len", 0),
            cfg.get("item_trend"),
            cfg.get("example_age", False),
            cfg.get("history_positions", False),
            cfg.get("history_time_gaps", False),
        )


def in_batch_softmax_loss(
    q: torch.Tensor, i: torch.Tensor, item_keys: torch.Tensor, log_q: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Sampled softmax with in-batch negatives and logQ correction.

    In-batch negatives are drawn in proportion to item popularity; subtracting log q(item) from the logits
    (Yi et al., 2019) removes that bias so popular items are not over-penalised. Other rows of the same item
    are masked: they are not negatives of each other.

    Data-parallel: the negatives are the global batch's items (every rank's item vectors, keys and log q gathered;
    the gradient of another rank's item vectors goes back to it), so N processes see the negatives one process with
    the same global batch would. Mean over this rank's queries; 0 when it has none.
    """
    from recsys_assets.ml.distributed import gather_rows, gathered_sizes, is_distributed

    sizes = gathered_sizes(len(q), q.device) if is_distributed() else None
    all_i, offset = gather_rows(i, sizes)
    all_keys, _ = gather_rows(item_keys, sizes)
    all_log_q, _ = gather_rows(log_q, sizes)
    logits = q @ all_i.T / temperature - all_log_q.unsqueeze(0)
    target = offset + torch.arange(len(q), device=q.device)
    own = torch.zeros_like(logits, dtype=torch.bool)
    own[torch.arange(len(q), device=q.device), target] = True
    same_item = item_keys.unsqueeze(1) == all_keys.unsqueeze(0)
    logits = logits.masked_fill(same_item & ~own, float("-inf"))
    return F.cross_entropy(logits, target, reduction="sum") / max(len(q), 1)
