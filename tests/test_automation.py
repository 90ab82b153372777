"""Sensors and notifications: one run per new success file, overdue raw data, check-failure alerts delivered to
a local webhook server, a dead webhook that never fails anything, and secrets kept out of logs."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from dagster import SensorResult, SkipReason, build_sensor_context

from recsys_assets.alerts.sensors import check_failure_sensor, notification_delivery_sensor, run_failure_alert_sensor
from recsys_assets.datagen.automation import monitoring_summary_sensor, overdue_days, raw_success_file_sensor
from resources.notifier import NotifierResource
from tests.helpers import commit_monitoring_report, defs_with, free_port, judge_day_checks

# The project's Definitions: the alert sensors read the checks to watch from them.
DEFS = defs_with({})


class _Webhook:
    """A local incoming-webhook server that records JSON bodies; fails the first `fail_first` requests; while
    `hang` is set it holds every request open without answering (a hung webhook) and records nothing."""

    def __init__(self, fail_first: int = 0):
        self.bodies: list[dict] = []
        self.requests = 0
        self.hang = threading.Event()
        self.released = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                hook.requests += 1
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if hook.hang.is_set():
                    hook.released.wait(30)
                    self.send_response(503)
                elif hook.requests <= fail_first:
                    self.send_response(503)
                else:
                    hook.bodies.append(body)
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/spaces/AAA/messages?key=SECRET-TOKEN-123"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/hook?token=SECRET-TOKEN-123"  # nothing listens there


def _apply(instance, result: SensorResult) -> None:
    """What the daemon does with a sensor result's asset events: store them in the instance."""
    for event in result.asset_events:
        instance.report_runless_asset_event(event)


def test_success_file_sensor_reports_each_new_file_once_and_automation_runs_its_day(store, instance, resources):
    from dagster import AssetKey, AssetSelection, evaluate_automation_conditions

    datagen = AssetSelection.groups("datagen")
    now = dt.datetime(2024, 3, 6, 6, 0, tzinfo=dt.UTC)
    idle = evaluate_automation_conditions(DEFS, instance, asset_selection=datagen, evaluation_time=now)
    assert idle.total_requested == 0  # no raw day reported: nothing to run

    with build_sensor_context(instance=instance, definitions=DEFS, resources=resources) as ctx:
        first = raw_success_file_sensor(ctx)
    assert isinstance(first, SensorResult) and not first.run_requests  # automation runs datagen, not the sensor
    assert len(first.asset_events) == 3 * 4  # raw events/items/embeddings/users per day
    assert sorted({e.partition for e in first.asset_events}) == ["2024-03-01", "2024-03-02", "2024-03-03"]
    _apply(instance, first)
    tick = evaluate_automation_conditions(
        DEFS, instance, asset_selection=datagen, evaluation_time=now, cursor=idle.cursor
    )
    for asset in ("filtered_events", "training_events", "datagen_monitoring_report"):  # one tick: one run per range
        assert tick.get_requested_partitions(AssetKey(asset)) == {"2024-03-01", "2024-03-02", "2024-03-03"}, asset

    with build_sensor_context(instance=instance, definitions=DEFS, resources=resources, cursor=first.cursor) as ctx:
        again = raw_success_file_sensor(ctx)
    assert isinstance(again, SkipReason)
    # The next tick sees its own requests as handled and asks for nothing more.
    settled = evaluate_automation_conditions(
        DEFS, instance, asset_selection=datagen, evaluation_time=now, cursor=tick.cursor
    )
    assert settled.total_requested == 0

    # A new day's success file: that day only. A file that is not a day is ignored.
    store.write_bytes_atomic(store.raw_success_file("2024-03-04"), b"done")
    store.write_bytes_atomic(store.raw_success_file("README"), b"x")
    with build_sensor_context(instance=instance, definitions=DEFS, resources=resources, cursor=first.cursor) as ctx:
        new = raw_success_file_sensor(ctx)
    assert {e.partition for e in new.asset_events} == {"2024-03-04"}

    # Upstream re-delivers 2024-03-02 (rewritten file): reported again, so automation reruns that day.
    path = store.raw_success_file("2024-03-02")
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with build_sensor_context(instance=instance, definitions=DEFS, resources=resources, cursor=new.cursor) as ctx:
        redo = raw_success_file_sensor(ctx)
    assert {e.partition for e in redo.asset_events} == {"2024-03-02"}
    _apply(instance, redo)
    rerun = evaluate_automation_conditions(
        DEFS, instance, asset_selection=datagen, evaluation_time=now, cursor=settled.cursor
    )
    assert rerun.get_requested_partitions(AssetKey("filtered_events")) == {"2024-03-02"}


