"""The serving hand-off through Dagster on generated data and the local PostgreSQL server: two trained days ->
two registered releases in a Triton-style repository -> promotion -> A/B config (holdback on the previous
version) -> Postgres feed -> skew check -> online CTR from simulated logs -> rollback from the rollback job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from dagster import AssetKey

from recsys_assets.config.files import ConfigFilesResource
from recsys_assets.config.serving import DEFAULT_SERVING_CONFIG, load_serving_spec
from recsys_assets.core.days import window_of
from recsys_assets.core.readers import read_history_table
from recsys_assets.ml.artifacts import ArtifactDir
from recsys_assets.ml.models import MMoERanker, RankerConfig
from recsys_assets.ml.release import UntrustedReleaseError, load_release, release_problems, version_dir
from recsys_assets.ml.scoring import USER_COLUMNS, ItemSide, ReleaseHistory, UserSide, generate_feed, ranker_inputs
from recsys_assets.ml.trend import ItemTrend, trend_rows
from recsys_assets.serving import registry
from recsys_assets.serving.feed import active_users, build_feed
from recsys_assets.serving.online_eval import IMPRESSION_COLUMNS, read_raw_plays
from recsys_assets.serving.serving_config import latest_config, latest_written_config, user_buckets
from recsys_assets.synthetic.online_logs import simulate_impressions, write_online_feature_sample
from resources.mlflow import MlflowResource
from resources.postgres import PostgresResource
from resources.storage import StorageResource
from resources.store import DatasetStore
from tests.helpers import DAYS, LENIENT, PG_DSN, check_results, defs_with, run_job, train_day, training_yaml

pytestmark = pytest.mark.slow


def _resources(root, pg_database) -> dict:
    return {
        "storage": StorageResource(data_root=str(root)),
        "postgres": PostgresResource(host=PG_DSN["host"], port=PG_DSN["port"], user=PG_DSN["user"], dbname=pg_database),
    }


def serve(day, instance, root, pg_database):
    return run_job("serving_job", day, instance, _resources(root, pg_database))


def feed_rows(pg_database, day) -> pd.DataFrame:
    with psycopg2.connect(dbname=pg_database, **PG_DSN) as conn:
        return pd.read_sql_query("SELECT * FROM feed WHERE dt = %s ORDER BY user_id, rank", conn, params=(day,))


def brute_force_ctr(impressions: pd.DataFrame, plays: pd.DataFrame, minutes: int) -> dict[str, tuple[int, int]]:
    """Clicks and impressions per arm, one impression at a time (the reference for the vectorised version)."""
    by_pair: dict[tuple[str, str], list] = {}
    for r in plays.itertuples():
        by_pair.setdefault((r.user_id, r.item_id), []).append(r.event_ts)
    out: dict[str, list[int]] = {}
    for r in impressions.itertuples():
        hit = any(
            r.served_at <= ts <= r.served_at + pd.Timedelta(minutes=minutes)
            for ts in by_pair.get((r.user_id, r.item_id), [])
        )
        c = out.setdefault(r.arm, [0, 0])
        c[0] += int(hit)
        c[1] += 1
    return {k: tuple(v) for k, v in out.items()}


def _served_trend(store, release, day) -> tuple[np.ndarray, np.ndarray]:
    """(raw, standardized) trend inputs a release serves its ranker: the ranker artifact's table (hashed in
    release.json), looked up by item id in the release catalogue, standardized with the ranker's moments; checked
    against what the feed's ranker inputs carry after the 3 dense features."""
    src = ArtifactDir.committed(store, "ranker_model", day)
    cfg = src.read_json("model_config.json")
    assert cfg["num_dense"] == 5 and "item_trend.parquet" in release.manifest["components"]["recsys_ranker"]["files"]
    raw = trend_rows(src.read_table("item_trend.parquet"), release.catalog)
    want = ItemTrend.from_dict(cfg["item_trend"]).standardized(raw)
    np.testing.assert_array_equal(release.ranker_item_trend, want)
    items = ItemSide.of(release, "for_you", pd.Timestamp(window_of(day).end))
    users = active_users(store, day).head(3).reset_index(drop=True)
    item_row = np.argsort(-raw[:, 0])[:7]  # the items with the most positives on the day before the served one
    _, dense, _ = ranker_inputs(release, items, UserSide.of(release, items, users), np.zeros(7, np.int64), item_row)
    np.testing.assert_array_equal(dense[:, 3:].numpy(), want[item_row])
    return raw, want


