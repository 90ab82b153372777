"""Training/serving feature skew: offline (training_events) vs a logged online sample, per feature.

- Numeric features: PSI over the offline sample's quantile bins (ties merged), and the two-sample
  Kolmogorov-Smirnov statistic (max distance between the empirical CDFs) with its asymptotic p-value.
- Categorical features: PSI over the union of categories (the long tail beyond the top 50 offline categories is
  one bucket), and the largest absolute share difference of any category.

PSI = sum_i (a_i - e_i) * ln(a_i / e_i) with shares floored at 1e-4 so empty bins stay finite.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

EPS = 1e-4
TOP_CATEGORIES = 50
HISTORY_LENGTH = "history_length"  # entries of the user's history as of the day (user_history), per logged row


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e = np.maximum(np.asarray(expected, np.float64) / max(np.sum(expected), 1), EPS)
    a = np.maximum(np.asarray(actual, np.float64) / max(np.sum(actual), 1), EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def quantile_edges(offline: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges at offline quantiles (unique: a feature with few distinct values gets fewer bins)."""
    qs = np.quantile(offline, np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(qs)


def numeric_psi(offline: np.ndarray, online: np.ndarray, bins: int) -> float:
    edges = quantile_edges(offline, bins)
    e = np.bincount(np.searchsorted(edges, offline, side="right"), minlength=len(edges) + 1)
    a = np.bincount(np.searchsorted(edges, online, side="right"), minlength=len(edges) + 1)
    return psi(e, a)


def ks_2samp(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic and asymptotic p-value (Kolmogorov distribution, Stephens' small-sample factor)."""
    x, y = np.sort(x), np.sort(y)
    n, m = len(x), len(y)
    if n == 0 or m == 0:
        return float("nan"), float("nan")
    grid = np.concatenate([x, y])
    d = float(np.max(np.abs(np.searchsorted(x, grid, side="right") / n - np.searchsorted(y, grid, side="right") / m)))
    en = np.sqrt(n * m / (n + m))
    lam = (en + 0.12 + 0.11 / en) * d
    k = np.arange(1, 101)
    p = float(np.clip(2.0 * np.sum((-1.0) ** (k - 1) * np.exp(-2.0 * (k * lam) ** 2)), 0.0, 1.0)) if lam > 0 else 1.0
    return d, p


def categorical_shift(offline: pd.Series, online: pd.Series) -> tuple[float, float, str]:
    """PSI over categories, the largest share difference, and the category where it occurs."""
    off = offline.fillna("<null>").astype(str)
    on = online.fillna("<null>").astype(str)
    top = off.value_counts().index[:TOP_CATEGORIES]
    off = off.where(off.isin(top), "<other>")
    on = on.where(on.isin(top), "<other>")
    cats = sorted(set(off.unique()) | set(on.unique()))
    e = off.value_counts().reindex(cats, fill_value=0).to_numpy()
    a = on.value_counts().reindex(cats, fill_value=0).to_numpy()
    diff = np.abs(a / max(a.sum(), 1) - e / max(e.sum(), 1))
    worst = int(np.argmax(diff)) if len(diff) else 0
    return psi(e, a), float(diff.max()) if len(diff) else 0.0, cats[worst] if cats else ""


def feature_skew(
    offline: pd.DataFrame,
    online: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    bins: int,
    max_psi: float,
    max_ks: float,
) -> list[dict]:
    """One row per feature: kind, PSI, KS (numeric) or max share difference (categorical), and pass/fail."""
    missing = [c for c in [*numeric, *categorical] if c not in online.columns]
    if missing:
        raise ValueError(f"online feature log lacks columns {missing} (expected training_events' schema)")
    rows = []
    for f in numeric:
        x = offline[f].dropna().to_numpy(np.float64)
        y = online[f].dropna().to_numpy(np.float64)
        p = numeric_psi(x, y, bins) if len(x) and len(y) else float("nan")
        d, pv = ks_2samp(x, y)
        ok = bool(p <= max_psi and d <= max_ks)
        rows.append(
            {
                "feature": f,
                "kind": "numeric",
                "psi": round(p, 5),
                "ks": round(d, 5),
                "ks_pvalue": pv,
                "offline_mean": float(np.mean(x)) if len(x) else None,
                "online_mean": float(np.mean(y)) if len(y) else None,
                "offline_rows": int(len(x)),
                "online_rows": int(len(y)),
                "passed": ok,
            }
        )
    for f in categorical:
        p, diff, worst = categorical_shift(offline[f], online[f])
        rows.append(
            {
                "feature": f,
                "kind": "categorical",
                "psi": round(p, 5),
                "max_share_diff": round(diff, 5),
                "worst_category": worst,
                "offline_rows": int(len(offline)),
                "online_rows": int(len(online)),
                "passed": bool(p <= max_psi),
            }
        )
    return rows


def hash_sample(dataset, columns: list[str], max_rows: int) -> pd.DataFrame:
    """About `max_rows` rows of the dataset, the same on every rerun: a row is kept when hash(user_id|item_id) modulo
    the row count is below `max_rows` (all rows when there are fewer). Sampled batch by batch in Arrow, so only the
    sample ever becomes pandas (memory: the sample and one batch, whatever the day's size)."""
    import pyarrow as pa

    total = dataset.count_rows()
    kept = []
    for b in dataset.to_batches(columns=columns):
        if total > max_rows:
            key = b.column("user_id").to_numpy(zero_copy_only=False).astype(object) + "|"
            key = key + b.column("item_id").to_numpy(zero_copy_only=False).astype(object)
            b = b.filter(pa.array(pd.util.hash_array(key) % total < max_rows))
        if b.num_rows:
            kept.append(b)
    if not kept:
        return pd.DataFrame(columns=columns)
    return pa.Table.from_batches(kept).to_pandas()


def day_skew_report(store, day: str, spec) -> dict:
    """The day's report: training_events (hash-sampled to spec.max_offline_rows, the same rows on every rerun) vs the
    logged online feature sample, per feature; with the history length when both sides have it."""
    import pyarrow as pa

    from recsys_assets.core.datasets import USER_HISTORY
    from recsys_assets.ml.history import history_lengths
    from recsys_assets.ml.loader import committed_events_dataset
    from recsys_assets.serving.serving_config import read_log

    online = read_log(store, spec.online_feature_log, day, "online feature log")
    cols = sorted({*spec.numeric_features, *spec.categorical_features, "user_id", "item_id"})
    offline = hash_sample(committed_events_dataset(store, [day]), cols, spec.max_offline_rows)
    numeric = list(spec.numeric_features)
    # The history the models read: its length per row, offline from user_history (as of the day), online as the
    # server logged it. Compared when both sides have it (logs written before history existed do not).
    history_note = "not compared: no committed user_history for the day"
    if store.is_committed(USER_HISTORY, day):
        if HISTORY_LENGTH in online.columns:
            offline[HISTORY_LENGTH] = history_lengths(store, day, pa.array(offline["user_id"], pa.string()))
            numeric.append(HISTORY_LENGTH)
            history_note = "compared"
        else:
            history_note = f"not compared: the online feature log has no {HISTORY_LENGTH} column"
    rows = feature_skew(offline, online, numeric, spec.categorical_features, spec.bins, spec.max_psi, spec.max_ks)
    return {
        "day": day,
        "max_psi": spec.max_psi,
        "max_ks": spec.max_ks,
        "features": rows,
        "offline_rows": int(len(offline)),
        "online_rows": int(len(online)),
        "history_length": history_note,
    }
