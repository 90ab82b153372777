"""Small training_events-shaped partitions whose labels depend on the features, written and committed like the
datagen assets write them, for model, loader and index tests without Spark.

Users prefer one of `num_clusters` item clusters; an item's content embedding is its cluster centroid plus
noise. Engagement probability is much higher on the preferred cluster, so a model that learns user x content
affinity gets a high AUC and beats most-popular retrieval."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_assets.core.schemas import EMBEDDING_DIM
from resources.storage import DatasetStore

LANGS = ["hi", "ta", "te"]


def make_world(num_users=400, num_items=300, num_clusters=8, seed=0):
    rng = np.random.default_rng(seed)
    centroids = rng.normal(0, 1, (num_clusters, EMBEDDING_DIM)).astype(np.float32)
    item_cluster = rng.integers(0, num_clusters, num_items)
    emb = centroids[item_cluster] + rng.normal(0, 0.5, (num_items, EMBEDDING_DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return {
        "rng": rng,
        "user_fav": rng.integers(0, num_clusters, num_users),
        "item_cluster": item_cluster,
        "emb": emb,
        "popularity": rng.zipf(1.6, num_items).astype(np.float64).clip(max=50),
        "num_users": num_users,
        "num_items": num_items,
    }


def make_day(world, day: str, events: int, seed: int) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    nu, ni = world["num_users"], world["num_items"]
    users = rng.integers(0, nu, events)
    p = world["popularity"] / world["popularity"].sum()
    items = rng.choice(ni, events, p=p)
    # Half of the impressions are on the user's favourite cluster, as a personalised feed would serve.
    fav_pool = [np.flatnonzero(world["item_cluster"] == c) for c in range(world["item_cluster"].max() + 1)]
    personal = rng.uniform(size=events) < 0.5
    for i in np.flatnonzero(personal):
        pool = fav_pool[world["user_fav"][users[i]]]
        items[i] = pool[rng.integers(0, len(pool))]
    affinity = (world["item_cluster"][items] == world["user_fav"][users]).astype(np.float64)
    logit = -2.0 + 3.0 * affinity
    liked = rng.uniform(size=events) < 1 / (1 + np.exp(-logit))
    shared = rng.uniform(size=events) < 1 / (1 + np.exp(-(logit - 1.0)))
    followed = rng.uniform(size=events) < 1 / (1 + np.exp(-(logit - 1.5)))
    watch = np.clip(rng.beta(1 + 3 * affinity, 2.5 - affinity), 0, 1.2)
    length = 10 + (items % 50).astype(np.float64)
    start = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)
    created = [start - dt.timedelta(days=int(i % 40)) for i in range(ni)]
    uid = np.array([f"u{u}" for u in range(nu)], dtype=object)
    iid = np.array([f"i{i}" for i in range(ni)], dtype=object)
    ts = pa.array(
        [start + dt.timedelta(seconds=int(s)) for s in rng.integers(0, 86_000, events)], pa.timestamp("us", tz="UTC")
    )
    events_tbl = pa.table(
        {
            "user_id": pa.array(uid[users], pa.string()),
            "item_id": pa.array(iid[items], pa.string()),
            "event_id": pa.array([f"{day}-{k}" for k in range(events)], pa.string()),
            "event_ts": ts,
            "feed_source": pa.array(np.where(personal, "for_you", "trending").astype(object), pa.string()),
            "liked": pa.array(liked),
            "shared": pa.array(shared),
            "followed": pa.array(followed),
            "item_language": pa.array([LANGS[i % 3] for i in items], pa.string()),
            "item_video_length_s": pa.array(length),
            "item_author_id": pa.array([f"a{i % 60}" for i in items], pa.string()),
            "item_category": pa.array([f"c{world['item_cluster'][i] % 5}" for i in items], pa.string()),
            "item_age_days": pa.array((items % 40).astype(np.float64)),
            "user_language": pa.array([LANGS[u % 3] for u in users], pa.string()),
            "user_region": pa.array([f"r{u % 4}" for u in users], pa.string()),
            "user_tenure_days": pa.array((users % 300).astype(np.float64)),
            "watch_ratio": pa.array(watch),
            "play_duration_s": pa.array(watch * length),
        }
    )
    seen = np.unique(items)
    items_tbl = pa.table(
        {
            "item_id": pa.array(iid[seen], pa.string()),
            "num_events": pa.array(np.bincount(items, minlength=ni)[seen]),
            "item_age_days": pa.array((seen % 40).astype(np.float64)),
            "item_language": pa.array([LANGS[i % 3] for i in seen], pa.string()),
            "item_category": pa.array([f"c{world['item_cluster'][i] % 5}" for i in seen], pa.string()),
            "item_author_id": pa.array([f"a{i % 60}" for i in seen], pa.string()),
            "item_video_length_s": pa.array(10 + (seen % 50).astype(np.float64)),
            "item_created_at": pa.array([created[i] for i in seen], pa.timestamp("us", tz="UTC")),
            "embedding": pa.array(list(world["emb"][seen]), pa.list_(pa.float32())),
        }
    )
    return events_tbl, items_tbl


def write_training_events(store: DatasetStore, day: str, events: pa.Table, items: pa.Table, files: int = 2) -> str:
    """Commit a training_events partition (events split over `files` Parquet files) as the datagen asset does."""
    version = store.new_version()
    for name, tbl, n in (("events", events, files), ("items", items, 1)):
        d = store.version_path("training_events", day, version, name)
        store.fs.create_dir(d, recursive=True)
        step = -(-tbl.num_rows // n)
        for k in range(n):
            pq.write_table(tbl.slice(k * step, step), f"{d}/part-{k:05d}.parquet", filesystem=store.fs)
    store.commit("training_events", day, version, row_count=events.num_rows)
    return version


def populate(store: DatasetStore, days: list[str], events_per_day: int = 6000, **world_kw) -> dict:
    world = make_world(**world_kw)
    for k, day in enumerate(days):
        ev, it = make_day(world, day, events_per_day, seed=100 + k)
        write_training_events(store, day, ev, it)
    return world