def test_success_file_cursor_stays_correct_past_the_days_it_remembers(tmp_path):
    """405 success files (more than CURSOR_DAYS_KEPT): each day is reported once, later ticks report nothing, and an
    old day re-delivered after the cursor forgot it is reported again, once."""
    from recsys_assets.datagen.automation import CURSOR_DAYS_KEPT
    from resources.storage import StorageResource
    from resources.store import DatasetStore

    store = DatasetStore(str(tmp_path))
    days = [(dt.date(2024, 1, 1) + dt.timedelta(days=i)).isoformat() for i in range(405)]
    assert len(days) > CURSOR_DAYS_KEPT
    for day in days:
        store.write_bytes_atomic(store.raw_success_file(day), b"done")
    resources = {"storage": StorageResource(data_root=str(tmp_path))}

    def tick(cursor):
        with build_sensor_context(resources=resources, cursor=cursor) as ctx:
            return raw_success_file_sensor(ctx)

    first = tick(None)
    assert len(first.asset_events) == 405 * 4 and {e.partition for e in first.asset_events} == set(days)
    cursor = first.cursor
    for _ in range(3):  # quiet ticks stay quiet (the cursor used to forget the oldest days and report them again)
        quiet = tick(cursor)
        assert isinstance(quiet, SkipReason), [e.partition for e in quiet.asset_events][:8]
    path = store.raw_success_file(days[1])  # forgotten by the cursor's day list, re-delivered by upstream
    newest = max(os.stat(store.raw_success_file(d)).st_mtime_ns for d in days)
    os.utime(path, ns=(newest + 10**9, newest + 10**9))
    store.write_bytes_atomic(store.raw_success_file("2025-06-01"), b"done")
    redo = tick(cursor)
    assert sorted({e.partition for e in redo.asset_events}) == [days[1], "2025-06-01"]
    assert isinstance(tick(redo.cursor), SkipReason)


def test_overdue_days_after_due_plus_grace():
    # Day 2024-03-01 (IST) ends 2024-03-01T18:30Z; raw data is due 5 h later and alerted on 3 h after that.
    deadline = dt.datetime(2024, 3, 2, 2, 30, tzinfo=dt.UTC)
    before = deadline - dt.timedelta(minutes=1)
    assert overdue_days(before, set(), 0, 5, 3) == []
    assert overdue_days(deadline, set(), 0, 5, 3) == ["2024-03-01"]
    assert overdue_days(deadline, {"2024-03-01"}, 0, 5, 3) == []
    assert overdue_days(deadline, {"2024-03-01"}, 2, 5, 3) == ["2024-02-28", "2024-02-29"]


def _store_failed_evaluation(instance, partition: str, description: str, metadata: dict | None = None) -> None:
    """Record a failed new_items_1d evaluation in the instance's event log (as a runless check evaluation: the same
    execution record a run's check step leaves)."""
    from dagster import AssetCheckEvaluation, AssetCheckSeverity, AssetKey

    instance.report_runless_asset_event(
        AssetCheckEvaluation(
            asset_key=AssetKey("datagen_monitoring_report"),
            check_name="new_items_1d",
            passed=False,
            severity=AssetCheckSeverity.WARN,
            description=description,
            metadata=metadata or {},
            partition=partition,
        )
    )


def _failing_check_evaluation(store, instance, resources):
    """Evaluate new_items_1d on a day with 1% new items and record the failed evaluation in the instance."""
    yesterday = [f"i{i}" for i in range(1000)]
    commit_monitoring_report(
        store, "2024-03-02", yesterday[10:] + [f"n{i}" for i in range(10)], np.full(1000, 5.0), prev_ids=yesterday
    )
    res = judge_day_checks(["new_items_1d"], "2024-03-02", resources).get_asset_check_evaluations()[0]
    assert not res.passed
    _store_failed_evaluation(instance, "2024-03-02", res.description, res.metadata)


