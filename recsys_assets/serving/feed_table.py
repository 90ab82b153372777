"""The PostgreSQL `feed` table the serving side reads: partitioned by strategy and day, a day loaded by a streamed COPY
into a staging table that is indexed and then swapped in for the day's partition in the same transaction, old days
dropped by retention.

    feed                         PARTITION BY LIST (strategy_name)      -- what readers query
      feed_s_<hash(strategy)>    PARTITION BY LIST (dt)                 -- one per strategy, created once
        feed_<hash>_<yyyymmdd>_<nonce>  FOR VALUES IN (<day>)           -- one per published (strategy, day)
    feed_partitions (strategy_name, dt, table_name, rows, published_at)  -- the catalogue of leaves

A publication is ONE transaction: take the (strategy, day) advisory lock, create the staging table, COPY the rows
into it from a stream of bounded chunks (memory: one chunk's CSV, not the day), count them, build the primary key
and a CHECK constraint equal to the partition bound (so ATTACH needs no validation scan), detach + drop the day's
previous partition, attach the new one, and record it. Readers see the previous complete feed or the new one, never
part of one; a publisher killed at any point leaves nothing (the transaction, staging table included, rolls back).
The swap's exclusive lock on the strategy's table lasts the detach/attach only, after the COPY and the index build.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager

import pandas as pd

FEED_COLUMNS = ["strategy_name", "dt", "user_id", "rank", "item_id", "score", "model_version", "arm"]
FEED_KEY = ("strategy_name", "dt", "user_id", "rank")
COPY_CHUNK_ROWS = 200_000  # rows rendered to CSV at a time (~21 MB of text at ~106 characters a row)
# The swap's DETACH needs an exclusive lock on the strategy's table; a reader in a long transaction holds it off, and
# readers arriving meanwhile would queue behind the waiting swap. So each try waits at most SWAP_LOCK_TIMEOUT_S, is
# rolled back to a savepoint (the loaded staging table stays) and retried, for at most SWAP_WAIT_S in all.
SWAP_LOCK_TIMEOUT_S = 2.0
SWAP_WAIT_S = 600.0

FEED_DDL = f"""
CREATE TABLE IF NOT EXISTS feed (
    strategy_name text    NOT NULL,
    dt            date    NOT NULL,
    user_id       text    NOT NULL,
    rank          integer NOT NULL,
    item_id       text    NOT NULL,
    score         double precision NOT NULL,
    model_version integer NOT NULL,
    arm           text    NOT NULL,
    PRIMARY KEY ({", ".join(FEED_KEY)})
) PARTITION BY LIST (strategy_name);
CREATE TABLE IF NOT EXISTS feed_partitions (
    strategy_name text        NOT NULL,
    dt            date        NOT NULL,
    table_name    text        NOT NULL UNIQUE,
    rows          bigint      NOT NULL,
    published_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (strategy_name, dt)
);
CREATE TABLE IF NOT EXISTS feed_retired (
    table_name text        PRIMARY KEY,
    retired_at timestamptz NOT NULL DEFAULT now()
);
"""


def strategy_table(strategy_name: str) -> str:
    """The strategy's sub-partitioned table (a stable name: any strategy string maps to a valid identifier)."""
    return "feed_s_" + hashlib.sha1(strategy_name.encode()).hexdigest()[:12]


def _relkind(cur, name: str) -> str | None:
    cur.execute("SELECT c.relkind FROM pg_class c WHERE c.oid = to_regclass(%s)", (name,))
    row = cur.fetchone()
    return row[0] if row else None


