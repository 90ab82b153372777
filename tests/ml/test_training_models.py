"""Loader, ranker, two-tower, checkpoint/resume and export on small feature-dependent data (no Spark, no Dagster)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_assets.config.training import LabelSpec
from recsys_assets.ml.export import export_program, load_program
from recsys_assets.ml.loader import BatchEncoder, ShuffleBuffer, committed_events_dataset, shuffled_batches
from recsys_assets.ml.models import MMoERanker, RankerConfig, in_batch_softmax_loss
from recsys_assets.ml.ranker import (
    RankerHyper,
    item_prior_logits,
    item_priors,
    ranker_program,
    score_ranker,
    task_aucs,
    train_ranker,
)
from recsys_assets.ml.retrieval import (
    QueryTowerModule,
    RetrievalHyper,
    compare_retrieval,
    evaluation_queries,
    item_vectors,
    query_vectors,
    train_two_tower,
)
from recsys_assets.ml.trainer import CheckpointStore, TrainSettings
from tests.helpers import REPO, TRAIN_DAYS, VALID_DAY, make_encoder


def test_loader_yields_every_row_once_per_epoch_in_a_seeded_order(model_store):
    enc = make_encoder(model_store)
    ds = committed_events_dataset(model_store, TRAIN_DAYS)
    total = ds.count_rows()

    def epoch_rows(epoch, buffer=5000):
        batches = list(shuffled_batches(ds, enc, 512, seed=3, epoch=epoch, shuffle_buffer_rows=buffer))
        assert all(len(b["content_row"]) == 512 for b in batches[:-1])
        return torch.cat([b["content_row"] for b in batches]), torch.cat([b["cat"][:, 0] for b in batches])

    a_items, a_users = epoch_rows(0)
    b_items, b_users = epoch_rows(0)
    c_items, _ = epoch_rows(1)
    assert len(a_items) == total == 18_000
    assert torch.equal(a_items, b_items) and torch.equal(a_users, b_users)  # same (seed, epoch) -> same order
    assert not torch.equal(a_items, c_items)  # another epoch -> another order
    # Same multiset of rows in every epoch: nothing dropped or duplicated by the buffer.
    assert torch.equal(torch.sort(a_items).values, torch.sort(c_items).values)
    # Shuffled beyond file order: the first batch mixes rows from more than one day's files.
    first = next(shuffled_batches(ds, enc, 512, seed=3, epoch=0, shuffle_buffer_rows=20_000))
    assert first["labels"].shape == (512, 4) and first["dense"].shape == (512, 3)


def test_the_shuffle_buffer_holds_its_blocks_rows_in_arrival_order_and_keeps_the_rest_in_front():
    """loader.ShuffleBuffer: blocks written into one set of arrays (no concatenation at each drain); a take is the
    rows of the blocks' concatenation; keep moves the rows left over to the front, in the order given."""
    rng = np.random.default_rng(0)
    blocks = [
        {"cat": rng.integers(0, 99, (n, 3), dtype=np.int32), "content_row": rng.integers(0, 9, n).astype(np.int32)}
        for n in (5, 1, 7, 3)
    ]
    whole = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
    buffer = ShuffleBuffer(rows=12, max_block_rows=7)
    for b in blocks:
        buffer.add(b)
    assert buffer.size == 16
    for idx in (rng.permutation(16), np.array([15, 0, 5, 6, 12, 5]), np.zeros(0, np.int64)):
        got = buffer.take(idx)
        for k, v in whole.items():
            assert got[k].dtype == v.dtype and got[k].shape == (len(idx), *v.shape[1:])
            assert np.array_equal(got[k], v[idx])
    buffer.keep(np.array([9, 2, 14]))
    assert buffer.size == 3 and np.array_equal(buffer.take(np.arange(3))["cat"], whole["cat"][[9, 2, 14]])
    buffer.add(blocks[0])
    assert np.array_equal(buffer.take(np.arange(3, 8))["content_row"], blocks[0]["content_row"])
    with pytest.raises(ValueError, match="overflows the shuffle buffer"):
        buffer.add({k: np.concatenate([v, v]) for k, v in blocks[2].items()})


