"""Reading raw partitions with the input contract checked at the boundary.

Each Parquet file's footer is checked against the contract before Spark reads the data (footers only, never
rows), so a missing column, a wrong type or a corrupt file fails with the file and column named. The check is
about what Spark can actually read into the contract's types, not only the logical type: pandas' default
nanosecond timestamps (INT64 TIMESTAMP(NANOS)), float16 values and list<double> embeddings are rejected here,
before any asset commits, instead of failing inside Spark after one stage has run (Spark 4 reads INT96 and
milli/microsecond timestamps, float32 into double, large strings and large lists).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from recsys_assets.core.schemas import RAW_TABLES, spark_schema
from resources.store import DatasetStore


class RawInputError(ValueError):
    """Raw input that breaks the data contract; the message names the file and column."""


def _type_problem(expected: pa.DataType, actual: pa.DataType, physical: str | None) -> str | None:
    """Why Spark cannot read a column of `actual` logical / `physical` Parquet type as `expected`, or None."""
    mismatch = f"has type {actual}, expected {expected}"
    if expected.equals(actual):
        return None
    if pa.types.is_timestamp(expected):
        if not pa.types.is_timestamp(actual):
            return mismatch
        if actual.unit == "ns" and physical != "INT96":
            return (
                "holds nanosecond timestamps (INT64 TIMESTAMP(NANOS)), which Spark cannot read; write microseconds "
                "(pyarrow: coerce_timestamps='us'; pandas: to_parquet(..., coerce_timestamps='us', "
                "allow_truncated_timestamps=True))"
            )
        return None
    if pa.types.is_string(expected):
        return None if pa.types.is_string(actual) or pa.types.is_large_string(actual) else mismatch
    if pa.types.is_floating(expected):
        if pa.types.is_float16(actual):
            return "holds float16 values, which Spark cannot read; write float32 or float64"
        return None if pa.types.is_floating(actual) else mismatch
    if pa.types.is_list(expected):
        if not (pa.types.is_list(actual) or pa.types.is_large_list(actual)):
            return mismatch
        if not actual.value_type.equals(expected.value_type):
            return (
                f"has type {actual}: Spark cannot read {actual.value_type} elements as the contract's "
                f"{expected}; cast the values to {expected.value_type}"
            )
        return None
    return mismatch


def raw_parquet_files(store: DatasetStore, table: str, day: str) -> list[str]:
    d = store.raw_partition_path(table, day)
    if not store.exists(d):
        raise RawInputError(f"raw {table} for {day}: directory {d} does not exist")
    infos = store.fs.get_file_info(pafs.FileSelector(d, recursive=True))
    files = sorted(
        i.path for i in infos if i.type == pafs.FileType.File and not i.base_name.startswith(("_", ".")) and i.size > 0
    )
    if not files:
        raise RawInputError(f"raw {table} for {day}: no Parquet files under {d} (empty day)")
    return files


def check_raw_contract(store: DatasetStore, table: str, day: str) -> list[str]:
    """Check every file's schema against the contract; return the file list. Raises RawInputError."""
    expected = RAW_TABLES[table]
    files = raw_parquet_files(store, table, day)
    for path in files:
        try:
            meta = pq.read_metadata(path, filesystem=store.fs)
            actual = meta.schema.to_arrow_schema()
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError for truncated or non-Parquet files
            raise RawInputError(f"raw {table} for {day}: {path} is not a readable Parquet file ({e})") from e
        physical = {meta.schema.column(i).path: meta.schema.column(i).physical_type for i in range(meta.num_columns)}
        for field in expected:
            idx = actual.get_field_index(field.name)
            if idx < 0:
                raise RawInputError(f"raw {table} for {day}: {path} has no column {field.name!r}")
            problem = _type_problem(field.type, actual.field(idx).type, physical.get(field.name))
            if problem:
                raise RawInputError(f"raw {table} for {day}: {path} column {field.name!r} {problem}")
    return files


def read_raw_table(store: DatasetStore, table: str, day: str, columns: list[str]) -> pa.Table:
    """The day's raw table (contract-checked) as a pyarrow table of `columns`, for item- or day-sized reads
    outside Spark."""
    import pyarrow.dataset as pads

    files = check_raw_contract(store, table, day)
    return pads.dataset(files, filesystem=store.fs, format="parquet").to_table(columns=columns)


def read_raw(spark, store: DatasetStore, table: str, day: str):
    """The day's raw table as a Spark DataFrame with exactly the contract's columns (extra columns ignored)."""
    check_raw_contract(store, table, day)
    schema = spark_schema(RAW_TABLES[table])
    return spark.read.schema(schema).parquet(store.raw_partition_uri(table, day))


def latest_raw_day(store: DatasetStore, table: str, day: str) -> str:
    """The most recent day <= `day` with a raw partition of `table` (snapshots such as users)."""
    days = [d for d in store.raw_days(table) if d <= day]
    if not days:
        raise RawInputError(f"raw {table}: no snapshot on or before {day} under {store.path('raw', table)}")
    return days[-1]


def write_raw_day(store: DatasetStore, day: str, tables: dict[str, pa.Table], write_success: bool = True) -> None:
    """Write one day's raw tables, then (last, as upstream does) its success file."""
    for name, table in tables.items():
        d = store.raw_partition_path(name, day)
        store.fs.create_dir(d, recursive=True)
        pq.write_table(table, f"{d}/part-00000.parquet", filesystem=store.fs, row_group_size=256_000)
    if write_success:
        store.write_bytes_atomic(store.raw_success_file(day), f"{day} complete\n".encode())
