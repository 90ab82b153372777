"""Declarative Automation conditions, one builder for every domain (datagen, training, serving use it).

A partition is requested when a trigger dependency was updated (or is requested in the same tick) since the
partition was last handled, its upstream gate holds, nothing upstream or here is in progress, within a lookback of
days. Three gates: `passed` (every upstream blocking check passed: Dagster's `all_deps_blocking_checks_passed`),
`not_failed` (no upstream blocking check failed: lets a chain requested in one tick run in one run, where the
upstream's checks are judged inside the run, as the datagen assets do), and `any` (for a report that must exist
whatever the verdict, offline_evaluation: it reads the judged versions and says what the gates decided).
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Literal

from dagster import AssetSelection, AutomationCondition

AUTOMATION_LOOKBACK_DAYS = int(os.environ.get("RECSYS_AUTOMATION_LOOKBACK_DAYS", "60"))


def after_upstream(
    triggers: AssetSelection | None,
    lookback_days: int | None = AUTOMATION_LOOKBACK_DAYS,
    all_deps_present: bool = False,
    present: AssetSelection | None = None,
    gate: Literal["passed", "not_failed", "any"] = "passed",
) -> AutomationCondition:
    """See the module docstring; `lookback_days=None`: the newest day only; `all_deps_present`: no dependency
    partition missing (unless requested in the same tick); `present`: every partition of these dependencies
    materialized (e.g. a whole training window)."""
    window = AutomationCondition.in_latest_time_window(
        lookback_delta=dt.timedelta(days=lookback_days) if lookback_days else None
    )
    updated = AutomationCondition.any_deps_match(
        AutomationCondition.newly_updated() | AutomationCondition.will_be_requested()
    )
    # triggers=None: any dependency, external ones (the raw inputs) included
    trigger = (updated if triggers is None else updated.allow(triggers)).since_last_handled()
    condition = window & trigger & ~AutomationCondition.any_deps_in_progress() & ~AutomationCondition.in_progress()
    if gate == "passed":
        condition = condition & AutomationCondition.all_deps_blocking_checks_passed()
    elif gate == "not_failed":
        condition = condition & ~AutomationCondition.any_deps_match(
            AutomationCondition.any_checks_match(AutomationCondition.check_failed(), blocking_only=True)
        )
    if all_deps_present:
        condition = condition & ~AutomationCondition.any_deps_missing()
    elif present is not None:
        condition = condition & ~AutomationCondition.any_deps_match(AutomationCondition.missing()).allow(present)
    return condition.with_label("upstream updated and its gate holds")