def _jsonl(tmp_path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "n.jsonl").read_text().splitlines()]


def test_check_failure_is_delivered_to_the_error_webhook_once(store, instance, resources, tmp_path):
    _failing_check_evaluation(store, instance, resources)
    with _Webhook() as hook:
        res = {
            **resources,
            "notifier": NotifierResource(error_webhook_url=hook.url, jsonl_path=str(tmp_path / "n.jsonl")),
        }
        with build_sensor_context(instance=instance, definitions=DEFS, resources=res) as ctx:
            assert "queued 1" in check_failure_sensor(ctx).skip_message
            cursor = ctx.cursor
        assert hook.bodies == []  # the check sensor only queues; delivery is its own step
        with build_sensor_context(instance=instance, definitions=DEFS, resources=res) as ctx:
            assert "delivered 1" in notification_delivery_sensor(ctx).skip_message
        assert len(hook.bodies) == 1
        text = hook.bodies[0]["text"]
        assert "Check failed: datagen_monitoring_report:new_items_1d" in text
        assert "partition: 2024-03-02" in text and "new_items_pct_1d: 1.0" in text
        # Next ticks: nothing new queued, nothing sent again.
        with build_sensor_context(instance=instance, definitions=DEFS, resources=res, cursor=cursor) as ctx:
            assert "queued 0" in check_failure_sensor(ctx).skip_message
        with build_sensor_context(instance=instance, definitions=DEFS, resources=res) as ctx:
            notification_delivery_sensor(ctx)
        assert len(hook.bodies) == 1
        # Even a tick that starts over without a cursor (a reset sensor) queues nothing twice.
        with build_sensor_context(instance=instance, definitions=DEFS, resources=res) as ctx:
            assert "queued 0" in check_failure_sensor(ctx).skip_message
    (record,) = _jsonl(tmp_path)
    assert record["route"] == "error" and record["fields"]["partition"] == "2024-03-02"
    assert [n["state"] for n in res["notifier"].outbox()] == ["delivered"]


def test_webhook_errors_are_retried_with_backoff(tmp_path):
    with _Webhook(fail_first=2) as hook:
        n = NotifierResource(info_webhook_url=hook.url, jsonl_path=str(tmp_path / "n.jsonl"), backoff_s=60)
        n.enqueue("info", "summary", "body", key="k1")
        t0 = time.time()
        assert n.deliver_pending(now=t0)["failed"] == 1
        assert n.deliver_pending(now=t0 + 1)["failed"] == 0  # not due before its backoff (60 s)
        assert n.deliver_pending(now=t0 + 61)["failed"] == 1  # second attempt; next one after 120 s
        assert n.deliver_pending(now=t0 + 61 + 121)["delivered"] == 1
    assert hook.requests == 3 and len(hook.bodies) == 1
    (row,) = n.outbox()
    assert row["state"] == "delivered" and row["attempts"] == 3


