"""What the test modules share (no test module imports another): the world's days and sizes, running the real jobs
and checks of the one Definitions with test resources, training YAMLs for the small test world, small
training_events partitions for model tests without Spark, and waits that follow progress on a loaded host."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from recsys_assets.config.files import ConfigFilesResource
from recsys_assets.config.training import CATEGORICAL_COLUMNS, DEFAULT_TRAINING_CONFIG_PATH
from recsys_assets.core.partitions import partition_range_tags
from recsys_assets.core.schemas import EMBEDDING_DIM
from recsys_assets.definitions import build_defs, default_resources
from resources.storage import StorageResource
from resources.store import DatasetStore
from resources.training import TrainingResource

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]

# The generated test world (conftest.raw_root): three small days.
SMALL = dict(events_per_day=30_000, num_users=4_000, initial_items=2_500, new_items_per_day=60, num_authors=400)
DAYS = ["2024-03-01", "2024-03-02", "2024-03-03"]
# The machine's PostgreSQL (trust auth): tests marked `postgres` create and drop their own databases on it.
PG_DSN = dict(host="127.0.0.1", port=5432, user="postgres")


# --- the one Definitions, with test resources -------------------------------------------------------------------

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def defs_with(resources: dict):
    """The project's Definitions with the test's resources over the local defaults."""
    return build_defs({**default_resources(), **resources})


def run_job(job_name: str, day: str | None, instance, resources: dict, asset_selection=None, tags=None):
    """One partition of a job of the Definitions (or the range its tags name), through `instance`; failures are
    returned, not raised."""
    job = defs_with(resources).resolve_job_def(job_name)
    return job.execute_in_process(
        partition_key=day,
        instance=instance,
        raise_on_error=False,
        run_config=QUIET,
        asset_selection=asset_selection,
        tags=tags,
    )


def run_range(job_name: str, first: str, last: str, instance, resources: dict, asset_selection=None):
    """One run over the partition key range [first, last] (what a backfill launches with a range policy)."""
    return run_job(job_name, None, instance, resources, asset_selection, partition_range_tags(first, last))


def run_day(day, instance, resources, config_path: str | None = None):
    """datagen_job for one day (every datagen asset and check), optionally with another datagen YAML."""
    if config_path:
        resources = {**resources, "config_files": ConfigFilesResource(datagen=config_path)}
    return run_job("datagen_job", day, instance, resources)


class _CheckRun:
    """The evaluation of directly invoked checks, shaped like a run result for the tests."""

    def __init__(self, evaluations):
        self._evaluations = evaluations

    def get_asset_check_evaluations(self):
        return self._evaluations


def judge_day_checks(names, day, resources):
    """Re-judge these datagen day checks on the day's version under check, shaped like a run result."""
    from recsys_assets.datagen.day_checks import judge_day_check

    res = {**default_resources(), **resources}
    return _CheckRun([judge_day_check(name, res["storage"].store, day, spark=res.get("spark")) for name in names])


