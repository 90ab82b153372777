"""Gates that hold: a version that failed a blocking check is never readable; manifests, config files, raw files
and checkpoints read from outside cannot be turned against the platform."""

from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from recsys_assets.core.datasets import DATASETS
from resources.store import DatasetStore, InvalidManifestError, PartitionNotCommittedError
from tests.helpers import REPO

DAY = "2024-03-01"


def _version(store: DatasetStore, payload: bytes = b"x", dataset: str = "ds") -> str:
    v = store.new_version()
    store.write_bytes_atomic(store.version_path(dataset, DAY, v, "data.bin"), payload)
    return v


def _read(store: DatasetStore, dataset: str = "ds") -> bytes:
    with store.fs.open_input_stream(store.committed_path(dataset, DAY, "data.bin")) as f:
        return f.read()


# ---- the gate protocol ----


def test_a_staged_version_is_readable_only_after_every_blocking_check_passed(tmp_path):
    store = DatasetStore(str(tmp_path))
    v = _version(store, b"new")
    store.stage("ds", DAY, v, ["check_a", "check_b"], row_count=3)
    with pytest.raises(PartitionNotCommittedError, match="awaits check_a, check_b"):
        store.committed_path("ds", DAY)
    assert store.version_under_check("ds", DAY) == v
    assert store.record_verdict("ds", DAY, v, "check_a", True).state == "pending"
    assert not store.is_committed("ds", DAY)
    state = store.record_verdict("ds", DAY, v, "check_b", True)
    assert state.state == "committed" and state.committed_version == v
    assert _read(store) == b"new"
    manifest = store.read_manifest("ds", DAY)
    assert manifest["row_count"] == 3 and manifest["checks"] == {"check_a": True, "check_b": True}


def test_a_failed_version_is_withheld_the_last_good_one_stays_and_a_passing_rerun_replaces_it(tmp_path):
    store = DatasetStore(str(tmp_path))
    good = _version(store, b"good")
    store.stage("ds", DAY, good, ["check_a"])
    store.record_verdict("ds", DAY, good, "check_a", True)
    bad = _version(store, b"bad")
    store.stage("ds", DAY, bad, ["check_a"])
    state = store.record_verdict("ds", DAY, bad, "check_a", False, "loss 7.7% > 2%")
    assert state.state == "withheld" and state.failed_checks == ["check_a"]
    assert f"version {bad} withheld (failed check_a); readers keep version {good}" == state.describe()
    assert _read(store) == b"good"
    # More failed versions never push the good one out (it is still what _SUCCESS names).
    for _ in range(3):
        worse = _version(store, b"worse")
        store.stage("ds", DAY, worse, ["check_a"])
        store.record_verdict("ds", DAY, worse, "check_a", False)
    assert _read(store) == b"good" and good in store.list_versions("ds", DAY)
    fixed = _version(store, b"fixed")
    store.stage("ds", DAY, fixed, ["check_a"])
    assert store.record_verdict("ds", DAY, fixed, "check_a", True).committed_version == fixed
    assert _read(store) == b"fixed"