def ensure_feed_table(conn) -> None:
    """Create the partitioned feed table and its catalogue (idempotent, serialised between processes). A `feed` table
    from before partitioning (an ordinary table) is converted: each of its (strategy, day) becomes a partition."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('recsys_feed_ddl'))")
        legacy = _relkind(cur, "feed") == "r"
        if legacy:
            cur.execute("ALTER TABLE feed RENAME TO feed_unpartitioned")
            cur.execute("ALTER INDEX IF EXISTS feed_pkey RENAME TO feed_unpartitioned_pkey")
        cur.execute(FEED_DDL)
        if legacy:
            cur.execute("SELECT DISTINCT strategy_name, dt FROM feed_unpartitioned ORDER BY 1, 2")
            for strategy_name, day in cur.fetchall():
                _ensure_strategy(cur, strategy_name)
                table = _stage(cur, strategy_name, str(day))
                cur.execute(
                    f"INSERT INTO {table} SELECT {', '.join(FEED_COLUMNS)} FROM feed_unpartitioned "
                    "WHERE strategy_name = %s AND dt = %s",
                    (strategy_name, day),
                )
                rows = cur.rowcount
                _index_staging(cur, strategy_name, str(day), table)
                _swap_in(cur, strategy_name, str(day), table, rows)
            cur.execute("DROP TABLE feed_unpartitioned")
    conn.commit()


def _ensure_strategy(cur, strategy_name: str) -> str:
    """The strategy's table under `feed`, created when missing (callers hold the DDL lock or the table exists)."""
    table = strategy_table(strategy_name)
    if _relkind(cur, table) is None:
        cur.execute(
            f"CREATE TABLE {table} PARTITION OF feed FOR VALUES IN (%s) PARTITION BY LIST (dt)", (strategy_name,)
        )
    return table


def lock_feed_day(cur, strategy_name: str, day: str) -> None:
    """Serialise publications of one (strategy, day) until the transaction ends: a second publisher waits, then
    replaces the first's partition whole."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"recsys_feed:{strategy_name}:{day}",))


def _stage(cur, strategy_name: str, day: str, table: str | None = None) -> str:
    """A new empty table shaped like feed (not yet a partition), named for its (strategy, day) and unique (or
    `table`, a name `_staging_name` gave)."""
    table = table or _staging_name(strategy_name, day)
    cur.execute(f"CREATE TABLE {table} (LIKE feed INCLUDING DEFAULTS)")
    return table


def _copy_into(cur, table: str, stream: _CsvStream) -> None:
    cur.copy_expert(f"COPY {table} ({', '.join(FEED_COLUMNS)}) FROM STDIN WITH (FORMAT csv)", stream, size=1 << 20)


def _loaded_rows(cur, table: str, expected: int) -> int:
    """The staging table's row count, which must be the rows the COPY stream(s) sent."""
    cur.execute(f"SELECT count(*) FROM {table}")
    written = int(cur.fetchone()[0])
    if written != expected:
        raise RuntimeError(f"feed COPY wrote {written} rows, expected {expected}; rolled back")
    return written


def _staging_name(strategy_name: str, day: str) -> str:
    return f"{strategy_table(strategy_name)[:19]}_{day.replace('-', '')}_{uuid.uuid4().hex[:8]}"


def _owner_key(table: str) -> str:
    """The advisory lock a multi-stream publisher holds on its committed staging table for as long as it loads it:
    the sweep (drop_retired_feed_tables) drops a listed table only when no live session holds it."""
    return f"recsys_feed_stage:{table}"


def _index_staging(cur, strategy_name: str, day: str, table: str) -> None:
    """The loaded staging table's primary key and its partition bound as a CHECK (ATTACH then skips its scan): built
    before the swap, under no lock a reader of the feed waits on, and once however often the swap retries."""
    cur.execute(f"ALTER TABLE {table} ADD PRIMARY KEY ({', '.join(FEED_KEY)})")
    cur.execute(
        f"ALTER TABLE {table} ADD CONSTRAINT {table}_bound CHECK (strategy_name = %s AND dt = %s)",
        (strategy_name, day),
    )