def test_threaded_loader_streams_the_same_blocks_in_bounded_queues_and_stops_early(model_store):
    import threading

    from recsys_assets.ml.loader import PIECE_QUEUE_BLOCKS, encoded_blocks

    ds, enc = committed_events_dataset(model_store, TRAIN_DAYS), make_encoder(model_store)
    order = np.random.default_rng(3).permutation(len(ds.get_pieces()))
    one = list(encoded_blocks(ds, enc, read_rows=500, order=order, threads=1))
    many = list(encoded_blocks(ds, enc, read_rows=500, order=order, threads=3))
    assert len(one) == len(many) > 3 * (PIECE_QUEUE_BLOCKS + 1)  # more blocks than the queues hold
    for a, b in zip(one, many):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # A consumer that stops after two blocks (score_ranker's max_rows) releases the producers: nothing hangs.
    before = threading.active_count()
    stream = encoded_blocks(ds, enc, read_rows=500, order=order, threads=3)
    assert [len(next(stream)["content_row"]) for _ in range(2)] == [500, 500]
    stream.close()
    assert threading.active_count() <= before


def test_ranker_learns_labels_that_depend_on_features(model_store):
    enc = make_encoder(model_store)
    model, fit = train_ranker(
        committed_events_dataset(model_store, TRAIN_DAYS),
        enc,
        RankerHyper(),
        TrainSettings(epochs=4, batch_size=256, num_threads=1),
        log=lambda m: None,
    )
    scores, labels = score_ranker(model, committed_events_dataset(model_store, [VALID_DAY]), enc)
    aucs = task_aucs(scores, labels)
    assert len(labels) == 6000
    assert fit.history[-1]["loss"] < fit.history[0]["loss"]
    assert aucs["liked"] > 0.75 and aucs["shared"] > 0.7 and aucs["watch_complete"] > 0.65, aucs
    assert fit.samples_per_s > 0 and fit.trained_samples == 4 * 18_000


def _brute_force_prior_logits(enc: BatchEncoder, table, smoothing: float, by_catalog_row: bool = False) -> np.ndarray:
    """The item prior per item_id vocab id (logits), or per catalogue row (rates), by pandas over the raw rows."""
    df = table.to_pandas()
    if by_catalog_row:
        df["id"] = enc.catalog.rows(table.column("item_id"))
    else:
        df["id"] = enc.vocab.encode("item_id", table.column("item_id"))
    labels = pd.DataFrame(
        {
            "liked": df["liked"].fillna(False).astype(float),
            "shared": df["shared"].fillna(False).astype(float),
            "followed": df["followed"].fillna(False).astype(float),
            "watch_complete": (df["watch_ratio"] >= LabelSpec().watch_complete_min_ratio).astype(float),
        }
    )
    overall = labels.mean().to_numpy()
    sums, counts = labels.groupby(df["id"]).sum(), df.groupby("id").size()
    out = np.tile(overall, (len(enc.catalog) if by_catalog_row else enc.vocab.cardinality("item_id"), 1))
    out[sums.index.to_numpy()] = (sums.to_numpy() + smoothing * overall) / (counts.to_numpy()[:, None] + smoothing)
    return out if by_catalog_row else np.log(out / (1 - out))


def test_item_prior_logits_are_each_items_smoothed_label_rate_in_the_training_rows(model_store):
    import pyarrow as pa
    import pyarrow.compute as pc

    enc = make_encoder(model_store)
    ds = committed_events_dataset(model_store, TRAIN_DAYS)
    got = item_prior_logits(ds, enc, smoothing=20.0)
    assert got.shape == (enc.vocab.cardinality("item_id"), 4)
    np.testing.assert_allclose(got, _brute_force_prior_logits(enc, ds.to_table(), 20.0), rtol=1e-5, atol=1e-5)
    # Restricted to the rows a filter keeps (training rows without held-out users): the prior of those rows only.
    held = pa.array([f"u{i}" for i in range(0, 400, 3)])
    kept = ~pc.field("user_id").isin(held)
    np.testing.assert_allclose(
        item_prior_logits(ds, enc, smoothing=5.0, filter=kept),
        _brute_force_prior_logits(enc, ds.to_table(filter=kept), 5.0),
        rtol=1e-5,
        atol=1e-5,
    )
    # The same pass keyed by catalogue row: the item-prior baseline's score table.
    priors = item_priors(ds, enc, smoothing=5.0, filter=kept)
    np.testing.assert_allclose(priors.bias_logits, item_prior_logits(ds, enc, smoothing=5.0, filter=kept))
    assert priors.catalog_rates.shape == (len(enc.catalog), 4)
    np.testing.assert_allclose(
        priors.catalog_rates, _brute_force_prior_logits(enc, ds.to_table(filter=kept), 5.0, by_catalog_row=True)
    )


