"""Model registry and feed publication against the local PostgreSQL server (a fresh database per test)."""

from __future__ import annotations

import threading

import pandas as pd
import psycopg2
import pytest

from recsys_assets.serving import registry
from recsys_assets.serving.feed import FEED_COLUMNS, ensure_feed_table, lock_feed_day, publish_feed
from tests.helpers import PG_DSN


@pytest.fixture()
def conn(pg_database):
    c = psycopg2.connect(dbname=pg_database, **PG_DSN)
    registry.ensure_schema(c)
    yield c
    c.close()


def _register(conn, day: str, passed: bool) -> int:
    version, created = registry.register_version(
        conn,
        "m",
        day,
        fingerprint=f"fp-{day}",
        repository_uri="/repo",
        code_version="abc123",
        data_versions={"training_events": {day: "v1"}},
        components={},
        metrics={"auc": 0.7},
    )
    assert created
    registry.record_checks(conn, "m", version, {"ranker_auc_gate": passed, "retrieval_recall_gate": True})
    return version


def test_versions_are_idempotent_per_fingerprint_and_promotion_needs_passing_checks(conn):
    v1 = _register(conn, "2024-03-01", passed=True)
    again, created = registry.register_version(conn, "m", "2024-03-01", "fp-2024-03-01", "/repo", "abc123", {}, {}, {})
    assert (again, created) == (v1, False)
    v2 = _register(conn, "2024-03-02", passed=False)
    assert (v1, v2) == (1, 2)

    assert registry.promote(conn, "m", v1, reason="first") is None
    with pytest.raises(registry.PromotionRefused, match="ranker_auc_gate"):
        registry.promote(conn, "m", v2)
    with pytest.raises(registry.PromotionRefused, match="not registered"):
        registry.promote(conn, "m", 99)
    assert registry.production_version(conn, "m") == v1
    with pytest.raises(registry.PromotionRefused, match="first production version"):
        registry.rollback(conn, "m")


def test_rollback_walks_back_through_promotions_and_logs_every_change(conn, pg_database):
    v1, v2, v3 = (_register(conn, f"2024-03-0{i}", passed=True) for i in (1, 2, 3))
    for v in (v1, v2, v3):
        registry.promote(conn, "m", v, reason=f"day {v}", actor="test")
    assert registry.previous_production_version(conn, "m") == v2
    assert registry.rollback(conn, "m", reason="ctr drop") == (v3, v2)
    assert registry.previous_production_version(conn, "m") == v1

    # The registry's own rollback walks back one more promotion (the command line and the UI job add the release
    # check and the serving config around it: tests/serving/test_serving_assets.py).
    assert registry.rollback_target(conn, "m") == (v2, v1)
    assert registry.rollback(conn, "m", reason="cli") == (v2, v1)
    assert registry.pin(conn, "m")["to_version"] == v1  # a rollback pins production
    assert registry.production_version(conn, "m") == v1
    log = [(d["action"], d["from_version"], d["to_version"], d["reason"]) for d in registry.deployments(conn, "m")]
    assert log == [
        ("promote", None, 1, "day 1"),
        ("promote", 1, 2, "day 2"),
        ("promote", 2, 3, "day 3"),
        ("rollback", 3, 2, "ctr drop"),
        ("rollback", 2, 1, "cli"),
    ]


def _feed_rows(n_users: int, day: str, version: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "strategy_name": "s",
            "dt": day,
            "user_id": [f"u{i // 20}" for i in range(n_users * 20)],
            "rank": [i % 20 + 1 for i in range(n_users * 20)],
            "item_id": [f"i{i % 997}" for i in range(n_users * 20)],
            "score": [1.0 / (i % 20 + 1) for i in range(n_users * 20)],
            "model_version": version,
            "arm": "production",
        }
    )[FEED_COLUMNS]