def _swap_in(cur, strategy_name: str, day: str, table: str, rows: int) -> float:
    """Make the indexed staging `table` the (strategy, day) partition in place of the previous one (detached and
    listed in feed_retired, dropped after the commit), in the caller's transaction. Returns when (perf_counter) the
    lock that readers of the strategy's feed wait on was taken: the DETACH of the previous partition (a first
    publication's ATTACH does not block readers)."""
    parent = _ensure_strategy(cur, strategy_name)
    cur.execute(
        "SELECT table_name FROM feed_partitions WHERE strategy_name = %s AND dt = %s FOR UPDATE", (strategy_name, day)
    )
    old = cur.fetchone()
    locked_at = None
    if old:
        cur.execute(f"ALTER TABLE {parent} DETACH PARTITION {old[0]}")
        locked_at = time.perf_counter()
        # Dropped after the commit (drop_retired_feed_tables): a DROP here would hold readers' lock for as long as
        # the old partition's files take to remove (0.9 s at 16M rows), where the swap itself takes milliseconds.
        cur.execute("INSERT INTO feed_retired (table_name) VALUES (%s) ON CONFLICT DO NOTHING", (old[0],))
    cur.execute(f"ALTER TABLE {parent} ATTACH PARTITION {table} FOR VALUES IN (%s)", (day,))
    cur.execute(
        "INSERT INTO feed_partitions (strategy_name, dt, table_name, rows) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (strategy_name, dt) DO UPDATE SET table_name = EXCLUDED.table_name, rows = EXCLUDED.rows, "
        "published_at = now()",
        (strategy_name, day, table, rows),
    )
    return locked_at if locked_at is not None else time.perf_counter()


def _swap_in_with_retries(
    cur, strategy_name: str, day: str, table: str, rows: int, lock_timeout_s: float, swap_wait_s: float
) -> float:
    """_swap_in under a lock timeout, retried from a savepoint until `swap_wait_s` has passed (SWAP_LOCK_TIMEOUT_S).
    Returns what the successful `_swap_in` returns (when readers' lock was taken; it is held until the commit)."""
    import psycopg2.errors

    deadline = time.monotonic() + swap_wait_s
    cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout_s * 1000)}ms",))
    while True:
        cur.execute("SAVEPOINT feed_swap")
        try:
            locked_at = _swap_in(cur, strategy_name, day, table, rows)
        except psycopg2.errors.LockNotAvailable as e:
            cur.execute("ROLLBACK TO SAVEPOINT feed_swap")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"feed ({strategy_name!r}, {day}): could not swap the new partition in for {swap_wait_s:.0f} s; "
                    f"a transaction kept {strategy_table(strategy_name)} locked ({e.pgerror or e}). Nothing changed."
                ) from None
            time.sleep(min(lock_timeout_s, 1.0))
            continue
        cur.execute("RELEASE SAVEPOINT feed_swap")
        cur.execute("SET LOCAL lock_timeout = 0")
        return locked_at


def _arrow_rows(chunk):
    """A chunk of feed rows (an Arrow table, or a pandas frame) as an Arrow table of FEED_COLUMNS."""
    import pyarrow as pa

    if isinstance(chunk, pa.Table):
        return chunk.select(FEED_COLUMNS)
    return pa.Table.from_pandas(chunk[FEED_COLUMNS], preserve_index=False)


