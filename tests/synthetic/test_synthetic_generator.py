"""The synthetic generator's interest drift: off by default (fixed favourites, the demo's world unchanged), and when on,
the share of users whose favourites move each day is the configured one and the events follow each day's favourites."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from recsys_assets.synthetic.generator import SyntheticConfig, _World, generate
from resources.store import DatasetStore


def small(**kw) -> SyntheticConfig:
    return SyntheticConfig(num_days=4, events_per_day=20_000, num_users=3_000, initial_items=1_200, **kw)


def test_no_drift_keeps_every_days_favourites_and_the_default_draws():
    default, drift_off = _World(small()), _World(small(interest_drift=0.0))
    assert all(np.array_equal(f, default.user_fav) for f in default.user_fav_by_day)
    assert np.array_equal(default.user_fav, drift_off.user_fav)
    # the drifting world starts from the same users and favourites: only later days differ
    drifting = _World(small(interest_drift=0.3))
    assert np.array_equal(drifting.user_fav_by_day[0], default.user_fav)
    assert np.array_equal(drifting.item_cluster, default.item_cluster)


def test_drift_moves_the_configured_share_of_users_each_day():
    cfg = SyntheticConfig(num_days=6, num_users=200_000, interest_drift=0.2)
    favs = _World(cfg).user_fav_by_day
    for before, after in zip(favs, favs[1:]):
        changed = (before != after).any(axis=1).mean()
        # a mover draws its new cluster uniformly, so 1 in num_clusters keeps the old one
        assert abs(changed - 0.2 * (1 - 1 / cfg.num_clusters)) < 0.005, changed
        assert ((before != after).sum(axis=1) <= 1).all()  # one favourite at a time
    assert (favs[0] != favs[-1]).any(axis=1).mean() > 0.5


def test_events_follow_each_days_favourites(tmp_path):
    cfg = small(interest_drift=0.5)
    world = _World(cfg)
    store = DatasetStore(str(tmp_path))
    generate(store, cfg)
    last = len(cfg.days) - 1
    events = pq.read_table(store.raw_partition_path("events", cfg.days[last])).to_pandas()
    events = events[events["user_id"].notna() & events["item_id"].notna()]
    user = events["user_id"].str[1:].astype(int).to_numpy()
    item = events["item_id"].str[1:].astype(int).to_numpy()
    cluster = world.item_cluster[item]

    def in_favourites(favs):
        return (cluster[:, None] == favs[user]).any(axis=1).mean()

    # half the impressions come from the day's favourites: far more events on today's than on day 0's favourites
    assert in_favourites(world.user_fav_by_day[last]) > in_favourites(world.user_fav_by_day[0]) + 0.1
