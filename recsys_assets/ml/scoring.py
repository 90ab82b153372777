"""Scoring a release: the top-K feed of a batch of users (query tower -> FAISS retrieval -> ranker).

Everything is vectorised over users x candidates: the query tower runs on user batches, FAISS returns
k_retrieve candidates per user, the ranker scores the [users * k_retrieve] pairs built from user columns and the
release's item features, and the top k_feed by blended score are kept per user. Plain library code: the feed asset
calls it in-process, and the same function is what a Spark executor or a serving worker runs on its users.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from recsys_assets.ml.features import DENSE_FEATURES, padded_content, standardize
from recsys_assets.ml.history import HistoryArrays, history_arrays
from recsys_assets.ml.release import LoadedRelease
from recsys_assets.ml.retrieval import query_tower_inputs

USER_COLUMNS = ["user_id", "user_language", "user_region", "user_tenure_days"]


@dataclass
class ItemSide:
    """The ranker's item-side inputs for every catalogue row, computed once per release and day (the feed only
    gathers rows of these per candidate)."""

    cat: dict[str, np.ndarray]  # feature -> vocab ids per catalogue row
    dense: dict[str, np.ndarray]  # raw (untransformed) item_video_length_s, item_age_days per catalogue row
    feed_source_id: int
    trend: np.ndarray | None = None  # the ranker's standardized trend inputs [catalogue rows, 2], when it reads them

    @classmethod
    def of(cls, release: LoadedRelease, feed_source: str, as_of: pd.Timestamp) -> ItemSide:
        catalog, vocab = release.catalog, release.ranker_vocab
        return cls(
            cat={f: catalog.encode(vocab, f) for f in release.ranker_config["cat_features"] if f.startswith("item_")},
            dense={
                "item_video_length_s": catalog.attributes["item_video_length_s"].to_numpy(np.float64),
                "item_age_days": catalog.age_days(as_of),
            },
            feed_source_id=int(vocab.encode("feed_source", pa.array([feed_source], pa.string()))[0]),
            trend=release.ranker_item_trend,
        )


@dataclass
class UserSide:
    """The ranker's user-side inputs for a batch of users, encoded once (the pairs gather rows of these)."""

    cat: dict[str, np.ndarray]  # user feature -> vocab ids per user
    tenure_days: np.ndarray

    @classmethod
    def of(cls, release: LoadedRelease, items: ItemSide, users: pd.DataFrame) -> UserSide:
        features = [f for f in release.ranker_config["cat_features"] if f != "feed_source" and f not in items.cat]
        return cls(
            cat={
                f: release.ranker_vocab.encode(f, pa.array(users[f].to_numpy(dtype=object), pa.string()))
                for f in features
            },
            tenure_days=users["user_tenure_days"].to_numpy(np.float64),
        )