def test_item_bias_ranker_starts_at_the_item_prior_and_exports_with_it(model_store):
    enc = make_encoder(model_store)
    ds = committed_events_dataset(model_store, TRAIN_DAYS)
    hyper = RankerHyper(item_bias=True, item_bias_smoothing=20.0)
    quiet = lambda m: None  # noqa: E731
    # learning rate 0: the trained weights are the initial ones, so the bias is exactly the prior it started from
    frozen, _ = train_ranker(ds, enc, hyper, TrainSettings(epochs=1, batch_size=512, learning_rate=0.0), log=quiet)
    np.testing.assert_allclose(frozen.item_bias.weight.detach().numpy(), item_prior_logits(ds, enc, 20.0), rtol=1e-6)
    # Trained: the bias moves from the prior, scores beat chance, and the exported program carries the bias.
    model, _ = train_ranker(ds, enc, hyper, TrainSettings(epochs=2, batch_size=256, num_threads=1), log=quiet)
    assert not torch.allclose(model.item_bias.weight, frozen.item_bias.weight)
    aucs = task_aucs(*score_ranker(model, committed_events_dataset(model_store, [VALID_DAY]), enc))
    assert aucs["liked"] > 0.75, aucs
    served = load_program(ranker_program(model))
    cat = torch.stack([torch.randint(0, c, (19,)) for c in model.cfg.cardinalities], dim=1)
    dense, content = torch.randn(19, 3), torch.randn(19, 128)
    with torch.no_grad():
        assert torch.allclose(served(cat, dense, content), model(cat, dense, content), atol=1e-5)
        # rebuilt from its saved config + weights, as serving loads a release: the same scores
        rebuilt = MMoERanker(RankerConfig(**model.cfg.to_dict()))
        rebuilt.load_state_dict(model.state_dict())
        assert torch.allclose(rebuilt.eval()(cat, dense, content), model(cat, dense, content), atol=1e-6)
    # a config saved before the bias existed loads as a model without it
    old = {k: v for k, v in model.cfg.to_dict().items() if k != "item_bias"}
    assert not hasattr(MMoERanker(RankerConfig(**old)), "item_bias")


def test_exported_ranker_program_matches_the_eager_model(model_store):
    enc = make_encoder(model_store)
    model, _ = train_ranker(
        committed_events_dataset(model_store, TRAIN_DAYS[:1]),
        enc,
        RankerHyper(),
        TrainSettings(epochs=1, batch_size=512),
        log=lambda m: None,
    )
    served = load_program(ranker_program(model))
    # A batch size other than the export example's, ids anywhere in each feature's range.
    cat = torch.stack([torch.randint(0, c, (37,)) for c in model.cfg.cardinalities], dim=1)
    dense, content = torch.randn(37, 3), torch.randn(37, 128)
    with torch.no_grad():
        assert torch.allclose(served(cat, dense, content), model(cat, dense, content), atol=1e-5)


