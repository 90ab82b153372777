"""History in the loader and both models, their exports, and the evaluation baselines (no Spark, no Dagster):
histories here are computed by brute force from the generated events, as user_history defines them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from recsys_assets.ml.baselines import (
    compare_methods,
    count_scores,
    item_neighbours,
    item_prior_aucs,
    neighbour_scores,
    rank_all,
    rank_chunk,
    seen_items,
    smoothed_label_rates,
)
from recsys_assets.ml.export import load_program
from recsys_assets.ml.features import padded_content
from recsys_assets.ml.history import history_arrays
from recsys_assets.ml.loader import committed_events_dataset, sequential_batches
from recsys_assets.ml.metrics import paired_bootstrap, popularity_ranking, roc_auc
from recsys_assets.ml.ranker import (
    RankerHyper,
    history_inputs,
    ranker_program,
    score_ranker,
    task_aucs,
    train_ranker,
)
from recsys_assets.ml.retrieval import (
    RetrievalHyper,
    compare_retrieval,
    evaluation_queries,
    query_tower_program,
    query_vectors,
    train_two_tower,
)
from recsys_assets.ml.trainer import TrainSettings
from tests.helpers import TRAIN_DAYS, VALID_DAY, make_encoder

MAX_LEN = 8


def brute_force_histories(store, days: list[str], keep: int = 20) -> dict[str, pa.Table]:
    """Per day: each user's positive events (watch >= 0.5 or liked/shared/followed) of the earlier days, newest
    first, at most `keep` (item_ids and event_ts, as user_history stores them)."""
    ev = committed_events_dataset(store, days).to_table(
        columns=["user_id", "item_id", "event_ts", "event_id", "watch_ratio", "liked", "shared", "followed"]
    )
    df = ev.to_pandas()
    df = df[(df.watch_ratio >= 0.5) | df.liked | df.shared | df.followed]
    out = {}
    for d in days:
        before = df[df.event_ts < pd.Timestamp(d, tz="Asia/Kolkata")]
        before = before.sort_values(["event_ts", "event_id"], ascending=False)
        grouped = before.groupby("user_id", sort=True)
        lists = grouped["item_id"].apply(lambda s: list(s[:keep]))
        times = grouped["event_ts"].apply(lambda s: list(s[:keep]))
        out[d] = pa.table(
            {
                "user_id": pa.array(lists.index, pa.string()),
                "item_ids": pa.array(lists.tolist(), pa.list_(pa.string())),
                "event_ts": pa.array(times.tolist(), pa.list_(pa.timestamp("us", tz="UTC"))),
            }
        )
    return out


@pytest.fixture(scope="module")
def history_encoder(model_store):
    enc = make_encoder(model_store)
    tables = brute_force_histories(model_store, [*TRAIN_DAYS, VALID_DAY])
    enc.history = {d: history_arrays(t, MAX_LEN, enc.vocab, enc.catalog, d) for d, t in tables.items()}
    return enc, tables


SETTINGS = TrainSettings(epochs=2, batch_size=256, learning_rate=3e-3, num_threads=2)


def test_the_loaders_padded_history_equals_the_raw_lists(model_store, history_encoder):  # noqa: F811
    """Each event's history, gathered per batch from its day's table (`BatchEncoder.gather_history`), is its user's
    list as of the event's day; shuffled batches over the whole window carry the same rows as sequential ones."""
    from recsys_assets.ml.loader import shuffled_batches

    enc, tables = history_encoder
    raw = {d: dict(zip(t["user_id"].to_pylist(), t["item_ids"].to_pylist())) for d, t in tables.items()}
    times = {d: dict(zip(t["user_id"].to_pylist(), t["event_ts"].to_pylist())) for d, t in tables.items()}
    for day in TRAIN_DAYS:
        data = committed_events_dataset(model_store, [day])
        users = data.to_table(columns=["user_id"])["user_id"].to_pylist()
        batches = list(sequential_batches(data, enc, 1000))
        hist_ids = np.concatenate([b["hist_ids"].numpy() for b in batches])
        hist_rows = np.concatenate([b["hist_rows"].numpy() for b in batches])
        hist_age = np.concatenate([b["hist_age"].numpy() for b in batches])
        assert len(hist_ids) == len(users) and ((hist_ids != 0).any() or day == TRAIN_DAYS[0])
        assert hist_age.dtype == np.float32
        start = pd.Timestamp(day, tz="Asia/Kolkata")  # the history's day starts at local midnight
        for i in range(0, len(users), 97):
            items = raw[day].get(users[i], [])[:MAX_LEN]
            expected = enc.vocab.encode("item_id", pa.array(items, pa.string())).tolist() if items else []
            assert hist_ids[i].tolist() == expected + [0] * (MAX_LEN - len(items))
            rows = enc.catalog.rows(pa.array(items, pa.string())).tolist() if items else []
            assert hist_rows[i].tolist() == rows + [-1] * (MAX_LEN - len(items))
            hours = [(start - pd.Timestamp(t)).total_seconds() / 3600 for t in times[day].get(users[i], [])[:MAX_LEN]]
            np.testing.assert_allclose(hist_age[i], hours + [0.0] * (MAX_LEN - len(items)), rtol=1e-6)
            assert all(h > 0 for h in hours)  # every entry before the day

    def rows_of(batches) -> list[tuple]:
        keys = ("event_day", "content_row", "cat", "labels", "hist_ids", "hist_rows", "hist_age")
        out = []
        for b in batches:
            cols = [b[k].numpy().reshape(len(b["content_row"]), -1) for k in keys]
            out += [tuple(np.concatenate([c[i] for c in cols]).tolist()) for i in range(len(b["content_row"]))]
        return sorted(out)

    window = committed_events_dataset(model_store, TRAIN_DAYS)
    shuffled = list(shuffled_batches(window, enc, 512, seed=1, epoch=0, shuffle_buffer_rows=20_000))
    assert shuffled[0]["hist_ids"].dtype == torch.int64 and len({int(d) for d in shuffled[0]["event_day"]}) > 1
    assert rows_of(shuffled) == rows_of(sequential_batches(window, enc, 1000))


