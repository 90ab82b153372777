"""The published feed: which users get one (stratified sampling), and the PostgreSQL `feed` table a day is written
to in one transaction. The scoring itself (query tower -> FAISS -> ranker) is the model library's
(recsys_assets/ml/scoring.py)."""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass

import pandas as pd

from recsys_assets.serving.serving_config import arm_of_buckets, stable_hash, user_buckets

FEED_COLUMNS = ["strategy_name", "dt", "user_id", "rank", "item_id", "score", "model_version", "arm"]

FEED_DDL = """
CREATE TABLE IF NOT EXISTS feed (
    strategy_name text    NOT NULL,
    dt            date    NOT NULL,
    user_id       text    NOT NULL,
    rank          integer NOT NULL,
    item_id       text    NOT NULL,
    score         double precision NOT NULL,
    model_version integer NOT NULL,
    arm           text    NOT NULL,
    PRIMARY KEY (strategy_name, dt, user_id, rank)
);
"""


def active_users(store, day: str) -> pd.DataFrame:
    """Distinct users with events on the day and their latest attributes."""
    from recsys_assets.ml.loader import committed_events_dataset
    from recsys_assets.ml.scoring import USER_COLUMNS

    t = committed_events_dataset(store, [day]).to_table(columns=[*USER_COLUMNS, "event_ts"])
    df = t.to_pandas().sort_values("event_ts", kind="stable")
    return (
        df.drop_duplicates("user_id", keep="last")
        .drop(columns="event_ts")
        .sort_values("user_id")
        .reset_index(drop=True)
    )


@dataclass(frozen=True)
class DayFeed:
    day: str
    rows: pd.DataFrame  # FEED_COLUMNS
    active_users: int
    scored_users: int
    per_arm: list[list]  # [arm, model version, users, rows]
    generate_seconds: float
    with_history: bool


def build_feed(store, day: str, spec, cfg: dict) -> DayFeed:
    """The day's feed: its active users (stratified-sampled when serving.yaml says so) split into A/B arms by the
    served config, each arm scored with its release (recsys_assets/ml/scoring.py) and the users' history as of the
    day when one is committed."""
    from recsys_assets.core.datasets import USER_HISTORY
    from recsys_assets.core.days import window_of
    from recsys_assets.ml.release import load_release
    from recsys_assets.ml.scoring import generate_feed

    users = active_users(store, day)
    n_active = len(users)
    if spec.feed.sample_users_per_segment:
        users = stratified_users(users, spec.feed.stratify_by, spec.feed.sample_users_per_segment, spec.ab.salt)
    arms, versions = arm_of_buckets(
        user_buckets(users["user_id"].to_numpy(dtype=object), cfg["salt"], cfg["buckets"]), cfg
    )
    as_of = pd.Timestamp(window_of(day).end)
    history = None
    if store.is_committed(USER_HISTORY, day):  # each user's history as of the serving day
        from recsys_assets.core.readers import read_history_table

        history = read_history_table(store, day)
    parts, per_arm, t0 = [], [], time.perf_counter()
    for version in sorted(set(versions.tolist())):
        release = load_release(store, int(version))
        mask = versions == version
        rows = generate_feed(
            release,
            users[mask].reset_index(drop=True),
            spec.feed.k_retrieve,
            spec.feed.k_feed,
            spec.feed.task_weights,
            spec.feed.feed_source,
            as_of,
            history=history,
        )
        arm_by_user = pd.Series(arms[mask], index=users.loc[mask, "user_id"].to_numpy())
        rows = rows.assign(model_version=int(version), arm=rows["user_id"].map(arm_by_user))
        parts.append(rows)
        for arm in sorted(set(arms[mask].tolist())):
            per_arm.append([arm, int(version), int((arms[mask] == arm).sum()), int((rows["arm"] == arm).sum())])
    rows = pd.concat(parts, ignore_index=True).assign(strategy_name=spec.feed.strategy_name, dt=day)
    return DayFeed(day, rows, n_active, len(users), per_arm, time.perf_counter() - t0, history is not None)


