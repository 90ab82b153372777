"""Retention: expired partitions, abandoned versions, torn temp files and old checkpoints go; data the current
models were trained on stays; dry run deletes nothing."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from dagster import AssetKey

from recsys_assets.core.days import shift_day
from recsys_assets.maintenance.retention import RetentionPolicy, plan_retention
from recsys_assets.ml.loader import committed_events_dataset
from resources.storage import StorageResource
from resources.store import DatasetStore
from tests.helpers import defs_with, make_day, make_world, write_training_events

DAYS = [shift_day("2024-01-01", k) for k in range(10)]  # 2024-01-01 .. 2024-01-10
NOW = dt.datetime(2024, 2, 15, tzinfo=dt.UTC)  # every day above is > 30 days old
OLD = (NOW - dt.timedelta(days=3)).timestamp()


def age(path: Path, ts: float = OLD) -> None:
    for p in [path, *path.rglob("*")]:
        os.utime(p, (ts, ts))


@pytest.fixture()
def aged_store(tmp_path) -> DatasetStore:
    store = DatasetStore(str(tmp_path / "data"))
    world = make_world(num_users=50, num_items=40)
    for k, day in enumerate(DAYS):
        write_training_events(store, day, *make_day(world, day, 200, seed=k), files=1)
    # The current ranker (2024-01-10) trained on 01-03..01-09 and validated on 01-10.
    v = store.new_version()
    store.write_json_atomic(
        store.version_path("ranker_model", "2024-01-10", v, "training.json"),
        {"data_versions": {d: store.committed_version("training_events", d) for d in DAYS[2:]}},
    )
    store.commit("ranker_model", "2024-01-10", v)
    # Leftovers: a never-committed version of a kept day, a torn _SUCCESS temp file, abandoned checkpoints.
    stale = Path(store.version_path("training_events", "2024-01-09", "20240101T000000000000-dead0000", "events"))
    stale.mkdir(parents=True)
    (stale / "part-0.parquet").write_bytes(b"x" * 1000)
    (Path(store.partition_dir("training_events", "2024-01-09")) / "_SUCCESS.tmp-abc").write_text("{")
    old_ckpt = Path(store.path("_checkpoints", "ranker_model", "dt=2024-01-08", "fp-old"))
    old_ckpt.mkdir(parents=True)
    (old_ckpt / "epoch-0000.pt").write_bytes(b"y" * 500)
    age(Path(store.root_uri))
    # In progress right now: a fresh uncommitted version and a fresh checkpoint must survive.
    fresh = Path(store.version_path("training_events", "2024-01-10", "20240215T000000000000-live0000", "events"))
    fresh.mkdir(parents=True)
    (fresh / "part-0.parquet").write_bytes(b"z")
    live_ckpt = Path(store.path("_checkpoints", "retrieval_model", "dt=2024-01-10", "fp-live"))
    live_ckpt.mkdir(parents=True)
    (live_ckpt / "epoch-0000.pt").write_bytes(b"w")
    age(fresh, NOW.timestamp()), age(live_ckpt, NOW.timestamp())
    return store


def test_plan_deletes_only_unprotected_expired_and_abandoned_data(aged_store):
    plan = plan_retention(aged_store, RetentionPolicy(max_partition_age_days=30, staging_max_age_hours=24), NOW)
    got = sorted((a.kind, Path(a.path).relative_to(aged_store.root_uri).as_posix()) for a in plan.actions)
    assert got == [
        ("abandoned_checkpoint", "_checkpoints/ranker_model/dt=2024-01-08/fp-old"),
        ("expired_partition", "training_events/dt=2024-01-01"),
        ("expired_partition", "training_events/dt=2024-01-02"),
        ("stale_version", "training_events/dt=2024-01-09/v=20240101T000000000000-dead0000"),
        ("temp_file", "training_events/dt=2024-01-09/_SUCCESS.tmp-abc"),
    ]
    assert plan.protected["training_events"] == DAYS[2:]
    assert plan.protected["ranker_model"] == ["2024-01-10"]
    assert plan.by_kind()["abandoned_checkpoint"] == (1, 500)


def test_dry_run_deletes_nothing_then_the_real_run_keeps_the_models_training_data_readable(aged_store, instance):
    res = {"storage": StorageResource(data_root=aged_store.root_uri)}
    cfg = {"as_of": NOW.isoformat(), "dry_run": True}
    job = defs_with(res).resolve_job_def("retention_job")
    dry = job.execute_in_process(instance=instance, run_config={"ops": {"storage_retention": {"config": cfg}}})
    md = dry.asset_materializations_for_node("storage_retention")[0].metadata
    assert md["num_paths"].value == 5 and md["num_deleted"].value == 0
    assert aged_store.exists(aged_store.partition_dir("training_events", "2024-01-01"))

    real = job.execute_in_process(
        instance=instance, run_config={"ops": {"storage_retention": {"config": {**cfg, "dry_run": False}}}}
    )
    assert real.asset_materializations_for_node("storage_retention")[0].metadata["num_deleted"].value == 5
    assert not aged_store.exists(aged_store.partition_dir("training_events", "2024-01-01"))
    assert not aged_store.exists(aged_store.path("_checkpoints", "ranker_model", "dt=2024-01-08"))  # emptied parent too
    assert aged_store.exists(aged_store.path("_checkpoints", "retrieval_model", "dt=2024-01-10", "fp-live"))
    assert aged_store.list_versions("training_events", "2024-01-10") == sorted(
        [aged_store.committed_version("training_events", "2024-01-10"), "20240215T000000000000-live0000"]
    )
    # Everything the current ranker trained and validated on is still committed and readable.
    assert committed_events_dataset(aged_store, DAYS[2:]).count_rows() == 8 * 200
    assert instance.get_latest_materialization_event(AssetKey("storage_retention")) is not None


def test_every_declared_dataset_is_retained_as_its_declaration_says(tmp_path):
    """One expired partition of every dataset on a model day D, on the day T the model trained on, and on an
    unrelated day X: what is kept follows from each dataset's retention class in core/datasets.py."""
    from recsys_assets.core.datasets import DATASETS

    store = DatasetStore(str(tmp_path / "data"))
    model_day, trained_on, unrelated = "2024-01-10", "2024-01-09", "2024-01-02"
    for name, decl in DATASETS.items():
        for day in (model_day, trained_on, unrelated):
            v = store.new_version()
            body = {"data_versions": {trained_on: "v", model_day: "v"}} if decl.retention == "model" else {}
            store.write_json_atomic(store.version_path(name, day, v, "training.json"), body)
            store.commit(name, day, v)
    age(Path(store.root_uri))
    plan = plan_retention(store, RetentionPolicy(max_partition_age_days=30, protect_latest_models=1), NOW)
    deleted = {(Path(a.path).parent.name, Path(a.path).name[3:]) for a in plan.actions if a.kind == "expired_partition"}
    expected_kept = {
        "training_data": {model_day, trained_on},  # what the kept models trained and validated on
        "model": {model_day},  # the latest committed model (protect_latest_models=1)
        "model_companion": {model_day},  # served with it
        "report": set(),  # never protected
    }
    for name, decl in DATASETS.items():
        kept = {d for d in (model_day, trained_on, unrelated) if (name, d) not in deleted}
        assert kept == expected_kept[decl.retention], (name, decl.retention, kept)
    assert {"feature_skew_report", "online_evaluation"} <= {n for n, _ in deleted}