def test_history_aware_two_tower_exports_and_scores_like_its_weights(model_store, history_encoder):  # noqa: F811
    enc, _ = history_encoder
    train = committed_events_dataset(model_store, TRAIN_DAYS)
    model, fit, counts = train_two_tower(train, enc, RetrievalHyper(embedding_dim=16, history_len=MAX_LEN), SETTINGS)
    assert fit.history[-1]["loss"] < fit.history[0]["loss"] * 1.05
    queries = evaluation_queries(committed_events_dataset(model_store, [VALID_DAY]), enc, enc.labels)
    assert queries.day == VALID_DAY and (queries.hist_ids != 0).any()
    vecs = query_vectors(model, queries, enc.catalog)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # a user without history still gets a vector (pooling over nothing is zeros, not NaN)
    no_hist = model.query(
        queries.cat[:3], queries.dense[:3], torch.zeros(3, MAX_LEN, dtype=torch.long), torch.zeros(3, MAX_LEN, 128)
    )
    assert torch.isfinite(no_hist).all()
    served = load_program(query_tower_program(model))
    content = padded_content(enc.catalog)
    ids, rows = torch.from_numpy(queries.hist_ids[:16]), torch.from_numpy(queries.hist_rows[:16])
    with torch.no_grad():
        torch.testing.assert_close(
            served(queries.cat[:16], queries.dense[:16], ids, content[rows]),
            torch.from_numpy(vecs[:16]),
            atol=1e-5,
            rtol=1e-4,
        )
    # every method on one protocol; seen-item exclusion takes the window's items out of every top-K
    seen = seen_items(train, queries.user_ids, enc.catalog)
    comparison = compare_retrieval(
        {"two-tower (history)": model}, queries, enc, pd.Timestamp(VALID_DAY, tz="UTC"), counts, counts, [10], seen
    )
    methods = comparison.metrics
    assert set(methods) == {"two-tower (history)", "most-popular", "recent-popular", "item-kNN"}
    assert all(0 <= m["recall@10"] <= 1 for m in methods.values())


