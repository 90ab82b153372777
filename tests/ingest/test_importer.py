"""recsys-import: public interaction logs -> the raw input contract, checked against direct reads of the source."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from recsys_assets.core.days import DayOutsidePartitionsError, window_micros, window_of
from recsys_assets.core.raw_inputs import check_raw_contract
from recsys_assets.core.schemas import RAW_TABLES
from recsys_assets.ingest.cli import main as import_cli
from recsys_assets.ingest.importer import (
    CsvMapping,
    ImportSpec,
    SourceDataError,
    import_csv,
    import_movielens,
    movielens_dir,
    raw_days_present,
)
from resources.store import DatasetStore

MOVIELENS = movielens_dir()  # fails saying where it looked and which variable points elsewhere


def _table(store: DatasetStore, table: str, day: str):
    return pads.dataset(store.raw_partition_path(table, day), format="parquet").to_table()


def _source_rows() -> list[dict]:
    with open(MOVIELENS / "ratings.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_movielens_import_meets_the_contract_and_counts_equal_the_source(tmp_path):
    store = DatasetStore(str(tmp_path / "data"))
    counts = import_movielens(MOVIELENS, store, ImportSpec(relay_days=10, start_date="2024-03-01")).days
    days = sorted(counts)
    assert days == [f"2024-03-{d:02d}" for d in range(1, 11)]
    rows = _source_rows()
    with open(MOVIELENS / "movies.csv", newline="") as f:
        movies = list(csv.DictReader(f))

    events = []
    for day in days:
        for table in RAW_TABLES:
            check_raw_contract(store, table, day)  # raises naming file and column on any breach
        assert store.exists(store.raw_success_file(day))
        ev = _table(store, "events", day)
        lo, hi = window_micros(window_of(day))
        ts = ev.column("event_ts").cast("int64").to_numpy()
        assert lo < ts.min() and ts.max() < hi  # every event strictly inside its Asia/Kolkata day
        events.append(ev)
    sizes = [e.num_rows for e in events]
    assert sum(sizes) == len(rows) and max(sizes) - min(sizes) <= 1  # equal-count days, nothing lost

    # Every source row is exactly one event, traceable by its row number, with its user, item and label.
    by_id = {}
    columns = ("event_id", "user_id", "item_id", "liked", "play_duration_s")
    for ev in events:
        for eid, u, i, liked, play in zip(*(ev.column(c).to_pylist() for c in columns)):
            by_id[eid] = (u, i, liked, play)
    assert len(by_id) == len(rows)
    for r in (0, 1, 4_567, len(rows) - 1):
        u, i, liked, play = by_id[f"ml-e{r}"]
        src = rows[r]
        assert (u, i) == (f"ml-u{src['userId']}", f"ml-i{src['movieId']}")
        assert liked == (float(src["rating"]) >= 4.0) and play == pytest.approx(100.0 * float(src["rating"]) / 5)
    assert sum(v[2] for v in by_id.values()) == sum(float(r["rating"]) >= 4.0 for r in rows)

    # Time order is kept across the re-laid days: the last event of a day is no later in source time than the next
    # day's first.
    source_ts = {f"ml-e{r}": int(row["timestamp"]) for r, row in enumerate(rows)}
    for a, b in zip(events, events[1:]):
        assert max(source_ts[e] for e in a.column("event_id").to_pylist()) <= min(
            source_ts[e] for e in b.column("event_id").to_pylist()
        )

    last = days[-1]
    items = _table(store, "items", last)
    assert items.num_rows == len(movies)  # the whole catalogue is known by the last day
    assert set(_table(store, "users", last).column("user_id").to_pylist()) == {f"ml-u{r['userId']}" for r in rows}
    emb = np.array(_table(store, "item_embeddings", last).column("embedding").to_pylist(), dtype=np.float32)
    assert emb.shape == (len(movies), 128) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # An item is created before its first event: ages are positive on every day.
    first = _table(store, "items", days[0])
    created = dict(zip(first.column("item_id").to_pylist(), first.column("created_at").cast("int64").to_pylist()))
    ev0 = events[0]
    for item, t in zip(ev0.column("item_id").to_pylist(), ev0.column("event_ts").cast("int64").to_pylist()):
        assert created[item] < t

    # Deterministic: the same import elsewhere writes the same rows.
    other = DatasetStore(str(tmp_path / "again"))
    import_movielens(MOVIELENS, other, ImportSpec(relay_days=10, start_date="2024-03-01"))
    for table in RAW_TABLES:
        assert _table(other, table, days[3]).equals(_table(store, table, days[3])), table


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_generic_csv_lands_each_event_in_its_asia_kolkata_day(tmp_path):
    path = _write_csv(
        tmp_path / "plays.csv",
        [
            ["who", "video", "when", "secs", "fav"],
            ["a", "v1", "2024-03-01T18:29:00Z", "12.5", "1"],  # 23:59 IST on 03-01
            ["b", "v1", "2024-03-01T18:31:00Z", "30", "0"],  # 00:01 IST on 03-02
            ["a", "v2", "2024-03-02T10:00:00Z", "7", "true"],
        ],
    )
    mapping = CsvMapping(user="who", item="video", timestamp="when", timestamp_unit="iso", duration="secs", liked="fav")
    store = DatasetStore(str(tmp_path / "data"))
    counts = import_csv(path, mapping, store, ImportSpec(source="plays")).days
    assert {d: c["events"] for d, c in counts.items()} == {"2024-03-01": 1, "2024-03-02": 2}
    day2 = _table(store, "events", "2024-03-02")
    assert day2.column("event_id").to_pylist() == ["plays-e1", "plays-e2"]
    assert day2.column("play_duration_s").to_pylist() == [30.0, 7.0]
    assert day2.column("liked").to_pylist() == [False, True]
    for day in counts:
        for table in RAW_TABLES:
            check_raw_contract(store, table, day)

    # The command line does the same.
    import_cli(
        ["csv", "--path", str(path), "--user", "who", "--item", "video", "--timestamp", "when"]
        + ["--timestamp-unit", "iso", "--duration", "secs", "--liked", "fav", "--data-root", str(tmp_path / "cli")]
    )
    assert _table(DatasetStore(str(tmp_path / "cli")), "events", "2024-03-02").num_rows == 2


def test_bad_sources_are_refused_naming_what_is_wrong(tmp_path):
    store = DatasetStore(str(tmp_path / "data"))
    old = _write_csv(tmp_path / "old.csv", [["u", "i", "t"], ["a", "x", "2001-05-01T00:00:00Z"]])
    with pytest.raises(DayOutsidePartitionsError, match="RECSYS_PARTITIONS_START"):
        import_csv(old, CsvMapping(user="u", item="i", timestamp="t", timestamp_unit="iso"), store, ImportSpec())
    with pytest.raises(SourceDataError, match=r"old.csv: no column 'user'"):
        import_csv(old, CsvMapping(user="user", item="i", timestamp="t"), store, ImportSpec())
    # Re-laid onto the partitions, the same old data imports.
    counts = import_csv(
        old, CsvMapping(user="u", item="i", timestamp="t", timestamp_unit="iso"), store, ImportSpec(relay_days=1)
    ).days
    assert list(counts) == ["2024-01-01"]


def _import(tmp_path, rows, **mapping) -> str:
    """recsys-import csv on these rows into a fresh root: the error message a user sees (exit 2), '' on success."""
    path = _write_csv(tmp_path / "in.csv", rows)
    root = tmp_path / f"root-{len(list(tmp_path.iterdir()))}"
    args = ["csv", "--path", str(path), "--user", "u", "--item", "i", "--timestamp", "t", "--data-root", str(root)]
    for k, v in mapping.items():
        args += [f"--{k.replace('_', '-')}", v]
    try:
        import_cli(args)
    except SystemExit as e:
        assert e.code == 2
        return str(e.__context__ or "")
    return ""


@pytest.mark.parametrize(
    "value, unit",
    [("inf", "s"), ("1e20", "s"), ("1709251200000", "s"), ("4070908800", "s"), ("abc", "s"), ("not-a-date", "iso")],
    ids=["inf", "1e20", "ms-as-seconds", "year-2099", "text", "bad-iso"],
)
def test_a_timestamp_that_is_not_one_is_refused_naming_file_column_and_row(tmp_path, capsys, value, unit):
    rows = [["u", "i", "t"], ["a", "x", "1709251200" if unit == "s" else "2024-03-01T00:00:00Z"], ["b", "y", value]]
    _import(tmp_path, rows, timestamp_unit=unit)
    err = capsys.readouterr().err
    assert err.startswith("recsys-import: error: ") and "Traceback" not in err
    assert "in.csv: column 't'" in err and ("row 3" in err or unit == "iso")
    assert not (tmp_path / "root-1" / "raw").exists()  # nothing written


def test_ids_outside_the_alphabet_and_text_in_numbers_are_refused_naming_the_row(tmp_path, capsys):
    cases = [
        ([["u", "i", "t"], ["a", "x", "1709251200"], ["b" * 100_005, "y", "1709251200"]], {}, "column 'u' row 3"),
        ([["u", "i", "t"], ["a", "x\ry", "1709251200"]], {}, "column 'i' row 2: the id has a control character"),
        (
            [["u", "i", "t", "d"], ["a", "x", "1709251200", "12"], ["b", "y", "1709251200", "ten"]],
            {"duration": "d"},
            "column 'd' row 3: 'ten' is not a number",
        ),
    ]
    for rows, mapping, expected in cases:
        _import(tmp_path, rows, **mapping)
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, err
    (tmp_path / "bytes.csv").write_bytes(b"u,i,t\na,\xff\xfe,1709251200\n")
    with pytest.raises(SourceDataError, match="bytes.csv: not a readable UTF-8 CSV"):
        import_csv(
            tmp_path / "bytes.csv",
            CsvMapping(user="u", item="i", timestamp="t"),
            DatasetStore(str(tmp_path / "b")),
            ImportSpec(),
        )


@pytest.mark.parametrize("days", ["-3", "0", "x"])
def test_relay_days_must_be_a_positive_number(tmp_path, capsys, days):
    with pytest.raises(SystemExit):
        import_cli(
            [
                "csv",
                "--path",
                "in.csv",
                "--user",
                "u",
                "--item",
                "i",
                "--timestamp",
                "t",
                "--data-root",
                str(tmp_path),
                "--relay-days",
                days,
            ]
        )
    assert "a whole number of days >= 1" in capsys.readouterr().err
    with pytest.raises(SourceDataError, match="relay_days"):
        ImportSpec(relay_days=0)


def test_exact_duplicate_rows_are_dropped_and_counted(tmp_path):
    path = _write_csv(
        tmp_path / "d.csv",
        [["u", "i", "t"], ["a", "x", "1709251200"], ["a", "x", "1709251200"], ["a", "y", "1709251200"]],
    )
    report = import_csv(
        path, CsvMapping(user="u", item="i", timestamp="t"), DatasetStore(str(tmp_path / "r")), ImportSpec()
    )
    assert report.duplicate_rows_dropped == 1
    assert sum(c["events"] for c in report.days.values()) == 2
    ids = sorted(
        e
        for d in report.days
        for e in _table(DatasetStore(str(tmp_path / "r")), "events", d).column("event_id").to_pylist()
    )
    assert ids == ["ml-e0", "ml-e2"]  # event ids keep naming the source rows (the API's default source: ml)


def test_an_import_owns_its_target_days(tmp_path):
    """Re-importing 2 re-laid days over an earlier 4-day import left days 3-4 (and their success files) behind: a
    non-empty target is refused, and --replace removes what it replaces."""
    rows = [["u", "i", "t"]] + [[f"u{k}", f"i{k}", str(1709251200 + k)] for k in range(8)]
    path = _write_csv(tmp_path / "in.csv", rows)
    mapping, store = CsvMapping(user="u", item="i", timestamp="t"), DatasetStore(str(tmp_path / "root"))
    first = import_csv(path, mapping, store, ImportSpec(relay_days=4, start_date="2024-03-01"))
    assert sorted(first.days) == ["2024-03-01", "2024-03-02", "2024-03-03", "2024-03-04"]
    with pytest.raises(SourceDataError, match=r"already holds raw days 2024-03-01\.\.2024-03-04 \(4\).*--replace"):
        import_csv(path, mapping, store, ImportSpec(relay_days=2, start_date="2024-03-01"))
    again = import_csv(path, mapping, store, ImportSpec(relay_days=2, start_date="2024-03-01", replace=True))
    assert again.replaced_days == sorted(first.days)
    assert raw_days_present(store) == ["2024-03-01", "2024-03-02"]
    assert not store.exists(store.raw_success_file("2024-03-03"))