def test_concurrent_checks_of_one_candidate_commit_it_exactly_once(tmp_path):
    store = DatasetStore(str(tmp_path))
    checks = [f"check_{i}" for i in range(8)]
    for _ in range(5):
        v = _version(store)
        store.stage("ds", DAY, v, checks)
        barrier = threading.Barrier(len(checks))
        errors = []

        def verdict(name, v=v, barrier=barrier, errors=errors):
            barrier.wait()
            try:
                store.record_verdict("ds", DAY, v, name, True)
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)

        threads = [threading.Thread(target=verdict, args=(c,)) for c in checks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert store.committed_version("ds", DAY) == v  # the last verdict to land always sees all the others


def test_a_candidate_older_than_the_committed_version_is_not_under_check(tmp_path):
    store = DatasetStore(str(tmp_path))
    old = _version(store)
    store.stage("ds", DAY, old, ["check_a"])  # a slow writer's candidate...
    newer = _version(store)
    store.commit("ds", DAY, newer)  # ...overtaken by a newer committed version
    state = store.gate_state("ds", DAY)
    assert state.state == "committed" and store.version_under_check("ds", DAY) == newer


def test_every_dataset_gate_is_the_set_of_blocking_checks_defined_on_its_asset():
    from recsys_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    blocking: dict[str, set[str]] = {}
    for key in graph.asset_check_keys:
        if graph.get_check_spec(key).blocking:
            blocking.setdefault(key.asset_key.to_user_string(), set()).add(key.name)
    declared = {name: set(d.blocking_checks) for name, d in DATASETS.items() if d.blocking_checks}
    # serving_config and feed are no store partitions: their checks gate current.json (publish_config) and the feed
    # table's publish (the feed asset judges before it writes).
    assert {k: v for k, v in blocking.items() if k not in ("serving_config", "feed")} == declared


# ---- manifests that cannot be turned against the store ----


def test_a_hostile_manifest_never_deletes_outside_its_partition(tmp_path):
    root, outside = tmp_path / "data", tmp_path / "outside"
    (outside / "precious").mkdir(parents=True)
    store = DatasetStore(str(root))
    v1 = _version(store)
    store.commit("ds", DAY, v1)
    marker = Path(store.partition_dir("ds", DAY)) / "_SUCCESS"
    body = json.loads(marker.read_text())
    for hostile in ("x/../../../../outside", "../../../outside", "/abs/path", "v=..", ""):
        marker.write_text(json.dumps({**body, "previous_versions": [hostile, hostile]}))
        with pytest.raises(InvalidManifestError) as e:
            store.committed_version("ds", DAY)
        assert str(marker) in str(e.value) and "previous_versions" in str(e.value)
        for _ in range(3):  # commits replace the manifest and delete nothing it names
            store.commit("ds", DAY, _version(store))
        assert (outside / "precious").is_dir()
    marker.write_text(json.dumps({**body, "version": "../../outside"}))
    with pytest.raises(InvalidManifestError, match="invalid 'version'"):
        store.committed_path("ds", DAY)


@pytest.mark.parametrize("content", [b'{"dataset": "ds", "vers', b"", b'{"dataset": "ds"}', b"[1, 2]", b"\xff\xfe"])
def test_a_torn_success_file_is_an_error_naming_it_and_a_rerun_repairs_it(tmp_path, content):
    store = DatasetStore(str(tmp_path))
    store.commit("ds", DAY, _version(store, b"first"))
    marker = Path(store.partition_dir("ds", DAY)) / "_SUCCESS"
    marker.write_bytes(content)
    with pytest.raises(InvalidManifestError) as e:
        store.committed_path("ds", DAY)
    assert str(marker) in str(e.value) and "rematerialize ds 2024-03-01" in str(e.value)
    v = _version(store, b"rerun")
    store.commit("ds", DAY, v)  # the rerun's commit succeeds and replaces the torn file
    assert store.committed_version("ds", DAY) == v and _read(store) == b"rerun"


# ---- serving config: an invalid one is never served ----


def test_an_invalid_serving_config_is_written_for_inspection_but_never_served(tmp_path):
    from recsys_assets.config.serving import ABSpec, ArmSpec
    from recsys_assets.serving.serving_config import latest_config, latest_written_config, publish_config

    store = DatasetStore(str(tmp_path))
    ab = ABSpec(salt="s", arms=[ArmSpec(name="production", model="production", traffic_pct=100)])
    arms = [
        {"name": "production", "model": "production", "model_version": 1, "traffic_pct": 100.0, "buckets": [0, 100]}
    ]
    good, problems = publish_config(store, arms, ab, "m", [], {}, lambda cfg: [])
    assert problems == [] and latest_config(store)["config_version"] == 1
    arms2 = [{**arms[0], "model_version": 2}]
    bad, problems = publish_config(store, arms2, ab, "m", [], {}, lambda cfg: ["version 2 is not registered"])
    assert problems and bad["config_version"] == 2 and bad["withheld"] == problems
    assert latest_config(store) == good  # current.json still the valid v1
    assert latest_written_config(store)["config_version"] == 2  # what the blocking check judges (and fails)
    fixed, problems = publish_config(store, arms2, ab, "m", [], {}, lambda cfg: [])
    assert not problems and fixed["config_version"] == 3 and latest_config(store)["config_version"] == 3


# ---- config files: errors name file and key, never a value ----

SECRET = "pg-pass-7a1f0c"


@pytest.mark.parametrize(
    "text",
    [
        f"RECSYS_PG_PASSWORD={SECRET}\nRECSYS_ERROR_WEBHOOK_URL=https://x/{SECRET}\n",  # an env file: a YAML string
        f"password: {SECRET}\nfilters: {SECRET}\n",  # a mapping with a secret
        f"key: [unclosed {SECRET}\n  other: {{{SECRET}\n",  # not YAML at all
        f"language: {{allowed: [{SECRET}]}}\nsample: {{fraction: {SECRET}}}\n",  # wrong types
    ],
)
def test_config_errors_never_echo_the_file(tmp_path, text):
    from recsys_assets.config.datagen import DatagenConfigError, load_datagen_spec
    from recsys_assets.config.serving import ServingConfigError, load_serving_spec
    from recsys_assets.config.training import TrainingConfigError, load_training_spec

    path = tmp_path / "secrets.env"
    path.write_text(text)
    for load, error in (
        (load_datagen_spec, DatagenConfigError),
        (load_training_spec, TrainingConfigError),
        (load_serving_spec, ServingConfigError),
    ):
        with pytest.raises(error) as e:
            load(str(path))
        assert str(path) in str(e.value)
        rendered = "".join(__import__("traceback").format_exception(e.value))  # what a log or event would hold
        assert SECRET not in rendered, rendered


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda r: (r["filters"][0].pop("values"), r["filters"][0].update(kind="range", min=1.0)),
            "filter 'item_moderation': kind 'range' needs a numeric column",
        ),
        (
            lambda r: r["filters"].__setitem__(
                3, {"name": "video_length", "kind": "in_set", "column": "item_video_length_s", "values": ["3"]}
            ),
            "filter 'video_length': kind 'in_set' (string values) needs a string column",
        ),
        (
            lambda r: r["filters"].insert(
                0, {"name": "liked_only", "kind": "in_set", "column": "liked", "values": ["true"]}
            ),
            "filter 'liked_only'",
        ),
        (lambda r: r["quarantine"]["max_event_pct_per_reason"].update(tz_shift=1.0), "unknown reason(s) ['tz_shift']"),
    ],
)
def test_filters_whose_kind_does_not_fit_the_column_type_are_rejected_before_spark(mutate, message):
    from recsys_assets.config.datagen import DEFAULT_CONFIG_PATH, DatagenConfigError, parse_datagen_spec

    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    mutate(raw)
    with pytest.raises(DatagenConfigError) as e:
        parse_datagen_spec(raw, source="test.yaml")
    assert message in str(e.value)