def test_the_history_time_gaps_reach_the_query_tower_and_its_exported_program(model_store, history_encoder):  # noqa: F811
    """retrieval.history_time_gaps: the entries' ages (hours before the history's day) are an input of the query
    tower, trained, evaluated and exported with the same values; the same history at other ages gives another
    query; a history read without its times is refused by name."""
    from recsys_assets.ml.models import HISTORY_AGE_BUCKETS, history_age_buckets
    from recsys_assets.ml.release import triton_config

    enc, _ = history_encoder
    train = committed_events_dataset(model_store, TRAIN_DAYS)
    hyper = RetrievalHyper(embedding_dim=16, history_len=MAX_LEN, history_time_gaps=True)
    model, _, _ = train_two_tower(train, enc, hyper, SETTINGS)
    assert model.history_time_gaps and model.config()["history_time_gaps"]
    assert model.history_age.abs().sum() > 0  # the age vectors were trained (they start at zero)
    queries = evaluation_queries(committed_events_dataset(model_store, [VALID_DAY]), enc, enc.labels)
    has = (queries.hist_ids != 0).any(axis=1)
    assert queries.hist_age is not None and (queries.hist_age[has][:, 0] > 0).all()
    vecs = query_vectors(model, queries, enc.catalog)
    served = load_program(query_tower_program(model))
    content = padded_content(enc.catalog)
    n = 16
    ids, rows = torch.from_numpy(queries.hist_ids[:n]), torch.from_numpy(queries.hist_rows[:n])
    ages = torch.from_numpy(queries.hist_age[:n])
    with torch.no_grad():
        got = served(queries.cat[:n], queries.dense[:n], ids, content[rows], ages)
        torch.testing.assert_close(got, torch.from_numpy(vecs[:n]), atol=1e-5, rtol=1e-4)
        older = served(queries.cat[:n], queries.dense[:n], ids, content[rows], ages + 24 * 30)
    moved = (older - got).abs().sum(dim=1)
    assert (moved[torch.from_numpy(has[:n])] > 1e-4).all()  # the same entries a month older: another query
    assert torch.equal(moved[torch.from_numpy(~has[:n])], torch.zeros(int((~has[:n]).sum())))  # no entries: no effect
    assert 'name: "hist_age" data_type: TYPE_FP32 dims: [ -1, 8 ]' in triton_config(
        "recsys_query_tower", model.config()
    )
    # the buckets: log2(1 + hours), the last open-ended
    hours = torch.tensor([0.0, 0.5, 1.0, 3.0, 7.0, 24.0, 24 * 400.0])
    assert history_age_buckets(hours).tolist() == [0, 0, 1, 2, 3, 4, HISTORY_AGE_BUCKETS - 1]
    # a history read without its times (no event_ts) cannot feed it
    without = dataclasses.replace(queries, hist_age=None)
    with pytest.raises(ValueError, match="history_time_gaps"):
        query_vectors(model, without, enc.catalog)