def test_feed_swap_is_atomic_for_concurrent_readers(conn, pg_database):
    ensure_feed_table(conn)
    day = "2024-03-02"
    sizes = {publish_feed(conn, _feed_rows(1_000, day, 1), "s", day)}
    assert sizes == {20_000}
    seen, stop = set(), threading.Event()

    def reader():
        r = psycopg2.connect(dbname=pg_database, **PG_DSN)
        r.autocommit = True
        with r.cursor() as cur:
            while not stop.is_set():
                cur.execute(
                    "SELECT count(*), count(DISTINCT model_version) FROM feed WHERE strategy_name = 's' AND dt = %s",
                    (day,),
                )
                seen.add(cur.fetchone())
        r.close()

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i, n_users in enumerate((3_000, 1_000, 3_000, 2_000)):
            assert publish_feed(conn, _feed_rows(n_users, day, i + 2), "s", day) == n_users * 20
    finally:
        stop.set()
        t.join()
    # Only whole feeds were ever visible: one model version at a time and one of the published sizes.
    assert len(seen) >= 2
    assert all(versions == 1 and count in {20_000, 60_000, 40_000} for count, versions in seen), seen
    with conn.cursor() as cur:
        cur.execute("SELECT count(*), min(model_version), max(model_version) FROM feed WHERE dt = %s", (day,))
        assert cur.fetchone() == (40_000, 5, 5)


def test_publish_rejects_rows_without_the_table_columns(conn):
    ensure_feed_table(conn)
    with pytest.raises(ValueError, match="lack columns"):
        publish_feed(conn, _feed_rows(1, "2024-03-02", 1).drop(columns="arm"), "s", "2024-03-02")


def test_any_stored_id_round_trips_through_the_feed_table(conn):
    """Ids are quarantined at datagen when outside the id alphabet, but the feed load must not depend on it: CR/LF
    (a CR once failed the whole day's COPY), quotes, commas, backslashes, tabs, and non-ASCII text round-trip."""
    ensure_feed_table(conn)
    day = "2024-03-02"
    hostile = ["u\rx", "u\nx", 'u"q"', "u,c", "u\\N", "u\tx", "ユーザー", "", "\\."]
    rows = _feed_rows(len(hostile), day, 1)
    rows["user_id"] = [u for u in hostile for _ in range(20)]
    rows["item_id"] = [f'i"{i % 3},\r\n' for i in range(len(rows))]
    assert publish_feed(conn, rows, "s", day) == len(rows)
    with conn.cursor() as cur:
        cur.execute("SELECT user_id, rank, item_id FROM feed WHERE dt = %s ORDER BY user_id, rank", (day,))
        stored = cur.fetchall()
    expected = sorted(zip(rows["user_id"], rows["rank"], rows["item_id"]), key=lambda r: (r[0].encode(), r[1]))
    assert sorted(stored, key=lambda r: (r[0].encode(), r[1])) == expected


def test_two_concurrent_first_publications_of_a_day_never_mix(conn, pg_database):
    """Publisher B is mid-transaction on a day no feed has been published for (its rows copied, not committed) when
    A publishes the same day with other users: A waits for B, then replaces B's rows whole; the day never holds both."""
    ensure_feed_table(conn)
    day = "2024-03-05"
    b = psycopg2.connect(dbname=pg_database, **PG_DSN)
    rows_b = _feed_rows(50, day, 2).assign(user_id=lambda d: "b-" + d["user_id"])
    with b.cursor() as cur:
        lock_feed_day(cur, "s", day)  # what publish_feed holds while it writes
        cur.executemany(
            f"INSERT INTO feed ({', '.join(FEED_COLUMNS)}) VALUES ({', '.join(['%s'] * len(FEED_COLUMNS))})",
            rows_b.itertuples(index=False, name=None),
        )
    done = threading.Event()
    result = {}

    def publish_a():
        a = psycopg2.connect(dbname=pg_database, **PG_DSN)
        result["a"] = publish_feed(a, _feed_rows(30, day, 1), "s", day)
        a.close()
        done.set()

    t = threading.Thread(target=publish_a)
    t.start()
    assert not done.wait(2)  # A waits for B's publication to end
    b.commit()
    b.close()
    t.join(30)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT model_version) FROM feed WHERE dt = %s", (day,))
        assert cur.fetchone() == (30 * 20, 1) and result["a"] == 30 * 20
