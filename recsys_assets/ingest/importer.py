"""Public interaction logs -> the platform's raw input contract (raw/<table>/dt=<day>/ + success files).

Sources: MovieLens (`ratings.csv` + `movies.csv`) and any CSV of (user, item, timestamp[, rating][, duration]
[, liked]) with a column mapping. What the contract needs and such logs lack is derived deterministically (the
same input gives byte-identical output), as documented in docs/real_data.md:

| contract column | derived as |
|---|---|
| event_id | `<source>-e<row>`: the row's 0-based position in the source file |
| user_id / item_id | `<source>-u<user>` / `<source>-i<item>` |
| event_ts | the source time; with `relay_days`, laid onto that many consecutive days (below) |
| feed_source, client_event | `for_you`, `play` |
| play_duration_s | the duration column; else rating / max_rating x video_length_s; else video_length_s |
| liked | the liked column (true / 1 / yes); else rating >= positive_rating; else false |
| shared, followed | false |
| items.language, moderation_status | `language` option (default `hi`), `approved` |
| items.video_length_s | `video_length_s` option (default 100) |
| items.created_at | one day before the item's first event (never-seen items: one day before the first day) |
| items.category, author_id | the first genre (MovieLens) / `unknown`; author `<source>-a<category>` |
| item_embeddings | 128-d: genres multi-hot + release decade (MovieLens) x a seeded Gaussian projection, L2-normed; |
|  | without item metadata a seeded vector per item id (carries no content) |
| users | language as items, region `unknown`, signup one day before the user's first event |

Days: without re-laying, each event lands on the Asia/Kolkata day that contains it, and a day before the first
partition (RECSYS_PARTITIONS_START) is refused naming that setting. With `relay_days=N`, the events, in time order,
are cut into N chunks of equal count, chunk k laid onto `start_date + k` days with each event's position within the
chunk's time span kept (order preserved, every event strictly inside its day). Each day holds the catalogue (items
and embeddings) and users known by its end.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa

from recsys_assets.core.days import APP_TIMEZONE, PARTITIONS_START, US_PER_DAY, check_day, window_micros, window_of
from recsys_assets.core.raw_inputs import write_raw_day
from recsys_assets.core.schemas import EMBEDDING_DIM, RAW_EVENTS, RAW_ITEM_EMBEDDINGS, RAW_ITEMS, RAW_USERS
from resources.store import DatasetStore

US = 1_000_000
MAX_RATING = 5.0
MAX_ID_LENGTH = 256  # datagen's quarantine.max_id_length default: longer ids would be quarantined there


class SourceDataError(ValueError):
    """Source data the importer cannot map; the message names the file, column and row."""


@dataclass(frozen=True)
class ImportSpec:
    source: str = "ml"
    relay_days: int | None = None  # lay the events onto this many consecutive days of equal count
    start_date: str | None = None  # the first of those days (default: the first partition)
    positive_rating: float = 4.0
    video_length_s: float = 100.0
    language: str = "hi"
    seed: int = 0
    # An import owns the raw days of its data root: a root that already holds raw days is refused unless `replace`,
    # which removes every raw day (and success file) there before writing (never after a validation error).
    replace: bool = False

    def __post_init__(self):
        if self.relay_days is not None and not (isinstance(self.relay_days, int) and self.relay_days >= 1):
            raise SourceDataError(f"relay_days must be a whole number of days >= 1 (or unset), got {self.relay_days!r}")


@dataclass(frozen=True)
class ImportReport:
    days: dict[str, dict[str, int]]  # day -> rows per raw table
    duplicate_rows_dropped: int  # source rows identical to an earlier row (same user, item, time and values)
    replaced_days: list[str]  # raw days of an earlier import removed first (`replace`)


@dataclass(frozen=True)
class CsvMapping:
    """Which columns of a generic interactions CSV hold what."""

    user: str
    item: str
    timestamp: str
    timestamp_unit: Literal["s", "ms", "iso"] = "s"
    rating: str | None = None
    duration: str | None = None
    liked: str | None = None


@dataclass(frozen=True)
class Interactions:
    """Source interactions in source order (row i = the i-th data row of the file, exact duplicates left out)."""

    user: np.ndarray  # object (str)
    item: np.ndarray  # object (str)
    ts_us: np.ndarray  # int64, UTC epoch microseconds
    rating: np.ndarray | None = None
    duration_s: np.ndarray | None = None
    liked: np.ndarray | None = None
    duplicate_rows_dropped: int = 0
    row: np.ndarray | None = None  # the source row of each interaction (event ids keep naming it)


@dataclass(frozen=True)
class ItemMeta:
    """Optional item metadata: genres per item id (MovieLens movies.csv)."""

    item: np.ndarray  # object (str)
    genres: list[list[str]]
    year: np.ndarray  # float, NaN when unknown


# Source timestamps outside [1970, now + 1 day] are a unit mix-up (milliseconds read as seconds), an overflow or a
# typo: refused naming the row instead of creating a partition for 2099.
MAX_FUTURE_US = US_PER_DAY


def _line(row: int) -> str:
    return f"row {row + 2}"  # the CSV line: 1-based, after the header


def _read_csv(path: Path, string_columns: list[str]) -> pa.Table:
    from pyarrow import csv

    if not path.exists():
        raise SourceDataError(f"{path}: no such file")
    opts = csv.ConvertOptions(column_types={c: pa.string() for c in string_columns})
    try:
        return csv.read_csv(path, convert_options=opts)
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:  # not UTF-8, ragged rows, unparseable
        raise SourceDataError(f"{path}: not a readable UTF-8 CSV ({str(e).splitlines()[0][:300]})") from None


def _numbers(col: pa.ChunkedArray, path: Path, name: str) -> np.ndarray:
    """A numeric column as float64; text that is not a number is refused naming its row."""
    import pandas as pd

    raw = pd.Series(col.to_pylist(), dtype=object)
    values = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(np.isnan(values) & raw.notna().to_numpy())
    if len(bad):
        r = int(bad[0])
        raise SourceDataError(f"{path}: column {name!r} {_line(r)}: {str(col[r].as_py())[:50]!r} is not a number")
    return values


def _column(table: pa.Table, name: str, path: Path) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise SourceDataError(f"{path}: no column {name!r} (columns: {', '.join(table.column_names)})")
    col = table.column(name)
    if col.null_count:
        raise SourceDataError(f"{path}: column {name!r} has {col.null_count} empty values")
    return col


def _timestamps_us(col: pa.ChunkedArray, unit: str, path: Path, name: str) -> np.ndarray:
    """UTC epoch microseconds; a value that is not a timestamp of this unit between 1970 and tomorrow is refused
    naming its row (infinite, 1e20, milliseconds given as seconds, a year 2099)."""
    import pyarrow.compute as pc

    if unit == "iso":
        try:
            us = pc.cast(pc.cast(col, pa.string()), pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise SourceDataError(f"{path}: column {name!r} is not an ISO-8601 timestamp ({e})") from None
        seconds = us / US
    else:
        seconds = _numbers(col, path, name) / (1 if unit == "s" else 1_000)
    latest = dt.datetime.now(dt.UTC).timestamp() + MAX_FUTURE_US / US
    bad = np.flatnonzero(~np.isfinite(seconds) | (seconds < 0) | (seconds > latest))
    if len(bad):
        r = int(bad[0])
        raise SourceDataError(
            f"{path}: column {name!r} {_line(r)}: {str(col[r].as_py())[:50]!r} is not a time between 1970 and tomorrow "
            f"in unit {unit!r} ({len(bad)} such rows){'; milliseconds given as seconds?' if unit == 's' else ''}"
        )
    return us if unit == "iso" else np.round(seconds * US).astype(np.int64)


def _checked_ids(col: pa.ChunkedArray, path: Path, name: str, prefix: str) -> np.ndarray:
    """The ids of a column as the contract's ids (`prefix` + id); one outside the id alphabet (control characters, or
    longer than MAX_ID_LENGTH with the prefix) is refused naming its row."""
    from recsys_assets.config.datagen import ID_FORBIDDEN_CHARACTERS

    ids = np.array(col.to_pylist(), dtype=object)
    forbidden = re.compile(ID_FORBIDDEN_CHARACTERS)
    for r, v in enumerate(ids):
        if len(v) + len(prefix) > MAX_ID_LENGTH or forbidden.search(v):
            what = "is too long" if len(v) + len(prefix) > MAX_ID_LENGTH else "has a control character"
            raise SourceDataError(
                f"{path}: column {name!r} {_line(r)}: the id {what} (ids are 1..{MAX_ID_LENGTH} characters with the "
                "source prefix, no control characters: docs/data_contract.md)"
            )
    return ids


def read_csv_interactions(path: str | Path, mapping: CsvMapping, source: str = "csv") -> Interactions:
    """The file's interactions, each value checked (the message names file, column and row); rows identical to an
    earlier row in every mapped column are left out and counted."""
    import pandas as pd

    path = Path(path)
    table = _read_csv(path, [mapping.user, mapping.item])
    num = {}
    for key in ("rating", "duration"):
        name = getattr(mapping, key)
        num[key] = None if name is None else _numbers(_column(table, name, path), path, name)
        if name is not None and not np.isfinite(num[key]).all():
            r = int(np.flatnonzero(~np.isfinite(num[key]))[0])
            raise SourceDataError(f"{path}: column {name!r} {_line(r)}: not a finite number")
    liked = None
    if mapping.liked is not None:
        raw = np.array(_column(table, mapping.liked, path).cast(pa.string()).to_pylist(), dtype=object)
        liked = np.isin(np.char.lower(raw.astype(str)), ["1", "true", "yes", "y", "t"])
    data = {
        "user": _checked_ids(_column(table, mapping.user, path), path, mapping.user, f"{source}-u"),
        "item": _checked_ids(_column(table, mapping.item, path), path, mapping.item, f"{source}-i"),
        "ts_us": _timestamps_us(
            _column(table, mapping.timestamp, path), mapping.timestamp_unit, path, mapping.timestamp
        ),
        "rating": num["rating"],
        "duration_s": num["duration"],
        "liked": liked,
    }
    present = {k: v for k, v in data.items() if v is not None}
    duplicate = pd.DataFrame(present).duplicated().to_numpy()
    keep = np.flatnonzero(~duplicate)
    return Interactions(
        **{k: (v[keep] if v is not None else None) for k, v in data.items()},
        duplicate_rows_dropped=int(duplicate.sum()),
        row=keep,
    )


def movielens_dir() -> Path:
    """Where MovieLens latest-small lies: RECSYS_MOVIELENS_DIR, else the workspace's shared copy beside the repository
    (../shared/realdata/movielens-latest-small, with its licence README), else /work/shared/realdata/..."""
    import os

    candidates = [os.environ.get("RECSYS_MOVIELENS_DIR", "")] + [
        str(base / "shared" / "realdata" / "movielens-latest-small")
        for base in (Path(__file__).resolve().parents[3], Path("/work"))
    ]
    for c in candidates:
        if c and (Path(c) / "ratings.csv").exists():
            return Path(c)
    raise SourceDataError(
        "MovieLens latest-small not found (ratings.csv + movies.csv): set RECSYS_MOVIELENS_DIR to the unpacked "
        f"release (https://grouplens.org/datasets/movielens/latest/); looked in {[c for c in candidates if c]}"
    )


MOVIELENS_RATINGS = CsvMapping(user="userId", item="movieId", timestamp="timestamp", rating="rating")
YEAR_RE = re.compile(r"\((\d{4})\)\s*$")


def read_movielens(source_dir: str | Path, source: str = "ml") -> tuple[Interactions, ItemMeta]:
    source_dir = Path(source_dir)
    interactions = read_csv_interactions(source_dir / "ratings.csv", MOVIELENS_RATINGS, source)
    movies = _read_csv(source_dir / "movies.csv", ["movieId", "title", "genres"])
    path = source_dir / "movies.csv"
    titles = _column(movies, "title", path).to_pylist()
    years = np.array([float(m.group(1)) if (m := YEAR_RE.search(t)) else np.nan for t in titles])
    genres = [[] if g == "(no genres listed)" else g.split("|") for g in _column(movies, "genres", path).to_pylist()]
    meta = ItemMeta(
        item=np.array(_column(movies, "movieId", path).to_pylist(), dtype=object), genres=genres, year=years
    )
    return interactions, meta


def lay_out_days(ts_us: np.ndarray, spec: ImportSpec) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(day index into the returned day list, new timestamps) per event, and the ISO days."""
    n = len(ts_us)
    if not spec.relay_days:
        # Asia/Kolkata has a fixed offset (+05:30, no DST): the local day of each event by integer arithmetic.
        offset_us = int(dt.datetime(2024, 1, 1, tzinfo=ZoneInfo(APP_TIMEZONE)).utcoffset().total_seconds()) * US
        epoch_day = (ts_us + offset_us) // US_PER_DAY
        uniq, day_idx = np.unique(epoch_day, return_inverse=True)
        days = [(dt.date(1970, 1, 1) + dt.timedelta(days=int(d))).isoformat() for d in uniq]
        check_day(days[0])  # the earliest: days are sorted
        return day_idx, ts_us.copy(), days
    start = dt.date.fromisoformat(check_day(spec.start_date or PARTITIONS_START))
    days = [(start + dt.timedelta(days=k)).isoformat() for k in range(spec.relay_days)]
    order = np.lexsort((np.arange(n), ts_us))  # time order, ties by source row: deterministic
    day_idx = np.empty(n, dtype=np.int64)
    new_ts = np.empty(n, dtype=np.int64)
    for k, chunk in enumerate(np.array_split(order, spec.relay_days)):
        if not len(chunk):
            continue
        lo, hi = window_micros(window_of(days[k]))
        t = ts_us[chunk]
        span = t.max() - t.min()
        frac = (t - t.min()) / span if span else np.full(len(t), 0.5)
        # strictly inside the day: one second from either edge
        new_ts[chunk] = lo + US + np.round(frac * (hi - lo - 2 * US)).astype(np.int64)
        day_idx[chunk] = k
    return day_idx, new_ts, days


