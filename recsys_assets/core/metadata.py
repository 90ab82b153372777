"""Turning stats dicts into Dagster metadata a user reads in the UI (tables, plots over partitions)."""

from __future__ import annotations

from dagster import MetadataValue, TableColumn, TableSchema


def numeric_metadata(stats: dict, prefix: str = "") -> dict:
    """Every int/float stat as a typed metadata value so Dagster plots it across partitions."""
    out = {}
    for k, v in stats.items():
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, int):
            out[prefix + k] = MetadataValue.int(v)
        elif isinstance(v, float):
            out[prefix + k] = MetadataValue.float(v)
    return out


def md_table(headers: list[str], rows: list[list[object]]) -> MetadataValue:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        lines.append("| " + " | ".join(f"{c:,}" if isinstance(c, int) else str(c) for c in r) + " |")
    return MetadataValue.md("\n".join(lines))


def column_schema(columns: list[list[str]]) -> MetadataValue:
    """[[name, type], ...] (as a stage's stats carry it, from any Spark backend) as a Dagster table schema."""
    return MetadataValue.table_schema(TableSchema(columns=[TableColumn(name, dtype) for name, dtype in columns]))
