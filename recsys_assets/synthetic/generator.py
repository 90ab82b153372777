"""A realistic synthetic short-video event stream written in the raw-input layout, for N days.

Zipf item popularity decaying with age, several languages, new items every day, item ages 0-120 days, a few %
rejected items, skewed feed sources, play durations tied to video length and to user x item affinity, labels
correlated with that affinity, clustered 128-d content embeddings (so retrieval is learnable), and a small share
of dirty rows (null ids, negative/NaN durations, duplicate event ids, timestamps outside the day, items without
or with broken embeddings). Vectorised numpy: about a second per 200k events.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa

from recsys_assets.core.raw_inputs import write_raw_day
from recsys_assets.core.schemas import (
    EMBEDDING_DIM,
    RAW_EVENTS,
    RAW_ITEM_EMBEDDINGS,
    RAW_ITEMS,
    RAW_USERS,
)
from resources.store import DatasetStore

APP_TZ = ZoneInfo("Asia/Kolkata")
LANGUAGES = ["hi", "ta", "te", "bn", "mr", "kn", "en", "pa"]
LANGUAGE_P = [0.38, 0.14, 0.12, 0.10, 0.08, 0.06, 0.08, 0.04]
CATEGORIES = ["comedy", "music", "dance", "food", "sports", "news", "beauty", "devotional", "education", "travel"]
REGIONS = ["north", "south", "east", "west", "central"]
FEED_SOURCES = ["for_you", "trending", "following", "search", "profile"]
FEED_SOURCE_P = [0.62, 0.14, 0.10, 0.08, 0.06]
CLIENT_EVENTS = ["play", "complete", "impression", "error"]
MODERATION = ["approved", "rejected", "pending"]
MODERATION_P = [0.93, 0.04, 0.03]
MAX_ITEM_AGE_DAYS = 120


@dataclass
class SyntheticConfig:
    start_date: str = "2024-03-01"
    num_days: int = 8
    events_per_day: int = 200_000
    num_users: int = 30_000
    # Items in the catalogue on the first day (ages spread over 0-120 days); new ones arrive every day.
    initial_items: int = 8_000
    # ~initial_items / 120: the catalogue's age mix is then steady from day to day (as in production).
    new_items_per_day: int = 65
    num_clusters: int = 24
    num_authors: int = 3_000
    zipf_exponent: float = 1.05
    dirty_fraction: float = 0.004
    missing_embedding_fraction: float = 0.006
    seed: int = 7
    # Day-to-day volume jitter (relative std), so deltas are realistic but stay within check thresholds.
    volume_jitter: float = 0.02
    # Share of users who, each day, swap one of their two favourite clusters for another (short-video interests
    # drift): 0 = fixed preferences (the default world, unchanged); > 0 makes what a user watched lately a better
    # guide than their whole window (docs/real_data.md measures the history-aware models on it).
    interest_drift: float = 0.0
    days: list[str] = field(default_factory=list)

    def __post_init__(self):
        start = dt.date.fromisoformat(self.start_date)
        self.days = [(start + dt.timedelta(days=i)).isoformat() for i in range(self.num_days)]


class _World:
    """Items, users and latent structure shared by all days."""

    def __init__(self, cfg: SyntheticConfig):
        rng = np.random.default_rng(cfg.seed)
        self.cfg = cfg
        start = dt.datetime.combine(dt.date.fromisoformat(cfg.start_date), dt.time(), APP_TZ)
        n_items = cfg.initial_items + cfg.new_items_per_day * cfg.num_days
        # Creation times: initial items spread over the 120 days before the start, then new_items_per_day a day.
        init_age_days = rng.uniform(0, MAX_ITEM_AGE_DAYS, cfg.initial_items)
        later_day = np.repeat(np.arange(cfg.num_days), cfg.new_items_per_day)
        later_offset_days = later_day + rng.uniform(0, 1, later_day.size)
        created_offset_s = np.concatenate([-init_age_days, later_offset_days]) * 86400.0
        self.item_created_us = (int(start.timestamp()) + created_offset_s).astype(np.int64) * 1_000_000
        self.item_ids = np.char.add("i", np.char.zfill(np.arange(n_items).astype(str), 7))
        self.item_lang = rng.choice(len(LANGUAGES), n_items, p=LANGUAGE_P)
        self.item_moderation = rng.choice(len(MODERATION), n_items, p=MODERATION_P)
        # Video length: lognormal around ~30 s, a tail beyond the 180 s filter and a few sub-3 s clips.
        self.item_len = np.clip(rng.lognormal(np.log(28), 0.7, n_items), 1.0, 900.0)
        self.item_cluster = rng.integers(0, cfg.num_clusters, n_items)
        self.item_author = rng.integers(0, cfg.num_authors, n_items)
        self.item_category = self.item_cluster % len(CATEGORIES)
        # Popularity: Zipf over a random permutation of items (quality is independent of id).
        ranks = rng.permutation(n_items) + 1
        self.item_quality = ranks.astype(np.float64) ** (-cfg.zipf_exponent)
        # Clustered content embeddings: centroid + noise, L2-normalised (like BLIP embeddings).
        centroids = rng.normal(0, 1, (cfg.num_clusters, EMBEDDING_DIM)).astype(np.float32)
        emb = centroids[self.item_cluster] + rng.normal(0, 0.6, (n_items, EMBEDDING_DIM)).astype(np.float32)
        self.item_emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        self.item_has_emb = rng.uniform(size=n_items) > cfg.missing_embedding_fraction

        n_users = cfg.num_users
        self.user_ids = np.char.add("u", np.char.zfill(np.arange(n_users).astype(str), 7))
        self.user_lang = rng.choice(len(LANGUAGES), n_users, p=LANGUAGE_P)
        self.user_region = rng.integers(0, len(REGIONS), n_users)
        self.user_signup_us = (int(start.timestamp()) - rng.uniform(0, 400, n_users) * 86400).astype(
            np.int64
        ) * 1_000_000
        # Users joining during the window (a few % of users sign up on later days).
        joiners = rng.uniform(size=n_users) < 0.03
        self.user_signup_us[joiners] = (
            int(start.timestamp()) + rng.uniform(0, cfg.num_days, joiners.sum()) * 86400
        ).astype(np.int64) * 1_000_000
        self.user_activity = rng.pareto(1.5, n_users) + 1.0
        # Each user likes 2 clusters: affinity drives both what they see and how they react.
        self.user_fav = rng.integers(0, cfg.num_clusters, (n_users, 2))
        # Favourites per day: with drift, each day a share of users replace one favourite (own random stream, so
        # the default world's draws are unchanged).
        self.user_fav_by_day = [self.user_fav]
        drift_rng = np.random.default_rng([cfg.seed, 1_000_003])
        for _ in range(1, cfg.num_days):
            fav = self.user_fav_by_day[-1]
            if cfg.interest_drift > 0:
                fav = fav.copy()
                movers = np.flatnonzero(drift_rng.uniform(size=n_users) < cfg.interest_drift)
                fav[movers, drift_rng.integers(0, 2, movers.size)] = drift_rng.integers(
                    0, cfg.num_clusters, movers.size
                )
            self.user_fav_by_day.append(fav)


def _day_bounds_us(day: str) -> tuple[int, int]:
    d = dt.date.fromisoformat(day)
    start = dt.datetime.combine(d, dt.time(), APP_TZ)
    return int(start.timestamp()) * 1_000_000, int((start + dt.timedelta(days=1)).timestamp()) * 1_000_000


def _ts_array(us: np.ndarray) -> pa.Array:
    return pa.array(us, type=pa.timestamp("us", tz="UTC"))


def _generate_day(world: _World, day_index: int, day: str, rng: np.random.Generator) -> dict[str, pa.Table]:
    cfg = world.cfg
    day_start_us, day_end_us = _day_bounds_us(day)
    # Catalogue snapshot: items created before the day ends and younger than 120 days.
    age_at_end_days = (day_end_us - world.item_created_us) / 86400e6
    in_catalogue = (world.item_created_us < day_end_us) & (age_at_end_days <= MAX_ITEM_AGE_DAYS)
    cat_idx = np.flatnonzero(in_catalogue)

    # Popularity decays with age, with a boost in the first days of an item's life.
    age = np.maximum(age_at_end_days[cat_idx], 0.0)
    weight = world.item_quality[cat_idx] * (np.exp(-age / 25.0) + 0.5 * np.exp(-age / 2.0))
    weight = weight / weight.sum()

    n = int(cfg.events_per_day * max(0.5, 1.0 + rng.normal(0, cfg.volume_jitter)))
    user_p = world.user_activity / world.user_activity.sum()
    users = rng.choice(world.user_ids.size, n, p=user_p)
    # Half of the impressions come from the user's favourite clusters (the recommender's personalisation).
    items = cat_idx[rng.choice(cat_idx.size, n, p=weight)]
    personalised = rng.uniform(size=n) < 0.5
    if personalised.any():
        fav = world.user_fav_by_day[day_index][users[personalised], rng.integers(0, 2, personalised.sum())]
        cluster_of_cat = world.item_cluster[cat_idx]
        order = np.argsort(cluster_of_cat, kind="stable")
        sorted_clusters = cluster_of_cat[order]
        lo = np.searchsorted(sorted_clusters, fav, side="left")
        hi = np.searchsorted(sorted_clusters, fav, side="right")
        has = hi > lo
        # Within the cluster, choose proportionally to popularity via inverse-CDF on cumulative weights.
        cw = np.cumsum(weight[order])
        u = rng.uniform(size=fav.size)
        base = np.where(lo > 0, cw[np.maximum(lo - 1, 0)], 0.0)
        target = base + u * (cw[np.maximum(hi - 1, 0)] - base)
        pick = np.clip(np.searchsorted(cw, target, side="left"), lo, np.maximum(hi - 1, lo))
        chosen = cat_idx[order[pick]]
        idx = np.flatnonzero(personalised)
        items[idx[has]] = chosen[has]

    affinity = (world.item_cluster[items][:, None] == world.user_fav_by_day[day_index][users]).any(axis=1)
    affinity = affinity.astype(np.float64)
    ts_us = rng.integers(day_start_us, day_end_us, n)
    feed = rng.choice(len(FEED_SOURCES), n, p=FEED_SOURCE_P)

    video_len = world.item_len[items]
    # Watch fraction: beta, higher with affinity; ~8% replay beyond the full length.
    watch = rng.beta(1.2 + 2.0 * affinity, 2.2 - 0.8 * affinity)
    watch = np.where(rng.uniform(size=n) < 0.08, 1.0 + rng.uniform(0, 1, n), watch)
    play = video_len * watch
    client = np.where(watch >= 0.98, 1, 0)  # complete vs play
    r = rng.uniform(size=n)
    client = np.where(r < 0.05, 2, np.where(r < 0.07, 3, client))  # impressions and errors
    play = np.where(client == 2, 0.0, play)

    logit = -3.2 + 2.4 * affinity + 1.5 * np.minimum(watch, 1.5)
    liked = rng.uniform(size=n) < 1 / (1 + np.exp(-logit))
    shared = rng.uniform(size=n) < 1 / (1 + np.exp(-(logit - 2.0)))
    followed = rng.uniform(size=n) < 1 / (1 + np.exp(-(logit - 2.8)))
    client_names = np.array(CLIENT_EVENTS, dtype=object)[client]
    # Engagement events are also reported as their own client event for some rows.
    client_names = np.where(liked & (rng.uniform(size=n) < 0.3), "like", client_names)
    client_names = np.where(shared & (rng.uniform(size=n) < 0.3), "share", client_names)
    client_names = np.where(followed & (rng.uniform(size=n) < 0.3), "follow", client_names)

    event_ids = np.char.add(f"e{day.replace('-', '')}-", np.arange(n).astype(str)).astype(object)
    item_ids = world.item_ids[items].astype(object)
    user_ids = world.user_ids[users].astype(object)
    play = play.astype(np.float64)

    # Dirty rows: each kind on ~dirty_fraction/5 of rows.
    k = max(1, int(n * cfg.dirty_fraction / 5))
    pos = rng.choice(n, 5 * k, replace=False).reshape(5, k)
    event_ids[pos[0]] = None
    item_ids[pos[1][: k // 2]] = None
    play[pos[1][k // 2 :]] = -np.abs(play[pos[1][k // 2 :]]) - 1.0
    play[pos[2][: k // 2]] = np.nan
    event_ids[pos[3]] = event_ids[(pos[3] + 1) % n]  # duplicated event ids (a re-sent batch)
    ts_us[pos[4]] = ts_us[pos[4]] - 3 * 86400 * 1_000_000  # late arrivals from days ago

    events = pa.table(
        {
            "event_id": pa.array(event_ids, pa.string()),
            "user_id": pa.array(user_ids, pa.string()),
            "item_id": pa.array(item_ids, pa.string()),
            "event_ts": _ts_array(ts_us),
            "feed_source": pa.array(np.array(FEED_SOURCES, dtype=object)[feed], pa.string()),
            "client_event": pa.array(client_names, pa.string()),
            "play_duration_s": pa.array(play, pa.float64()),
            "liked": pa.array(liked),
            "shared": pa.array(shared),
            "followed": pa.array(followed),
        },
        schema=RAW_EVENTS,
    )

    items_tbl = pa.table(
        {
            "item_id": pa.array(world.item_ids[cat_idx].astype(object), pa.string()),
            "language": pa.array(np.array(LANGUAGES, dtype=object)[world.item_lang[cat_idx]], pa.string()),
            "moderation_status": pa.array(
                np.array(MODERATION, dtype=object)[world.item_moderation[cat_idx]], pa.string()
            ),
            "video_length_s": pa.array(world.item_len[cat_idx]),
            "created_at": _ts_array(world.item_created_us[cat_idx]),
            "author_id": pa.array(np.char.add("a", world.item_author[cat_idx].astype(str)).astype(object), pa.string()),
            "category": pa.array(np.array(CATEGORIES, dtype=object)[world.item_category[cat_idx]], pa.string()),
        },
        schema=RAW_ITEMS,
    )

    emb_idx = cat_idx[world.item_has_emb[cat_idx]]
    emb = world.item_emb[emb_idx].copy()
    # A few broken embeddings: NaNs, and one truncated vector, as the join must reject.
    broken = rng.choice(emb_idx.size, max(1, emb_idx.size // 2000), replace=False)
    emb[broken, 0] = np.nan
    values = pa.array(emb.reshape(-1), pa.float32())
    offsets = np.arange(0, emb.size + 1, EMBEDDING_DIM, dtype=np.int32)
    emb_list = pa.ListArray.from_arrays(pa.array(offsets), values)
    emb_tbl = pa.table(
        {"item_id": pa.array(world.item_ids[emb_idx].astype(object), pa.string()), "embedding": emb_list}
    )
    short = pa.table(
        {
            "item_id": pa.array([world.item_ids[emb_idx[0]] + "-short"], pa.string()),
            "embedding": pa.array([[0.1] * 64], pa.list_(pa.float32())),
        }
    )
    emb_tbl = pa.concat_tables([emb_tbl, short.cast(emb_tbl.schema)]).cast(RAW_ITEM_EMBEDDINGS)

    signed_up = world.user_signup_us < day_end_us
    users_tbl = pa.table(
        {
            "user_id": pa.array(world.user_ids[signed_up].astype(object), pa.string()),
            "language": pa.array(np.array(LANGUAGES, dtype=object)[world.user_lang[signed_up]], pa.string()),
            "region": pa.array(np.array(REGIONS, dtype=object)[world.user_region[signed_up]], pa.string()),
            "signup_ts": _ts_array(world.user_signup_us[signed_up]),
        },
        schema=RAW_USERS,
    )
    return {"events": events, "items": items_tbl, "item_embeddings": emb_tbl, "users": users_tbl}


def generate(store: DatasetStore, cfg: SyntheticConfig, write_success: bool = True) -> dict[str, dict[str, int]]:
    """Generate cfg.num_days days of raw data under the store's root. Returns row counts per day and table."""
    world = _World(cfg)
    counts: dict[str, dict[str, int]] = {}
    for i, day in enumerate(cfg.days):
        rng = np.random.default_rng([cfg.seed, i])
        tables = _generate_day(world, i, day, rng)
        write_raw_day(store, day, tables, write_success=write_success)
        counts[day] = {name: t.num_rows for name, t in tables.items()}
    return counts
