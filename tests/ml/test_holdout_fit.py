"""The temporal holdout fit (ml/holdout_fit.py) and the point-in-time trend inputs (ml/trend.py): what a training
chooses inside its window never depends on the validation day, is the same for the same seed, and the item inputs
of a day never count that day or later."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from recsys_assets.config.training import TrainingSpec
from recsys_assets.core.datasets import VOCAB
from recsys_assets.core.days import day_number
from recsys_assets.core.store_dirs import PartitionVersion
from recsys_assets.ml.holdout_fit import choose, fit_ranker, fit_retrieval, holdout_split
from recsys_assets.ml.ranker import RankerHyper
from recsys_assets.ml.retrieval import RetrievalHyper, train_two_tower
from recsys_assets.ml.train import ModelInputs, build_day_vocab, train_day_retrieval
from recsys_assets.ml.trainer import TrainSettings
from recsys_assets.ml.trend import ItemTrend, example_age, raw_trend
from resources.store import DatasetStore
from tests.helpers import TRAIN_DAYS, VALID_DAY, make_day, make_world, write_training_events

RUNTIME = {"device": "cpu", "mixed_precision": False, "num_threads": 2, "seed": 7}
quiet = lambda m: None  # noqa: E731


# ---- trend inputs ----


def test_trend_inputs_of_a_day_count_only_the_days_before_it():
    by_day = {
        "2024-05-01": np.array([4, 0, 1]),
        "2024-05-02": np.array([2, 8, 1]),
        "2024-05-03": np.array([0, 1, 7]),
        "2024-05-04": np.array([99, 99, 99]),  # the day itself
        "2024-05-05": np.array([50, 50, 50]),  # and later
    }
    raw = raw_trend(by_day, "2024-05-04", 3)
    np.testing.assert_allclose(raw[:, 0], np.log1p([0, 1, 7]), rtol=1e-6)  # the day before
    np.testing.assert_allclose(raw[:, 1], np.log1p([2, 3, 3]), rtol=1e-6)  # mean of the 3 days before
    changed = {**by_day, "2024-05-04": np.array([0, 0, 0]), "2024-05-05": np.array([1, 2, 3])}
    np.testing.assert_array_equal(raw_trend(changed, "2024-05-04", 3), raw)
    # The window's first day has no counted day before it: zeros. A missing day before: the mean of the others.
    assert not raw_trend(by_day, "2024-05-01", 3).any()
    gap = {d: c for d, c in by_day.items() if d != "2024-05-03"}
    np.testing.assert_allclose(raw_trend(gap, "2024-05-04", 3)[:, 0], np.log1p([3, 4, 1]), rtol=1e-6)


def test_trend_lookup_gives_each_row_its_event_days_inputs_and_example_age_is_days_to_the_window_end():
    by_day = {d: np.arange(4) * (k + 1) for k, d in enumerate(["2024-05-01", "2024-05-02", "2024-05-03"])}
    trend = ItemTrend.fit(by_day, 4)
    assert all(s > 0 for s in trend.std)
    of_batch = trend.lookup(by_day, 4)
    b = {
        "event_day": torch.tensor([day_number("2024-05-03"), day_number("2024-05-02"), day_number("2024-05-03")]),
        "content_row": torch.tensor([3, 1, 0]),
    }
    got = of_batch(b).numpy()
    np.testing.assert_allclose(got[0], trend.of_day(by_day, "2024-05-03", 4)[3])
    np.testing.assert_allclose(got[1], trend.of_day(by_day, "2024-05-02", 4)[1])
    age = example_age(list(by_day))(b).squeeze(1).numpy()
    np.testing.assert_allclose(age, np.array([0, 1, 0]) / 7.0)


def test_trend_inputs_with_no_spread_in_training_stay_zero_when_scored():
    """A one-day window: no counted day before its rows, every training input 0. The model learned nothing from the
    inputs, so the validation day's (from that window day's counts) must reach it as 0 too, not (x - 0) / 1e-6."""
    one_day = {"2024-05-01": np.array([5, 0, 2, 9])}
    trend = ItemTrend.fit(one_day, 4)
    assert trend.std == (0.0, 0.0)
    raw = raw_trend(one_day, "2024-05-02", 4)
    assert raw[:, 0].max() > 2  # the scored day has real inputs ...
    assert not trend.of_day(one_day, "2024-05-02", 4).any()  # ... standardized to 0
    assert ItemTrend.fit({"2024-05-01": np.zeros(4, np.int64)}, 4).std == (0.0, 0.0)
    # a saved standardisation with spread (every model before this rule) is unchanged
    kept = ItemTrend(mean=(1.0, 2.0), std=(0.5, 2.0))
    np.testing.assert_allclose(kept.standardized(np.array([[2.0, 2.0]], np.float32)), [[2.0, 0.0]])


def test_choose_prefers_the_best_score_then_fewer_epochs_then_the_smaller_weight():
    table = [{0.0: (0.30, 0.1), 1.0: (0.32, 0.1)}, {0.0: (0.32, 0.1), 1.0: (math.nan, 0.9)}]
    assert choose(table) == (1, 1.0)  # 0.32 first reached at epoch 1 with weight 1.0
    assert choose([{0.5: (0.2,), 0.0: (0.2,)}]) == (1, 0.0)
    assert choose([{0.0: (0.1, 0.2)}, {0.0: (0.1, 0.3)}]) == (2, 0.0)  # the secondary score breaks the tie
    assert holdout_split(["a"]) is None and holdout_split(["a", "b", "c"]) == (["a", "b"], "c")


# ---- the fit on a store ----


def _world_store(tmp_path) -> DatasetStore:
    store = DatasetStore(str(tmp_path))
    world = make_world()
    for k, day in enumerate([*TRAIN_DAYS, VALID_DAY]):
        ev, it = make_day(world, day, 3000, seed=100 + k)
        write_training_events(store, day, ev, it)
    return store


def _spec() -> TrainingSpec:
    small = {"epochs": 2, "batch_size": 512}
    doc = {"window_days": 3, "min_window_days": 3, "history": {"enabled": False}, "checks": {"retrieval_k": 10}}
    prior = {"recency_prior": "fit", "recency_prior_search": [0.0, 1.0, 4.0]}
    return TrainingSpec.model_validate({**doc, "ranker": small, "retrieval": small, "retrieval_scoring": prior})


def _inputs(store: DatasetStore, spec: TrainingSpec) -> ModelInputs:
    vocab = build_day_vocab(store, VALID_DAY, spec)
    out = PartitionVersion.new(store, VOCAB, VALID_DAY, "test")
    out.publish(**(vocab.write(out) or {}))
    return ModelInputs.resolve(store, VALID_DAY, spec, quiet)


def _retrieval_hyper() -> RetrievalHyper:
    return RetrievalHyper(logq_by_day=True, item_trend=True, example_age=True)


def _fits(inputs: ModelInputs):
    settings = TrainSettings.of(inputs.spec.retrieval, RUNTIME)
    r = fit_retrieval(inputs, train_two_tower, _retrieval_hyper(), settings, None, quiet)
    rk = fit_ranker(inputs, RankerHyper(item_bias=True), TrainSettings.of(inputs.spec.ranker, RUNTIME), quiet)
    return r, rk


def _scrambled(table: pa.Table, seed: int) -> pa.Table:
    """The same events and items with every label and user reassigned: a different validation day, same catalogue."""
    rng = np.random.default_rng(seed)
    perm = pa.array(rng.permutation(table.num_rows))
    for col in ("user_id", "liked", "shared", "followed", "watch_ratio"):
        table = table.set_column(table.schema.get_field_index(col), col, pc.take(table.column(col), perm))
    return table


def test_holdout_fit_never_reads_the_validation_day_and_is_reproducible(tmp_path):
    spec = _spec()
    store = _world_store(tmp_path / "a")
    first_r, first_rk = _fits(_inputs(store, spec))
    assert first_r.fit_days == TRAIN_DAYS[:-1] and first_r.holdout_day == TRAIN_DAYS[-1]
    assert first_rk.fit_days == TRAIN_DAYS[:-1] and first_rk.holdout_day == TRAIN_DAYS[-1]
    assert [row["epoch"] for row in first_r.per_epoch] == [1, 2]
    assert set(first_r.per_epoch[0]) == {"epoch", "0.0", "1.0", "4.0"}
    assert first_r.recency_prior in (0.0, 1.0, 4.0) and first_r.epochs in (1, 2) and first_r.holdout_queries > 0
    best = first_r.per_epoch[first_r.epochs - 1][str(first_r.recency_prior)]["recall@10"]
    assert best == max(row[w]["recall@10"] for row in first_r.per_epoch for w in ("0.0", "1.0", "4.0"))
    assert all(0.5 < row["mean_auc"] < 1 for row in first_rk.per_epoch)

    # The same store with the validation day's events scrambled (a new committed version), fitted again: the same
    # choices and the same table to the last digit. Reading the validation day anywhere would change them.
    import pyarrow.dataset as pads

    from recsys_assets.core.readers import read_final_items

    events = pads.dataset(store.committed_path("training_events", VALID_DAY, "events"), filesystem=store.fs).to_table()
    items = read_final_items(store, VALID_DAY)
    write_training_events(store, VALID_DAY, _scrambled(events, 1), items)
    spec_b = _spec()
    second_r, second_rk = _fits(_inputs(store, spec_b))
    assert second_r == first_r
    assert second_rk == first_rk


def test_a_trained_two_tower_records_the_fit_and_is_served_with_what_it_chose(tmp_path):
    store = _world_store(tmp_path)
    spec = _spec()
    inputs = _inputs(store, spec)
    model = train_day_retrieval(inputs, RUNTIME, "run-1", quiet)
    fit = model.training_info["holdout_fit"]
    assert fit["holdout_day"] == TRAIN_DAYS[-1] and model.metrics["epochs_fitted_on"] == TRAIN_DAYS[-1]
    assert model.metrics["epochs"] == fit["epochs"] == len(model.training_info["history"])
    assert model.metrics["recency_prior"] == fit["recency_prior"]
    served = "two-tower + recency prior" if fit["recency_prior"] else "two-tower"
    assert model.metrics["primary_method"] == served
    assert model.metrics["model_recall@10"] == model.metrics["methods"][served]["recall@10"]
    # the packaged defaults: trend inputs on, example age and history positions off
    assert model.model_config["item_trend"] is not None and model.model_config["example_age"] is False
    assert model.model_config["item"]["num_dense"] == 4 and model.model_config["query"]["num_dense"] == 1


def test_held_out_log_likelihood_is_the_mean_log_softmax_of_the_positives_with_seen_items_left_out():
    from recsys_assets.ml.baselines import vector_scores
    from recsys_assets.ml.metrics import softmax_log_likelihood

    scores = np.array([[1.0, 2.0, 0.0], [0.5, 0.5, 3.0]])
    extra = np.array([0.0, 1.0, 2.0])
    relevant = [np.array([1]), np.array([0, 1])]
    seen = [np.array([], np.int64), np.array([2])]
    score = vector_scores(scores.astype(np.float32), np.eye(3, dtype=np.float32))
    got = softmax_log_likelihood(score, relevant, extra, [0.0, 2.0], seen)

    def expected(w: float) -> float:
        logits = scores + w * extra
        first = logits[0, 1] - np.log(np.exp(logits[0]).sum())
        z1 = np.log(np.exp(logits[1, :2]).sum())  # item 2 seen: not in the softmax
        return (first + logits[1, 0] - z1 + logits[1, 1] - z1) / 3

    assert got[0.0] == pytest.approx(expected(0.0)) and got[2.0] == pytest.approx(expected(2.0))


def test_the_served_extra_dimension_adds_the_prior_and_the_models_popularity_logit():
    from recsys_assets.ml.retrieval import with_recency_prior

    rng = np.random.default_rng(0)
    q, items = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)
    recent, bias = np.array([0, 1, 5, 2, 9]), rng.normal(size=5)
    qa, ia = with_recency_prior(q, items, recent, 2.0, 0.05, bias)
    want = (q @ items.T) / 0.05 + 2.0 * np.log1p(recent) + bias
    np.testing.assert_allclose((qa @ ia.T) / 0.05, want, rtol=1e-4, atol=1e-3)


def test_history_positions_let_the_query_tower_tell_new_entries_from_old_and_round_trip_in_the_config():
    from recsys_assets.ml.models import TowerConfig, TwoTower

    q = TowerConfig(["user_id"], [10], 1, use_content=False, embedding_dim=8, output_dim=8, extra_dim=16)
    i = TowerConfig(["item_id"], [20], 2, use_content=True, embedding_dim=8, output_dim=8)
    torch.manual_seed(0)
    model = TwoTower(q, i, 0.05, history_len=3, history_positions=True).eval()
    cat, dense = torch.tensor([[1], [2]]), torch.zeros(2, 1)
    ids = torch.tensor([[3, 4, 0], [4, 3, 0]])  # the same two items, in the other order
    content = torch.randn(1, 3, 128).expand(2, 3, 128).clone()
    content[1, :2] = content[0, [1, 0]]
    with torch.no_grad():
        before = model.history_vector(ids, content)
        assert torch.allclose(before[0], before[1], atol=1e-6)  # zero position vectors: order-blind at the start
        model.history_position[0] += 1.0  # the newest entry made different
        after = model.history_vector(ids, content)
    assert not torch.allclose(after[0], after[1], atol=1e-4)
    again = TwoTower.from_config(model.config())
    assert again.history_positions and again.example_age is False and again.item_trend is None
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(again.query(cat, dense, ids, content), model.query(cat, dense, ids, content))


# ---- the ranker's trend inputs ----


def test_a_ranker_with_trend_inputs_scores_a_day_from_the_days_before_it_and_exports_with_them(model_store):
    from recsys_assets.ml.export import load_program
    from recsys_assets.ml.loader import committed_events_dataset, item_day_frequencies, retrieval_positive_filter
    from recsys_assets.ml.ranker import ranker_program, score_ranker, train_ranker
    from tests.helpers import make_encoder

    enc = make_encoder(model_store)
    train = committed_events_dataset(model_store, TRAIN_DAYS)
    by_day = item_day_frequencies(train, enc.catalog, retrieval_positive_filter(enc.labels))
    settings = TrainSettings(epochs=1, batch_size=512, num_threads=1)
    model, _ = train_ranker(train, enc, RankerHyper(item_trend=True), settings, log=quiet, day_positives=by_day)
    # 3 dense features + the 2 trend inputs, standardised with the window's moments (saved in the config)
    assert model.cfg.num_dense == 5 and model.cfg.item_trend == ItemTrend.fit(by_day, len(enc.catalog)).to_dict()
    # counted here when the caller has no counts: the same model
    counted, _ = train_ranker(train, enc, RankerHyper(item_trend=True), settings, log=quiet)
    assert counted.cfg.item_trend == model.cfg.item_trend
    for a, b in zip(counted.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)

    valid = committed_events_dataset(model_store, [VALID_DAY])
    scores, labels = score_ranker(model, valid, enc, day_positives=by_day)
    # the scored day's own counts (or a later day's) never change its scores; the day before's do
    later = {**by_day, VALID_DAY: np.full(len(enc.catalog), 500)}
    np.testing.assert_array_equal(score_ranker(model, valid, enc, day_positives=later)[0], scores)
    shifted = {**by_day, TRAIN_DAYS[-1]: by_day[TRAIN_DAYS[-1]][::-1].copy()}
    assert not np.allclose(score_ranker(model, valid, enc, day_positives=shifted)[0], scores)
    with pytest.raises(ValueError, match="recent positives"):
        score_ranker(model, valid, enc)
    assert 0.5 < float(np.mean([v for v in _aucs(scores, labels).values() if math.isfinite(v)])) < 1

    served = load_program(ranker_program(model))
    cat = torch.stack([torch.randint(0, c, (11,)) for c in model.cfg.cardinalities], dim=1)
    dense, content = torch.randn(11, 5), torch.randn(11, 128)
    with torch.no_grad():
        assert torch.allclose(served(cat, dense, content), model(cat, dense, content), atol=1e-5)


def _aucs(scores, labels):
    from recsys_assets.ml.ranker import task_aucs

    return task_aucs(scores, labels)


def test_the_serving_trend_table_lists_the_served_days_inputs_and_refuses_a_bad_column():
    from recsys_assets.ml.features import build_item_catalog
    from recsys_assets.ml.trend import TREND_FEATURES, serving_trend_table, trend_rows

    catalog = build_item_catalog([_items_table(["i0", "i1", "i2", "i3"])])
    by_day = {"2024-05-01": np.array([3, 0, 0, 1]), "2024-05-02": np.array([0, 0, 2, 4])}
    table = serving_trend_table(by_day, "2024-05-03", catalog)
    assert table.column("item_id").to_pylist() == ["i0", "i2", "i3"]  # i1: no positives on any counted day
    rows = trend_rows(table, catalog)
    np.testing.assert_allclose(rows, raw_trend(by_day, "2024-05-03", 4), rtol=1e-6)
    # another catalogue (the release's): looked up by id, unknown ids ignored, unlisted items 0
    other = build_item_catalog([_items_table(["i9", "i3", "i1"])])
    np.testing.assert_allclose(trend_rows(table, other), [[0, 0], rows[3], [0, 0]], rtol=1e-6)
    bad = table.set_column(1, TREND_FEATURES[0], pa.array([1.0, float("nan"), 2.0], pa.float32()))
    with pytest.raises(ValueError, match=TREND_FEATURES[0]):
        trend_rows(bad, catalog)
    with pytest.raises(ValueError, match="lacks column"):
        trend_rows(table.drop_columns([TREND_FEATURES[1]]), catalog)


def _items_table(ids: list[str]) -> pa.Table:
    """A catalogue's input table of `ids` (attributes irrelevant to the trend inputs)."""
    n = len(ids)
    return pa.table(
        {
            "item_id": pa.array(ids, pa.string()),
            "item_author_id": pa.array(["a"] * n, pa.string()),
            "item_category": pa.array(["c"] * n, pa.string()),
            "item_language": pa.array(["en"] * n, pa.string()),
            "item_video_length_s": pa.array([10.0] * n),
            "item_created_at": pa.array([0] * n, pa.timestamp("us", tz="UTC")),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(n * 4, np.float32)), 4),
        }
    )