def test_hanging_webhook_never_stalls_a_tick_and_each_failure_is_delivered_exactly_once(instance, tmp_path):
    """A webhook that accepts connections and never answers: 10 failed checks are queued in one quick tick, a
    delivery tick spends one request timeout on it and returns, and once the webhook recovers every failure
    arrives exactly once."""
    for i in range(10):
        _store_failed_evaluation(instance, f"2024-03-{i + 1:02d}", f"failure {i}")
    with _Webhook() as hook:
        hook.hang.set()
        notifier = NotifierResource(
            error_webhook_url=hook.url,
            jsonl_path=str(tmp_path / "n.jsonl"),
            timeout_s=1.0,
            delivery_budget_s=5.0,
            backoff_s=0.0,
        )
        res = {"notifier": notifier}
        t0 = time.monotonic()
        with build_sensor_context(instance=instance, definitions=DEFS, resources=res) as ctx:
            assert "queued 10" in check_failure_sensor(ctx).skip_message
            cursor = ctx.cursor
        with build_sensor_context(instance=instance, definitions=DEFS, resources=res) as ctx:
            skipped = notification_delivery_sensor(ctx).skip_message
        elapsed = time.monotonic() - t0
        # One timed-out request pauses the route for the pass: far inside a 60 s tick, whatever the queue length.
        assert elapsed < 20, elapsed
        assert "failed 1" in skipped and "left 9" in skipped and hook.bodies == []
        # Each failure was logged once, and the cursor moved past all of them.
        assert sorted(r["fields"]["partition"] for r in _jsonl(tmp_path)) == [f"2024-03-{i:02d}" for i in range(1, 11)]
        with build_sensor_context(instance=instance, definitions=DEFS, resources=res, cursor=cursor) as ctx:
            assert "queued 0" in check_failure_sensor(ctx).skip_message

        hook.hang.clear()
        hook.released.set()
        with build_sensor_context(instance=instance, definitions=DEFS, resources=res) as ctx:
            assert "delivered 10" in notification_delivery_sensor(ctx).skip_message
        with build_sensor_context(instance=instance, definitions=DEFS, resources=res) as ctx:
            assert "delivered 0" in notification_delivery_sensor(ctx).skip_message
    texts = sorted(b["text"] for b in hook.bodies)
    assert len(texts) == 10 and len(set(texts)) == 10
    assert all(sum(f"failure {i}\n" in t for t in texts) == 1 for i in range(10))
    assert len(_jsonl(tmp_path)) == 10


def test_a_burst_of_failures_between_ticks_is_notified_in_full(instance, tmp_path):
    """130 failed evaluations of one check between two ticks (more than one page of the check history): each is
    queued once; none of the oldest is skipped."""
    for i in range(130):  # one runless evaluation per partition: 130 days
        _store_failed_evaluation(instance, (dt.date(2024, 1, 1) + dt.timedelta(days=i)).isoformat(), f"failure {i}")
    notifier = NotifierResource(jsonl_path=str(tmp_path / "n.jsonl"))
    with build_sensor_context(instance=instance, definitions=DEFS, resources={"notifier": notifier}) as ctx:
        assert "queued 130" in check_failure_sensor(ctx).skip_message
        cursor = ctx.cursor
    bodies = sorted(int(r["body"].split()[-1]) for r in _jsonl(tmp_path))
    assert bodies == list(range(130))
    with build_sensor_context(
        instance=instance, definitions=DEFS, resources={"notifier": notifier}, cursor=cursor
    ) as ctx:
        assert "queued 0" in check_failure_sensor(ctx).skip_message


def test_a_locked_outbox_bounds_the_tick_and_loses_nothing(instance, tmp_path):
    """Another process holds the outbox locked: the check sensor's tick fails within the lock timeout instead of
    waiting 30 s per notification, its cursor does not pass what was not stored, and once the lock is gone the next
    tick queues all three and they are delivered."""
    import subprocess
    import sys

    import pytest

    from resources.notifier import OutboxUnavailable

    for i in range(3):
        _store_failed_evaluation(instance, f"2024-03-0{i + 1}", f"failure {i}")
    with _Webhook() as hook:
        notifier = NotifierResource(
            error_webhook_url=hook.url, jsonl_path=str(tmp_path / "n.jsonl"), lock_timeout_s=1.0, backoff_s=0.0
        )
        notifier.outbox()  # creates the file
        outbox = str(tmp_path / "notifications_outbox.sqlite3")
        locker = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sqlite3, sys, time\n"
                "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                "c.execute('BEGIN EXCLUSIVE')\n"
                "print('locked', flush=True)\n"
                "time.sleep(120)\n",
                outbox,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert locker.stdout.readline().strip() == "locked"
            res = {"notifier": notifier}
            t0 = time.monotonic()
            with build_sensor_context(instance=instance, definitions=DEFS, resources=res) as ctx:
                with pytest.raises(OutboxUnavailable, match="not stored"):
                    check_failure_sensor(ctx)
                assert ctx.cursor is None  # the tick failed before moving past anything
            with build_sensor_context(instance=instance, definitions=DEFS, resources=res) as ctx:
                assert "delivered 0" in notification_delivery_sensor(ctx).skip_message  # nothing stored, nothing sent
            assert time.monotonic() - t0 < 10  # one bounded wait (1 s), not 30 s per notification
        finally:
            locker.kill()
            locker.wait()
        with build_sensor_context(instance=instance, definitions=DEFS, resources=res) as ctx:
            assert "queued 3" in check_failure_sensor(ctx).skip_message
        with build_sensor_context(instance=instance, definitions=DEFS, resources=res) as ctx:
            assert "delivered 3" in notification_delivery_sensor(ctx).skip_message
    assert sorted(b["text"].split("\n")[1] for b in hook.bodies) == ["failure 0", "failure 1", "failure 2"]


