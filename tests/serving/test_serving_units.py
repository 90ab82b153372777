"""Serving hand-off logic without Dagster: A/B bucket assignment and config validation, skew statistics, online
CTR, stratified sampling."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from recsys_assets.config.serving import ABSpec, ArmSpec, load_serving_spec
from recsys_assets.serving.feed import stratified_users
from recsys_assets.serving.online_eval import online_metrics
from recsys_assets.serving.serving_config import arm_of_buckets, resolve_arms, user_buckets, validate_serving_config
from recsys_assets.serving.skew import feature_skew, ks_2samp, numeric_psi, psi


def test_user_buckets_are_the_documented_md5_rule_stable_and_near_uniform():
    users = np.array([f"u{i:07d}" for i in range(20_000)], dtype=object)
    b = user_buckets(users, "salt-x", 100)
    expected = int.from_bytes(hashlib.md5(b"salt-x:u0000042").digest()[:8], "big") % 100
    assert b[42] == expected
    assert (user_buckets(users, "salt-x", 100) == b).all()
    counts = np.bincount(b, minlength=100)
    assert counts.min() > 140 and counts.max() < 260  # 200 expected per bucket
    assert (user_buckets(users, "salt-y", 100) != b).mean() > 0.9  # a new salt reshuffles


def test_resolve_arms_covers_every_bucket_once_and_gives_missing_arms_traffic_to_the_first():
    spec = ABSpec(
        salt="s",
        buckets=100,
        arms=[
            ArmSpec(name="production", model="production", traffic_pct=90),
            ArmSpec(name="holdback", model="previous_production", traffic_pct=10),
        ],
    )
    arms, notes = resolve_arms(spec, production=7, previous_production=6)
    assert [(a["name"], a["model_version"], a["buckets"]) for a in arms] == [
        ("production", 7, [0, 90]),
        ("holdback", 6, [90, 100]),
    ]
    assert notes == []
    cfg = {"buckets": 100, "arms": arms}
    assert validate_serving_config(cfg, {6, 7}, {6, 7}, 7) == []
    names, versions = arm_of_buckets(np.array([0, 89, 90, 99]), cfg)
    assert names.tolist() == ["production", "production", "holdback", "holdback"] and versions.tolist() == [7, 7, 6, 6]

    arms, notes = resolve_arms(spec, production=1, previous_production=None)
    assert arms[0]["traffic_pct"] == 100 and arms[0]["buckets"] == [0, 100] and arms[1]["buckets"] == [100, 100]
    assert "holdback" in notes[0]
    assert validate_serving_config({"buckets": 100, "arms": arms}, {1}, {1}, 1) == []

    three = ABSpec(
        salt="s",
        buckets=7,
        arms=[ArmSpec(name=n, model=v, traffic_pct=100 / 3) for n, v in (("a", 1), ("b", 2), ("c", 3))],
    )
    arms, _ = resolve_arms(three, production=1, previous_production=None)
    assert arms[0]["buckets"][0] == 0 and arms[-1]["buckets"][1] == 7
    assert all(a["buckets"][1] == b["buckets"][0] for a, b in zip(arms, arms[1:]))


def test_validation_names_every_problem():
    cfg = {
        "buckets": 100,
        "arms": [
            {"name": "production", "model": "production", "model_version": 3, "traffic_pct": 80, "buckets": [0, 80]},
            {"name": "b", "model": 9, "model_version": 9, "traffic_pct": 30, "buckets": [70, 100]},
        ],
    }
    problems = validate_serving_config(cfg, registered_versions={3, 4}, repository_versions={3}, production=4)
    text = " | ".join(problems)
    assert "sum to 110" in text
    assert "version 9, which is not in the registry" in text
    assert "version 9, which has no complete release" in text
    assert "covered [2] times" in text
    assert "production arm serves 3, registry production is 4" in text


def test_psi_and_ks_match_reference_values():
    assert psi(np.array([50, 50]), np.array([50, 50])) == 0.0
    # Hand computation: shares 0.5/0.5 -> 0.8/0.2: (0.3 ln 1.6) + (-0.3 ln 0.4)
    assert psi(np.array([5, 5]), np.array([8, 2])) == pytest.approx(0.3 * np.log(1.6) - 0.3 * np.log(0.4))
    rng = np.random.default_rng(0)
    x, y = rng.normal(0, 1, 5000), rng.normal(0.1, 1, 4000)
    d, p = ks_2samp(x, y)
    ref = stats.ks_2samp(x, y)
    assert d == pytest.approx(ref.statistic, abs=1e-12)
    assert p == pytest.approx(ref.pvalue, rel=0.15, abs=1e-6)
    assert numeric_psi(x, rng.normal(0, 1, 5000), 10) < 0.02
    assert numeric_psi(x, x * 3, 10) > 0.5


def test_feature_skew_flags_only_the_skewed_features():
    rng = np.random.default_rng(1)
    n = 20_000
    offline = pd.DataFrame(
        {
            "tenure": rng.exponential(100, n),
            "length": rng.uniform(5, 60, n),
            "region": rng.choice(["IN-N", "IN-S", "IN-W"], n, p=[0.5, 0.3, 0.2]),
        }
    )
    online = pd.DataFrame(
        {
            "tenure": rng.exponential(100, n // 5) * 24,  # a unit bug: hours instead of days
            "length": rng.uniform(5, 60, n // 5),
            "region": rng.choice(["IN-N", "IN-S", "IN-W"], n // 5, p=[0.5, 0.3, 0.2]),
        }
    )
    rows = {r["feature"]: r for r in feature_skew(offline, online, ["tenure", "length"], ["region"], 10, 0.2, 0.1)}
    assert not rows["tenure"]["passed"] and rows["tenure"]["psi"] > 1 and rows["tenure"]["ks"] > 0.5
    assert rows["length"]["passed"] and rows["region"]["passed"]
    with pytest.raises(ValueError, match="lacks columns"):
        feature_skew(offline, online.drop(columns="region"), ["tenure"], ["region"], 10, 0.2, 0.1)


def test_online_ctr_counts_plays_of_served_items_within_the_window_only():
    t0 = pd.Timestamp("2024-03-03 08:00", tz="UTC")
    imp = pd.DataFrame(
        {
            "user_id": ["a", "a", "b", "b", "c"],
            "item_id": ["i1", "i2", "i1", "i3", "i9"],
            "rank": [1, 2, 1, 2, 1],
            "model_version": [2, 2, 1, 1, 2],
            "arm": ["production", "production", "holdback", "holdback", "production"],
            "served_at": [t0, t0, t0, t0, t0],
        }
    )
    plays = pd.DataFrame(
        {
            "user_id": ["a", "a", "b", "b", "c"],
            "item_id": ["i2", "i1", "i3", "i7", "i9"],
            "event_ts": [
                t0 + pd.Timedelta(minutes=30),  # a/i2 clicked
                t0 - pd.Timedelta(minutes=5),  # a/i1 before serving: not a click
                t0 + pd.Timedelta(minutes=61),  # b/i3 after the window: not a click
                t0 + pd.Timedelta(minutes=1),  # b/i7 not served
                t0 + pd.Timedelta(minutes=60),
            ],  # c/i9 on the boundary: clicked
        }
    )
    rows = {r["arm"]: r for r in online_metrics(imp, plays, pd.Timedelta(minutes=60))}
    assert rows["production"] == {
        "arm": "production",
        "model_version": 2,
        "impressions": 3,
        "users": 2,
        "clicks": 2,
        "ctr": pytest.approx(2 / 3),
        "user_hit_rate": 1.0,
        "mean_clicked_rank": 1.5,
    }
    assert rows["holdback"]["clicks"] == 0 and rows["holdback"]["user_hit_rate"] == 0.0


def test_stratified_sample_takes_at_most_n_users_per_segment_deterministically():
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(100)], "user_region": ["N"] * 70 + ["S"] * 25 + ["W"] * 5})
    a = stratified_users(users, "user_region", 10, "salt")
    assert a.groupby("user_region").size().to_dict() == {"N": 10, "S": 10, "W": 5}
    assert stratified_users(users, "user_region", 10, "salt").equals(a)
    with pytest.raises(ValueError, match="stratify_by column 'tier'"):
        stratified_users(users, "tier", 10, "salt")


def test_packaged_serving_yaml_is_valid():
    spec = load_serving_spec()
    assert sum(a.traffic_pct for a in spec.ab.arms) == 100
    assert spec.feed.k_feed <= spec.feed.k_retrieve


def test_impressions_log_sensor_requests_one_online_evaluation_per_log_marker(tmp_path):
    import datetime as dt

    from dagster import build_sensor_context

    from recsys_assets.config.files import ConfigFilesResource
    from recsys_assets.core.days import last_complete_day
    from recsys_assets.serving.automation import impressions_log_sensor
    from resources.storage import StorageResource

    day = (dt.date.fromisoformat(last_complete_day(dt.datetime.now(dt.UTC))) - dt.timedelta(days=1)).isoformat()
    folder = tmp_path / "online_logs" / "impressions" / f"dt={day}"
    folder.mkdir(parents=True)
    with build_sensor_context(
        resources={"storage": StorageResource(data_root=str(tmp_path)), "config_files": ConfigFilesResource()}
    ) as ctx:
        assert impressions_log_sensor(ctx).skip_message.startswith("no impressions logs")
    (folder / "_SUCCESS").write_bytes(b"")
    with build_sensor_context(
        resources={"storage": StorageResource(data_root=str(tmp_path)), "config_files": ConfigFilesResource()}
    ) as ctx:
        requests = impressions_log_sensor(ctx)
    assert [r.partition_key for r in requests] == [day]
    assert requests[0].run_key.startswith(f"online_eval:{day}:")


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), -1.0])
def test_a_non_finite_or_negative_task_weight_is_refused_at_load_naming_the_key(tmp_path, weight):
    """A NaN weight once blended every score to NaN and published an empty feed over the served one."""
    import yaml

    from recsys_assets.config.serving import DEFAULT_SERVING_CONFIG, ServingConfigError

    raw = yaml.safe_load(DEFAULT_SERVING_CONFIG.read_text())
    raw["feed"]["task_weights"]["liked"] = weight
    path = tmp_path / "serving.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ServingConfigError, match=r"feed: .*task_weights of \['liked'\] must be finite and >= 0"):
        load_serving_spec(str(path))


def test_a_feed_that_collapses_against_the_previous_day_is_refused():
    from recsys_assets.serving.feed import feed_size_verdict

    assert feed_size_verdict(0, None, 0, 0.5) == (False, "the feed has 0 rows")
    assert feed_size_verdict(10, None, 0, 0.5)[0]  # a first feed: nothing to compare with
    ok, why = feed_size_verdict(499, "2024-03-01", 1000, 0.5)
    assert not ok and why == "499 rows < 50% of 2024-03-01's 1,000"
    assert feed_size_verdict(500, "2024-03-01", 1000, 0.5) == (True, "500 rows (50% of 2024-03-01's)")


def test_spark_day_users_equal_the_in_process_active_users_and_stratified_sample(spark):
    """serving/feed_stage.day_users (the Spark feed's users) against serving/feed's pandas functions: latest
    attributes per user, and the per-segment hash sample."""
    from recsys_assets.serving.feed import latest_user_rows
    from recsys_assets.serving.feed_stage import day_users

    rng = np.random.default_rng(3)
    n = 3_000
    events = pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in rng.integers(0, 400, n)],
            "user_language": rng.choice(["hi", "ta", "te"], n),
            "user_region": rng.choice(["N", "S", "E", "W"], n, p=[0.55, 0.3, 0.1, 0.05]),
            "user_tenure_days": rng.integers(0, 900, n).astype(np.int64),
            "event_ts": pd.to_datetime("2024-03-02") + pd.to_timedelta(rng.permutation(n), unit="s"),
        }
    )
    sdf = spark.createDataFrame(events)
    expected = latest_user_rows(events)
    params = {"sample_users_per_segment": None, "stratify_by": "user_region", "sample_salt": "s1"}
    got = day_users(sdf, params).toPandas().sort_values("user_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got[expected.columns], expected, check_dtype=False)
    sampled = stratified_users(expected, "user_region", 20, "s1").sort_values("user_id").reset_index(drop=True)
    got = day_users(sdf, {**params, "sample_users_per_segment": 20}).toPandas()
    got = got.sort_values("user_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got[sampled.columns], sampled, check_dtype=False)
    assert got.groupby("user_region").size().max() == 20


def test_skew_hash_sample_is_taken_in_arrow_and_equals_the_whole_frame_formula():
    """serving/skew.hash_sample keeps exactly the rows whose hash(user_id|item_id) % row count < max_rows (what
    the report sampled from the whole day in pandas before), reading one batch at a time."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    from recsys_assets.serving.skew import hash_sample

    rng = np.random.default_rng(5)
    n = 50_000
    df = pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in rng.integers(0, 5_000, n)],
            "item_id": [f"i{i}" for i in rng.integers(0, 900, n)],
            "watch_ratio": rng.random(n),
        }
    )
    ds = pads.dataset(pa.Table.from_pandas(df, preserve_index=False).to_batches(max_chunksize=4_096), schema=None)
    h = pd.util.hash_array(df["user_id"].to_numpy(dtype=object) + "|" + df["item_id"].to_numpy(dtype=object))
    expected = df[h % n < 7_000].reset_index(drop=True)
    got = hash_sample(ds, ["user_id", "item_id", "watch_ratio"], 7_000)
    pd.testing.assert_frame_equal(got, expected)
    assert 6_000 < len(got) < 8_000
    assert len(hash_sample(ds, ["user_id", "item_id"], n)) == n  # no more rows than asked: all of them