def _csv_buffer(table):
    """The rows as CSV in an Arrow buffer, rendered by Arrow's writer (C++: ~4x pandas' to_csv, which was most of a
    publication's time; no Python string per value). Every value quoted: any stored id (CR, LF, quotes, commas,
    backslashes, `\\.`) is data, never syntax; nulls (which the table's constraints refuse) stay unquoted."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    out = pa.BufferOutputStream()
    pa_csv.write_csv(table, out, pa_csv.WriteOptions(include_header=False, quoting_style="all_valid"))
    return out.getvalue()


class _CsvStream(io.RawIOBase):
    """A readable stream of the CSV text of row chunks, rendered one chunk at a time (what COPY reads)."""

    def __init__(self, chunks: Iterable, strategy_name: str, day: str):
        self._chunks = iter(chunks)
        self._buf = memoryview(b"")  # the current chunk's CSV not yet read (a view: reads copy only what they take)
        self.rows = 0
        self.error: BaseException | None = None  # what failed in a read (COPY reports it as its own error)
        self._strategy, self._day = strategy_name, day

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> bool:
        import pyarrow as pa
        import pyarrow.compute as pc

        for chunk in self._chunks:
            names = chunk.column_names if isinstance(chunk, pa.Table) else list(chunk.columns)
            missing = [c for c in FEED_COLUMNS if c not in names]
            if missing:
                raise ValueError(f"feed rows lack columns {missing}")
            if not len(chunk):
                continue
            table = _arrow_rows(chunk)
            wrong = pc.or_(
                pc.not_equal(table["strategy_name"], self._strategy),
                pc.not_equal(table["dt"].cast(pa.string()), self._day),
            )
            if pc.any(wrong).as_py():
                first = table.filter(wrong).slice(0, 1).to_pylist()[0]
                raise ValueError(
                    f"feed rows of ({first['strategy_name']!r}, {first['dt']}) in the publication of "
                    f"({self._strategy!r}, {self._day})"
                )
            self._buf = memoryview(_csv_buffer(table))
            self.rows += len(table)
            return True
        return False

    def readinto(self, b) -> int:
        while not self._buf:
            try:
                more = self._next_chunk()
            except BaseException as e:
                self.error = e
                raise
            if not more:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class _SharedChunks:
    """One iterator of row chunks read by several COPY streams: each `next` hands the next chunk to one stream
    (reading it, e.g. from Parquet, under a lock; rendering and sending it in the stream's thread). `abort` makes
    every stream's next read fail, so that the others stop when one has failed."""

    def __init__(self, chunks: Iterator):
        self._chunks = chunks
        self._lock = threading.Lock()
        self.aborted = False
        self.first_failure: tuple[_CsvStream, BaseException] | None = None  # the stream that failed first, and how

    def __iter__(self):
        return self

    def __next__(self):
        with self._lock:
            if self.aborted:
                raise RuntimeError("another COPY stream of this publication failed")
            return next(self._chunks)

    def fail(self, stream: _CsvStream, error: BaseException) -> None:
        with self._lock:
            if not self.aborted:
                self.aborted, self.first_failure = True, (stream, error)


def _chunks(rows: pd.DataFrame | Iterable, chunk_rows: int) -> Iterator:
    if isinstance(rows, pd.DataFrame):
        missing = [c for c in FEED_COLUMNS if c not in rows.columns]
        if missing:
            raise ValueError(f"feed rows lack columns {missing}")
        for s in range(0, len(rows), chunk_rows):
            yield rows.iloc[s : s + chunk_rows]
        return
    yield from rows


def publish_feed(
    conn,
    rows: pd.DataFrame | Iterable,
    strategy_name: str,
    day: str,
    chunk_rows: int = COPY_CHUNK_ROWS,
    lock_timeout_s: float = SWAP_LOCK_TIMEOUT_S,
    swap_wait_s: float = SWAP_WAIT_S,
    timings: dict | None = None,
    streams: int = 1,
    connect: Callable[[], AbstractContextManager] | None = None,
) -> int:
    """Replace the (strategy_name, day) partition of the feed table with `rows` (a frame, or an iterable of pandas
    frames or Arrow tables streamed in order: e.g. the Parquet batches of a feed scored on Spark), in one
    transaction (module docstring).
    Returns the rows written. `timings`, when given, receives `copy_s` (the staging load and its index: readers
    unaffected) and `swap_lock_s` (from the DETACH of the previous partition to the commit: how long readers of the
    strategy's feed wait at most; ~0 for a first publication).

    `streams` > 1: the staging table is loaded by that many COPY streams at once, each on its own connection from
    `connect` (a context manager of a connection, e.g. PostgresResource.connect), taking the chunks in turn
    (`_publish_streams`); the swap is the same."""
    day = str(dt.date.fromisoformat(str(day)))
    timings = {} if timings is None else timings
    if streams > 1:
        if connect is None:
            raise ValueError("a publication over several COPY streams needs `connect` for their connections")
        return _publish_streams(
            conn, connect, _chunks(rows, chunk_rows), strategy_name, day, streams, lock_timeout_s, swap_wait_s, timings
        )
    stream = _CsvStream(_chunks(rows, chunk_rows), strategy_name, day)
    t0 = time.perf_counter()
    try:
        with conn.cursor() as cur:  # the strategy's table, in its own short transaction under the DDL lock
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('recsys_feed_ddl'))")
            _ensure_strategy(cur, strategy_name)
        conn.commit()
        with conn.cursor() as cur:
            lock_feed_day(cur, strategy_name, day)
            table = _stage(cur, strategy_name, day)
            _copy_into(cur, table, stream)
            written = _loaded_rows(cur, table, stream.rows)
            _index_staging(cur, strategy_name, day, table)
            timings["copy_s"] = round(time.perf_counter() - t0, 3)  # load + index: readers unaffected
            locked_at = _swap_in_with_retries(cur, strategy_name, day, table, written, lock_timeout_s, swap_wait_s)
        conn.commit()
        timings["swap_lock_s"] = round(time.perf_counter() - locked_at, 4)
    except BaseException as e:
        conn.rollback()
        if stream.error is not None and stream.error is not e:
            raise stream.error from None  # the rows' own error (a user's), not the COPY that carried it
        raise
    drop_retired_feed_tables(conn)  # the replaced partition, now that readers no longer see it
    return written