def test_the_prior_weight_can_be_chosen_over_the_held_out_days_of_earlier_fits(tmp_path):
    """recency_prior_pooled_days: the weight maximises the mean held-out score over this fit's day and the earlier
    committed models' fits (their tables at their chosen epochs); models whose table lacks a weight or is unreadable
    are skipped; with one day the choice is this fit's alone."""
    from recsys_assets.core.datasets import RETRIEVAL_MODEL
    from recsys_assets.ml.holdout_fit import previous_fit_rows

    store = _world_store(tmp_path)

    def commit(day: str, fit) -> None:
        out = PartitionVersion.new(store, RETRIEVAL_MODEL, day, "test")
        out.write_json("training.json", {"holdout_fit": fit})
        out.publish()
        store.record_verdict(RETRIEVAL_MODEL, day, out.version, "retrieval_recall_gate", True)

    def table(held_out: str, best: str, weights=("0.0", "1.0", "4.0")) -> dict:
        cells = {w: {"recall@10": 0.9 if w == best else 0.0, "ndcg@10": 0.0} for w in weights}
        return {"holdout_day": held_out, "epochs": 2, "per_epoch": [{"epoch": 1}, {"epoch": 2, **cells}]}

    commit(TRAIN_DAYS[2], table(TRAIN_DAYS[1], "4.0"))  # the model of the day before VALID_DAY
    commit(TRAIN_DAYS[1], table(TRAIN_DAYS[0], "1.0", weights=("0.0", "1.0")))  # another search space: skipped
    commit(TRAIN_DAYS[0], "unreadable")  # skipped, said
    logs: list[str] = []
    rows = previous_fit_rows(store, VALID_DAY, 5, (0.0, 1.0, 4.0), logs.append)
    assert rows == [(TRAIN_DAYS[1], {0.0: (0.0, 0.0), 1.0: (0.0, 0.0), 4.0: (0.9, 0.0)})]
    assert len(logs) == 2 and all("not comparable" in m for m in logs)

    settings = TrainSettings.of(_spec().retrieval, RUNTIME)
    alone = fit_retrieval(_inputs(store, _spec()), train_two_tower, _retrieval_hyper(), settings, None, quiet)
    assert alone.pooled is None
    pooled_spec = _spec().model_copy(
        update={"retrieval_scoring": _spec().retrieval_scoring.model_copy(update={"recency_prior_pooled_days": 3})}
    )
    pooled = fit_retrieval(_inputs(store, pooled_spec), train_two_tower, _retrieval_hyper(), settings, None, quiet)
    assert pooled.per_epoch == alone.per_epoch  # the same first model and table ...
    assert pooled.pooled["holdout_days"] == [TRAIN_DAYS[2], TRAIN_DAYS[1]]
    mean = pooled.pooled["mean"]
    for w, earlier in (("0.0", 0.0), ("1.0", 0.0), ("4.0", 0.9)):
        today = alone.per_epoch[alone.epochs - 1][w]["recall@10"]
        assert mean[w]["recall@10"] == pytest.approx((today + earlier) / 2)
    assert pooled.recency_prior == 4.0  # ... the weight the two days favour together
    at_four = [row["4.0"]["recall@10"] for row in alone.per_epoch]
    assert pooled.epochs == 1 + at_four.index(max(at_four))