def _stable_seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


def content_embeddings(item_ids: np.ndarray, meta: ItemMeta | None, seed: int) -> np.ndarray:
    """128-d float32, L2-normalised (see the module docstring)."""
    if meta is None:
        vecs = np.stack([np.random.default_rng(_stable_seed(seed, i)).standard_normal(EMBEDDING_DIM) for i in item_ids])
    else:
        vocab = sorted({g for gs in meta.genres for g in gs})
        decades = np.arange(1900, 2030, 10)
        by_item = {i: k for k, i in enumerate(meta.item)}
        feats = np.zeros((len(item_ids), len(vocab) + len(decades) + 1), dtype=np.float64)
        col = {g: j for j, g in enumerate(vocab)}
        for r, item in enumerate(item_ids):
            k = by_item.get(item)
            if k is None:
                feats[r, -1] = 1.0  # no metadata
                continue
            for g in meta.genres[k]:
                feats[r, col[g]] = 1.0
            if not np.isnan(meta.year[k]):
                feats[r, len(vocab) + int(np.clip((meta.year[k] - 1900) // 10, 0, len(decades) - 1))] = 0.5
        projection = np.random.default_rng(seed).standard_normal((feats.shape[1], EMBEDDING_DIM))
        vecs = feats @ projection + 1e-3 * np.random.default_rng(seed + 1).standard_normal(
            (len(item_ids), EMBEDDING_DIM)
        )
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs.astype(np.float32)


def _first_events(keys: np.ndarray, ts_us: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct keys in the order of their first event (`order`: the events in time order) and that time."""
    in_time = keys[order]
    _, first = np.unique(in_time, return_index=True)
    at = np.sort(first)
    return in_time[at], ts_us[order][at]


def _ts(us: np.ndarray) -> pa.Array:
    return pa.array(us, pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def raw_days_present(store: DatasetStore) -> list[str]:
    """Every day with a raw table partition or a success file under the data root."""
    from recsys_assets.core.schemas import RAW_TABLES

    days = {d for table in RAW_TABLES for d in store.raw_days(table)}
    days |= {i.base_name for i in store.list_success_files()}
    return sorted(days)


def _remove_raw_days(store: DatasetStore, days: list[str]) -> None:
    from recsys_assets.core.schemas import RAW_TABLES

    for day in days:
        if store.exists(store.raw_success_file(day)):  # first: a half-removed day is never complete
            store.fs.delete_file(store.raw_success_file(day))
        for table in RAW_TABLES:
            if store.exists(store.raw_partition_path(table, day)):
                store.fs.delete_dir(store.raw_partition_path(table, day))


def import_interactions(
    store: DatasetStore, data: Interactions, spec: ImportSpec, meta: ItemMeta | None = None
) -> ImportReport:
    """Write the raw days (success file last) and report row counts per day and table. Everything is checked and laid
    out before anything under the data root changes."""
    n = len(data.ts_us)
    if n == 0:
        raise SourceDataError("no interactions to import")
    existing = raw_days_present(store)
    if existing and not spec.replace:
        raise SourceDataError(
            f"{store.root_uri} already holds raw days {existing[0]}..{existing[-1]} ({len(existing)}): an import owns "
            "its target's raw days; import into an empty data root, or pass --replace to remove them first"
        )
    day_idx, ts_us, days = lay_out_days(data.ts_us, spec)
    src = spec.source
    user_id = np.array([f"{src}-u{u}" for u in data.user], dtype=object)
    item_id = np.array([f"{src}-i{i}" for i in data.item], dtype=object)
    if data.duration_s is not None:
        play = data.duration_s.astype(np.float64)
    elif data.rating is not None:
        play = spec.video_length_s * np.clip(data.rating / MAX_RATING, 0.0, 1.0)
    else:
        play = np.full(n, spec.video_length_s)
    if data.liked is not None:
        liked = data.liked.astype(bool)
    elif data.rating is not None:
        liked = data.rating >= spec.positive_rating
    else:
        liked = np.zeros(n, dtype=bool)

    # Items: the source catalogue (MovieLens; else the items seen, sorted), then items seen outside it in order of
    # their first event; each created one day before its first event (never seen: before the first day).
    order = np.lexsort((np.arange(n), ts_us))
    seen_items, seen_first_us = _first_events(data.item, ts_us, order)
    first_us = dict(zip(seen_items.tolist(), seen_first_us.tolist()))
    catalogue = list(meta.item) if meta is not None else sorted(first_us)
    in_catalogue = set(catalogue)
    raw_items = np.array(catalogue + [i for i in seen_items if i not in in_catalogue], dtype=object)
    first_day_start = window_micros(window_of(days[0]))[0]
    created_us = np.array([first_us.get(i, first_day_start) for i in raw_items], dtype=np.int64) - US_PER_DAY
    items = np.array([f"{src}-i{i}" for i in raw_items], dtype=object)
    genre_of = (
        {i: (g[0].lower() if g else "unknown") for i, g in zip(meta.item, meta.genres)} if meta is not None else {}
    )
    category = np.array([genre_of.get(i, "unknown") for i in raw_items], dtype=object)
    embeddings = content_embeddings(raw_items, meta, spec.seed)
    users, signup_us = _first_events(user_id, ts_us, order)
    signup_us = signup_us - US_PER_DAY

    counts: dict[str, dict[str, int]] = {}
    row = data.row if data.row is not None else np.arange(n)
    _remove_raw_days(store, existing)
    for k, day in enumerate(days):
        sel = np.flatnonzero(day_idx == k)
        sel = sel[np.lexsort((sel, ts_us[sel]))]
        day_end = window_micros(window_of(day))[1]
        known_items = np.flatnonzero(created_us < day_end)
        known_users = np.flatnonzero(signup_us < day_end)
        m = len(sel)
        tables = {
            "events": pa.table(
                {
                    "event_id": pa.array([f"{src}-e{r}" for r in row[sel]], pa.string()),
                    "user_id": pa.array(user_id[sel], pa.string()),
                    "item_id": pa.array(item_id[sel], pa.string()),
                    "event_ts": _ts(ts_us[sel]),
                    "feed_source": pa.array(["for_you"] * m, pa.string()),
                    "client_event": pa.array(["play"] * m, pa.string()),
                    "play_duration_s": pa.array(play[sel], pa.float64()),
                    "liked": pa.array(liked[sel], pa.bool_()),
                    "shared": pa.array(np.zeros(m, dtype=bool), pa.bool_()),
                    "followed": pa.array(np.zeros(m, dtype=bool), pa.bool_()),
                },
                schema=RAW_EVENTS,
            ),
            "items": pa.table(
                {
                    "item_id": pa.array(items[known_items], pa.string()),
                    "language": pa.array([spec.language] * len(known_items), pa.string()),
                    "moderation_status": pa.array(["approved"] * len(known_items), pa.string()),
                    "video_length_s": pa.array(np.full(len(known_items), spec.video_length_s), pa.float64()),
                    "created_at": _ts(created_us[known_items]),
                    "author_id": pa.array([f"{src}-a{c}" for c in category[known_items]], pa.string()),
                    "category": pa.array(category[known_items], pa.string()),
                },
                schema=RAW_ITEMS,
            ),
            "item_embeddings": pa.table(
                {
                    "item_id": pa.array(items[known_items], pa.string()),
                    "embedding": pa.FixedSizeListArray.from_arrays(
                        pa.array(embeddings[known_items].ravel(), pa.float32()), EMBEDDING_DIM
                    ).cast(pa.list_(pa.float32())),
                },
                schema=RAW_ITEM_EMBEDDINGS,
            ),
            "users": pa.table(
                {
                    "user_id": pa.array(users[known_users], pa.string()),
                    "language": pa.array([spec.language] * len(known_users), pa.string()),
                    "region": pa.array(["unknown"] * len(known_users), pa.string()),
                    "signup_ts": _ts(signup_us[known_users]),
                },
                schema=RAW_USERS,
            ),
        }
        write_raw_day(store, day, tables)
        counts[day] = {name: t.num_rows for name, t in tables.items()}
    return ImportReport(counts, data.duplicate_rows_dropped, existing)


def import_movielens(source_dir: str | Path, store: DatasetStore, spec: ImportSpec) -> ImportReport:
    interactions, meta = read_movielens(source_dir, spec.source)
    return import_interactions(store, interactions, spec, meta)


def import_csv(path: str | Path, mapping: CsvMapping, store: DatasetStore, spec: ImportSpec) -> ImportReport:
    return import_interactions(store, read_csv_interactions(path, mapping, spec.source), spec)