def test_the_version_a_live_model_was_trained_on_survives_recommits_until_the_model_moves_on(tmp_path):
    """Two passing re-commits of a training_events day used to delete, by the commit itself (one previous version
    kept), the version the current model was trained on. The model pins it; commits and retention consult the pin;
    once the model version is no longer live, retention releases the pin and the version goes."""
    store = DatasetStore(str(tmp_path / "data"))
    world = make_world(num_users=50, num_items=40)
    day = "2024-01-09"
    trained_on = write_training_events(store, day, *make_day(world, day, 200, seed=1), files=1)

    def commit_model() -> str:  # what retention reads of a model: its training.json (here it claims no data days)
        v = store.new_version()
        store.write_json_atomic(store.version_path("ranker_model", "2024-01-10", v, "training.json"), {})
        store.commit("ranker_model", "2024-01-10", v)
        return v

    model = commit_model()
    store.pin("training_events", day, trained_on, f"ranker_model.2024-01-10.{model}")
    for seed in (2, 3):  # two passing re-commits of the day
        write_training_events(store, day, *make_day(world, day, 200, seed=seed), files=1)
    assert store.committed_version("training_events", day) != trained_on
    assert Path(store.version_path("training_events", day, trained_on)).is_dir()  # not deleted by the commits
    age(Path(store.root_uri))
    policy = RetentionPolicy(max_partition_age_days=10_000, staging_max_age_hours=1)
    plan = plan_retention(store, policy, NOW)
    assert not any(trained_on in a.path for a in plan.actions)
    # The model is retrained twice: its old version is no longer live, so the pin and then the version go.
    for _ in range(2):
        commit_model()
    kinds = {(a.kind, Path(a.path).name) for a in plan_retention(store, policy, NOW).actions}
    assert ("released_pin", f"ranker_model.2024-01-10.{model}.json") in kinds
    assert ("stale_version", f"v={trained_on}") in kinds