def test_a_corrupt_outbox_is_moved_aside_rebuilt_from_the_log_and_reported(tmp_path):
    with _Webhook() as hook:
        n = NotifierResource(
            info_webhook_url=hook.url, error_webhook_url=hook.url, jsonl_path=str(tmp_path / "n.jsonl")
        )
        for k in ("k1", "k2", "k3"):
            assert n.enqueue("info", f"delivered {k}", key=k) is True
        assert n.deliver_pending()["delivered"] == 3
        for k in ("k4", "k5"):
            n.enqueue("info", f"pending {k}", key=k)
        outbox = tmp_path / "notifications_outbox.sqlite3"
        outbox.write_bytes(b"this is not an SQLite database" * 100)
        assert n.enqueue("info", "pending k6", key="k6") is True  # detected, moved aside, rebuilt, then stored
        assert n.enqueue("info", "pending k6", key="k6") is False  # and the rebuilt outbox dedupes as before
        assert [p.name for p in tmp_path.glob("notifications_outbox.sqlite3.corrupt-*")]
        pending = {r["key"]: r["title"] for r in n.outbox() if r["state"] == "pending"}
        corrupt = [k for k in pending if k.startswith("outbox_corrupt:")]
        assert sorted(set(pending) - set(corrupt)) == ["k4", "k5", "k6"] and len(corrupt) == 1
        assert any("2 undelivered notifications requeued" in r["body"] for r in n.outbox())
        assert n.deliver_pending()["delivered"] == 4
    titles = [b["text"].split("\n")[0] for b in hook.bodies]
    assert titles.count("*delivered k1*") == 1 and "*Notification outbox was corrupt*" in titles
    assert sorted(t for t in titles if "pending" in t) == ["*pending k4*", "*pending k5*", "*pending k6*"]


class _DripServer:
    """A webhook that answers its status line at once, then drips a header byte every `every_s` seconds."""

    def __init__(self, status: bytes = b"HTTP/1.1 200 OK\r\n", every_s: float = 1.0):
        self.requests = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.stop = threading.Event()
        self.status, self.every_s = status, every_s
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.requests += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn):
        try:
            conn.recv(65536)
            conn.sendall(self.status)
            while not self.stop.is_set():
                conn.sendall(b"X")
                time.sleep(self.every_s)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.stop.set()
        self.sock.close()


def test_a_slow_drip_webhook_is_cut_at_its_deadline_and_posted_once_by_concurrent_passes(tmp_path):
    server = _DripServer()
    try:
        n = NotifierResource(
            info_webhook_url=server.url, jsonl_path=str(tmp_path / "n.jsonl"), timeout_s=2.0, delivery_budget_s=20.0
        )
        n.enqueue("info", "slow", key="k1")
        results = []
        t0 = time.monotonic()
        passes = [threading.Thread(target=lambda: results.append(n.deliver_pending())) for _ in range(2)]
        for t in passes:
            t.start()
        for t in passes:
            t.join(30)
        elapsed = time.monotonic() - t0
        assert elapsed < 8, elapsed  # a 2 s total deadline, not a per-read timeout the drip keeps resetting
        assert server.requests == 1  # the second pass did not re-claim the row in flight
        assert sorted(r["failed"] for r in results) == [0, 1]
        (row,) = n.outbox()
        assert row["attempts"] == 1 and row["last_error"] == "Timeout (total deadline)"
    finally:
        server.close()