@pytest.mark.parametrize("time_gaps", [False, True], ids=["no_time_gaps", "time_gaps"])
def test_history_aware_ranker_exports_and_uses_the_history(model_store, history_encoder, time_gaps):  # noqa: F811
    """The grouped program (each user's history once) scores as the per-row forward; with ranker.history_time_gaps
    the entries' ages are one more input (after pair_user), and the same history at other ages scores otherwise."""
    from recsys_assets.ml.release import triton_config

    enc, _ = history_encoder
    train = committed_events_dataset(model_store, TRAIN_DAYS)
    hyper = RankerHyper(embedding_dim=8, history_len=MAX_LEN, history_time_gaps=time_gaps)
    model, _ = train_ranker(train, enc, hyper, SETTINGS)
    scores, labels = score_ranker(model, committed_events_dataset(model_store, [VALID_DAY]), enc)
    assert task_aucs(scores, labels)["liked"] > 0.6
    assert model.cfg.grouped_history and model.cfg.history_time_gaps == time_gaps
    served = load_program(ranker_program(model))
    b = next(sequential_batches(committed_events_dataset(model_store, [VALID_DAY]), enc, 64))
    content = padded_content(enc.catalog)
    ages = (b["hist_age"],) if time_gaps else ()
    inputs = (b["cat"], b["dense"], content[b["content_row"]], b["hist_ids"], content[b["hist_rows"]], *ages)
    # Served: each user's history once and pair_user naming every pair's user; the same logits as the per-row
    # forward (training's) on the same rows. Users ordered by the history, not by the batch's row order.
    key = torch.cat([b["hist_ids"].double(), b["hist_rows"].double(), b["hist_age"].double()], 1)
    keys, pair_user = torch.unique(key, dim=0, return_inverse=True)
    assert len(keys) < len(pair_user)  # some histories serve several rows of the batch: really grouped
    first_row = torch.zeros(len(keys), dtype=torch.long).scatter_(0, pair_user, torch.arange(len(pair_user)))
    grouped = (*inputs[:3], b["hist_ids"][first_row], content[b["hist_rows"][first_row]], pair_user)
    grouped += tuple(a[first_row] for a in ages)
    with torch.no_grad():
        expected = model(*inputs)
        torch.testing.assert_close(served(*grouped), expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model.forward_grouped(*grouped), expected, atol=1e-5, rtol=1e-4)
        if time_gaps:  # the same entries a month older: other scores for the rows with a history
            assert model.history_age.abs().sum() > 0
            older = served(*grouped[:-1], grouped[-1] + 24 * 30)
            has = (b["hist_ids"] != 0).any(dim=1)
            assert has.any() and ((older - expected).abs().sum(dim=1)[has] > 1e-5).all()
            with pytest.raises(ValueError, match="history_time_gaps"):
                history_inputs(model, {k: v for k, v in b.items() if k != "hist_age"}, content)
        text = triton_config("recsys_ranker", model.cfg.to_dict())
        assert ('name: "hist_age" data_type: TYPE_FP32 dims: [ -1, 8 ]' in text) == time_gaps
        # the older per-pair program form still exports and scores alike (releases exported before grouping)
        model.cfg.grouped_history = False
        per_pair = load_program(ranker_program(model))
        torch.testing.assert_close(per_pair(*inputs), expected, atol=1e-5, rtol=1e-4)