def ranker_inputs(
    release: LoadedRelease, items: ItemSide, users: UserSide, user_row: np.ndarray, item_row: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Model inputs for (user, item) pairs given as row numbers into `users` and the release's item catalogue,
    in the ranker's own feature order."""
    cols = []
    for f in release.ranker_config["cat_features"]:
        if f == "feed_source":
            cols.append(np.full(len(user_row), items.feed_source_id, dtype=np.int64))
        elif f in items.cat:
            cols.append(items.cat[f][item_row])
        else:
            cols.append(users.cat[f][user_row])
    raw_dense = {
        **{f: v[item_row] for f, v in items.dense.items()},
        "user_tenure_days": users.tenure_days[user_row],
    }
    dense = np.stack([standardize(f, raw_dense[f], release.ranker_moments) for f in DENSE_FEATURES], axis=1)
    if items.trend is not None:  # after the DENSE_FEATURES, as the ranker was trained (ranker.ranker_dense)
        dense = np.hstack([dense, items.trend[item_row].astype(dense.dtype)])
    return (
        torch.from_numpy(np.stack(cols, axis=1)),
        torch.from_numpy(dense),
        torch.from_numpy(release.catalog.embeddings[item_row]),
    )


class ReleaseHistory:
    """The users' histories as of the serving day in each model's own encoding (its vocabulary's item ids and the
    release catalogue's content; items outside it get a zero content vector), for the release's history-aware
    query tower and ranker. A history-free component gets no history inputs (old releases keep working). `day`: the
    history's (the serving) day, which a query tower or ranker that reads the history's time gaps measures the
    entries' ages from (the table then needs its event_ts)."""

    def __init__(self, release: LoadedRelease, history: pa.Table | None, day: str | None = None):
        self.query_len = int(release.query_config.get("history_len", 0))
        self.ranker_len = int(release.ranker_config.get("history_len", 0))
        self.query_ages = bool(self.query_len and release.query_config.get("history_time_gaps", False))
        self.ranker_ages = bool(self.ranker_len and release.ranker_config.get("history_time_gaps", False))
        if (self.query_len or self.ranker_len) and history is None:
            raise ValueError(
                f"release {release.version} has history-aware models but no user_history was given for the feed"
            )
        if (self.query_ages or self.ranker_ages) and (day is None or "event_ts" not in history.column_names):
            raise ValueError(
                f"release {release.version}'s models read the history's time gaps: the feed's user_history needs its "
                "event_ts column and the serving day"
            )

        def arrays(length: int, vocab, ages: bool) -> HistoryArrays | None:
            return history_arrays(history, length, vocab, release.catalog, day if ages else None) if length else None

        self.query = arrays(self.query_len, release.query_vocab, self.query_ages)
        self.ranker = arrays(self.ranker_len, release.ranker_vocab, self.ranker_ages)
        self.content = padded_content(release.catalog)

    def query_inputs(self, user_ids: np.ndarray) -> tuple:
        """(hist_ids, hist_content[, hist_age]) of the users, as the release's query tower takes them; () without."""
        if self.query is None:
            return ()
        ids, rows, ages = self.query.lookup(pa.array(user_ids, pa.string()))
        out = (torch.from_numpy(ids), self.content[torch.from_numpy(rows)])
        return (*out, torch.from_numpy(ages)) if self.query_ages else out

    def ranker_lookup(self, user_ids: np.ndarray) -> tuple | None:
        """Each user's history as the ranker's item ids, catalogue rows and ages (None unless the ranker reads the
        time gaps) [users, L]; None for a history-free ranker."""
        return None if self.ranker is None else self.ranker.lookup(pa.array(user_ids, pa.string()))

    def ranker_inputs(self, looked_up: tuple | None, users: slice, user_row: np.ndarray, grouped: bool) -> tuple:
        """The history inputs for pairs of the users `users` (rows of `looked_up`) with `user_row` relative to its
        start. `grouped`: each user's history once and pair_user (the release's program takes them so,
        forward_grouped; then hist_age when the ranker reads it); else one history per (user, candidate) pair
        (programs exported before grouping)."""
        if looked_up is None:
            return ()
        ids, rows = looked_up[0][users], looked_up[1][users]
        ages = (torch.from_numpy(looked_up[2][users]),) if self.ranker_ages else ()
        if grouped:
            return torch.from_numpy(ids), self.content[torch.from_numpy(rows)], torch.from_numpy(user_row), *ages
        per_pair = (torch.from_numpy(ids[user_row]), self.content[torch.from_numpy(rows[user_row])])
        return (*per_pair, *(a[torch.from_numpy(user_row)] for a in ages))


def release_items(release: LoadedRelease, feed_source: str, as_of: pd.Timestamp) -> tuple[np.ndarray, ItemSide]:
    """Index rows -> catalogue rows (the index was built over the same window catalogue; mapped by id to be safe) and
    the ranker's item side: computed once per release, surface and day and kept on the release (a Spark worker scores
    many batches of users with one loaded release; each catalogue-sized encode was repeated per batch)."""
    key = ("release_items", feed_source, as_of)
    if key not in release.cache:
        release.cache.clear()  # one day at a time: the previous day's arrays are not kept beside this one's
        release.cache[key] = (
            release.catalog.rows(pa.array(release.index_item_ids, pa.string())),
            ItemSide.of(release, feed_source, as_of),
        )
    return release.cache[key]


@torch.no_grad()
def generate_feed(
    release: LoadedRelease,
    users: pd.DataFrame,
    k_retrieve: int,
    k_feed: int,
    task_weights: dict[str, float],
    feed_source: str,
    as_of: pd.Timestamp,
    user_batch: int = 1024,
    history: pa.Table | None = None,
    ranker_users: int = 16,
    history_day: str | None = None,
) -> pd.DataFrame:
    """user_id, rank (1 = top), item_id, score for every user; score = sum_t w_t * P(task t). `history`: the
    user_history table (user_id, item_ids[, event_ts]) as of the serving day `history_day`, for a release with
    history-aware models (event_ts and the day: one whose query tower reads the history's time gaps).
    Retrieval (query tower, FAISS) runs on `user_batch` users at a time, the ranker on `ranker_users` users'
    k_retrieve pairs at a time. Neither changes the result: each pair is scored on its own inputs."""
    if len(users) == 0:
        return pd.DataFrame({"user_id": [], "rank": [], "item_id": [], "score": []})
    tasks = release.ranker_config["tasks"]
    unknown = set(task_weights) - set(tasks)
    if unknown:
        raise ValueError(f"feed task_weights name tasks the ranker does not have: {sorted(unknown)} (has {tasks})")
    weights = torch.tensor([task_weights.get(t, 0.0) for t in tasks], dtype=torch.float32)
    index_to_catalog, items = release_items(release, feed_source, as_of)
    grouped = bool(release.ranker_config.get("grouped_history", False))
    hist = ReleaseHistory(release, history, history_day)
    k_retrieve = min(k_retrieve, release.index.ntotal)
    k_feed = min(k_feed, k_retrieve)
    out = []
    for s in range(0, len(users), user_batch):
        chunk = users.iloc[s : s + user_batch].reset_index(drop=True)
        chunk_ids = chunk["user_id"].to_numpy(dtype=object)
        q = (
            release.query_tower(
                *query_tower_inputs(chunk, release.query_vocab, release.query_moments), *hist.query_inputs(chunk_ids)
            )
            .numpy()
            .astype(np.float32)
        )
        if release.index.d == q.shape[1] + 1:  # an index with the recency prior dimension (retrieval_index)
            q = np.hstack([q, np.ones((len(q), 1), np.float32)])
        _, idx = release.index.search(q, k_retrieve)
        valid = idx >= 0
        cand = np.where(valid, index_to_catalog[np.maximum(idx, 0)], -1)
        valid &= cand >= 0
        user_side = UserSide.of(release, items, chunk)
        looked_up = hist.ranker_lookup(chunk_ids)
        score = np.empty(cand.shape, np.float32)
        # The ranker on a few users' pairs at a time: its activations ([pairs, history, hidden] in the attention, 4 MB
        # at 16 users: under the scoring workers' mmap threshold) stay in cache; a whole 2,048-user batch's were
        # ~0.5 GB each and the same pairs took 2-4x longer (docs/scale.md).
        for r in range(0, len(chunk), ranker_users):
            n = min(ranker_users, len(chunk) - r)
            user_row = np.repeat(np.arange(n), k_retrieve)
            item_row = np.maximum(cand[r : r + n].reshape(-1), 0)
            logits = release.ranker(
                *ranker_inputs(release, items, user_side, user_row + r, item_row),
                *hist.ranker_inputs(looked_up, slice(r, r + n), user_row, grouped),
            )
            score[r : r + n] = (torch.sigmoid(logits.float()) * weights).sum(dim=1).numpy().reshape(n, k_retrieve)
        score = np.where(valid, score, -np.inf)
        order = np.argsort(-score, axis=1, kind="stable")[:, :k_feed]
        top_rows = np.take_along_axis(cand, order, axis=1)
        top_scores = np.take_along_axis(score, order, axis=1)
        keep = np.isfinite(top_scores)
        ranks = np.broadcast_to(np.arange(1, k_feed + 1), order.shape)
        out.append(
            pd.DataFrame(
                {
                    "user_id": np.repeat(chunk["user_id"].to_numpy(dtype=object), k_feed)[keep.reshape(-1)],
                    "rank": ranks[keep].astype(np.int32),
                    "item_id": release.catalog.item_ids[top_rows[keep]],
                    "score": top_scores[keep].astype(np.float64),
                }
            )
        )
    return pd.concat(out, ignore_index=True)