def _publish_streams(
    conn, connect, chunks: Iterator, strategy_name: str, day: str, streams: int, lock_timeout_s, swap_wait_s, timings
) -> int:
    """publish_feed over `streams` COPY streams. Several connections cannot load a table that only the publisher's
    open transaction can see, so the staging table is created and committed first, listed in feed_retired (so that a
    publisher killed at any point leaves a table the next publication's sweep drops, never a visible one) and held by
    a session advisory lock (`_owner_key`) so that no sweep drops it while it loads. Then, in the publisher's
    transaction (under the day's lock): the streams load it, each committing its share; the rows are counted, the
    table indexed and swapped in, and its feed_retired entry removed, in one commit. Readers see the same as with
    one stream: the previous complete feed, then the new one."""
    shared = _SharedChunks(chunks)
    table = _staging_name(strategy_name, day)
    key = _owner_key(table)
    t0 = time.perf_counter()
    created = False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('recsys_feed_ddl'))")
            _ensure_strategy(cur, strategy_name)
            cur.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))  # session-level: until unlocked or gone
            _stage(cur, strategy_name, day, table)
            cur.execute("INSERT INTO feed_retired (table_name) VALUES (%s)", (table,))
        conn.commit()
        created = True
        with conn.cursor() as cur:
            lock_feed_day(cur, strategy_name, day)  # held to the commit: a second publisher of the day waits

            def load(stream: _CsvStream) -> None:
                try:
                    with connect() as c:
                        with c.cursor() as cc:
                            _copy_into(cc, table, stream)
                        c.commit()
                except BaseException as e:
                    shared.fail(stream, e)
                    raise

            loads = [_CsvStream(shared, strategy_name, day) for _ in range(streams)]
            with ThreadPoolExecutor(streams, thread_name_prefix="feed-copy") as pool:
                futures = [pool.submit(load, stream) for stream in loads]
            for f in futures:
                f.result()  # re-raises a stream's failure (the first one is reported below)
            written = _loaded_rows(cur, table, sum(stream.rows for stream in loads))
            _index_staging(cur, strategy_name, day, table)
            timings["copy_s"] = round(time.perf_counter() - t0, 3)
            timings["copy_streams"] = streams
            locked_at = _swap_in_with_retries(cur, strategy_name, day, table, written, lock_timeout_s, swap_wait_s)
            cur.execute("DELETE FROM feed_retired WHERE table_name = %s", (table,))
        conn.commit()
        timings["swap_lock_s"] = round(time.perf_counter() - locked_at, 4)
    except BaseException:
        conn.rollback()
        if created:
            _drop_staging(conn, table)
        if shared.first_failure is not None:  # the stream that failed first: the others stopped because of it
            stream, error = shared.first_failure
            raise (stream.error or error) from None  # a row's own error (a user's), not the COPY that carried it
        raise
    finally:
        _unlock(conn, key)
    drop_retired_feed_tables(conn)
    return written