def test_baselines_match_brute_force_definitions():
    counts = np.array([5, 9, 9, 0, 2])
    ranked = rank_all(count_scores(counts), 2, 5, None)
    assert (ranked == popularity_ranking(counts, 5)).all()  # ties by lower row, as the gate's baseline
    seen = [np.array([1]), np.array([], np.int64)]
    assert rank_all(count_scores(counts), 2, 3, seen).tolist() == [[2, 0, 4], [1, 2, 0]]

    rng = np.random.default_rng(0)
    population = np.where(rng.uniform(size=(40, 6)) < 0.6, rng.integers(0, 12, (40, 6)), -1)
    profile = population[:5]
    x = np.zeros((40, 12))
    for u, row in enumerate(population):
        x[u, row[row >= 0]] = 1
    norm = np.sqrt(np.maximum(x.sum(0), 1))
    sim = (x.T @ x) / norm[:, None] / norm[None, :]
    p = np.zeros((5, 12))
    for q, row in enumerate(profile):
        p[q, row[row >= 0]] = 1
    expected = p @ sim
    # every neighbour kept: the exact item-kNN (the full cosine sum over the population), same rankings
    everyone = item_neighbours(population, 12, m=12)
    got = neighbour_scores(profile, everyone)(slice(0, 5)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)  # similarities stored as float32
    np.testing.assert_array_equal(np.argsort(-got, kind="stable"), np.argsort(-expected, kind="stable"))
    # top-3 lists: each history item adds its 3 most similar items (itself first, cos = 1; ties to the lower row)
    nearest = item_neighbours(population, 12, m=3)
    assert (nearest.rows[:, 0] == np.arange(12)).all() and np.allclose(nearest.similarity[:, 0], 1.0)
    truncated = np.zeros_like(sim)
    for i in range(12):
        top = np.lexsort((np.arange(12), -sim[i]))[:3]
        truncated[i, top] = sim[i, top]
    np.testing.assert_allclose(neighbour_scores(profile, nearest)(slice(0, 5)).numpy(), p @ truncated, atol=1e-6)
    # per-query cost: a block of items at a time gives the same lists as one block
    blocked = item_neighbours(population, 12, m=3, block_entries=5 * 12)  # blocks of 5 items
    np.testing.assert_array_equal(blocked.rows, nearest.rows)

    # ranking chunks bounded by scores, not queries (catalogue-sized rows): one query at a time ranks the same, and
    # the seen mask never writes the scorer's tensor
    scores = neighbour_scores(profile, nearest)
    before = scores(slice(0, 5)).clone()
    masks = [np.array([0, 3]), np.array([], np.int64), np.array([11]), np.array([1, 2, 5]), np.array([4])]
    np.testing.assert_array_equal(rank_all(scores, 5, 4, masks, chunk=1), rank_all(scores, 5, 4, masks))
    assert torch.equal(scores(slice(0, 5)), before)
    assert rank_chunk(12) == 256 and rank_chunk(729_000) == (1 << 23) // 729_000 == 11 and rank_chunk(10**9) == 1

    relevant = [np.array([1]), np.array([2, 4])]
    out = compare_methods({"pop": count_scores(counts)}, relevant, [1, 2], 5).metrics
    assert out["pop"]["recall@1"] == pytest.approx((1 + 0) / 2) and out["pop"]["coverage@10"] == 1.0

    # item prior: (positives + m * rate) / (events + m) per item, scored on the validation rows
    train = [
        {"content_row": torch.tensor([0, 0, 1, 1, 1]), "labels": torch.tensor([[1.0], [1.0], [0.0], [1.0], [0.0]])}
    ]
    valid = [{"content_row": torch.tensor([0, 1, 1, 0]), "labels": torch.tensor([[1.0], [0.0], [1.0], [0.0]])}]
    rate = 3 / 5
    prior = np.array([(2 + 2 * rate) / (2 + 2), (1 + 2 * rate) / (3 + 2)])
    expected_auc = roc_auc(np.array([1, 0, 1, 0]), prior[[0, 1, 1, 0]])
    got_prior = smoothed_label_rates(((b["content_row"].numpy(), b["labels"].numpy()) for b in train), 2, 1, 2.0)
    np.testing.assert_allclose(got_prior[:, 0], prior)
    assert item_prior_aucs(got_prior, valid, ("liked",), None) == {"liked": pytest.approx(expected_auc)}