def test_two_releases_feed_ab_split_skew_online_ctr_and_rollback(
    instance, trained_root, tmp_path, pg_database, monkeypatch, mlflow_server
):
    # Every run of this test tracks into a real MLflow server, configured as a deployment does: the environment.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow = MlflowResource(tracking_uri=mlflow_server).client()

    def aliases() -> dict[str, int]:  # alias -> the platform's release version it points at
        model = mlflow.get_registered_model("recsys_feed")
        return {
            a: int(mlflow.get_model_version("recsys_feed", v).tags["recsys.release"]) for a, v in model.aliases.items()
        }

    store = DatasetStore(str(trained_root))
    spec = load_serving_spec()
    # Three small days: the gates run, the lift over most-popular is not what is under test here.
    cfg_path = training_yaml(tmp_path, **{**LENIENT, "retrieval_min_lift_over_popularity": 0.0})
    # Release 1 is the history-free design (what releases before user_history were), release 2 history-aware: the
    # A/B feed serves both signatures, and rolling back to release 1 keeps working.
    history_free = training_yaml(
        tmp_path, history={"enabled": False}, **{**LENIENT, "retrieval_min_lift_over_popularity": 0.0}
    )
    day1, day2 = DAYS[1], DAYS[2]

    # Release 1: train day 2 (window day 1), a skew-free online sample, then the serving job's assets.
    assert train_day(day1, instance, trained_root, history_free).success
    logged = write_online_feature_sample(store, day1, spec.skew.online_feature_log)
    result = serve(day1, instance, trained_root, pg_database)
    assert result.success
    assert check_results(result) == {
        "serving_config_valid": True,
        "feature_skew_within_limits": True,
        "feed_rows_within_limits": True,
    }
    meta = {
        e.asset_key.path[-1]: e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert meta["model_repository"]["version"].value == 1 and meta["model_repository"]["checks_passed"].value is True
    assert meta["model_promotion"]["decision"].value == "promoted v1 (replaced nothing)"
    assert meta["feature_skew_report"]["online_rows"].value == logged > 0
    # the history the models read is a compared feature too (logged online, user_history offline): no skew here
    assert meta["feature_skew_report"]["history_length"].value == "compared"
    skew1 = store.read_json(store.committed_path("feature_skew_report", day1, "report.json"))
    row = next(f for f in skew1["features"] if f["feature"] == "history_length")
    assert row["passed"] and row["online_mean"] > 0

    # Triton-style layout, and the served ranker program equals the trained model on the same inputs.
    repo = Path(trained_root) / "model_repository"
    for name in (
        "recsys_ranker",
        "recsys_query_tower",
        "recsys_item_tower",
        "recsys_retrieval_index",
        "recsys_cold_start_index",
        "recsys_feed",
    ):
        assert (repo / name / "config.pbtxt").read_text().startswith(f'name: "{name}"')
        assert (repo / name / "1").is_dir()
    ranker_cfg = (repo / "recsys_ranker" / "config.pbtxt").read_text()
    assert 'backend: "pytorch"' in ranker_cfg and 'name: "cat" data_type: TYPE_INT64 dims: [ -1, 8 ]' in ranker_cfg
    release = json.loads((repo / "recsys_feed" / "1" / "release.json").read_text())
    assert release["partition_day"] == day1 and release["components"]["recsys_ranker"]["source"].startswith(
        f"ranker_model/dt={day1}/"
    )
    loaded = load_release(store, 1)
    src = ArtifactDir.committed(store, "ranker_model", day1)
    eager = MMoERanker(RankerConfig(**src.read_json("model_config.json")))
    eager.load_state_dict(src.read_torch("model.pt"))
    eager.eval()
    g = torch.Generator().manual_seed(0)
    cat = torch.stack([torch.randint(0, c, (64,), generator=g) for c in eager.cfg.cardinalities], dim=1)
    dense, content = (
        torch.randn(64, eager.cfg.num_dense, generator=g),
        torch.randn(64, eager.cfg.content_dim, generator=g),
    )
    with torch.no_grad():
        torch.testing.assert_close(loaded.ranker(cat, dense, content), eager(cat, dense, content))
    assert eager.cfg.history_len == 0 and "hist_ids" not in ranker_cfg
    # The ranker's trend inputs (ranker.item_trend, on in the test sizes), shipped with the release. Release 1's window
    # is one day: no day before its rows was counted, its training inputs were all 0, so the served day's (real counts)
    # reach it as 0.
    shipped = _served_trend(store, loaded, day1)
    assert shipped[0].any() and eager.cfg.item_trend["std"] == [0.0, 0.0] and not shipped[1].any()

    # The feed: every active user, k_feed items each, ranks 1..k in descending score, all from production v1.
    feed1 = feed_rows(pg_database, day1)
    users = active_users(store, day1)
    assert set(feed1["user_id"]) == set(users["user_id"])
    per_user = feed1.groupby("user_id")
    assert per_user.size().max() == spec.feed.k_feed and per_user.size().min() >= 1
    assert (per_user["score"].diff().dropna() <= 1e-12).all()
    assert set(feed1["model_version"]) == {1} and set(feed1["arm"]) == {"production"}
    assert not feed1.duplicated(["user_id", "item_id"]).any()

    # Online CTR from simulated serving logs of day 3 equals a brute-force count.
    served = simulate_impressions(
        store,
        feed1[["user_id", "item_id", "rank", "model_version", "arm"]],
        day1,
        spec.online_evaluation.impressions_log,
    )
    assert served > 0
    ev = run_job("online_evaluation_job", day1, instance, _resources(trained_root, pg_database))
    report = store.read_json(store.committed_path("online_evaluation", day1, "report.json"))
    impressions = pd.read_parquet(Path(trained_root) / "online_logs" / "impressions" / f"dt={day1}")
    assert list(impressions.columns) == IMPRESSION_COLUMNS
    expected = brute_force_ctr(impressions, read_raw_plays(store, day2), spec.online_evaluation.plays_window_minutes)
    assert {r["arm"]: (r["clicks"], r["impressions"]) for r in report["arms"]} == expected
    assert ev.success and sum(c for c, _ in expected.values()) > 0

    # Release 2 (day 3) with a skewed online sample: v2 promoted, v1 becomes the 10% holdback arm, skew warns.
    assert train_day(day2, instance, trained_root, cfg_path).success
    write_online_feature_sample(
        store,
        day2,
        spec.skew.online_feature_log,
        transform=lambda df: df.assign(user_tenure_days=df["user_tenure_days"] * 24),
    )
    result = serve(day2, instance, trained_root, pg_database)
    assert result.success
    assert check_results(result) == {
        "serving_config_valid": True,
        "feature_skew_within_limits": False,
        "feed_rows_within_limits": True,
    }
    skew = store.read_json(store.committed_path("feature_skew_report", day2, "report.json"))
    assert [f["feature"] for f in skew["features"] if not f["passed"]] == ["user_tenure_days"]
    cfg = latest_config(store)
    assert [(a["name"], a["model_version"], a["buckets"]) for a in cfg["arms"]] == [
        ("production", 2, [0, 90]),
        ("holdback", 1, [90, 100]),
    ]
    # MLflow mirrors it: both releases registered, aliases as the registry's production and holdback; each training
    # asset logged one run per partition (params, per-epoch and final metrics), its id in the asset's metadata.
    assert aliases() == {"production": 2, "holdback": 1}
    ranker_runs = [  # this test's (the server is the session's)
        r
        for r in mlflow.search_runs([mlflow.get_experiment_by_name("recsys/ranker_model").experiment_id])
        if str(trained_root) in r.data.tags["recsys.artifact_uri"]
    ]
    assert sorted(r.data.tags["recsys.partition"] for r in ranker_runs) == [day1, day2]
    newest = next(r for r in ranker_runs if r.data.tags["recsys.partition"] == day2)
    assert newest.data.params["hyper.history_len"] == "20" and 0.5 < newest.data.metrics["auc.liked"] <= 1
    assert mlflow.get_metric_history(newest.info.run_id, "epoch.loss")
    assert mlflow.search_runs([mlflow.get_experiment_by_name("recsys/retrieval_model").experiment_id])
    # Release 2 takes the user's history: in its Triton config, and, in the feed, each user's history as of the
    # serving day from user_history, encoded with the release's own vocabulary.
    for name in ("recsys_ranker", "recsys_query_tower"):
        text = (repo / name / "config.pbtxt").read_text()
        assert 'name: "hist_ids" data_type: TYPE_INT64 dims: [ -1, 20 ]' in text, name
        assert 'name: "hist_content" data_type: TYPE_FP32 dims: [ -1, 20, 128 ]' in text, name
        # both also take the entries' ages (history_time_gaps, on in the test sizes)
        assert 'name: "hist_age" data_type: TYPE_FP32 dims: [ -1, 20 ]' in text, name
    # the ranker takes each user's history once and the user of every (user, candidate) pair
    assert (
        'name: "pair_user" data_type: TYPE_INT64 dims: [ -1 ]' in (repo / "recsys_ranker" / "config.pbtxt").read_text()
    )
    release2 = load_release(store, 2)
    assert release2.ranker_config["grouped_history"]
    _, trend2 = _served_trend(store, release2, day2)  # a two-day window: inputs with spread
    assert len(np.unique(trend2[:, 0])) > 1
    history = read_history_table(store, day2)
    hist = ReleaseHistory(release2, history, day2)
    user = max(history.to_pylist(), key=lambda r: len(r["item_ids"]))
    ids, content, ages = hist.query_inputs(np.array([user["user_id"], "nobody"], dtype=object))
    expected = release2.query_vocab.encode("item_id", pa.array(user["item_ids"][:20], pa.string()))
    assert ids[0, : len(expected)].tolist() == expected.tolist() and (ids[1] == 0).all()
    start = window_of(day2).start  # each entry's age: hours from its event to the serving day's start
    utc = [pd.Timestamp(t) if pd.Timestamp(t).tzinfo else pd.Timestamp(t, tz="UTC") for t in user["event_ts"][:20]]
    hours = [(pd.Timestamp(start) - t).total_seconds() / 3600 for t in utc]
    np.testing.assert_allclose(ages[0, : len(hours)].numpy(), hours, rtol=1e-6)
    assert min(hours) > 0 and (ages[1] == 0).all()
    with pytest.raises(ValueError, match="time gaps"):
        ReleaseHistory(release2, history)  # without the serving day
    row = release2.catalog.rows(pa.array(user["item_ids"][:1], pa.string()))[0]
    if row >= 0:
        assert torch.equal(content[0, 0], torch.from_numpy(release2.catalog.embeddings[row]))
    with pytest.raises(ValueError, match="no user_history"):
        ReleaseHistory(release2, None)

    feed2 = feed_rows(pg_database, day2)
    by_user = feed2.drop_duplicates("user_id").set_index("user_id")
    buckets = user_buckets(by_user.index.to_numpy(dtype=object), cfg["salt"], cfg["buckets"])
    assert (by_user["model_version"].to_numpy() == np.where(buckets < 90, 2, 1)).all()
    assert (by_user["arm"].to_numpy() == np.where(buckets < 90, "production", "holdback")).all()
    assert 0.03 < (buckets >= 90).mean() < 0.2
    assert len(feed_rows(pg_database, day1)) == len(feed1)  # day 2's feed is untouched

    # The feed asset scored day 2 on Spark (serving/feed_stage.py): exactly the rows of the in-process feed (same
    # users, items, ranks, arms and versions; the same scores) for two releases, one with history.
    torch.set_num_threads(1)  # as a Spark task scores
    try:
        reference = build_feed(store, day2, spec, cfg).rows
    finally:
        torch.set_num_threads(2)
    keys = ["user_id", "rank", "item_id", "model_version", "arm"]

    def ordered(df):
        return df.sort_values(["user_id", "rank"]).reset_index(drop=True)

    spark_feed, reference = ordered(feed2), ordered(reference)
    assert len(spark_feed) == len(reference) > 0
    assert spark_feed[keys].astype(str).equals(reference[keys].astype(str))
    np.testing.assert_allclose(spark_feed["score"], reference["score"], rtol=1e-6)
    assert set(spark_feed["model_version"]) == {1, 2}
    # The batch sizes never change a feed: retrieval on 7 users a call and the ranker on 3 users' pairs (the last
    # call 1 user: the grouped program's users dimension at its minimum) give the defaults' rows.
    f = spec.feed
    args = (release2, active_users(store, day2)[USER_COLUMNS].head(50), f.k_retrieve, f.k_feed, f.task_weights)
    args += (f.feed_source, pd.Timestamp(window_of(day2).end))
    small = generate_feed(*args, user_batch=7, ranker_users=3, history=history, history_day=day2)
    default = generate_feed(*args, history=history, history_day=day2)
    assert small["user_id"].nunique() == 50 and small[["user_id", "rank", "item_id"]].equals(
        default[["user_id", "rank", "item_id"]]
    )
    np.testing.assert_allclose(small["score"], default["score"], rtol=1e-6)

    # One UI action: the rollback job returns production to v1 and republishes the config.
    res = (
        defs_with(_resources(trained_root, pg_database))
        .resolve_job_def("rollback_model_job")
        .execute_in_process(
            instance=instance, run_config={"ops": {"rollback_production": {"config": {"reason": "test"}}}}
        )
    )
    assert res.success
    with psycopg2.connect(dbname=pg_database, **PG_DSN) as conn:
        assert registry.production_version(conn, "recsys_feed") == 1
        assert [
            (d["action"], d["from_version"], d["to_version"]) for d in registry.deployments(conn, "recsys_feed")
        ] == [("promote", None, 1), ("promote", 1, 2), ("rollback", 2, 1)]
    cfg = latest_config(store)
    assert cfg["config_version"] == 3 and [(a["name"], a["model_version"]) for a in cfg["arms"]] == [
        ("production", 1),
        ("holdback", None),
    ]
    assert aliases() == {"production": 1}  # the rollback moved production and removed holdback in MLflow too

    # The rollback pins production: rerunning the newest day's serving job does not promote v2 again, and the UI
    # says why (model_promotion's decision and pin; serving_config shows the pin).
    result = serve(day2, instance, trained_root, pg_database)
    assert result.success
    meta = {
        e.asset_key.path[-1]: e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert meta["model_promotion"]["decision"].value.startswith("not promoted: production pinned to v1 by rollback")
    assert meta["serving_config"]["production_pinned"].value.startswith("v1 by rollback (test;")
    assert latest_config(store)["config_version"] == 3

    def deployments() -> list[tuple]:
        with psycopg2.connect(dbname=pg_database, **PG_DSN) as conn:
            return [
                (d["action"], d["from_version"], d["to_version"]) for d in registry.deployments(conn, "recsys_feed")
            ]

    # The command line does what the job does: registry and serving config together. A person's promotion unpins.
    for var, value in {
        "RECSYS_PG_HOST": PG_DSN["host"],
        "RECSYS_PG_PORT": str(PG_DSN["port"]),
        "RECSYS_PG_USER": PG_DSN["user"],
        "RECSYS_PG_DB": pg_database,
        "RECSYS_DATA_ROOT": str(trained_root),
    }.items():
        monkeypatch.setenv(var, value)
    assert registry.main(["promote", "--version", "2", "--reason", "fixed"]) == 0
    served = latest_config(store)
    assert served["config_version"] == 4 and served["arms"][0]["model_version"] == 2
    assert registry.main(["rollback", "--reason", "cli"]) == 0
    served = latest_config(store)
    assert served["config_version"] == 5 and [(a["name"], a["model_version"]) for a in served["arms"]] == [
        ("production", 1),
        ("holdback", None),
    ]
    assert registry.main(["promote", "--version", "2", "--reason", "again"]) == 0
    assert deployments()[-3:] == [("promote", 1, 2), ("rollback", 2, 1), ("promote", 1, 2)]

    # A rollback to a release whose files are gone is refused before anything changes, naming the file: the
    # registry keeps v2, the served config stays whole and no withheld version is written for the check to trip on.
    program = Path(version_dir(store, "recsys_ranker", 1).path("model.pt2"))
    saved = program.read_bytes()
    program.unlink()
    assert release_problems(store, 1) == ["release 1: recsys_ranker/1/model.pt2 is missing"]
    res = (
        defs_with(_resources(trained_root, pg_database))
        .resolve_job_def("rollback_model_job")
        .execute_in_process(instance=instance, raise_on_error=False)
    )
    assert not res.success
    failure = next(e for e in res.all_events if e.event_type_value == "STEP_FAILURE")
    assert "rollback v2 -> v1 refused, nothing changed: release 1: recsys_ranker/1/model.pt2 is missing" in str(
        failure.step_failure_data.error
    )
    with pytest.raises(registry.PromotionRefused, match="recsys_ranker/1/model.pt2 is missing"):
        registry.main(["rollback"])
    assert deployments()[-1] == ("promote", 1, 2)
    assert latest_config(store)["config_version"] == 6 == latest_written_config(store)["config_version"]
    program.write_bytes(saved)
    assert release_problems(store, 1) == []

    # A feed far smaller than the previous day's is refused by its blocking check before the table is touched.
    served_feed = feed_rows(pg_database, day2)
    small = tmp_path / "serving-small.yaml"
    small_spec = yaml.safe_load(DEFAULT_SERVING_CONFIG.read_text())
    small_spec["feed"] |= {"sample_users_per_segment": 1, "min_rows_share_of_previous": 0.9}
    small.write_text(yaml.safe_dump(small_spec))
    res = run_job(
        "serving_job",
        day2,
        instance,
        {**_resources(trained_root, pg_database), "config_files": ConfigFilesResource(serving=str(small))},
        asset_selection=[AssetKey("feed")],
    )
    evaluation = {e.check_name: e for e in res.get_asset_check_evaluations()}["feed_rows_within_limits"]
    assert not res.success and not evaluation.passed
    assert f"< 90% of {day1}'s" in evaluation.description
    pd.testing.assert_frame_equal(feed_rows(pg_database, day2), served_feed)

    # Every file a served score depends on is hash-checked at load, the item features included.
    features = Path(version_dir(store, "recsys_feed", 2).path("item_features.parquet"))
    vocab = Path(version_dir(store, "recsys_query_tower", 2).path("vocab.parquet"))
    originals = {features: features.read_bytes(), vocab: vocab.read_bytes()}
    table = pq.read_table(features)
    pq.write_table(table.slice(1), features)  # one item fewer: a different catalogue
    with pytest.raises(UntrustedReleaseError, match="recsys_feed/2/item_features.parquet differs"):
        load_release(store, 2)
    vocab.write_bytes(vocab.read_bytes()[:-1] + b"\0")
    assert [p.split(": ", 1)[1].split(" ")[0] for p in release_problems(store, 2)] == [
        "recsys_feed/2/item_features.parquet",
        "recsys_query_tower/2/vocab.parquet",
    ]
    for path, data in originals.items():
        path.write_bytes(data)

    # The data root is a trust boundary: a release program swapped after export is refused, never unpickled.
    program = Path(version_dir(store, "recsys_ranker", 1).path("model.pt2"))
    program.write_bytes(program.read_bytes() + b"\0")
    with pytest.raises(UntrustedReleaseError, match="recsys_ranker/1/model.pt2 differs from what was exported"):
        load_release(store, 1)
    load_release(store, 2)  # the untouched release still loads