def check_results(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


# --- training on the generated world ------------------------------------------------------------------------------

# Thresholds for three days of small generated data (a few thousand training rows): the gates' logic is under
# test here, the packaged defaults are exercised by the demo on realistic volumes.
# The test world (3 days x 30k events, ~800 items) is too small for a stable model-vs-popularity margin: the same
# events written in a different row order (a datagen plan change) moved the two-tower's recall@10 from above the
# most-popular baseline to 0.357 vs 0.365 (NDCG still higher). Model quality against most-popular is measured at
# demo scale (README, docs/serving.md), where the margin is large.
LENIENT = dict(
    ranker_min_auc={"liked": 0.52, "shared": 0.5, "followed": 0.5, "watch_complete": 0.5},
    retrieval_k=10,
    retrieval_min_recall=0.01,
    retrieval_min_lift_over_popularity=0.9,
    ranker_max_auc_drop=0.05,
)
# Model sizes for the test world (the packaged YAML's are for production volumes).
# ranker.item_trend and both models' history_time_gaps on (off in the packaged YAML): the Dagster tests train,
# release and serve a ranker with trend inputs and models that read the history's time gaps. The holdout fit
# (ml/holdout_fit.py) trains every model twice; outside the tests about it (`training_yaml(holdout_fit=True)`) the
# epochs and the recency prior's weight are pinned (HOLDOUT_FIT), which halves each test's training.
TEST_SIZES = {
    "ranker": {
        "epochs": 2,
        "batch_size": 512,
        "item_trend": True,
        "fit_on_last_window_day": False,
        "history_time_gaps": True,
    },
    "retrieval": {"epochs": 2, "batch_size": 512, "fit_on_last_window_day": False, "history_time_gaps": True},
    "retrieval_scoring": {"recency_prior": 1.0},
}
# The keys of TEST_SIZES that pin what the holdout fit chooses: left at the packaged YAML's by holdout_fit=True.
HOLDOUT_FIT = {
    "ranker": ("fit_on_last_window_day",),
    "retrieval": ("fit_on_last_window_day",),
    "retrieval_scoring": ("recency_prior",),
}


def training_yaml(
    tmp_path,
    min_window_days: int = 1,
    history: dict | None = None,
    sections: dict | None = None,
    holdout_fit: bool = False,
    **checks,
) -> str:
    """The packaged training.yaml with the test world's model sizes and some check thresholds replaced; the test world
    has 3 days, so a window of one earlier day is enough unless a test says otherwise. `holdout_fit`: the epochs and
    the recency prior are fitted on the window's last day as the packaged YAML does (else pinned: TEST_SIZES)."""
    spec = yaml.safe_load(DEFAULT_TRAINING_CONFIG_PATH.read_text())
    spec["checks"].update(checks)
    spec["min_window_days"] = min_window_days
    spec["history"].update(history or {})
    sizes = {
        name: {k: v for k, v in values.items() if not (holdout_fit and k in HOLDOUT_FIT.get(name, ()))}
        for name, values in TEST_SIZES.items()
    }
    for name, values in {**sizes, **(sections or {})}.items():
        spec[name].update({**sizes.get(name, {}), **values})
    path = tmp_path / f"training-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def train_day(day, instance, root, config_path):
    """training_job of the Definitions for one day, with this training YAML."""
    return run_job(
        "training_job",
        day,
        instance,
        {
            "storage": StorageResource(data_root=str(root)),
            "training": TrainingResource(device="cpu", num_threads=2),
            "config_files": ConfigFilesResource(training=config_path),
        },
    )


# --- small training_events partitions without Spark ----------------------------------------------------------------

# Users prefer one of `num_clusters` item clusters; an item's content embedding is its cluster centroid plus noise.
# Engagement probability is much higher on the preferred cluster, so a model that learns user x content affinity gets
# a high AUC and beats most-popular retrieval. Written and committed like the datagen assets write them.

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


TRAIN_DAYS = ["2024-05-01", "2024-05-02", "2024-05-03"]
VALID_DAY = "2024-05-04"
FEATURES = list(CATEGORICAL_COLUMNS)  # every categorical column gets a vocabulary


def make_encoder(store: DatasetStore):
    """A BatchEncoder over TRAIN_DAYS of a populated store (vocab, moments, catalogue; no history)."""
    from recsys_assets.config.training import LabelSpec
    from recsys_assets.core.readers import read_final_items
    from recsys_assets.ml.features import DENSE_FEATURES, build_item_catalog, build_vocab, count_tokens, dense_moments
    from recsys_assets.ml.loader import BatchEncoder, committed_events_dataset

    train = committed_events_dataset(store, TRAIN_DAYS)
    vocab = build_vocab(None, count_tokens(train.to_batches(columns=FEATURES), FEATURES), min_count=2)
    moments = dense_moments(train.to_batches(columns=list(DENSE_FEATURES)))
    catalog = build_item_catalog([read_final_items(store, d) for d in [*TRAIN_DAYS, VALID_DAY]])
    return BatchEncoder(vocab, moments, catalog, LabelSpec())


# --- datagen reports ---------------------------------------------------------------------------------------------


def commit_monitoring_report(store, day, item_ids, ages, prev_ids=None, prev_7d=None):
    from recsys_assets.config.datagen import load_datagen_spec
    from recsys_assets.datagen.monitoring import build_report

    spec = load_datagen_spec()
    report = build_report(
        day=day,
        filter_stats={},
        join_stats={"num_final_rows": 1000, "num_items_post_embed_join": len(item_ids)},
        item_ids=np.array(item_ids, dtype=object),
        item_age_days=np.array(ages, dtype=float),
        edges=spec.item_age_bucket_edges,
        prev_1d_item_ids=None if prev_ids is None else np.array(prev_ids, dtype=object),
        prev_1d_report=None,
        prev_7d_report=prev_7d,
        started_at="2024-03-01T00:00:00+00:00",
        finished_at="2024-03-01T00:10:00+00:00",
        run_time_s=600,
    )
    report["thresholds"] = spec.thresholds.model_dump()
    v = store.new_version()
    store.write_json_atomic(store.version_path("datagen_monitoring_report", day, v, "report.json"), report)
    store.commit("datagen_monitoring_report", day, v)
    return report


# --- waiting on real processes on a shared, possibly loaded host ---------------------------------------------------
# A fixed time budget tuned on a quiet machine fails on a busy one while the work is still advancing. These waits
# follow progress instead: they keep waiting as long as something observable changes (log output, run events), fail
# as soon as the process or run has failed, and give up only when nothing has moved for `stall_s` seconds or after
# a generous overall `limit_s`.


class StalledError(AssertionError):
    pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, read, closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def production_home(tmp_path: Path, raw_root: Path) -> tuple[Path, Path]:
    """A DAGSTER_HOME with deploy/production/dagster.yaml (PostgreSQL: the pg_env fixture's variables) and a private
    copy of the raw data root."""
    home, data = tmp_path / "dagster_home", tmp_path / "data"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "production" / "dagster.yaml", home / "dagster.yaml")
    shutil.copytree(raw_root, data)
    return home, data