def test_online_metrics_on_spark_equal_the_pandas_reference(spark):
    """serving/online_eval.online_metrics_spark (what the online_evaluation stage runs) against online_metrics on
    random impressions and plays: repeated impressions, plays before/inside/after the window, arms without clicks."""
    from recsys_assets.serving.online_eval import online_metrics_spark

    rng = np.random.default_rng(11)
    t0 = pd.Timestamp("2024-03-03 08:00", tz="UTC")
    n = 4_000
    users = rng.integers(0, 300, n)
    imp = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in users],
            "item_id": [f"i{i}" for i in rng.integers(0, 60, n)],
            "rank": rng.integers(1, 21, n),
            "model_version": np.where(users % 10 == 0, 1, 2),
            "arm": np.where(users % 10 == 0, "holdback", "production"),
            "served_at": t0 + pd.to_timedelta(rng.integers(0, 600, n), unit="m"),
        }
    )
    imp = pd.concat([imp, imp.iloc[:50]], ignore_index=True)  # a repeated impression counts twice, as in pandas
    imp.loc[imp["user_id"] == "u7", ["arm", "model_version"]] = ["empty", 3]  # an arm with (likely) no clicks
    m = 20_000
    plays = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in rng.integers(0, 300, m)],
            "item_id": [f"i{i}" for i in rng.integers(0, 60, m)],
            "event_ts": t0 + pd.to_timedelta(rng.integers(-60, 700, m), unit="m"),
        }
    )
    expected = online_metrics(imp, plays, pd.Timedelta(minutes=60))
    got = online_metrics_spark(spark.createDataFrame(imp), spark.createDataFrame(plays), 60)
    assert [(r["arm"], r["model_version"]) for r in got] == [(r["arm"], r["model_version"]) for r in expected]
    for g, e in zip(got, expected):
        assert {k: v for k, v in g.items() if k not in ("ctr", "user_hit_rate", "mean_clicked_rank")} == {
            k: v for k, v in e.items() if k not in ("ctr", "user_hit_rate", "mean_clicked_rank")
        }
        for k in ("ctr", "user_hit_rate", "mean_clicked_rank"):
            assert g[k] == pytest.approx(e[k]) if e[k] is not None else g[k] is None
    assert sum(r["clicks"] for r in got) > 100
    # A log written at nanosecond precision (pandas' default) reaches Spark as a long: the same metrics.
    as_nanos = imp.assign(served_at=imp["served_at"].astype("int64"))
    assert online_metrics_spark(spark.createDataFrame(as_nanos), spark.createDataFrame(plays), 60) == got
