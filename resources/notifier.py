"""Notifications with an info route and an error route: Slack / Google Chat incoming webhooks (URLs from env
vars, never logged), always recorded in a local JSONL log, and delivered through a durable outbox.

Producers (sensors) only `enqueue`: a local SQLite insert keyed by what the notification is about (a check
evaluation, a run, a day), so a notification is queued at most once per failure however often a tick is retried,
and the producer's cursor can advance at once. `deliver_pending` is the one place that talks to webhooks: it sends
what is due, oldest first, within a time budget, stops trying a route for the rest of the pass as soon as its
webhook fails or hangs, and retries later with exponential backoff. A webhook that is down or hanging therefore
costs a tick at most one request timeout per route and never re-sends what was delivered; nothing here ever
fails a run or a sensor.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import closing
from typing import Literal

import requests
from dagster import ConfigurableResource
from pydantic import Field

log = logging.getLogger("recsys.notifier")
_jsonl_lock = threading.Lock()

Route = Literal["info", "error"]

_OUTBOX_DDL = """
CREATE TABLE IF NOT EXISTS outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    key             TEXT NOT NULL UNIQUE,
    route           TEXT NOT NULL,
    payload         TEXT NOT NULL,
    created_at      REAL NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    claimed_until   REAL,
    delivered_at    REAL,
    abandoned_at    REAL,
    last_error      TEXT
)
"""


_LOGGED_ONLY = "no webhook configured"


def _format(payload: dict) -> str:
    text = f"*{payload['title']}*\n{payload['body']}".strip()
    if payload["fields"]:
        text += "\n" + "\n".join(f"• {k}: {v}" for k, v in payload["fields"].items())
    return text


class NotifierResource(ConfigurableResource):
    info_webhook_url: str = Field(default="", description="Incoming-webhook URL for info messages (set via EnvVar).")
    error_webhook_url: str = Field(default="", description="Incoming-webhook URL for errors (set via EnvVar).")
    jsonl_path: str = Field(
        default="",
        description="Local JSONL log of every notification; empty = $DAGSTER_HOME/notifications.jsonl (or ./).",
    )
    outbox_path: str = Field(
        default="", description="SQLite outbox of queued notifications; empty = next to the JSONL log."
    )
    timeout_s: float = Field(default=5.0, gt=0, description="Per-request timeout of a webhook POST.")
    delivery_budget_s: float = Field(
        default=20.0,
        gt=0,
        description="Most time one delivery pass starts requests for (a request started before the budget ends may "
        "take timeout_s more): well inside a sensor tick's 60 s.",
    )
    backoff_s: float = Field(default=30.0, ge=0, description="Delay before the first retry; doubles per attempt.")
    max_backoff_s: float = Field(default=1800.0, ge=0)
    max_attempts: int = Field(default=30, ge=1, description="Attempts before a notification is abandoned (logged).")

    # ---- where things live ----
    def _jsonl(self) -> str:
        if self.jsonl_path:
            return self.jsonl_path
        return os.path.join(os.environ.get("DAGSTER_HOME", "."), "notifications.jsonl")

    def _outbox(self) -> str:
        if self.outbox_path:
            return self.outbox_path
        return os.path.join(os.path.dirname(os.path.abspath(self._jsonl())), "notifications_outbox.sqlite3")

    def _connect(self) -> sqlite3.Connection:
        path = self._outbox()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)  # autocommit; explicit BEGIN where needed
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(_OUTBOX_DDL)
        return conn

    def _url(self, route: str) -> str:
        return self.info_webhook_url if route == "info" else self.error_webhook_url

    # ---- producers ----
    def enqueue(self, route: Route, title: str, body: str = "", key: str | None = None, **fields: object) -> bool:
        """Queue a notification, once per `key` (a key queued before is ignored: one notification per failure,
        however often the producer sees it). Appends it to the JSONL log when queued. Local and fast; returns
        whether it was newly queued. Never raises."""
        now = time.time()
        payload = {"title": title, "body": body, "fields": {k: v for k, v in fields.items()}}
        key = key or f"{route}:{title}:{now}"
        try:
            with closing(self._connect()) as conn:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO outbox (key, route, payload, created_at, next_attempt_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (key, route, json.dumps(payload, default=str), now, now),
                )
                queued = cur.rowcount == 1
        except sqlite3.Error as e:
            log.warning("could not queue notification %r: %s", title, type(e).__name__)
            queued = True  # still logged below: the JSONL log is the record of last resort
        if queued:
            self._log_jsonl(
                {
                    "ts": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "route": route,
                    "title": title,
                    "body": body,
                    "fields": payload["fields"],
                    "key": key,
                    "webhook_configured": bool(self._url(route)),
                }
            )
            log.info("[%s] %s %s", route, title, body)
        return queued

    def _log_jsonl(self, record: dict) -> None:
        try:
            path = self._jsonl()
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with _jsonl_lock, open(path, "a") as f:
                f.write(json.dumps(record, default=str) + "\n")
        except OSError as e:
            log.warning("could not append notification to the JSONL log: %s", e)

    # ---- delivery ----
    def _post(self, url: str, payload: dict) -> str | None:
        """None on success, else a short error (never the exception text: it can contain the URL)."""
        try:
            # {"text": ...} is accepted by both Slack and Google Chat incoming webhooks.
            resp = requests.post(url, json={"text": _format(payload)}, timeout=self.timeout_s)
        except requests.RequestException as e:
            return type(e).__name__
        return None if resp.status_code < 300 else f"HTTP {resp.status_code}"

    def deliver_pending(self, budget_s: float | None = None, now: float | None = None) -> dict[str, int]:
        """Send due notifications, oldest first, for at most `budget_s` (default delivery_budget_s). A route whose
        webhook errs or times out is skipped for the rest of the pass. Returns counts by outcome. Never raises."""
        budget = self.delivery_budget_s if budget_s is None else budget_s
        started = time.monotonic()
        counts = {"delivered": 0, "failed": 0, "abandoned": 0, "logged_only": 0, "left": 0}
        paused: set[str] = set()
        try:
            conn = self._connect()
        except sqlite3.Error as e:
            log.warning("notification outbox unavailable: %s", type(e).__name__)
            return counts
        with closing(conn):
            t = time.time() if now is None else now
            due = conn.execute(
                "SELECT id, route, payload, attempts FROM outbox WHERE delivered_at IS NULL AND abandoned_at IS NULL "
                "AND next_attempt_at <= ? ORDER BY id",
                (t,),
            ).fetchall()
            for row_id, route, payload, attempts in due:
                if time.monotonic() - started > budget or route in paused:
                    counts["left"] += 1
                    continue
                t = time.time() if now is None else now
                # Claim the row (a second delivery pass running at the same time skips it).
                claimed = conn.execute(
                    "UPDATE outbox SET claimed_until = ? WHERE id = ? AND delivered_at IS NULL "
                    "AND (claimed_until IS NULL OR claimed_until < ?)",
                    (t + 2 * self.timeout_s + 1, row_id, t),
                )
                if claimed.rowcount != 1:
                    continue
                url = self._url(route)
                if not url:
                    conn.execute(
                        "UPDATE outbox SET delivered_at = ?, last_error = ? WHERE id = ?", (t, _LOGGED_ONLY, row_id)
                    )
                    counts["logged_only"] += 1
                    continue
                error = self._post(url, json.loads(payload))
                t = time.time() if now is None else now
                if error is None:
                    conn.execute(
                        "UPDATE outbox SET delivered_at = ?, attempts = attempts + 1, last_error = NULL WHERE id = ?",
                        (t, row_id),
                    )
                    counts["delivered"] += 1
                    continue
                attempts += 1
                if not error.startswith("HTTP 4"):  # down, hanging or overloaded: leave the route alone this pass
                    paused.add(route)
                if attempts >= self.max_attempts:
                    conn.execute(
                        "UPDATE outbox SET abandoned_at = ?, attempts = ?, last_error = ? WHERE id = ?",
                        (t, attempts, error, row_id),
                    )
                    log.warning(
                        "notification to %s webhook abandoned after %d attempts (%s): %s",
                        route,
                        attempts,
                        error,
                        json.loads(payload)["title"],
                    )
                    counts["abandoned"] += 1
                else:
                    delay = min(self.backoff_s * 2 ** (attempts - 1), self.max_backoff_s)
                    conn.execute(
                        "UPDATE outbox SET attempts = ?, last_error = ?, next_attempt_at = ?, "
                        "claimed_until = NULL WHERE id = ?",
                        (attempts, error, t + delay, row_id),
                    )
                    log.warning(
                        "notification to %s webhook failed (attempt %d, %s), retry in %.0f s: %s",
                        route,
                        attempts,
                        error,
                        delay,
                        json.loads(payload)["title"],
                    )
                    counts["failed"] += 1
        return counts

    def outbox(self) -> list[dict]:
        """Every queued notification with its delivery state (for tests, the CLI and metadata)."""
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT id, key, route, payload, attempts, delivered_at, abandoned_at, last_error "
                "FROM outbox ORDER BY id"
            ).fetchall()

        def state(delivered_at, abandoned_at, error) -> str:
            if abandoned_at is not None:
                return "abandoned"
            if delivered_at is None:
                return "pending"
            return "logged_only" if error == _LOGGED_ONLY else "delivered"

        return [
            {
                "id": r[0],
                "key": r[1],
                "route": r[2],
                **json.loads(r[3]),
                "attempts": r[4],
                "state": state(r[5], r[6], r[7]),
                "last_error": r[7],
            }
            for r in rows
        ]

    def notify(self, route: Route, title: str, body: str = "", key: str | None = None, **fields: object) -> dict:
        """Queue, then run one bounded delivery pass (for callers outside the daemon, such as the demo)."""
        self.enqueue(route, title, body, key=key, **fields)
        return self.deliver_pending()