# ---- raw files Spark cannot read as the contract says ----


@pytest.mark.parametrize(
    "table, column, make, kwargs, expect",
    [
        (
            "items",
            "created_at",
            lambda t: t.column("created_at").cast(pa.timestamp("ns", tz="UTC")),
            {},  # pandas' default
            "nanosecond timestamps",
        ),
        (
            "events",
            "play_duration_s",
            lambda t: pa.array(t.column("play_duration_s").to_numpy().astype(np.float16)),
            {},
            "float16",
        ),
        (
            "item_embeddings",
            "embedding",
            lambda t: t.column("embedding").cast(pa.list_(pa.float64())),
            {},
            "Spark cannot read double elements",
        ),
        (
            "items",
            "created_at",
            lambda t: t.column("created_at").cast(pa.timestamp("ns", tz="UTC")),
            {"use_deprecated_int96_timestamps": True},
            None,
        ),  # INT96 (Spark's own legacy format) is fine
        ("events", "play_duration_s", lambda t: t.column("play_duration_s").cast(pa.float32()), {}, None),
    ],
)
def test_raw_physical_types_spark_cannot_read_are_rejected_at_the_footer(store, table, column, make, kwargs, expect):
    from recsys_assets.core.raw_inputs import RawInputError, check_raw_contract

    path = f"{store.raw_partition_path(table, DAY)}/part-00000.parquet"
    t = pq.read_table(path)
    t = t.set_column(t.schema.get_field_index(column), column, make(t))
    pq.write_table(t, path, **kwargs)
    if expect is None:
        assert check_raw_contract(store, table, DAY) == [path]
        return
    with pytest.raises(RawInputError) as e:
        check_raw_contract(store, table, DAY)
    assert path in str(e.value) and f"column {column!r}" in str(e.value) and expect in str(e.value)