def test_early_stopping_keeps_the_best_holdout_epoch_and_never_trains_on_the_holdout(model_store, history_encoder):  # noqa: F811
    from recsys_assets.ml.loader import holdout_user_ids

    enc, _ = history_encoder
    train = committed_events_dataset(model_store, TRAIN_DAYS)
    held = holdout_user_ids(enc.vocab, 20.0)
    assert 0 < len(held) < enc.vocab.cardinality("user_id")
    settings = TrainSettings(epochs=5, batch_size=256, learning_rate=2e-2, num_threads=2)
    model, fit = train_ranker(train, enc, RankerHyper(embedding_dim=8), settings, holdout_users=held, patience=1)
    losses = [h["holdout_loss"] for h in fit.history]
    assert fit.best_epoch == int(np.argmin(losses))
    assert len(fit.history) == 5 or fit.history[-1]["epoch"] - fit.best_epoch == 1  # stopped after `patience`
    # trained rows exclude the held-out users: fewer samples per epoch than the window has rows
    held_rows = train.count_rows(filter=pa.compute.field("user_id").isin(held))
    assert fit.history[0]["samples"] == train.count_rows() - held_rows > 0
    # the model ends with the best epoch's weights: its holdout loss is the best one
    from recsys_assets.ml.models import ranker_loss
    from recsys_assets.ml.ranker import history_inputs

    content = padded_content(enc.catalog)
    total, n = 0.0, 0
    with torch.no_grad():
        for b in sequential_batches(train, enc, 256, filter=pa.compute.field("user_id").isin(held)):
            logits = model(b["cat"], b["dense"], content[b["content_row"]], *history_inputs(model, b, content))
            total += float(ranker_loss(model, logits, b["labels"], [1.0] * 4)) * len(b["labels"])
            n += len(b["labels"])
    assert total / n == pytest.approx(min(losses), rel=1e-5)


def test_the_recency_prior_dimension_gives_the_prior_weighted_score():
    from recsys_assets.ml.retrieval import with_recency_prior

    rng = np.random.default_rng(1)
    q, items, counts = rng.normal(size=(5, 8)), rng.normal(size=(30, 8)), rng.integers(0, 50, 30)
    qa, ia = with_recency_prior(q, items, counts, weight=2.0, temperature=0.05)
    expected = q @ items.T / 0.05 + 2.0 * np.log1p(counts)[None, :]
    np.testing.assert_allclose(qa @ ia.T / 0.05, expected, rtol=1e-4, atol=1e-3)


def test_paired_bootstrap_contains_zero_for_a_method_against_itself_and_excludes_it_for_a_better_one():
    """offline evaluation's "served beats X" is the paired interval above zero (issue 33)."""
    rng = np.random.default_rng(0)
    n_users, n_items = 600, 40
    relevant = [np.array([int(rng.integers(0, n_items))]) for _ in range(n_users)]
    counts = rng.integers(0, 100, n_items)
    # Better: popularity, plus the user's relevant item lifted to the top for 20% of the users.
    boost = np.zeros((n_users, n_items))
    for u, rel in enumerate(relevant):
        if rng.uniform() < 0.2:
            boost[u, rel] = 1e4
    base = count_scores(counts)(slice(0, n_users)).numpy()
    better = torch.from_numpy(base + boost)
    comparison = compare_methods(
        {"pop": count_scores(counts), "pop again": count_scores(counts), "better": lambda rows: better[rows]},
        relevant,
        [10],
        n_items,
    )
    vs_pop = comparison.paired("pop", samples=500, seed=3)
    same = vs_pop["pop again"]["recall@10"]
    assert same["diff"] == 0 and same["lo"] <= 0 <= same["hi"] and same["users"] == n_users
    worse = vs_pop["better"]["recall@10"]
    assert worse["hi"] < 0 and worse["lo"] < worse["diff"] < worse["hi"]  # pop is below the better ranking
    vs_better = comparison.paired("better", samples=500, seed=3)["pop"]
    assert vs_better["ndcg@10"]["lo"] > 0 and vs_better["recall@10"]["lo"] > 0  # "better beats pop"
    # per-user values average to the reported means; the interval is reproducible for a seed
    assert comparison.per_user["better"]["recall@10"].mean() == pytest.approx(comparison.metrics["better"]["recall@10"])
    assert comparison.paired("better", samples=500, seed=3)["pop"] == vs_better
    assert comparison.paired("better", samples=500, seed=4)["pop"]["recall@10"]["lo"] != vs_better["recall@10"]["lo"]
    # and a noisy difference of mean zero: its interval straddles zero
    noise = paired_bootstrap(np.random.default_rng(1).normal(0, 1, 2000), samples=1000, seed=0)
    assert noise["lo"] < 0 < noise["hi"] and noise["hi"] - noise["lo"] == pytest.approx(2 * 1.96 / 2000**0.5, rel=0.2)