def test_two_tower_beats_most_popular_on_full_corpus_recall(model_store):
    enc = make_encoder(model_store)
    model, fit, counts = train_two_tower(
        committed_events_dataset(model_store, TRAIN_DAYS),
        enc,
        RetrievalHyper(),
        TrainSettings(epochs=6, batch_size=256, num_threads=1),
        log=lambda m: None,
    )
    queries = evaluation_queries(committed_events_dataset(model_store, [VALID_DAY]), enc, LabelSpec())
    items, bias = item_vectors(model, enc.catalog, enc.vocab, enc.moments, pd.Timestamp("2024-05-05", tz="UTC"))
    assert bias is None  # no trend inputs, no popularity logit
    methods = compare_retrieval(
        {"two-tower": model}, queries, enc, pd.Timestamp("2024-05-05", tz="UTC"), counts, counts, [10, 50]
    ).metrics
    model_m, pop_m = methods["two-tower"], methods["most-popular"]
    assert len(items) == len(enc.catalog) == 300
    assert sum(1 for r in queries.relevant if len(r)) > 300
    assert np.allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)  # cosine vectors, as the index expects
    assert model_m["recall@10"] > 1.5 * pop_m["recall@10"], methods
    assert model_m["ndcg@10"] > pop_m["ndcg@10"], methods
    # The exported query tower gives the same vectors.
    served = load_program(export_program(QueryTowerModule(model), (queries.cat[:4], queries.dense[:4])))
    with torch.no_grad():
        assert torch.allclose(
            served(queries.cat, queries.dense), torch.from_numpy(query_vectors(model, queries)), atol=1e-5
        )


def test_in_batch_loss_masks_other_rows_of_the_same_item_and_applies_logq():
    q = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    i = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    keys = torch.tensor([5, 5, 6, 7])
    log_q = torch.log(torch.tensor([0.4, 0.4, 0.1, 0.1]))
    got = in_batch_softmax_loss(q, i, keys, log_q, 0.1)
    logits = q @ i.T / 0.1 - log_q
    expected = []
    for r in range(4):
        cols = [c for c in range(4) if c == r or keys[c] != keys[r]]
        expected.append(-(logits[r, r] - torch.logsumexp(logits[r, cols], 0)))
    assert torch.allclose(got, torch.stack(expected).mean(), atol=1e-5)


def test_logq_by_day_is_each_rows_item_and_day_share_of_the_windows_positives(model_store):
    """A training row is an item at its event's time, so its in-batch sampling probability is the share of the
    window's positives that are that item on that day; the window-total variant keys on the item alone."""
    from recsys_assets.core.days import day_number
    from recsys_assets.ml.loader import (
        item_day_frequencies,
        item_frequencies,
        retrieval_positive_filter,
        sequential_batches,
    )
    from recsys_assets.ml.retrieval import RetrievalHyper, _log_q

    enc = make_encoder(model_store)
    ds = committed_events_dataset(model_store, TRAIN_DAYS)
    positives = retrieval_positive_filter(enc.labels)
    by_day = item_day_frequencies(ds, enc.catalog, positives)
    # Brute force: pandas counts of (day, item) over the positive rows.
    frames = []
    for d in TRAIN_DAYS:
        t = committed_events_dataset(model_store, [d]).to_table(columns=["item_id"], filter=positives).to_pandas()
        frames.append(t.assign(day=d))
    df = pd.concat(frames, ignore_index=True)
    expected = df.groupby(["day", "item_id"]).size()
    assert sorted(by_day) == TRAIN_DAYS
    for d in TRAIN_DAYS:
        got = pd.Series(by_day[d], index=enc.catalog.item_ids)
        np.testing.assert_array_equal(got[got > 0].sort_index(), expected[d].sort_index())
    window = item_frequencies(ds, enc.catalog, positives)
    np.testing.assert_array_equal(sum(by_day.values()), window)

    batch = next(sequential_batches(ds, enc, 4096, filter=positives))
    days = batch["event_day"].numpy()
    assert set(days) <= {day_number(d) for d in TRAIN_DAYS} and day_number("1970-01-02") == 1
    rows = batch["content_row"].numpy()
    day_of = {day_number(d): d for d in TRAIN_DAYS}
    counts = np.array([by_day[day_of[int(n)]][r] for n, r in zip(days, rows)])
    total = window.sum()
    by_day_q = _log_q(by_day, window, RetrievalHyper(logq_by_day=True), "cpu")(batch).numpy()
    np.testing.assert_allclose(by_day_q, np.log(counts / total), rtol=1e-5)
    window_q = _log_q(by_day, window, RetrievalHyper(logq_by_day=False), "cpu")(batch).numpy()
    np.testing.assert_allclose(window_q, np.log(window[rows] / total), rtol=1e-5)
    assert (by_day_q <= window_q + 1e-6).all() and (by_day_q < window_q - 1e-3).any()
    off = _log_q(by_day, window, RetrievalHyper(logq_correction=False), "cpu")(batch).numpy()
    assert (off == 0).all()
    # On in the packaged training.yaml (short-video popularity moves within days), off for MovieLens (a few ratings
    # per movie a day: per-day rates are noise).
    from recsys_assets.config.training import load_training_spec

    assert load_training_spec("").retrieval.logq_by_day is True
    assert load_training_spec(str(REPO / "recsys_assets/config/training_movielens.yaml")).retrieval.logq_by_day is False


