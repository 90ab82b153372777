"""The partitioned feed table against the local PostgreSQL server (a fresh database per test): streamed loads swapped
in whole for concurrent readers, a killed publisher leaving nothing, retention, the conversion of an unpartitioned
table, and ids that are data, never COPY syntax."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import psycopg2
import pyarrow as pa
import pytest

from recsys_assets.serving.feed_table import (
    FEED_COLUMNS,
    drop_expired_feed_days,
    drop_retired_feed_tables,
    ensure_feed_table,
    previous_feed_rows,
    publish_feed,
    published_feed_days,
    strategy_table,
)
from tests.helpers import PG_DSN, REPO


@pytest.fixture()
def conn(pg_database):
    c = psycopg2.connect(dbname=pg_database, **PG_DSN)
    ensure_feed_table(c)
    yield c
    c.close()


def _feed_rows(n_users: int, day: str, version: int, strategy: str = "s") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "strategy_name": strategy,
            "dt": day,
            "user_id": [f"u{i // 20}" for i in range(n_users * 20)],
            "rank": [i % 20 + 1 for i in range(n_users * 20)],
            "item_id": [f"i{i % 997}" for i in range(n_users * 20)],
            "score": [1.0 / (i % 20 + 1) for i in range(n_users * 20)],
            "model_version": version,
            "arm": "production",
        }
    )[FEED_COLUMNS]


def _count(conn, day: str, strategy: str = "s") -> tuple[int, int]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*), count(DISTINCT model_version) FROM feed WHERE strategy_name = %s AND dt = %s",
            (strategy, day),
        )
        out = cur.fetchone()
    conn.commit()  # a reader that stays in its transaction would hold off the next swap (see the lock test)
    return out


def _names(conn, query: str) -> list[str]:
    with conn.cursor() as cur:
        cur.execute(query)
        out = [r[0] for r in cur.fetchall()]
    conn.commit()
    return out


def _leaf_tables(conn) -> list[str]:
    """Every table of this database named like a feed partition or a staging table (attached or not)."""
    return _names(conn, "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname LIKE 'feed\\_s\\_%' ORDER BY 1")


def test_the_table_is_partitioned_by_strategy_then_day(conn):
    publish_feed(conn, _feed_rows(3, "2024-03-02", 1), "s", "2024-03-02")
    publish_feed(conn, _feed_rows(2, "2024-03-02", 1, strategy="other"), "other", "2024-03-02")
    publish_feed(conn, _feed_rows(4, "2024-03-03", 1), "s", "2024-03-03")
    with conn.cursor() as cur:
        cur.execute(
            "SELECT c.relkind, pg_get_expr(c.relpartbound, c.oid) FROM pg_class c WHERE c.relname = 'feed' "
            "OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'feed'::regclass) ORDER BY 2 NULLS FIRST"
        )
        assert cur.fetchall() == [("p", None), ("p", "FOR VALUES IN ('other')"), ("p", "FOR VALUES IN ('s')")]
        cur.execute(
            "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass ORDER BY 1",
            (strategy_table("s"),),
        )
        assert [r[0] for r in cur.fetchall()] == ["FOR VALUES IN ('2024-03-02')", "FOR VALUES IN ('2024-03-03')"]
    assert _count(conn, "2024-03-02") == (60, 1) and _count(conn, "2024-03-02", "other") == (40, 1)
    assert published_feed_days(conn, "s") == [("2024-03-02", 60), ("2024-03-03", 80)]
    assert previous_feed_rows(conn, "s", "2024-03-04") == ("2024-03-03", 80)
    assert previous_feed_rows(conn, "s", "2024-03-03") == ("2024-03-02", 60)
    assert previous_feed_rows(conn, "s", "2024-03-02") == (None, 0)


def test_feed_swap_is_atomic_for_concurrent_readers(conn, pg_database):
    """Each publication streams its rows in chunks of 7,000 (several COPY chunks per day); a reader polling the day
    only ever sees one whole published feed."""
    day = "2024-03-02"
    assert publish_feed(conn, _feed_rows(1_000, day, 1), "s", day, chunk_rows=7_000) == 20_000
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
            assert publish_feed(conn, _feed_rows(n_users, day, i + 2), "s", day, chunk_rows=7_000) == n_users * 20
    finally:
        stop.set()
        t.join()
    assert len(seen) >= 2
    assert all(versions == 1 and count in {20_000, 60_000, 40_000} for count, versions in seen), seen
    with conn.cursor() as cur:
        cur.execute("SELECT count(*), min(model_version), max(model_version) FROM feed WHERE dt = %s", (day,))
        assert cur.fetchone() == (40_000, 5, 5)
    assert len(_leaf_tables(conn)) == 1  # each replaced partition was dropped


def test_a_streamed_publication_equals_the_frame_and_rejects_foreign_rows(conn):
    day = "2024-03-02"
    rows = _feed_rows(50, day, 3)
    assert publish_feed(conn, (rows.iloc[s : s + 130] for s in range(0, len(rows), 130)), "s", day) == 1_000
    stored = pd.read_sql_query(f"SELECT {', '.join(FEED_COLUMNS)} FROM feed ORDER BY user_id, rank", conn)
    expected = rows.sort_values(["user_id", "rank"]).reset_index(drop=True)
    assert stored.assign(dt=stored["dt"].astype(str)).equals(expected)
    # A chunk of another day, or one without a column, fails the publication and the served day is unchanged.
    with pytest.raises(ValueError, match=r"\('s', 2024-03-03\) in the publication of \('s', 2024-03-02\)"):
        publish_feed(conn, iter([_feed_rows(5, day, 4), _feed_rows(5, "2024-03-03", 4)]), "s", day)
    with pytest.raises(ValueError, match="lack columns"):
        publish_feed(conn, _feed_rows(1, day, 4).drop(columns="arm"), "s", day)
    assert _count(conn, day) == (1_000, 1) and len(_leaf_tables(conn)) == 1


def test_any_stored_id_round_trips_through_the_feed_table(conn):
    """CR/LF (a CR once failed the whole day's COPY), quotes, commas, backslashes, tabs and non-ASCII text."""
    day = "2024-03-02"
    hostile = ["u\rx", "u\nx", 'u"q"', "u,c", "u\\N", "u\tx", "ユーザー", "", "\\."]
    rows = _feed_rows(len(hostile), day, 1)
    rows["user_id"] = [u for u in hostile for _ in range(20)]
    rows["item_id"] = [f'i"{i % 3},\r\n' for i in range(len(rows))]
    assert publish_feed(conn, rows, "s", day, chunk_rows=33) == len(rows)
    with conn.cursor() as cur:
        cur.execute("SELECT user_id, rank, item_id FROM feed WHERE dt = %s ORDER BY user_id, rank", (day,))
        stored = cur.fetchall()
    expected = sorted(zip(rows["user_id"], rows["rank"], rows["item_id"]), key=lambda r: (r[0].encode(), r[1]))
    assert sorted(stored, key=lambda r: (r[0].encode(), r[1])) == expected
    # The same rows as Arrow tables (what feed_row_chunks streams from the Spark stage's Parquet) store the same.
    tables = [pa.Table.from_pandas(rows.iloc[s : s + 50], preserve_index=False) for s in range(0, len(rows), 50)]
    assert publish_feed(conn, iter(tables), "s", day) == len(rows)
    with conn.cursor() as cur:
        cur.execute("SELECT user_id, rank, item_id, score FROM feed WHERE dt = %s", (day,))
        again = cur.fetchall()
    assert sorted(r[:3] for r in again) == sorted(r[:3] for r in stored)
    assert sorted(r[3] for r in again) == sorted(rows["score"].tolist())  # doubles round-trip exactly


def test_a_replaced_partition_is_dropped_after_the_commit_and_swept_if_left(conn, monkeypatch):
    """The swap detaches the day's previous partition and lists it in feed_retired; it is dropped after the commit
    (outside readers' lock). A publisher that dies between its commit and that drop leaves a detached table that no
    reader sees, and the next publication sweeps it."""
    from recsys_assets.serving import feed_table

    day = "2024-03-04"
    publish_feed(conn, _feed_rows(3, day, 1), "s", day)
    first = _leaf_tables(conn)

    def dies_here(c):
        raise KeyboardInterrupt("killed after the commit")

    monkeypatch.setattr(feed_table, "drop_retired_feed_tables", dies_here)
    with pytest.raises(KeyboardInterrupt):
        publish_feed(conn, _feed_rows(4, day, 2), "s", day)
    monkeypatch.undo()
    assert _count(conn, day) == (80, 1)  # the new feed is served
    with conn.cursor() as cur:
        cur.execute("SELECT table_name FROM feed_retired")
        assert [r[0] for r in cur.fetchall()] == first  # the old partition: detached, listed, not dropped
    conn.commit()
    assert len(_leaf_tables(conn)) == 2
    publish_feed(conn, _feed_rows(5, "2024-03-05", 3), "s", "2024-03-05")  # any later publication sweeps it
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM feed_retired")
        assert cur.fetchone() == (0,)
    conn.commit()
    assert first[0] not in _leaf_tables(conn) and len(_leaf_tables(conn)) == 2  # the two days' partitions


def test_two_concurrent_publications_of_a_day_never_mix(conn, pg_database):
    """Publisher B is mid-COPY of a day (its first chunk sent, the transaction open) when A publishes the same day
    with other users: A waits for B, then replaces B's partition whole; the day never holds both."""
    day = "2024-03-05"
    rows_b = _feed_rows(50, day, 2).assign(user_id=lambda d: "b-" + d["user_id"])
    b_sent, b_go, done = threading.Event(), threading.Event(), threading.Event()
    result = {}

    def chunks_b():
        yield rows_b.iloc[:500]
        b_sent.set()
        b_go.wait(60)
        yield rows_b.iloc[500:]

    def publish(name, rows, finished=None):
        c = psycopg2.connect(dbname=pg_database, **PG_DSN)
        result[name] = publish_feed(c, rows, "s", day)
        c.close()
        if finished:
            finished.set()

    tb = threading.Thread(target=publish, args=("b", chunks_b()))
    tb.start()
    assert b_sent.wait(30)
    ta = threading.Thread(target=publish, args=("a", _feed_rows(30, day, 1), done))
    ta.start()
    assert not done.wait(2)  # A waits for B's publication to end
    assert _count(conn, day) == (0, 0)  # and nothing of B is visible yet
    b_go.set()
    tb.join(30)
    ta.join(30)
    assert result == {"b": 1_000, "a": 600}
    assert _count(conn, day) == (600, 1)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM feed WHERE dt = %s AND user_id LIKE 'b-%%'", (day,))
        assert cur.fetchone() == (0,)


def test_a_reader_in_a_long_transaction_delays_the_swap_without_queueing_other_readers(conn, pg_database):
    """The swap's exclusive lock waits at most lock_timeout_s per try: while a reader holds its transaction open the
    publication retries, other readers keep reading the old feed, and the new one is swapped in once it ends."""
    day = "2024-03-02"
    publish_feed(conn, _feed_rows(10, day, 1), "s", day)
    long_reader = psycopg2.connect(dbname=pg_database, **PG_DSN)
    with long_reader.cursor() as cur:
        cur.execute("SELECT count(*) FROM feed WHERE dt = %s", (day,))  # its transaction stays open
    done, result, ended = threading.Event(), {}, {}

    def publish():
        c = psycopg2.connect(dbname=pg_database, **PG_DSN)
        timings: dict = {}
        result["n"] = publish_feed(
            c, _feed_rows(20, day, 2), "s", day, lock_timeout_s=0.2, swap_wait_s=60, timings=timings
        )
        ended["at"] = time.perf_counter()
        c.close()
        result["timings"] = timings
        done.set()

    t = threading.Thread(target=publish)
    t.start()
    for _ in range(5):  # other readers are not queued behind the waiting swap
        assert not done.is_set()
        started = time.monotonic()
        assert _count(conn, day) == (200, 1)
        assert time.monotonic() - started < 5
        time.sleep(0.3)
    released = time.perf_counter()
    long_reader.commit()
    t.join(30)
    long_reader.close()
    timings = result.pop("timings")
    assert result == {"n": 400} and _count(conn, day) == (400, 1)
    # The lock time reported runs from the DETACH that took readers' lock to the commit: taken after the long reader
    # let go, so neither the retries before (>= 1.5 s) nor the COPY and index build are in it.
    assert 0 < timings["swap_lock_s"] <= ended["at"] - released
    assert timings["copy_s"] > 0
    # A swap that cannot get its lock in time gives up and changes nothing.
    long_reader = psycopg2.connect(dbname=pg_database, **PG_DSN)
    with long_reader.cursor() as cur:
        cur.execute("SELECT count(*) FROM feed WHERE dt = %s", (day,))
    with pytest.raises(RuntimeError, match="could not swap the new partition in for 1 s"):
        publish_feed(conn, _feed_rows(5, day, 3), "s", day, lock_timeout_s=0.2, swap_wait_s=1)
    long_reader.close()
    assert _count(conn, day) == (400, 1) and len(_leaf_tables(conn)) == 1


_KILLED_PUBLISHER = """
import sys, time
import psycopg2
from tests.serving.test_feed_table import _feed_rows
from recsys_assets.serving.feed_table import publish_feed

def chunks():
    rows = _feed_rows(2_000, "2024-03-02", 9)
    yield rows.iloc[:20_000]
    print("SENT", flush=True)
    time.sleep(600)  # killed here, mid-COPY
    yield rows.iloc[20_000:]

conn = psycopg2.connect(dbname=sys.argv[1], host="127.0.0.1", port=5432, user="postgres")
publish_feed(conn, chunks(), "s", "2024-03-02")
"""


def _kill_mid_copy(script: str, pg_database: str, conn, day: str) -> None:
    """Run a publisher script until it has sent its first chunk, check readers still see the old feed, SIGKILL it."""
    p = subprocess.Popen(
        [sys.executable, "-c", script, pg_database],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert p.stdout.readline().strip() == "SENT"
        assert _count(conn, day) == (2_000, 1)  # mid-COPY: the old feed is what readers see
        os.kill(p.pid, signal.SIGKILL)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()


def test_a_killed_publisher_leaves_nothing_visible(conn, pg_database):
    day = "2024-03-02"
    publish_feed(conn, _feed_rows(100, day, 1), "s", day)
    before = _leaf_tables(conn)
    _kill_mid_copy(_KILLED_PUBLISHER, pg_database, conn, day)
    # The server notices the dead client and rolls its transaction back (the staging table with it); wait for that.
    deadline = time.monotonic() + 60
    with conn.cursor() as cur:
        while True:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (pg_database,)
            )
            others = cur.fetchone()[0]
            conn.commit()
            if others == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert _count(conn, day) == (2_000, 1)
    assert _leaf_tables(conn) == before and published_feed_days(conn, "s") == [(day, 2_000)]
    # The day's lock went with it: the next publication goes through.
    assert publish_feed(conn, _feed_rows(10, day, 2), "s", day) == 200 and _count(conn, day) == (200, 1)


def _connector(pg_database):
    """A context manager of a new connection per COPY stream (as PostgresResource.connect gives)."""
    return lambda: contextlib.closing(psycopg2.connect(dbname=pg_database, **PG_DSN))


def _retired(conn) -> list[str]:
    return _names(conn, "SELECT table_name FROM feed_retired ORDER BY 1")


def test_several_copy_streams_load_the_same_rows_and_leave_no_staging_table(conn, pg_database):
    day = "2024-03-02"
    rows = _feed_rows(1_000, day, 3)
    timings: dict = {}
    n = publish_feed(conn, rows, "s", day, chunk_rows=700, streams=3, connect=_connector(pg_database), timings=timings)
    assert n == 20_000 and timings["copy_streams"] == 3
    stored = pd.read_sql_query(f"SELECT {', '.join(FEED_COLUMNS)} FROM feed ORDER BY user_id, rank", conn)
    conn.commit()
    expected = rows.sort_values(["user_id", "rank"]).reset_index(drop=True)
    assert stored.assign(dt=stored["dt"].astype(str)).equals(expected)
    assert len(_leaf_tables(conn)) == 1 and _retired(conn) == []
    # A replacement over two streams; then rows of another day in one stream's chunks: the user's error, the
    # other streams stopped, the staging table dropped, the served day unchanged.
    assert (
        publish_feed(conn, _feed_rows(30, day, 4), "s", day, chunk_rows=70, streams=2, connect=_connector(pg_database))
        == 600
    )
    bad = iter([_feed_rows(50, day, 5), _feed_rows(50, day, 5), _feed_rows(5, "2024-03-03", 5), _feed_rows(50, day, 5)])
    with pytest.raises(ValueError, match=r"\('s', 2024-03-03\) in the publication of \('s', 2024-03-02\)"):
        publish_feed(conn, bad, "s", day, streams=3, connect=_connector(pg_database))
    assert _count(conn, day) == (600, 1)
    assert len(_leaf_tables(conn)) == 1 and _retired(conn) == []


def test_a_loading_multi_stream_staging_table_is_never_swept(conn, pg_database):
    """The staging table of a multi-stream load is committed (other connections load it) and listed for the sweep
    (a killed publisher's is dropped later), but a sweep while its publisher is alive leaves it alone."""
    day = "2024-03-02"
    publish_feed(conn, _feed_rows(10, day, 1), "s", day)
    sent, go, result = threading.Event(), threading.Event(), {}

    def chunks():
        yield _feed_rows(40, day, 2).iloc[:400]
        sent.set()
        go.wait(60)
        yield _feed_rows(40, day, 2).iloc[400:]

    def publish():
        c = psycopg2.connect(dbname=pg_database, **PG_DSN)
        result["n"] = publish_feed(c, chunks(), "s", day, streams=2, connect=_connector(pg_database))
        c.close()

    t = threading.Thread(target=publish)
    t.start()
    try:
        assert sent.wait(30)
        staging = _retired(conn)
        assert len(staging) == 1 and staging[0] in _leaf_tables(conn)
        assert drop_retired_feed_tables(conn) == []  # its publisher holds it
        assert staging[0] in _leaf_tables(conn) and _count(conn, day) == (200, 1)
    finally:
        go.set()
        t.join(60)
    assert result == {"n": 800} and _count(conn, day) == (800, 1)
    assert _retired(conn) == [] and len(_leaf_tables(conn)) == 1


def test_a_killed_multi_stream_publisher_leaves_nothing_visible_and_its_table_is_swept(conn, pg_database):
    day = "2024-03-02"
    publish_feed(conn, _feed_rows(100, day, 1), "s", day)
    script = _KILLED_PUBLISHER.replace(
        'publish_feed(conn, chunks(), "s", "2024-03-02")',
        "import contextlib\n"
        'connect = lambda: contextlib.closing(psycopg2.connect(dbname=sys.argv[1], host="127.0.0.1", port=5432, '
        'user="postgres"))\n'
        'publish_feed(conn, chunks(), "s", "2024-03-02", streams=2, connect=connect)',
    )
    _kill_mid_copy(script, pg_database, conn, day)
    deadline = time.monotonic() + 60
    while len(_retired(conn)) != 1 or drop_retired_feed_tables(conn) == []:  # swept once its sessions are gone
        assert time.monotonic() < deadline, "the killed publisher's staging table was never swept"
        time.sleep(0.2)
    assert _count(conn, day) == (2_000, 1) and published_feed_days(conn, "s") == [(day, 2_000)]
    assert len(_leaf_tables(conn)) == 1 and _retired(conn) == []
    assert publish_feed(conn, _feed_rows(10, day, 2), "s", day, streams=2, connect=_connector(pg_database)) == 200


def test_retention_drops_the_partitions_of_old_days(conn):
    days = [f"2024-03-0{i}" for i in range(1, 6)]
    for d in days:
        publish_feed(conn, _feed_rows(2, d, 1), "s", d)
    publish_feed(conn, _feed_rows(2, "2024-03-01", 1, strategy="other"), "other", "2024-03-01")
    assert len(_leaf_tables(conn)) == 6
    assert drop_expired_feed_days(conn, "s", "2024-03-05", retention_days=2) == ["2024-03-01", "2024-03-02"]
    assert [d for d, _ in published_feed_days(conn, "s")] == days[2:]
    assert _count(conn, "2024-03-01") == (0, 0) and _count(conn, "2024-03-03") == (40, 1)
    assert _count(conn, "2024-03-01", "other") == (40, 1)  # another strategy keeps its own days
    assert len(_leaf_tables(conn)) == 4
    assert drop_expired_feed_days(conn, "s", "2024-03-05", retention_days=2) == []


def test_an_unpartitioned_feed_table_is_converted_with_its_rows(pg_database):
    c = psycopg2.connect(dbname=pg_database, **PG_DSN)
    try:
        with c.cursor() as cur:
            cur.execute(
                "CREATE TABLE feed (strategy_name text NOT NULL, dt date NOT NULL, user_id text NOT NULL, "
                "rank integer NOT NULL, item_id text NOT NULL, score double precision NOT NULL, "
                "model_version integer NOT NULL, arm text NOT NULL, PRIMARY KEY (strategy_name, dt, user_id, rank))"
            )
            for rows in (_feed_rows(3, "2024-03-01", 1), _feed_rows(2, "2024-03-02", 2)):
                cur.executemany(
                    f"INSERT INTO feed VALUES ({', '.join(['%s'] * len(FEED_COLUMNS))})",
                    rows.itertuples(index=False, name=None),
                )
        c.commit()
        ensure_feed_table(c)
        ensure_feed_table(c)  # idempotent
        with c.cursor() as cur:
            cur.execute("SELECT relkind FROM pg_class WHERE relname = 'feed'")
            assert cur.fetchone() == ("p",)
            cur.execute("SELECT to_regclass('feed_unpartitioned')")
            assert cur.fetchone() == (None,)
        assert published_feed_days(c, "s") == [("2024-03-01", 60), ("2024-03-02", 40)]
        assert _count(c, "2024-03-02") == (40, 1)
    finally:
        c.close()