def test_http_429_retry_after_is_honoured_and_pauses_the_route(tmp_path):
    class Limited(BaseHTTPRequestHandler):
        requests = 0

        def do_POST(self):
            Limited.requests += 1
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(429)
            self.send_header("Retry-After", "120")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Limited)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        n = NotifierResource(info_webhook_url=url, jsonl_path=str(tmp_path / "n.jsonl"), backoff_s=1.0)
        n.enqueue("info", "a", key="a")
        n.enqueue("info", "b", key="b")
        t0 = time.time()
        counts = n.deliver_pending(now=t0)
        assert counts["failed"] == 1 and counts["left"] == 1 and Limited.requests == 1  # the route paused
        assert n.deliver_pending(now=t0 + 60)["failed"] == 1  # b is due; a waits its 120 s
        assert n.deliver_pending(now=t0 + 61)["failed"] == 0  # b now waits too (its own Retry-After)
        assert n.deliver_pending(now=t0 + 121)["failed"] == 1
    finally:
        server.shutdown()
        server.server_close()


def test_dead_webhook_never_fails_and_never_leaks_the_url(store, instance, resources, tmp_path, caplog):
    _failing_check_evaluation(store, instance, resources)
    url = _dead_url()
    res = {
        **resources,
        "notifier": NotifierResource(
            error_webhook_url=url, jsonl_path=str(tmp_path / "n.jsonl"), backoff_s=0.0, timeout_s=1, max_attempts=3
        ),
    }
    caplog.set_level(logging.DEBUG)
    with build_sensor_context(instance=instance, definitions=DEFS, resources=res) as ctx:
        check_failure_sensor(ctx)
    for _ in range(3):  # completes every time: a dead webhook fails no tick
        with build_sensor_context(instance=instance, definitions=DEFS, resources=res) as ctx:
            assert isinstance(notification_delivery_sensor(ctx), SkipReason)
    (row,) = res["notifier"].outbox()
    assert row["state"] == "abandoned" and row["attempts"] == 3 and row["last_error"] == "ConnectionError"
    assert "SECRET-TOKEN-123" not in (tmp_path / "n.jsonl").read_text()
    assert "SECRET-TOKEN-123" not in caplog.text
    assert "notification to error webhook abandoned after 3 attempts" in caplog.text


def test_dead_webhook_does_not_fail_a_datagen_run(instance, resources, tmp_path):
    """Notifications go through sensors, never run steps: a run with the notifier pointed at a dead webhook
    succeeds, and the summary sensor queues one summary per materialized day, delivered (or not) later."""
    from tests.helpers import DAYS, run_day

    res = {
        **resources,
        "notifier": NotifierResource(
            info_webhook_url=_dead_url(),
            error_webhook_url=_dead_url(),
            jsonl_path=str(tmp_path / "n.jsonl"),
            backoff_s=0.0,
            timeout_s=1,
        ),
    }
    assert run_day(DAYS[0], instance, res).success
    assert run_day(DAYS[1], instance, res).success
    with build_sensor_context(instance=instance, definitions=DEFS, resources=res) as ctx:
        monitoring_summary_sensor(ctx)  # one summary per materialized day, not only the latest
        cursor = ctx.cursor
    summary = [x for x in _jsonl(tmp_path) if x["route"] == "info"]
    assert [x["fields"]["partition"] for x in summary] == DAYS[:2]
    body = summary[0]["body"]
    assert body.index("(0.0, 1.0]") < body.index("(2.0, 4.0]") < body.index("(14.0, 30.0]")  # edge order
    with build_sensor_context(instance=instance, definitions=DEFS, resources=res) as ctx:
        notification_delivery_sensor(ctx)
    assert {n["state"] for n in res["notifier"].outbox()} == {"pending"}  # failed, to be retried
    with build_sensor_context(instance=instance, definitions=DEFS, resources=res, cursor=cursor) as ctx:
        assert "queued 0" in monitoring_summary_sensor(ctx).skip_message