RESUME_WORKER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from tests.helpers import TRAIN_DAYS, make_encoder
    from recsys_assets.ml.loader import committed_events_dataset
    from recsys_assets.ml.ranker import RankerHyper, train_ranker
    from recsys_assets.ml.trainer import CheckpointStore, TrainSettings
    from resources.store import DatasetStore

    store = DatasetStore({root!r})

    def die(epoch):
        if epoch == 1:  # killed after epoch 1's checkpoint, before epoch 2 starts: no cleanup runs
            os.kill(os.getpid(), signal.SIGKILL)

    train_ranker(committed_events_dataset(store, TRAIN_DAYS), make_encoder(store), RankerHyper(),
                 TrainSettings(epochs=4, batch_size=512, num_threads=1), CheckpointStore(store, {ckpt!r}), "fp",
                 log=lambda m: None, on_epoch_end=die)
    """
)


@pytest.mark.slow  # a killed subprocess and three trainings
def test_training_killed_mid_run_resumes_from_last_checkpoint_with_identical_result(model_store, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    code = RESUME_WORKER.format(repo=str(REPO), root=model_store.root_uri, ckpt=ckpt)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert sorted(p.name for p in Path(ckpt).iterdir()) == [
        "epoch-0000.json",
        "epoch-0000.pt",
        "epoch-0001.json",
        "epoch-0001.pt",
    ]

    settings = TrainSettings(epochs=4, batch_size=512, num_threads=1)
    ds = committed_events_dataset(model_store, TRAIN_DAYS)
    resumed, fit = train_ranker(
        ds,
        make_encoder(model_store),
        RankerHyper(),
        settings,
        CheckpointStore(model_store, ckpt),
        "fp",
        log=lambda m: None,
    )
    assert fit.resumed_from_epoch == 1 and [h["epoch"] for h in fit.history] == [0, 1, 2, 3]
    straight, _ = train_ranker(ds, make_encoder(model_store), RankerHyper(), settings, log=lambda m: None)
    for (name, a), (_, b) in zip(resumed.state_dict().items(), straight.state_dict().items()):
        assert torch.equal(a, b), name
    # A checkpoint of another configuration (fingerprint) is never resumed from.
    _, other = train_ranker(
        ds,
        make_encoder(model_store),
        RankerHyper(),
        TrainSettings(epochs=1, batch_size=512),
        CheckpointStore(model_store, ckpt),
        "another-fp",
        log=lambda m: None,
    )
    assert other.resumed_from_epoch is None


def test_sparse_updates_touch_only_the_rows_a_step_looked_up():
    """With sparse_embeddings a step moves only the embedding rows its batch looked up (LazyAdam: the rows it skipped
    catch up when next looked up or at the end, `done`); a dense AdamW keeps moving rows of earlier batches through
    their momentum every step, at a cost that grows with the table."""
    from recsys_assets.ml.trainer import Optimizers

    def rows_moved_per_step(sparse: bool) -> list[list[int]]:
        torch.manual_seed(0)
        table, head = torch.nn.Embedding(1000, 8), torch.nn.Linear(8, 1)
        opt = Optimizers(torch.nn.ModuleList([table, head]), TrainSettings(learning_rate=0.1, sparse_embeddings=sparse))
        moved = []
        for ids in (torch.tensor([1, 2, 3]), torch.tensor([7, 8])):
            before = table.weight.detach().clone()
            opt.zero_grad()
            head(table(ids)).sum().backward()
            assert table.weight.grad.is_sparse == sparse
            opt.step()
            moved.append(torch.nonzero((table.weight.detach() != before).any(dim=1)).flatten().tolist())
        before = table.weight.detach().clone()
        opt.done()
        caught_up = torch.nonzero((table.weight.detach() != before).any(dim=1)).flatten().tolist()
        assert caught_up == ([1, 2, 3] if sparse else [])  # step 2 skipped rows 1-3: their momentum, applied now
        assert not table.sparse  # plain lookups again for export
        return moved

    assert rows_moved_per_step(sparse=True) == [[1, 2, 3], [7, 8]]
    assert rows_moved_per_step(sparse=False) == [[1, 2, 3], [1, 2, 3, 7, 8]]  # step 2 moved step 1's rows too


def test_every_method_is_scored_on_one_fixed_hash_sample_of_the_days_users(model_store):
    from recsys_assets.ml.mapped_history import user_keys

    enc = make_encoder(model_store)
    day = committed_events_dataset(model_store, [VALID_DAY])
    everyone = evaluation_queries(day, enc, LabelSpec())
    sample = evaluation_queries(day, enc, LabelSpec(), max_users=50)
    assert len(everyone.user_ids) > 300 and len(sample.user_ids) == 50
    # the 50 users with the smallest keys, the same on a rerun
    keys = np.sort(user_keys(np.asarray(everyone.user_ids)))
    assert np.array_equal(np.sort(user_keys(np.asarray(sample.user_ids))), keys[:50])
    assert list(evaluation_queries(day, enc, LabelSpec(), max_users=50).user_ids) == list(sample.user_ids)
    # each sampled user keeps every positive of the day
    full = dict(zip(everyone.user_ids, everyone.relevant, strict=True))
    for user, rel in zip(sample.user_ids, sample.relevant, strict=True):
        assert np.array_equal(np.sort(rel), np.sort(full[user]))


def test_the_history_free_twins_train_on_the_configured_schedule():
    from recsys_assets.config.training import HistorySpec

    friday, monday = "2024-03-08", "2024-03-11"
    assert HistorySpec().compare_history_free == "weekly"  # not a daily cost by default
    assert [HistorySpec().compares_history_free(d) for d in (friday, monday)] == [False, True]
    assert HistorySpec(compare_history_free=True).compares_history_free(friday)  # true reads as daily
    assert not HistorySpec(compare_history_free="never").compares_history_free(monday)
    assert not HistorySpec(enabled=False, compare_history_free="daily").compares_history_free(monday)
    assert HistorySpec(history_free_weekday="friday").compares_history_free(friday)


def test_the_heap_policy_applies_on_glibc_and_is_idempotent():
    """ml/memory.py: the training processes fix glibc's mmap threshold (the measured effect is in docs/scale.md)."""
    import platform

    from recsys_assets.ml import memory

    applied = memory.bound_heap_growth()
    assert applied == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    assert memory.bound_heap_growth() == applied
    memory.release_free_heap()