@pytest.mark.slow
def test_a_pandas_written_catalogue_fails_before_any_asset_commits(instance, resources, store):
    from tests.helpers import run_day

    path = f"{store.raw_partition_path('items', DAY)}/part-00000.parquet"
    df = pq.read_table(path).to_pandas()
    df["created_at"] = pd.to_datetime(df["created_at"].astype(str))  # how pandas usually builds it: ns
    assert str(df["created_at"].dtype) == "datetime64[ns, UTC]"
    df.to_parquet(path)
    result = run_day(DAY, instance, resources)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "filtered_events"
    assert "column 'created_at' holds nanosecond timestamps" in str(failure.event_specific_data.error)
    assert not store.exists(store.partition_dir("filtered_events", DAY) + "/_SUCCESS")


# ---- losses before the filter chain ----


def _stats(
    raw=10_000,
    quarantined=0,
    reason="event_ts_outside_day",
    language_kept=8_000,
    language_items=(500, 450),
    sampled=5_600,
):
    valid = raw - quarantined
    return {
        "num_raw_events": raw,
        "num_quarantined_events": quarantined,
        f"num_quarantined_{reason}": quarantined,
        "num_events_post_filter_quarantine": valid,
        "num_items_post_filter_quarantine": language_items[0],
        "num_events_post_filter_language": language_kept,
        "num_items_post_filter_language": language_items[1],
        "item_loss_percentage_language": round(100 * (1 - language_items[1] / language_items[0]), 4),
        "num_events_post_filter_sample": sampled,
    }


def test_input_losses_are_judged_by_stage_and_reason():
    from recsys_assets.config.datagen import load_datagen_spec
    from recsys_assets.datagen.quarantine import judge_input_losses

    limits = load_datagen_spec().input_limits()
    assert judge_input_losses(_stats(), limits)[1] == []
    # A day laid out in UTC: 546 of 548 events outside the Asia/Kolkata day.
    _, breaches = judge_input_losses(
        _stats(raw=548, quarantined=546, language_kept=2, language_items=(2, 2), sampled=1), limits
    )
    assert "quarantine all reasons: 546 of 548 events (99.635% > 5.0%)" in breaches
    assert "quarantine event_ts_outside_day: 546 of 548 events (99.635% > 2.0%)" in breaches
    # A broken sampler keeps 90% instead of 70%; on a small day the same share is within sampling noise.
    _, breaches = judge_input_losses(_stats(sampled=7_200), limits)
    assert len(breaches) == 1 and breaches[0].startswith("sample kept 7,200 of 8,000 events = 90.0%")
    assert judge_input_losses(_stats(raw=60, language_kept=50, sampled=38), limits)[1] == []
    # The language stage dropping most of the day.
    _, breaches = judge_input_losses(_stats(language_kept=1_000, sampled=700), limits)
    assert breaches and breaches[0].startswith("language event loss")


@pytest.mark.slow
def test_a_day_laid_out_in_utc_fails_the_input_loss_check_and_trains_nothing(instance, resources, store):
    from tests.helpers import check_results, run_day

    path = f"{store.raw_partition_path('events', DAY)}/part-00000.parquet"
    t = pq.read_table(path)
    shifted = pa.compute.add(t.column("event_ts"), pa.scalar(pd.Timedelta(hours=-12)))  # the wrong day boundary
    pq.write_table(t.set_column(t.schema.get_field_index("event_ts"), "event_ts", shifted), path)
    result = run_day(DAY, instance, resources)  # the first day: no previous day, judged all the same
    assert not result.success
    assert check_results(result)["input_losses_within_limits"] is False
    ev = next(e for e in result.get_asset_check_evaluations() if e.check_name == "input_losses_within_limits")
    assert "quarantine event_ts_outside_day:" in ev.description and "WITHHELD" in ev.description
    assert not store.is_committed("filtered_events", DAY) and not store.exists(
        store.partition_dir("training_events", DAY)
    )


# ---- checkpoints and programs read back from the data root ----


class _Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # creating a file stands for running any code


