"""great-expectations 1.x suites for training_events, run on Spark DataFrames (no rows leave Spark).

great_expectations is imported where a suite is built (seconds of import): loading the code location must not
pay for it."""

from __future__ import annotations

from collections.abc import Callable

from recsys_assets.core.schemas import EMBEDDING_DIM

EVENT_TYPES = {
    "event_id": "StringType",
    "user_id": "StringType",
    "item_id": "StringType",
    "event_ts": "TimestampType",
    "play_duration_s": "DoubleType",
    "item_age_days": "DoubleType",
    "watch_ratio": "DoubleType",
    "liked": "BooleanType",
    "shared": "BooleanType",
    "followed": "BooleanType",
}


def _finite_rows(columns: list[str], what: str):
    """Rows where any of `columns` is null, NaN or infinite: a poisoned moment makes a whole normalised column
    non-finite, so this fails the day whatever let the bad value in."""
    import great_expectations as gx

    bad = " OR ".join(f"{c} IS NULL OR isnan({c}) OR abs({c}) = double('Infinity')" for c in columns)
    return gx.expectations.UnexpectedRowsExpectation(
        description=f"every {what} is finite", unexpected_rows_query=f"SELECT * FROM {{batch}} WHERE {bad}"
    )


def normalized_columns(columns: list[str]) -> list[str]:
    return [c for c in columns if c.endswith("_norm")]


def training_events_suite(max_item_age_days: float, columns: list[str] | None = None):
    import great_expectations as gx

    E = gx.expectations
    suite = gx.ExpectationSuite("training_events")
    if norm := normalized_columns(columns or []):
        suite.add_expectation(_finite_rows(norm, "normalised value (" + ", ".join(norm) + ")"))
    for col in ("event_id", "user_id", "item_id", "event_ts"):
        suite.add_expectation(E.ExpectColumnValuesToNotBeNull(column=col))
    for col, t in EVENT_TYPES.items():
        suite.add_expectation(E.ExpectColumnValuesToBeOfType(column=col, type_=t))
    suite.add_expectation(E.ExpectColumnValuesToBeUnique(column="event_id"))
    suite.add_expectation(E.ExpectColumnValuesToBeBetween(column="play_duration_s", min_value=0))
    suite.add_expectation(
        E.ExpectColumnValuesToBeBetween(
            column="item_age_days", min_value=0, max_value=max_item_age_days, strict_min=True
        )
    )
    suite.add_expectation(E.ExpectColumnValuesToBeBetween(column="watch_ratio", min_value=0))
    suite.add_expectation(E.ExpectTableRowCountToBeBetween(min_value=1))
    return suite


def items_suite(columns: list[str] | None = None):
    import great_expectations as gx

    E = gx.expectations
    suite = gx.ExpectationSuite("training_items")
    if norm := normalized_columns(columns or []):
        suite.add_expectation(_finite_rows(norm, "normalised item value (" + ", ".join(norm) + ")"))
    suite.add_expectation(E.ExpectColumnValuesToNotBeNull(column="item_id"))
    suite.add_expectation(E.ExpectColumnValuesToBeUnique(column="item_id"))
    # Catalogue columns live once per item (the events table holds no copies).
    suite.add_expectation(E.ExpectColumnValuesToBeOfType(column="item_video_length_s", type_="DoubleType"))
    suite.add_expectation(E.ExpectColumnValuesToBeBetween(column="item_video_length_s", min_value=0, strict_min=True))
    suite.add_expectation(E.ExpectColumnValuesToBeBetween(column="num_events", min_value=1))
    suite.add_expectation(
        E.UnexpectedRowsExpectation(
            description=f"every embedding has {EMBEDDING_DIM} finite values",
            unexpected_rows_query=(
                f"SELECT item_id FROM {{batch}} WHERE embedding IS NULL OR size(embedding) != {EMBEDDING_DIM} "
                "OR exists(embedding, x -> x IS NULL OR isnan(x) OR abs(x) = float('Infinity'))"
            ),
        )
    )
    return suite


def validate(frames: dict[str, tuple[object, Callable[[], object]]]) -> list[dict]:
    """Validate each Spark DataFrame against the suite its factory builds (suites need a live context, so
    they are built after it); one summary row per expectation."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = ctx.data_sources.add_spark("recsys_spark")
    rows = []
    for name, (df, make_suite) in frames.items():
        suite = make_suite()
        batch_def = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole")
        result = batch_def.get_batch(batch_parameters={"dataframe": df}).validate(suite)
        for r in result.results:
            cfg = r.expectation_config
            rows.append(
                {
                    "table": name,
                    "expectation": cfg.type,
                    "column": cfg.kwargs.get("column", ""),
                    "success": bool(r.success),
                    "unexpected": r.result.get("unexpected_count", r.result.get("observed_value", "")),
                }
            )
    return rows