def test_fallback_schedule_runs_yesterday_only_when_needed(store, instance, resources):
    from dagster import RunRequest, build_schedule_context

    from recsys_assets.datagen.automation import datagen_fallback_schedule

    # 08:30 IST on 2024-03-04 -> yesterday is 2024-03-03, whose success file exists and which never ran.
    at = dt.datetime(2024, 3, 4, 3, 0, tzinfo=dt.UTC)
    with build_schedule_context(instance=instance, resources=resources, scheduled_execution_time=at) as ctx:
        req = datagen_fallback_schedule(ctx)
    assert isinstance(req, RunRequest) and req.partition_key == "2024-03-03"
    # Success file missing (e.g. for 2024-03-04 a day later): skip, the freshness sensor alerts instead.
    with build_schedule_context(
        instance=instance, resources=resources, scheduled_execution_time=at + dt.timedelta(days=1)
    ) as ctx:
        skip = datagen_fallback_schedule(ctx)
    assert isinstance(skip, SkipReason) and "success file missing" in skip.skip_message
    # Already materialized by the sensor-triggered run: skip.
    from dagster import AssetMaterialization

    instance.report_runless_asset_event(AssetMaterialization("datagen_monitoring_report", partition="2024-03-03"))
    with build_schedule_context(instance=instance, resources=resources, scheduled_execution_time=at) as ctx:
        done = datagen_fallback_schedule(ctx)
    assert isinstance(done, SkipReason) and "already materialized" in done.skip_message


def test_failed_run_sends_an_error_notification(store, instance, resources, tmp_path):
    """Upstream success file present but raw data missing -> the run fails and the error route hears of it."""
    import shutil

    from dagster import DagsterEventType, build_run_status_sensor_context

    from tests.helpers import run_day

    shutil.rmtree(store.raw_partition_path("events", "2024-03-02"))
    assert store.exists(store.raw_success_file("2024-03-02"))
    result = run_day("2024-03-02", instance, resources)
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    failure = [e for e in result.all_events if e.event_type == DagsterEventType.RUN_FAILURE][0]
    with _Webhook() as hook:
        notifier = NotifierResource(error_webhook_url=hook.url, jsonl_path=str(tmp_path / "n.jsonl"))
        ctx = build_run_status_sensor_context(
            sensor_name="run_failure_alert_sensor",
            dagster_instance=instance,
            dagster_run=run,
            dagster_event=failure,
            resources={"notifier": notifier},
        ).for_run_failure()
        run_failure_alert_sensor(ctx)
        run_failure_alert_sensor(ctx)  # a re-evaluated tick queues nothing twice
        assert notifier.deliver_pending()["delivered"] == 1
    assert len(hook.bodies) == 1
    assert "Run failed" in hook.bodies[0]["text"] and "partition: 2024-03-02" in hook.bodies[0]["text"]


def _datagen_day(instance, day: str, embedding_join_passed: bool) -> None:
    """What a datagen run leaves in the instance for a day (as the range runner reports it): training_events
    materialized with its blocking check evaluations pointing at it, and, for a day that passed, the report."""
    from dagster import AssetCheckEvaluation, AssetCheckSeverity, AssetKey, AssetMaterialization

    from recsys_assets.core.dagster_compat import latest_materialization_target

    key = AssetKey("training_events")
    instance.report_runless_asset_event(AssetMaterialization(key, partition=day))
    target = latest_materialization_target(instance, key, day)
    for check in ("embedding_join_item_loss", "training_events_expectations"):
        instance.report_runless_asset_event(
            AssetCheckEvaluation(
                asset_key=key,
                check_name=check,
                passed=embedding_join_passed or check != "embedding_join_item_loss",
                severity=AssetCheckSeverity.ERROR,
                partition=day,
                target_materialization_data=target,
            )
        )
    if embedding_join_passed:  # the report step runs only after training_events passed
        instance.report_runless_asset_event(AssetMaterialization("datagen_monitoring_report", partition=day))


def _user_history_day(instance, day: str) -> None:
    """What a user_history run leaves: the materialization and its passing point-in-time check."""
    from dagster import AssetCheckEvaluation, AssetCheckSeverity, AssetKey, AssetMaterialization

    from recsys_assets.core.dagster_compat import latest_materialization_target

    key = AssetKey("user_history")
    instance.report_runless_asset_event(AssetMaterialization(key, partition=day))
    instance.report_runless_asset_event(
        AssetCheckEvaluation(
            asset_key=key,
            check_name="user_history_point_in_time",
            passed=True,
            severity=AssetCheckSeverity.ERROR,
            partition=day,
            target_materialization_data=latest_materialization_target(instance, key, day),
        )
    )