def test_a_planted_checkpoint_is_never_unpickled(tmp_path):
    from recsys_assets.ml.trainer import CheckpointStore

    store = DatasetStore(str(tmp_path / "data"))
    ckpts = CheckpointStore(store, store.path("_checkpoints", "ranker_model", f"dt={DAY}", "fp"))
    legit = {
        "epoch": 0,
        "fingerprint": "fp",
        "model": {"w": torch.ones(2)},
        "optimizer": {"state": {}},
        "history": [{"epoch": 0, "loss": 0.5}],
    }
    ckpts.save(0, legit)
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"fingerprint": "fp", "x": _Exploit(str(marker))})
    directory = Path(ckpts.directory)
    # 1. no sidecar; 2. a sidecar for this run with the evil file's real hash (weights_only refuses it);
    # 3. a sidecar of another run.
    (directory / "epoch-0003.pt").write_bytes(evil)
    (directory / "epoch-0002.pt").write_bytes(evil)
    import hashlib

    (directory / "epoch-0002.json").write_text(
        json.dumps({"fingerprint": "fp", "sha256": hashlib.sha256(evil).hexdigest()})
    )
    (directory / "epoch-0001.pt").write_bytes(evil)
    (directory / "epoch-0001.json").write_text(json.dumps({"fingerprint": "other", "sha256": "0"}))
    state = ckpts.latest("fp")
    assert not marker.exists()
    assert state["epoch"] == 0 and torch.equal(state["model"]["w"], torch.ones(2))


def test_the_local_instance_fails_runs_whose_worker_died(tmp_path):
    from dagster import DagsterInstance

    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.run_monitoring_enabled
        assert 0 < instance.run_monitoring_max_runtime_seconds <= 24 * 3600
        assert instance.run_monitoring_start_timeout_seconds > 0


# ---- end to end: a blocked day is kept out of everything downstream until it is fixed ----


@pytest.mark.slow
def test_a_day_failing_embedding_join_is_kept_out_of_training_and_deltas_until_fixed(
    instance, resources, store, tmp_path
):
    import shutil

    from recsys_assets.ml.artifacts import ArtifactDir
    from tests.helpers import DAYS, LENIENT, check_results, run_day, train_day, training_yaml

    d1, d2, d3 = DAYS
    emb_dir = Path(store.raw_partition_path("item_embeddings", d2))
    backup = tmp_path / "embeddings_backup"
    shutil.copytree(emb_dir, backup)
    path = emb_dir / "part-00000.parquet"
    t = pq.read_table(path)
    pq.write_table(t.slice(0, int(t.num_rows * 0.9)), path)  # 10% of items lose their embedding

    assert run_day(d1, instance, resources).success
    blocked = run_day(d2, instance, resources)
    assert not blocked.success and check_results(blocked)["embedding_join_item_loss"] is False
    assert not store.is_committed("training_events", d2) and store.gate_state("training_events", d2).state == "withheld"
    third = run_day(d3, instance, resources)
    assert third.success
    delta = next(e for e in third.get_asset_check_evaluations() if e.check_name == "events_items_delta_1d_7d")
    assert f"| 1d | {d2} | no baseline (no committed version) |" in delta.metadata["deltas"].value
    report = store.read_json(store.committed_path("datagen_monitoring_report", d3, "report.json"))
    assert report["item_diff_1d_delta"] is None and report["new_items_pct_1d"] is None  # d2 is nobody's baseline

    from tests.helpers import run_job

    for day in (d1, d2):  # the history-aware models read each window day's user_history (d3's: in training_job)
        assert run_job("user_history_job", day, instance, resources).success
    cfg = training_yaml(tmp_path, **{**LENIENT, "retrieval_min_lift_over_popularity": 0.0})
    assert train_day(d3, instance, store.root_uri, cfg).success
    # the withheld day is not folded into the history either
    assert sorted(store.read_manifest("user_history", d3)["sources"]) == [d1]
    info = ArtifactDir.committed(store, "ranker_model", d3).read_json("training.json")
    assert info["train_days"] == [d1] and d2 not in info["data_versions"]
    assert info["window_status"][d2] == "withheld (failed embedding_join_item_loss)"
    # Asked for two usable days, the model refuses and names the withheld day.
    strict = train_day(d3, instance, store.root_uri, training_yaml(tmp_path, min_window_days=2, **LENIENT))
    failure = next(e for e in strict.all_events if e.is_step_failure)
    assert f"{d2}: withheld (failed embedding_join_item_loss)" in str(failure.event_specific_data.error)

    # Fix the input and rerun the day: it passes, is committed, and the next training uses it.
    shutil.rmtree(emb_dir)
    shutil.copytree(backup, emb_dir)
    assert run_day(d2, instance, resources).success and store.is_committed("training_events", d2)
    assert train_day(d3, instance, store.root_uri, cfg).success
    assert sorted(store.read_manifest("user_history", d3)["sources"]) == [d1, d2]  # rebuilt with the fixed day
    info = ArtifactDir.committed(store, "ranker_model", d3).read_json("training.json")
    assert info["train_days"] == [d1, d2] and info["window_status"][d2] == "used"