def previous_feed_rows(conn, strategy_name: str, day: str) -> tuple[str | None, int]:
    """(the newest earlier day with published rows of this strategy, its row count)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT dt, count(*) FROM feed WHERE strategy_name = %s AND dt = "
            "(SELECT max(dt) FROM feed WHERE strategy_name = %s AND dt < %s) GROUP BY dt",
            (strategy_name, strategy_name, day),
        )
        row = cur.fetchone()
    return (str(row[0]), int(row[1])) if row else (None, 0)


def feed_size_verdict(rows: int, previous_day: str | None, previous_rows: int, min_share: float) -> tuple[bool, str]:
    """Whether a day's feed of `rows` rows may replace what is served: not empty, and at least `min_share` of the
    previous published day's rows (a NaN weight, a broken release or an empty user set shows up as a collapse)."""
    if rows == 0:
        return False, "the feed has 0 rows"
    if previous_day is not None and rows < min_share * previous_rows:
        return False, f"{rows:,} rows < {min_share:.0%} of {previous_day}'s {previous_rows:,}"
    return True, f"{rows:,} rows" + (f" ({rows / previous_rows:.0%} of {previous_day}'s)" if previous_rows else "")


def stratified_users(users: pd.DataFrame, segment_column: str, per_segment: int, salt: str) -> pd.DataFrame:
    """At most `per_segment` users of each segment, chosen by a stable hash of user_id (same users on rerun)."""
    if segment_column not in users.columns:
        raise ValueError(f"feed stratify_by column {segment_column!r} is not a user column ({list(users.columns)})")
    ranked = users.assign(_h=stable_hash(users["user_id"].to_numpy(dtype=object), salt))
    ranked = ranked.sort_values([segment_column, "_h"], kind="stable")
    return (
        ranked.groupby(segment_column, sort=True, dropna=False)
        .head(per_segment)
        .drop(columns="_h")
        .reset_index(drop=True)
    )


def ensure_feed_table(conn) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('recsys_feed_ddl'))")
        cur.execute(FEED_DDL)
    conn.commit()


def lock_feed_day(cur, strategy_name: str, day: str) -> None:
    """Serialise publications of one (strategy, day) until the transaction ends: a second publisher waits, then
    replaces the first's rows whole (on a day's first publication there are no rows a DELETE could lock)."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"recsys_feed:{strategy_name}:{day}",))


def publish_feed(conn, rows: pd.DataFrame, strategy_name: str, day: str) -> int:
    """Replace (strategy_name, dt) in the feed table in ONE transaction: readers see the old feed or the new one,
    never a mix or an empty gap (MVCC: the delete and the COPY become visible together at commit)."""
    missing = [c for c in FEED_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"feed rows lack columns {missing}")
    buf = io.StringIO()
    # Every field quoted: any stored id (CR, LF, quotes, commas, backslashes, `\.`) is data to COPY, never syntax.
    rows[FEED_COLUMNS].to_csv(buf, index=False, header=False, quoting=csv.QUOTE_ALL)
    buf.seek(0)
    with conn.cursor() as cur:
        lock_feed_day(cur, strategy_name, day)
        cur.execute("DELETE FROM feed WHERE strategy_name = %s AND dt = %s", (strategy_name, day))
        cur.copy_expert(f"COPY feed ({', '.join(FEED_COLUMNS)}) FROM STDIN WITH (FORMAT csv)", buf)
        cur.execute("SELECT count(*) FROM feed WHERE strategy_name = %s AND dt = %s", (strategy_name, day))
        written = int(cur.fetchone()[0])
        if written != len(rows):
            conn.rollback()
            raise RuntimeError(f"feed COPY wrote {written} rows, expected {len(rows)}; rolled back")
    conn.commit()
    return written
