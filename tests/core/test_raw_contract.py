"""Bad raw input fails with the file and column named (footers are checked before Spark reads rows)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_assets.core.raw_inputs import RawInputError, check_raw_contract, latest_raw_day

DAY = "2024-03-01"


def _events_file(store):
    return f"{store.raw_partition_path('events', DAY)}/part-00000.parquet"


def test_valid_partition_passes(store):
    assert check_raw_contract(store, "events", DAY) == [_events_file(store)]


def test_missing_column_names_file_and_column(store):
    path = _events_file(store)
    pq.write_table(pq.read_table(path).drop_columns(["feed_source"]), path)
    with pytest.raises(RawInputError) as e:
        check_raw_contract(store, "events", DAY)
    assert path in str(e.value) and "'feed_source'" in str(e.value)


def test_wrong_type_names_file_column_and_types(store):
    path = _events_file(store)
    t = pq.read_table(path)
    t = t.set_column(
        t.schema.get_field_index("play_duration_s"), "play_duration_s", t["play_duration_s"].cast(pa.string())
    )
    pq.write_table(t, path)
    with pytest.raises(RawInputError, match=r"column 'play_duration_s' has type string, expected double") as e:
        check_raw_contract(store, "events", DAY)
    assert path in str(e.value)


def test_corrupt_parquet_names_file(store):
    path = _events_file(store)
    with open(path, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(RawInputError, match="not a readable Parquet file") as e:
        check_raw_contract(store, "events", DAY)
    assert path in str(e.value)


def test_empty_day_is_a_clear_error(store):
    import os

    os.remove(_events_file(store))
    with pytest.raises(RawInputError, match="no Parquet files .* \\(empty day\\)"):
        check_raw_contract(store, "events", DAY)


def test_latest_snapshot_on_or_before_day(store):
    assert latest_raw_day(store, "users", "2024-03-02") == "2024-03-02"
    assert latest_raw_day(store, "users", "2024-04-30") == "2024-03-03"
    with pytest.raises(RawInputError, match="no snapshot on or before 2024-01-01"):
        latest_raw_day(store, "users", "2024-01-01")
