"""Memory-mapped user histories (ml/mapped_history.py): the same rows as the in-RAM arrays, int32 on disk, built once
per host under a lock, and a table with a user twice refused."""

from __future__ import annotations

import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_assets.ml.history import history_arrays
from recsys_assets.ml.mapped_history import MappedHistory, build_mapped_history, mapped_history
from tests.helpers import TRAIN_DAYS, VALID_DAY, make_encoder
from tests.ml.test_history_models import MAX_LEN, brute_force_histories


@pytest.fixture(scope="module")
def tables(model_store):
    return brute_force_histories(model_store, [*TRAIN_DAYS, VALID_DAY])


def _commit_history(store, day: str, table: pa.Table) -> None:
    version = store.new_version()
    d = store.version_path("user_history", day, version, "history")
    store.fs.create_dir(d, recursive=True)
    half = table.num_rows // 2
    for k, part in enumerate((table.slice(0, half), table.slice(half))):  # two files, small row groups
        pq.write_table(part, f"{d}/part-{k:05d}.parquet", filesystem=store.fs, row_group_size=97)
    store.commit("user_history", day, version, row_count=table.num_rows)


def test_mapped_lookups_equal_the_in_ram_arrays(model_store, tables, tmp_path):
    enc = make_encoder(model_store)
    table = tables[VALID_DAY]
    in_ram = history_arrays(table, MAX_LEN, enc.vocab, enc.catalog, VALID_DAY)
    mapped = build_mapped_history(
        table.to_batches(max_chunksize=50),
        table.num_rows,
        MAX_LEN,
        enc.vocab,
        enc.catalog,
        str(tmp_path / "h"),
        VALID_DAY,
    )
    assert mapped.item_ids.dtype == np.int32 and mapped.content_rows.dtype == np.int32
    assert mapped.ages.dtype == np.float32
    assert mapped.num_users == table.num_rows > 100
    users = pa.array([*table.column("user_id").to_pylist()[::-1], "nobody", "u-unknown"], pa.string())
    got_ids, got_rows, got_ages = mapped.lookup(users)
    want_ids, want_rows, want_ages = in_ram.lookup(users)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_array_equal(got_rows, want_rows)
    np.testing.assert_array_equal(got_ages, want_ages)
    assert (got_ids[-2:] == 0).all() and (got_rows[-2:] == -1).all()  # no history: the padding row
    assert (got_ages[-2:] == 0).all() and (got_ages[:-2][got_ids[:-2] != 0] > 0).all()
    assert (got_ids[:-2] != 0).any(axis=1).all()
    np.testing.assert_array_equal(np.sort(mapped.lengths()), np.sort(in_ram.lengths()))


def test_a_user_twice_is_refused_naming_the_rows(model_store, tables, tmp_path):
    enc = make_encoder(model_store)
    table = tables[VALID_DAY].slice(0, 10)
    twice = pa.concat_tables([table, table.slice(3, 1)])
    with pytest.raises(ValueError, match=r"rows 3 and 10 have the same user key"):
        build_mapped_history(
            twice.to_batches(), twice.num_rows, MAX_LEN, enc.vocab, enc.catalog, str(tmp_path / "h"), VALID_DAY
        )
    assert os.listdir(tmp_path) == []  # nothing half-written left behind


def test_the_host_cache_builds_a_day_once_for_concurrent_readers(model_store, tables, tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_CACHE_DIR", str(tmp_path / "cache"))
    enc = make_encoder(model_store)
    _commit_history(model_store, VALID_DAY, tables[VALID_DAY])
    results: list[MappedHistory] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(mapped_history(model_store, VALID_DAY, MAX_LEN, enc.vocab, enc.catalog))
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.directory for r in results}) == 1
    entries = [e for e in os.listdir(tmp_path / "cache" / "history") if not e.endswith(".lock")]
    assert entries == [os.path.basename(results[0].directory)]
    want = history_arrays(tables[VALID_DAY], MAX_LEN, enc.vocab, enc.catalog, VALID_DAY)
    users = tables[VALID_DAY].column("user_id")
    for got, expected in zip(results[0].lookup(users), want.lookup(users), strict=True):
        np.testing.assert_array_equal(got, expected)
    # another max_len is another entry; the first is reused as it is
    mapped_history(model_store, VALID_DAY, MAX_LEN + 1, enc.vocab, enc.catalog)
    assert len([e for e in os.listdir(tmp_path / "cache" / "history") if not e.endswith(".lock")]) == 2
