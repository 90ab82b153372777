"""Feature vocabularies with stable ids, dense-feature moments, and the item catalogue (content embeddings).

Ids 0 and 1 are reserved (padding, out-of-vocabulary); tokens start at 2. A vocabulary is extended, never
renumbered: a live token keeps yesterday's id and new tokens take free ids, so ids stay comparable across days.
Its size is bounded by retirement (VocabSpec.retire_after_days): a token no window has held for that many vocab days
retires (it encodes to OOV from then on, like a token never seen) and its id is free; new tokens take the lowest
free ids first, then are appended. So a vocabulary holds at most the most live tokens it has ever had, plus nothing
for the tokens that came and went. Counting streams Parquet record batches, so memory grows with the vocabulary, not
with the events (the vocab asset counts on Spark: ml/window_counts.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

PAD_ID = 0
OOV_ID = 1
NUM_RESERVED = 2

# Dense model inputs and their transform before standardising (heavy tails -> log1p).
DENSE_FEATURES = {"item_video_length_s": "log1p", "item_age_days": "identity", "user_tenure_days": "log1p"}

# token null: a retired id, free for a new token. last_seen: the latest vocab day whose window held the token.
VOCAB_SCHEMA = pa.schema(
    [
        ("feature", pa.string()),
        ("token", pa.string()),
        ("index", pa.int64()),
        ("count", pa.int64()),
        ("last_seen", pa.string()),
    ]
)
VOCAB_COLUMNS = ["token", "index", "count", "last_seen"]
# Item columns of training_events never widened onto the events (the loader and the Spark window counts read alike).
NOT_WIDENED = {"item_id", "num_events", "embedding"}


def count_tokens(
    batches: Iterable[pa.RecordBatch], features: list[str], compact_every: int = 32
) -> dict[str, pd.Series]:
    """Occurrences of every token per feature over a stream of record batches (nulls are not tokens)."""
    partial: dict[str, list[pd.Series]] = {f: [] for f in features}
    totals: dict[str, pd.Series] = {f: pd.Series(dtype="int64") for f in features}
    for i, batch in enumerate(batches, 1):
        for f in features:
            vc = pc.value_counts(batch.column(f)).flatten()
            values, counts = vc[0], vc[1]
            valid = pc.is_valid(values)
            partial[f].append(
                pd.Series(counts.filter(valid).to_numpy(), index=values.filter(valid).to_numpy(zero_copy_only=False))
            )
        if i % compact_every == 0:
            for f in features:
                totals[f] = _sum_series([totals[f], *partial[f]])
                partial[f] = []
    return {f: _sum_series([totals[f], *partial[f]]) for f in features}


def _sum_series(parts: list[pd.Series]) -> pd.Series:
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.Series(dtype="int64")
    return pd.concat(parts).groupby(level=0, sort=False).sum().astype("int64")


def merge_vocab(
    previous: pd.DataFrame | None,
    counts: pd.Series,
    min_count: int,
    day: str | None = None,
    retire_after_days: int | None = None,
) -> pd.DataFrame:
    """One feature's vocabulary of vocab day `day`: previous live tokens keep their index (count refreshed, 0 if
    unseen; last_seen = `day` when seen); a token unseen in the windows of more than `retire_after_days` days retires
    (token null, its id free); new tokens with count >= min_count take the free ids (lowest first), then are appended,
    by descending count, then token, so the result is deterministic."""
    from recsys_assets.core.days import shift_day

    if previous is not None and len(previous):
        prev = previous.reindex(columns=VOCAB_COLUMNS).astype({"token": object, "last_seen": object})
    else:
        prev = pd.DataFrame(
            {c: pd.Series(dtype="int64" if c in ("index", "count") else "object") for c in VOCAB_COLUMNS}
        )
    live = prev["token"].notna()
    tokens = prev["token"].where(live, None)
    prev["count"] = counts.reindex(tokens.astype(object)).fillna(0).astype("int64").to_numpy()
    prev.loc[~live, "count"] = 0
    seen = live & (prev["count"] > 0)
    if day is not None:
        prev.loc[seen, "last_seen"] = day
        # A token carried from a vocab written before last_seen existed: seen as of the day it is carried to.
        prev.loc[live & prev["last_seen"].isna(), "last_seen"] = day
    if retire_after_days is not None and day is not None:
        cutoff = shift_day(day, -retire_after_days)
        retire = live & ~seen & (prev["last_seen"].astype(str) < cutoff)
        prev.loc[retire, ["token", "last_seen"]] = None
        live = live & ~retire
    new = counts[(counts >= min_count) & ~counts.index.isin(prev.loc[live, "token"])]
    new_df = pd.DataFrame({"token": new.index.astype(str), "count": new.to_numpy()}).sort_values(
        ["count", "token"], ascending=[False, True], kind="stable"
    )
    free = np.sort(prev.loc[~live, "index"].to_numpy(np.int64))
    reused = min(len(free), len(new_df))
    start = int(prev["index"].max()) + 1 if len(prev) else NUM_RESERVED
    new_df["index"] = np.concatenate(
        [free[:reused], np.arange(start, start + len(new_df) - reused, dtype=np.int64)]
    ).astype(np.int64)
    new_df["last_seen"] = day
    by_index = new_df.set_index("index")
    taken = prev["index"].isin(by_index.index[:reused])
    if reused:
        picked = by_index.loc[prev.loc[taken, "index"]]
        prev.loc[taken, "token"] = picked["token"].to_numpy(dtype=object)
        prev.loc[taken, "count"] = picked["count"].to_numpy(np.int64)
        prev.loc[taken, "last_seen"] = day
    out = pd.concat([prev, new_df.iloc[reused:][VOCAB_COLUMNS]], ignore_index=True)
    out["count"] = out["count"].astype("int64")
    out["index"] = out["index"].astype("int64")
    return out.sort_values("index", kind="stable").reset_index(drop=True)


@dataclass
class Vocab:
    """Token -> id for every categorical feature; `cardinality` includes the two reserved ids."""

    tables: dict[str, pd.DataFrame]
    _lookup: dict[str, pd.Index] = field(default_factory=dict, repr=False)
    _ids: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        for f, t in self.tables.items():
            t = t.reindex(columns=VOCAB_COLUMNS).sort_values("index", kind="stable").reset_index(drop=True)
            expected = np.arange(NUM_RESERVED, NUM_RESERVED + len(t))
            if not np.array_equal(t["index"].to_numpy(), expected):
                raise ValueError(f"vocab {f!r}: ids must be contiguous from {NUM_RESERVED}")
            self.tables[f] = t
            live = t["token"].notna().to_numpy()
            self._lookup[f] = pd.Index(t["token"].to_numpy(dtype=object)[live].astype(str))
            self._ids[f] = t["index"].to_numpy(np.int64)[live]

    def live_tokens(self, feature: str) -> np.ndarray:
        """The feature's tokens that have an id (retired ids excluded), as an object array of str."""
        return self._lookup[feature].to_numpy(dtype=object)

    def retired(self, feature: str) -> int:
        """Ids of the feature that are retired and not yet taken by a new token."""
        return int(self.tables[feature]["token"].isna().sum())

    @property
    def features(self) -> list[str]:
        return list(self.tables)

    def cardinality(self, feature: str) -> int:
        return NUM_RESERVED + len(self.tables[feature])

    def encode(self, feature: str, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Ids for an Arrow string column: its position in the vocab + the reserved ids, OOV_ID if unknown/null."""
        pos = positions_in(self._lookup[feature], values)
        ids = self._ids[feature]
        return np.where(pos < 0, OOV_ID, ids[np.maximum(pos, 0)] if len(ids) else OOV_ID).astype(np.int64)

    def to_table(self) -> pa.Table:
        frames = [t.assign(feature=f)[["feature", *VOCAB_COLUMNS]] for f, t in self.tables.items()]
        return pa.Table.from_pandas(pd.concat(frames, ignore_index=True), schema=VOCAB_SCHEMA, preserve_index=False)

    @classmethod
    def from_table(cls, table: pa.Table) -> Vocab:
        df = table.to_pandas()  # a vocab written before last_seen existed reads with last_seen null
        return cls(
            {f: g.reindex(columns=VOCAB_COLUMNS).reset_index(drop=True) for f, g in df.groupby("feature", sort=False)}
        )


def positions_in(index: pd.Index, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Position of each value of an Arrow string column in `index`, -1 where absent or null. Only the column's
    distinct values are hashed (dictionary encoding), so a batch costs one pass over its codes plus one lookup
    per distinct value."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    enc = pc.dictionary_encode(values)
    found = index.get_indexer(enc.dictionary.to_numpy(zero_copy_only=False))
    codes = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False)
    if not len(found):
        return np.full(len(values), -1, np.int64)
    return np.where(codes < 0, -1, found[np.maximum(codes, 0)]).astype(np.int64)


def build_vocab(
    previous: Vocab | None,
    counts: dict[str, pd.Series],
    min_count: int,
    day: str | None = None,
    retire_after_days: int | None = None,
) -> Vocab:
    return Vocab(
        {
            f: merge_vocab(
                previous.tables.get(f) if previous is not None else None, c, min_count, day, retire_after_days
            )
            for f, c in counts.items()
        }
    )


def oov_rates(vocab: Vocab, batches: Iterable[pa.RecordBatch]) -> dict[str, float]:
    """Share of rows per feature that encode to OOV (e.g. on the next day's events)."""
    oov = {f: 0 for f in vocab.features}
    n = 0
    for b in batches:
        n += b.num_rows
        for f in vocab.features:
            oov[f] += int((vocab.encode(f, b.column(f)) == OOV_ID).sum())
    return {f: (oov[f] / n if n else 0.0) for f in vocab.features}


def transform_dense(name: str, values: np.ndarray) -> np.ndarray:
    v = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return np.log1p(np.maximum(v, 0.0)) if DENSE_FEATURES[name] == "log1p" else v


def dense_moments(batches: Iterable[pa.RecordBatch]) -> dict[str, dict[str, float]]:
    """Mean/std of each transformed dense feature over the stream (one pass of sums)."""
    s = {f: [0.0, 0.0] for f in DENSE_FEATURES}
    n = 0
    for b in batches:
        n += b.num_rows
        for f in DENSE_FEATURES:
            x = transform_dense(f, b.column(f).to_numpy(zero_copy_only=False))
            s[f][0] += float(x.sum())
            s[f][1] += float((x * x).sum())
    return moments_from_sums(s, n)


def moments_from_sums(sums: dict[str, list[float]], n: int) -> dict[str, dict[str, float]]:
    """Mean/std of each transformed dense feature from [sum, sum of squares] over `n` rows (one pass here, or on
    Spark: ml/window_counts.py)."""
    out = {}
    for f, (sx, sxx) in sums.items():
        mean = sx / n if n else 0.0
        var = max(sxx / n - mean * mean, 0.0) if n else 0.0
        out[f] = {"mean": mean, "std": float(np.sqrt(var)) or 1.0, "transform": DENSE_FEATURES[f]}
    return out


def standardize(name: str, values: np.ndarray, moments: dict[str, dict[str, float]]) -> np.ndarray:
    m = moments[name]
    return ((transform_dense(name, values) - m["mean"]) / (m["std"] or 1.0)).astype(np.float32)


@dataclass
class ItemCatalog:
    """Items known to a model: id, content embedding and attributes; row i is item `item_ids[i]`."""

    item_ids: np.ndarray  # object array of str
    embeddings: np.ndarray  # float32 [n, dim]
    attributes: pd.DataFrame  # item_author_id, item_category, item_language, item_video_length_s, item_created_at
    _index: pd.Index = field(init=False, repr=False)

    def __post_init__(self):
        self._index = pd.Index(self.item_ids)
        if not self._index.is_unique:
            raise ValueError("item catalogue has duplicate item_id")

    def __len__(self) -> int:
        return len(self.item_ids)

    def rows(self, item_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Catalogue rows of item ids (-1 where unknown or null)."""
        return positions_in(self._index, item_ids)

    def encode(self, vocab: Vocab, feature: str) -> np.ndarray:
        """Vocab ids of a categorical item feature (item_id or an attribute) for every catalogue row."""
        values = self.item_ids if feature == "item_id" else self.attributes[feature].to_numpy(dtype=object)
        return vocab.encode(feature, pa.array(values, pa.string()))

    def age_days(self, as_of: pd.Timestamp) -> np.ndarray:
        """Item age at `as_of` in days (never negative) for every catalogue row: the item_age_days feature as the
        index build and the feed compute it."""
        created = pd.to_datetime(self.attributes["item_created_at"], utc=True)
        return np.maximum((as_of - created).dt.total_seconds().to_numpy() / 86_400.0, 0.0)


def build_item_catalog(day_tables: Sequence[pa.Table | Callable[[], pa.Table]]) -> ItemCatalog:
    """Union of per-day final-items tables (oldest first; an entry may be a zero-argument reader of its table); an
    item's latest day wins, and rows keep the order of their latest occurrence in the days' concatenation.

    Item-sized, not window-sized: the days are read newest first, one at a time, each reduced to the items no newer
    day has before the next is read, and embeddings are decoded from Arrow's flat values into one float32 matrix
    (never one Python object per row: 8 days of the design documents' ~729k items would be ~5.8M of them)."""
    groups: list[tuple[np.ndarray, np.ndarray, pd.DataFrame]] = []  # newest day first
    seen: list[pa.Array] = []
    for entry in reversed(list(day_tables)):
        t = (entry() if callable(entry) else entry).select(ITEM_CATALOG_COLUMNS)
        if seen:
            t = t.filter(pc.invert(pc.is_in(t.column("item_id"), value_set=pa.concat_arrays(seen))))
        ids = t.column("item_id").to_numpy(zero_copy_only=False)
        last = ~pd.Series(ids).duplicated(keep="last").to_numpy()  # a day listing an item twice: its last row
        if not last.all():
            t, ids = t.filter(pa.array(last)), ids[last]
        groups.append(
            (ids, embedding_matrix(t.column("embedding")), t.drop_columns(["item_id", "embedding"]).to_pandas())
        )
        seen.append(t.column("item_id").combine_chunks().cast(pa.string()))
        del t
    if not groups:
        raise ValueError("an item catalogue needs at least one day's items table")
    groups.reverse()
    rows = [g for g in groups if len(g[0])] or groups[:1]
    return ItemCatalog(
        item_ids=np.concatenate([g[0] for g in rows]).astype(object),
        embeddings=np.concatenate([g[1] for g in rows]),
        attributes=pd.concat([g[2] for g in rows], ignore_index=True),
    )


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list<float> embedding column as a float32 [rows, dim] matrix, read from the list's flat values; every row
    must have the same length (an error names the first row that does not, or is null)."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not len(col):
        return np.zeros((0, 128), np.float32)
    lengths = pc.fill_null(pc.list_value_length(col), -1).to_numpy(zero_copy_only=False)
    dim = int(lengths[0])
    bad = np.flatnonzero((lengths != dim) | (lengths < 0))  # a null first row is named itself, not the next one
    if len(bad):
        row, n = int(bad[0]), int(lengths[bad[0]])
        raise ValueError(f"embedding of row {row} " + ("is null" if n < 0 else f"has {n} values, expected {dim}"))
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(col), dim)


ITEM_CATALOG_COLUMNS = [
    "item_id",
    "item_author_id",
    "item_category",
    "item_language",
    "item_video_length_s",
    "item_created_at",
    "embedding",
]


def padded_content(catalog: ItemCatalog) -> torch.Tensor:  # noqa: F821 (torch imported here: features loads without it)
    """The catalogue's content embeddings plus one zero row last: history rows of -1 (padding, or an item outside
    the catalogue) index it."""
    import torch

    emb = catalog.embeddings
    return torch.from_numpy(np.concatenate([emb, np.zeros((1, emb.shape[1]), emb.dtype)]))