def test_release_memory_hands_freed_heap_back_to_the_system():
    """ml/memory.release_memory: what freed allocations leave in glibc's heaps goes back to the system. 256 MB of
    64 KiB buffers interleaved with small live ones (as a loop's temporaries interleave with long-lived arrays):
    free() alone cannot give the holes between the live ones back. In a fresh interpreter, whose heap has no holes
    of its own that the small ones could take instead."""
    import platform

    if not (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"):
        pytest.skip("glibc only")
    script = textwrap.dedent(
        """
        import json
        from recsys_assets.ml import memory

        def anon_mb():
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) / 1024

        memory.bound_heap_growth()
        memory.release_memory()
        before = anon_mb()
        chunks, pins = [], []
        for i in range(4096):
            chunks.append(bytes(64 << 10) + bytes([i % 256]))
            pins.append(bytes(600) + bytes([i % 256]))  # above pymalloc's 512 bytes: between the chunks
        held = anon_mb()
        del chunks
        after_free = anon_mb()
        memory.release_memory()
        print(json.dumps({"held": held - before, "after_free": after_free - before,
                          "released": anon_mb() - before, "pins": len(pins)}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO, timeout=300
    )
    mb = json.loads(out.stdout.strip().splitlines()[-1])
    assert mb["held"] > 200 and mb["pins"] == 4096
    assert mb["after_free"] > 200  # free() kept the holes
    assert mb["released"] < 50
