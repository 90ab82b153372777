"""PyTorch models: a multi-task MMoE ranker and a two-tower retrieval model (query tower, item tower).

Both take (categorical ids, dense floats, content embedding) tensors, so the same modules train here and are
exported for serving. Model configs are plain dicts stored beside the weights, enough to rebuild the module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from recsys_assets.core.schemas import EMBEDDING_DIM
from recsys_assets.training.config import RANKER_TASKS


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

    def to_dict(self) -> dict:
        return asdict(self)


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
        n_vec = len(cfg.cardinalities) + 1
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

    def forward(self, cat: torch.Tensor, dense: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        """Logits [batch, tasks]."""
        vecs = [emb(cat[:, i]) for i, emb in enumerate(self.embeddings)]
        vecs.append(self.content_proj(content))
        stacked = torch.stack(vecs, dim=1)  # [B, n_vec, d]
        dots = torch.bmm(stacked, stacked.transpose(1, 2))[:, self._iu0, self._iu1]
        x = torch.cat([stacked.flatten(1), dots, dense], dim=1)
        expert_out = torch.stack([e(x) for e in self.experts], dim=1)  # [B, E, h]
        logits = []
        for gate, tower in zip(self.gates, self.towers):
            w = torch.softmax(gate(x), dim=1).unsqueeze(-1)
            logits.append(tower((w * expert_out).sum(dim=1)))
        return torch.cat(logits, dim=1)


def ranker_loss(
    model: MMoERanker, logits: torch.Tensor, labels: torch.Tensor, task_weights: list[float]
) -> torch.Tensor:
    per_task = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(dim=0)
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
        in_dim = d * (len(cfg.cardinalities) + int(cfg.use_content)) + cfg.num_dense
        self.mlp = nn.Sequential(_mlp([in_dim, *cfg.hidden_sizes]), nn.Linear(cfg.hidden_sizes[-1], cfg.output_dim))
        for e in self.embeddings:
            nn.init.normal_(e.weight, std=0.05)

    def forward(self, cat: torch.Tensor, dense: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        parts = [emb(cat[:, i]) for i, emb in enumerate(self.embeddings)]
        if self.content_proj is not None:
            parts.append(self.content_proj(content))
        parts.append(dense)
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=1)


class TwoTower(nn.Module):
    def __init__(self, query: TowerConfig, item: TowerConfig, temperature: float = 0.05):
        super().__init__()
        self.query_tower = Tower(query)
        self.item_tower = Tower(item)
        self.temperature = temperature


def in_batch_softmax_loss(
    q: torch.Tensor, i: torch.Tensor, item_keys: torch.Tensor, log_q: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Sampled softmax with in-batch negatives and logQ correction.

    In-batch negatives are drawn in proportion to item popularity; subtracting log q(item) from the logits
    (Yi et al., 2019) removes that bias so popular items are not over-penalised. Other rows of the same item
    are masked: they are not negatives of each other.
    """
    logits = q @ i.T / temperature - log_q.unsqueeze(0)
    same_item = item_keys.unsqueeze(0) == item_keys.unsqueeze(1)
    eye = torch.eye(len(item_keys), dtype=torch.bool, device=q.device)
    logits = logits.masked_fill(same_item & ~eye, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(item_keys), device=q.device))