def test_automation_trains_a_day_whose_datagen_passed_and_not_one_withheld(instance):
    """Declarative Automation (the daemon's evaluation, through Dagster's public evaluation API): a newly
    materialized day whose blocking checks passed starts its training; a day whose blocking check failed does not;
    nothing is requested twice; serving waits for the models' own blocking checks."""
    import datetime as dt

    from dagster import AssetKey, AssetSelection, evaluate_automation_conditions

    defs = DEFS
    now = dt.datetime(2024, 3, 4, 6, 0, tzinfo=dt.UTC)  # 2024-03-03 (Asia/Kolkata) is the newest complete day
    selection = AssetSelection.groups("history", "training", "indexes", "evaluation", "serving")
    first = evaluate_automation_conditions(defs, instance, asset_selection=selection, evaluation_time=now)
    assert first.total_requested == 0  # nothing upstream happened: nothing to do (no run per missing day)

    import datetime as dtm

    # 2024-02-23 .. 03-02 through datagen and passed; 03-03 withheld (failed embedding_join_item_loss).
    days = [(dtm.date(2024, 2, 23) + dtm.timedelta(days=i)).isoformat() for i in range(10)]
    for day in days[:-1]:
        _datagen_day(instance, day, embedding_join_passed=True)
    _datagen_day(instance, days[-1], embedding_join_passed=False)
    second = evaluate_automation_conditions(
        defs, instance, asset_selection=selection, evaluation_time=now, cursor=first.cursor
    )
    # user_history of the day after each passed day (03-03's history reads 03-02; 03-04 is not a partition yet).
    assert second.get_requested_partitions(AssetKey("user_history")) == set(days[1:])
    # 03-01 and 03-02 have their whole 7-day window through datagen: both get a vocab and a cold-start index (a
    # backfill's past days too); 02-29's window lacks 02-22 (no run that could only fail); 03-03 was withheld.
    for asset in ("vocab", "cold_start_index"):
        assert second.get_requested_partitions(AssetKey(asset)) == {"2024-03-01", "2024-03-02"}, asset
    # The models wait for the user_history their window reads (its point-in-time check), the index for the model's
    # blocking recall gate, serving for every model check: not in this tick.
    for asset in ("ranker_model", "retrieval_model", "retrieval_index", "offline_evaluation", "model_repository"):
        assert second.get_num_requested(AssetKey(asset)) == 0, asset

    for day in days[1:]:
        _user_history_day(instance, day)
    third = evaluate_automation_conditions(
        defs, instance, asset_selection=selection, evaluation_time=now, cursor=second.cursor
    )
    for asset in ("ranker_model", "retrieval_model"):
        assert third.get_requested_partitions(AssetKey(asset)) == {"2024-03-01", "2024-03-02"}, asset
    assert third.get_num_requested(AssetKey("user_history")) == 0

    fourth = evaluate_automation_conditions(
        defs, instance, asset_selection=selection, evaluation_time=now, cursor=third.cursor
    )
    assert fourth.total_requested == 0  # requested once; in flight or done, never again for the same update


def test_the_run_sensors_that_chained_jobs_are_gone():
    """Training and serving start by Declarative Automation; the sensors are the external signals and alerts."""
    names = {s.name for s in DEFS.sensors}
    assert not names & {"training_after_datagen_sensor", "serving_after_training_sensor"}
    assert {"raw_success_file_sensor", "check_failure_sensor", "impressions_log_sensor"} <= names
    automation = next(s for s in DEFS.sensors if s.name == "declarative_automation")
    assert automation.default_status.value == "RUNNING"
    graph = DEFS.resolve_asset_graph()
    automated = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).automation_condition}
    assert automated == {
        "user_history",
        "filtered_events",
        "training_events",
        "datagen_monitoring_report",
        "vocab",
        "ranker_model",
        "retrieval_model",
        "retrieval_index",
        "cold_start_index",
        "offline_evaluation",
        "model_repository",
        "model_promotion",
        "serving_config",
        "feed",
        "feature_skew_report",
    }
