"""The model registry against the local PostgreSQL server (a fresh database per test). The feed table:
tests/serving/test_feed_table.py."""

from __future__ import annotations

import psycopg2
import pytest

from recsys_assets.serving import registry
from tests.helpers import PG_DSN


@pytest.fixture()
def conn(pg_database):
    c = psycopg2.connect(dbname=pg_database, **PG_DSN)
    registry.ensure_schema(c)
    yield c
    c.close()


def _register(conn, day: str, passed: bool) -> int:
    version, created = registry.register_version(
        conn,
        "m",
        day,
        fingerprint=f"fp-{day}",
        repository_uri="/repo",
        code_version="abc123",
        data_versions={"training_events": {day: "v1"}},
        components={},
        metrics={"auc": 0.7},
    )
    assert created
    registry.record_checks(conn, "m", version, {"ranker_auc_gate": passed, "retrieval_recall_gate": True})
    return version


def test_versions_are_idempotent_per_fingerprint_and_promotion_needs_passing_checks(conn):
    v1 = _register(conn, "2024-03-01", passed=True)
    again, created = registry.register_version(conn, "m", "2024-03-01", "fp-2024-03-01", "/repo", "abc123", {}, {}, {})
    assert (again, created) == (v1, False)
    v2 = _register(conn, "2024-03-02", passed=False)
    assert (v1, v2) == (1, 2)

    assert registry.promote(conn, "m", v1, reason="first") is None
    with pytest.raises(registry.PromotionRefused, match="ranker_auc_gate"):
        registry.promote(conn, "m", v2)
    with pytest.raises(registry.PromotionRefused, match="not registered"):
        registry.promote(conn, "m", 99)
    assert registry.production_version(conn, "m") == v1
    with pytest.raises(registry.PromotionRefused, match="first production version"):
        registry.rollback(conn, "m")


def test_rollback_walks_back_through_promotions_and_logs_every_change(conn, pg_database):
    v1, v2, v3 = (_register(conn, f"2024-03-0{i}", passed=True) for i in (1, 2, 3))
    for v in (v1, v2, v3):
        registry.promote(conn, "m", v, reason=f"day {v}", actor="test")
    assert registry.previous_production_version(conn, "m") == v2
    assert registry.rollback(conn, "m", reason="ctr drop") == (v3, v2)
    assert registry.previous_production_version(conn, "m") == v1

    # The registry's own rollback walks back one more promotion (the command line and the UI job add the release
    # check and the serving config around it: tests/serving/test_serving_assets.py).
    assert registry.rollback_target(conn, "m") == (v2, v1)
    assert registry.rollback(conn, "m", reason="cli") == (v2, v1)
    assert registry.pin(conn, "m")["to_version"] == v1  # a rollback pins production
    assert registry.production_version(conn, "m") == v1
    log = [(d["action"], d["from_version"], d["to_version"], d["reason"]) for d in registry.deployments(conn, "m")]
    assert log == [
        ("promote", None, 1, "day 1"),
        ("promote", 1, 2, "day 2"),
        ("promote", 2, 3, "day 3"),
        ("rollback", 3, 2, "ctr drop"),
        ("rollback", 2, 1, "cli"),
    ]