def wait_until(
    done: Callable[[], T],
    progress: Callable[[], object],
    what: str,
    *,
    stall_s: float = 300,
    limit_s: float = 3600,
    failed: Callable[[], str | None] = lambda: None,
    context: Callable[[], str] = lambda: "",
    poll_s: float = 1.0,
) -> T:
    """Poll `done()` until it returns something truthy and return it. `progress()` returns any value that changes
    while the work advances; `failed()` returns a message once the work can no longer succeed (raised at once)."""
    start = last_move = time.monotonic()
    seen = progress()
    while True:
        value = done()
        if value:
            return value
        message = failed()
        if message:
            raise AssertionError(f"{what}: {message}\n{context()}")
        now = time.monotonic()
        current = progress()
        if current != seen:
            seen, last_move = current, now
        if now - last_move > stall_s:
            raise StalledError(f"{what}: no progress for {stall_s:.0f}s ({now - start:.0f}s in all)\n{context()}")
        if now - start > limit_s:
            raise StalledError(f"{what}: still not done after {limit_s:.0f}s, though progressing\n{context()}")
        time.sleep(poll_s)


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="ignore")[-chars:]
    except FileNotFoundError:
        return ""


# --- processes a test starts -----------------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, their children, ...), from /proc."""
    import os

    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


def stop_process_tree(proc, timeout_s: float = 30.0) -> None:
    """Stop a server a test started and everything it started (a daemon's code servers, a webserver's, a Spark
    worker's executors), whatever process group or session they put themselves in: the tree is collected before
    the parent stops (a child re-parented to PID 1 cannot be found afterwards), asked to stop, then killed; a process
    that still outlives it fails the test, so the suite never leaves a server behind."""
    import os
    import signal
    import subprocess

    tree = [proc.pid, *descendants(proc.pid)]
    for pid in tree:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.2)
    for pid in [*tree, *(d for p in tree for d in descendants(p))]:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if proc.poll() is None:
        proc.wait(timeout=10)
    time.sleep(0.5)
    left = [p for p in tree if _alive(p)]
    assert not left, f"processes outlived the test's server: {left}"
