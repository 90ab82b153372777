"""Notifications with an info route and an error route: Slack / Google Chat incoming webhooks (URLs from env
vars, never logged) and always a local JSONL log. Delivery is retried with backoff; a webhook that stays down
is logged and recorded, and never fails the pipeline.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from typing import Literal

import requests
from dagster import ConfigurableResource
from pydantic import Field

log = logging.getLogger("recsys.notifier")
_jsonl_lock = threading.Lock()

Route = Literal["info", "error"]


class NotifierResource(ConfigurableResource):
    info_webhook_url: str = Field(default="", description="Incoming-webhook URL for info messages (set via EnvVar).")
    error_webhook_url: str = Field(default="", description="Incoming-webhook URL for errors (set via EnvVar).")
    jsonl_path: str = Field(
        default="",
        description="Local JSONL log of every notification; empty = $DAGSTER_HOME/notifications.jsonl (or ./).",
    )
    max_attempts: int = Field(default=3, ge=1)
    backoff_s: float = Field(default=0.5, ge=0)
    timeout_s: float = Field(default=5.0, gt=0)

    def _jsonl(self) -> str:
        if self.jsonl_path:
            return self.jsonl_path
        return os.path.join(os.environ.get("DAGSTER_HOME", "."), "notifications.jsonl")

    def notify(self, route: Route, title: str, body: str = "", **fields: object) -> bool:
        """Send to the route's webhook (if configured) and append to the JSONL log. Returns delivery success
        (True when no webhook is configured). Never raises."""
        record = {
            "ts": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "route": route,
            "title": title,
            "body": body,
            "fields": fields,
        }
        url = self.info_webhook_url if route == "info" else self.error_webhook_url
        delivered, attempts, last_error = True, 0, None
        if url:
            text = f"*{title}*\n{body}".strip()
            if fields:
                text += "\n" + "\n".join(f"• {k}: {v}" for k, v in fields.items())
            delivered = False
            for attempts in range(1, self.max_attempts + 1):
                try:
                    # {"text": ...} is accepted by both Slack and Google Chat incoming webhooks.
                    resp = requests.post(url, json={"text": text}, timeout=self.timeout_s)
                    if resp.status_code < 300:
                        delivered = True
                        break
                    last_error = f"HTTP {resp.status_code}"
                except requests.RequestException as e:
                    last_error = type(e).__name__  # never the exception text: it can contain the URL
                if attempts < self.max_attempts:
                    time.sleep(self.backoff_s * 2 ** (attempts - 1))
            if not delivered:
                log.warning("notification to %s webhook failed after %d attempts (%s): %s", route, attempts, last_error, title)
        record.update(webhook_configured=bool(url), delivered=delivered, attempts=attempts, error=last_error)
        try:
            path = self._jsonl()
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with _jsonl_lock, open(path, "a") as f:
                f.write(json.dumps(record, default=str) + "\n")
        except OSError as e:
            log.warning("could not append notification to the JSONL log: %s", e)
        log.info("[%s] %s %s", route, title, body)
        return delivered