def _drop_staging(conn, table: str) -> None:
    """A failed multi-stream publication's staging table, dropped now (or, if that fails too, by a later sweep)."""
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
            cur.execute("DELETE FROM feed_retired WHERE table_name = %s", (table,))
        conn.commit()
    except Exception:
        conn.rollback()


def _unlock(conn, key: str) -> None:
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
        conn.commit()
    except Exception:  # a broken connection: its session, and so the lock, is gone
        conn.rollback()


def drop_retired_feed_tables(conn) -> list[str]:
    """Drop the tables listed in feed_retired, each in its own short transaction, outside any lock a reader of the
    feed waits on: partitions that swaps detached, those a publisher killed between its commit and this left behind,
    and the staging tables of multi-stream publications that died (a live one's holds its `_owner_key` lock and is
    skipped). Any later publication sweeps them. Returns the tables dropped."""
    with conn.cursor() as cur:
        cur.execute("SELECT table_name FROM feed_retired ORDER BY retired_at")
        listed = [r[0] for r in cur.fetchall()]
    conn.commit()
    dropped = []
    for name in listed:
        with conn.cursor() as cur:
            cur.execute("SELECT table_name FROM feed_retired WHERE table_name = %s FOR UPDATE SKIP LOCKED", (name,))
            mine = cur.fetchone() is not None
            if mine:
                cur.execute("SELECT pg_try_advisory_xact_lock(hashtext(%s))", (_owner_key(name),))
                mine = bool(cur.fetchone()[0])  # false: a live publication is still loading it
            if mine:
                cur.execute(f"DROP TABLE IF EXISTS {name}")
                cur.execute("DELETE FROM feed_retired WHERE table_name = %s", (name,))
                dropped.append(name)
        conn.commit()
    return dropped


def previous_feed_rows(conn, strategy_name: str, day: str) -> tuple[str | None, int]:
    """(the newest earlier day with a published feed of this strategy, its row count): from the catalogue, no scan."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT dt, rows FROM feed_partitions WHERE strategy_name = %s AND dt < %s ORDER BY dt DESC LIMIT 1",
            (strategy_name, day),
        )
        row = cur.fetchone()
    return (str(row[0]), int(row[1])) if row else (None, 0)


def published_feed_days(conn, strategy_name: str) -> list[tuple[str, int]]:
    """[(day, rows)] of the strategy's partitions, oldest first."""
    with conn.cursor() as cur:
        cur.execute("SELECT dt, rows FROM feed_partitions WHERE strategy_name = %s ORDER BY dt", (strategy_name,))
        return [(str(d), int(n)) for d, n in cur.fetchall()]


def drop_expired_feed_days(conn, strategy_name: str, today: str, retention_days: int) -> list[str]:
    """Drop the strategy's partitions of days more than `retention_days` before `today` (each detached and dropped
    under its day's lock, in one transaction). Returns the days dropped."""
    cutoff = dt.date.fromisoformat(str(today)) - dt.timedelta(days=retention_days)
    dropped = []
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT dt, table_name FROM feed_partitions WHERE strategy_name = %s AND dt < %s ORDER BY dt",
                (strategy_name, cutoff),
            )
            parent = strategy_table(strategy_name)
            for day, table in cur.fetchall():
                lock_feed_day(cur, strategy_name, str(day))
                cur.execute(f"ALTER TABLE {parent} DETACH PARTITION {table}")
                cur.execute(f"DROP TABLE {table}")
                cur.execute("DELETE FROM feed_partitions WHERE strategy_name = %s AND dt = %s", (strategy_name, day))
                dropped.append(str(day))
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return dropped
