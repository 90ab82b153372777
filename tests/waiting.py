"""Waiting on real processes (a daemon, a webserver, a run) on a shared, possibly loaded CI host.

A fixed time budget tuned on a quiet machine fails on a busy one while the work is still advancing. These waits
follow progress instead: they keep waiting as long as something observable changes (log output, run events), fail
as soon as the process or run has failed, and give up only when nothing has moved for `stall_s` seconds or after
a generous overall `limit_s`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class StalledError(AssertionError):
    pass


def wait_until(
    done: Callable[[], T],
    progress: Callable[[], object],
    what: str,
    *,
    stall_s: float = 300,
    limit_s: float = 3600,
    failed: Callable[[], str | None] = lambda: None,
    context: Callable[[], str] = lambda: "",
    poll_s: float = 1.0,
) -> T:
    """Poll `done()` until it returns something truthy and return it. `progress()` returns any value that changes
    while the work advances; `failed()` returns a message once the work can no longer succeed (raised at once)."""
    start = last_move = time.monotonic()
    seen = progress()
    while True:
        value = done()
        if value:
            return value
        message = failed()
        if message:
            raise AssertionError(f"{what}: {message}\n{context()}")
        now = time.monotonic()
        current = progress()
        if current != seen:
            seen, last_move = current, now
        if now - last_move > stall_s:
            raise StalledError(f"{what}: no progress for {stall_s:.0f}s ({now - start:.0f}s in all)\n{context()}")
        if now - start > limit_s:
            raise StalledError(f"{what}: still not done after {limit_s:.0f}s, though progressing\n{context()}")
        time.sleep(poll_s)


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="ignore")[-chars:]
    except FileNotFoundError:
        return ""
