"""Notifications with an info route and an error route: Slack / Google Chat incoming webhooks (URLs from env
vars, never logged), always recorded in a local JSONL log, and delivered through a durable outbox.

Producers (sensors) only `enqueue`: a local SQLite insert keyed by what the notification is about (a check
evaluation, a run, a day), so a notification is queued at most once per failure however often a tick is retried,
and the producer's cursor can advance once it is stored. An outbox another process holds locked is waited for at
most `lock_timeout_s`; what could not be stored raises `OutboxUnavailable`, so the producer's tick fails visibly and
its cursor stays before it (the next tick queues it; what was stored is not queued twice). A corrupt outbox file is
moved aside, rebuilt from the JSONL log of queued notifications minus the delivered ones (`*_delivered.jsonl`), and
reported on the error route.

`deliver_pending` is the one place that talks to webhooks: it sends what is due, oldest first, within a time budget,
stops trying a route for the rest of the pass as soon as its webhook fails, hangs or asks to slow down (HTTP 429:
its Retry-After is honoured), and retries later with exponential backoff. Every request has a total deadline
(`timeout_s`, a webhook that drips its answer a byte at a time included), and a row is claimed for longer than
that, so a concurrent pass never sends it twice. A webhook that is down or hanging costs a pass at most one request
deadline per route; nothing here fails a run.
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


class OutboxUnavailable(RuntimeError):
    """A notification that could not be stored (the outbox is locked past lock_timeout_s, or unusable): the caller
    must not move its cursor past it."""


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


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _read_jsonl(path: str) -> list[dict]:
    """The records of a JSONL log (a torn last line, or any line that is not a JSON object, is skipped)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        return max(0.0, (parsedate_to_datetime(value) - dt.datetime.now(dt.UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


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
    timeout_s: float = Field(default=5.0, gt=0, description="Total deadline of a webhook POST (connect to answer).")
    lock_timeout_s: float = Field(
        default=2.0, gt=0, description="Most time one outbox operation waits for a lock another process holds."
    )
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

    def _delivered_log(self) -> str:
        root, _ = os.path.splitext(self._jsonl())
        return root + "_delivered.jsonl"

    def _open(self) -> sqlite3.Connection:
        path = self._outbox()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # autocommit; explicit BEGIN where needed
        conn = sqlite3.connect(path, timeout=self.lock_timeout_s, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_OUTBOX_DDL)
            conn.execute("SELECT count(*) FROM outbox").fetchone()
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect(self) -> sqlite3.Connection:
        """The outbox; a corrupt file is moved aside and the outbox rebuilt (once) before it is returned. Locked
        (sqlite3.OperationalError after lock_timeout_s) propagates."""
        try:
            return self._open()
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as e:  # not a database / malformed: SQLITE_NOTADB, SQLITE_CORRUPT
            moved = self._recover_corrupt(e)
        conn = self._open()
        self._rebuild(conn, moved)
        return conn

    def _recover_corrupt(self, error: sqlite3.DatabaseError) -> str:
        path = self._outbox()
        moved = f"{path}.corrupt-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S%f')}"
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.replace(path + suffix, moved + suffix)
        log.error("notification outbox %s is corrupt (%s): moved to %s, rebuilding it", path, error, moved)
        return moved

    def _rebuild(self, conn: sqlite3.Connection, moved: str) -> None:
        """Requeue every notification of the JSONL log that was not delivered, then alert on the error route."""
        delivered = {r.get("key") for r in _read_jsonl(self._delivered_log())}
        now, requeued = time.time(), 0
        for r in _read_jsonl(self._jsonl()):
            if not r.get("key") or r["key"] in delivered or r.get("route") not in ("info", "error"):
                continue
            payload = {"title": r.get("title", ""), "body": r.get("body", ""), "fields": r.get("fields") or {}}
            cur = conn.execute(
                "INSERT OR IGNORE INTO outbox (key, route, payload, created_at, next_attempt_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (r["key"], r["route"], json.dumps(payload, default=str), now, now),
            )
            requeued += cur.rowcount
        title = "Notification outbox was corrupt"
        body = f"moved to {os.path.basename(moved)}; {requeued} undelivered notifications requeued from the JSONL log"
        payload = {"title": title, "body": body, "fields": {}}
        conn.execute(
            "INSERT OR IGNORE INTO outbox (key, route, payload, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?)",
            (f"outbox_corrupt:{os.path.basename(moved)}", "error", json.dumps(payload), now, now),
        )
        self._log_jsonl({"ts": _now_iso(), "route": "error", "title": title, "body": body, "fields": {}})

    def _url(self, route: str) -> str:
        return self.info_webhook_url if route == "info" else self.error_webhook_url

    # ---- producers ----
    def enqueue(self, route: Route, title: str, body: str = "", key: str | None = None, **fields: object) -> bool:
        """Queue a notification, once per `key` (a key queued before is ignored: one notification per failure,
        however often the producer sees it), and append it to the JSONL log when queued. Returns True when newly
        queued, False when the key was queued before. Raises OutboxUnavailable when it could not be stored within
        lock_timeout_s (the caller's cursor must stay before it)."""
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
        except (sqlite3.Error, OSError) as e:
            log.warning("could not queue notification %r: %s", title, type(e).__name__)
            raise OutboxUnavailable(
                f"notification {title!r} not stored: outbox {self._outbox()} {type(e).__name__} ({e})"
            ) from None
        if queued:
            self._log_jsonl(
                {
                    "ts": _now_iso(),
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

    def _log_jsonl(self, record: dict, path: str | None = None) -> None:
        try:
            path = path or self._jsonl()
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with _jsonl_lock, open(path, "a") as f:
                f.write(json.dumps(record, default=str) + "\n")
        except OSError as e:
            log.warning("could not append notification to the JSONL log: %s", e)

    # ---- delivery ----
    def _post(self, url: str, payload: dict) -> tuple[str | None, float | None]:
        """(None on success, else a short error: never the exception text, it can contain the URL; the seconds a
        429 asks to wait). The whole request, connect to the end of the answer, has `timeout_s`: a webhook that
        drips its answer never holds the pass longer (its session is closed under it)."""
        session = requests.Session()
        outcome: dict = {}

        def send() -> None:
            try:
                # {"text": ...} is accepted by both Slack and Google Chat incoming webhooks.
                resp = session.post(url, json={"text": _format(payload)}, timeout=self.timeout_s)
                outcome["status"], outcome["retry_after"] = resp.status_code, resp.headers.get("Retry-After")
            except Exception as e:  # noqa: BLE001 (reported as its class name only)
                outcome["error"] = type(e).__name__

        worker = threading.Thread(target=send, name="webhook-post", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            session.close()  # the worker's socket closes under it; it ends on its own
            return "Timeout (total deadline)", None
        session.close()
        if "error" in outcome:
            return outcome["error"], None
        status = outcome["status"]
        if status < 300:
            return None, None
        return f"HTTP {status}", _retry_after_s(outcome["retry_after"]) if status == 429 else None

    def deliver_pending(self, budget_s: float | None = None, now: float | None = None) -> dict[str, int]:
        """Send due notifications, oldest first, for at most `budget_s` (default delivery_budget_s). A route whose
        webhook errs, times out or rate-limits is skipped for the rest of the pass. Returns counts by outcome. Never
        raises: an outbox locked past lock_timeout_s ends the pass (counted), the next pass goes on."""
        budget = self.delivery_budget_s if budget_s is None else budget_s
        started = time.monotonic()
        counts = {"delivered": 0, "failed": 0, "abandoned": 0, "logged_only": 0, "left": 0, "outbox_unavailable": 0}
        paused: set[str] = set()
        try:
            with closing(self._connect()) as conn:
                due = conn.execute(
                    "SELECT id, key, route, payload, attempts FROM outbox WHERE delivered_at IS NULL "
                    "AND abandoned_at IS NULL AND next_attempt_at <= ? ORDER BY id",
                    (time.time() if now is None else now,),
                ).fetchall()
                for row in due:
                    if time.monotonic() - started > budget or row[2] in paused:
                        counts["left"] += 1
                        continue
                    outcome, pause_route = self._deliver(conn, *row, now=now)
                    if pause_route:
                        paused.add(row[2])
                    if outcome:
                        counts[outcome] += 1
        except (sqlite3.Error, OSError) as e:  # locked past lock_timeout_s: what is left waits for the next pass
            log.warning("notification outbox unavailable: %s", type(e).__name__)
            counts["outbox_unavailable"] = 1
        return counts

    def _deliver(
        self, conn, row_id: int, key: str, route: str, payload: str, attempts: int, now=None
    ) -> tuple[str | None, bool]:
        """Claim one due row, send it, record the outcome: ('delivered' | 'logged_only' | 'failed' | 'abandoned', or
        None when a concurrent pass holds it; whether to leave the route alone for the rest of the pass)."""
        t = time.time() if now is None else now
        # Claimed for longer than a request can take (its total deadline): a concurrent pass never re-claims it.
        claimed = conn.execute(
            "UPDATE outbox SET claimed_until = ? WHERE id = ? AND delivered_at IS NULL "
            "AND (claimed_until IS NULL OR claimed_until < ?)",
            (t + 2 * self.timeout_s + 5, row_id, t),
        )
        if claimed.rowcount != 1:
            return None, False
        url = self._url(route)
        if not url:
            conn.execute("UPDATE outbox SET delivered_at = ?, last_error = ? WHERE id = ?", (t, _LOGGED_ONLY, row_id))
            self._log_jsonl({"key": key, "delivered_at": t, "logged_only": True}, self._delivered_log())
            return "logged_only", False
        title = json.loads(payload)["title"]
        error, retry_after = self._post(url, json.loads(payload))
        t = time.time() if now is None else now
        if error is None:
            conn.execute(
                "UPDATE outbox SET delivered_at = ?, attempts = attempts + 1, last_error = NULL WHERE id = ?",
                (t, row_id),
            )
            self._log_jsonl({"key": key, "delivered_at": t}, self._delivered_log())
            return "delivered", False
        attempts += 1
        # Down, hanging, overloaded or rate-limited: leave the route alone for the rest of the pass (a plain 4xx is
        # this message's problem, not the route's).
        pause = not error.startswith("HTTP 4") or retry_after is not None
        if attempts >= self.max_attempts:
            conn.execute(
                "UPDATE outbox SET abandoned_at = ?, attempts = ?, last_error = ? WHERE id = ?",
                (t, attempts, error, row_id),
            )
            self._log_jsonl({"key": key, "abandoned_at": t}, self._delivered_log())
            log.warning(
                "notification to %s webhook abandoned after %d attempts (%s): %s", route, attempts, error, title
            )
            return "abandoned", pause
        delay = min(self.backoff_s * 2 ** (attempts - 1), self.max_backoff_s)
        if retry_after is not None:  # HTTP 429: what the webhook asks for, within our bounds
            delay = min(max(delay, retry_after), self.max_backoff_s)
        conn.execute(
            "UPDATE outbox SET attempts = ?, last_error = ?, next_attempt_at = ?, claimed_until = NULL WHERE id = ?",
            (attempts, error, t + delay, row_id),
        )
        log.warning(
            "notification to %s webhook failed (attempt %d, %s), retry in %.0f s: %s",
            route,
            attempts,
            error,
            delay,
            title,
        )
        return "failed", pause

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
