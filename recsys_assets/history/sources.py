"""What user_history of a day is built from (decided by the asset, read by the Spark stage exactly as decided, so a
submitted job and a rerun read the same inputs): the committed training_events versions of the lookback days, and
whether yesterday's history can be extended or the lookback must be read in full."""

from __future__ import annotations

from dataclasses import dataclass

from recsys_assets.config.training import TrainingSpec
from recsys_assets.core.datasets import TRAINING_EVENTS, USER_HISTORY
from recsys_assets.core.days import shift_day
from resources.store import DatasetStore


def history_definition(spec: TrainingSpec) -> dict:
    """What a history's rows depend on besides its inputs: a history built under another definition is not extended."""
    return {
        "keep": spec.history.keep,
        "lookback_days": spec.history.lookback_days,
        "positive_rule": spec.labels.model_dump(
            include={"retrieval_positive_min_watch_ratio", "retrieval_positive_on_engagement"}
        ),
    }


@dataclass(frozen=True)
class HistorySources:
    previous_day: str
    previous_version: str | None  # None: a full rebuild from the lookback
    event_versions: dict[str, str]  # the training_events days (and versions) the stage reads
    sources: dict[str, str]  # every committed lookback day the history covers (recorded in its manifest)

    def stage_params(self, spec: TrainingSpec) -> dict:
        """The Spark stage's parameters (recsys_assets/history/stage.py)."""
        return {
            "previous_day": self.previous_day,
            "previous_version": self.previous_version,
            "event_versions": self.event_versions,
            "keep": spec.history.keep,
            "lookback_days": spec.history.lookback_days,
            "min_watch_ratio": spec.labels.retrieval_positive_min_watch_ratio,
            "on_engagement": spec.labels.retrieval_positive_on_engagement,
        }


def history_sources(store: DatasetStore, day: str, spec: TrainingSpec) -> HistorySources:
    """Yesterday's history is extended when it exists, was built under the same definition, every day it read still
    has the version it read, and no day it lacked has been committed since; otherwise the lookback is read in full."""
    lookback = spec.history.lookback_days
    days = [shift_day(day, -k) for k in range(lookback, 0, -1)]
    committed = {d: (store.read_manifest(TRAINING_EVENTS, d) or {}).get("version") for d in days}
    committed = {d: v for d, v in committed.items() if v}
    yesterday = shift_day(day, -1)
    previous = store.read_manifest(USER_HISTORY, yesterday)
    same_definition = previous is not None and all(previous.get(k) == v for k, v in history_definition(spec).items())
    if same_definition:
        sources = previous.get("sources") or {}
        # days both histories cover: [day - lookback, yesterday - 1]
        shared = {d for d in days if d < yesterday}
        if {d: v for d, v in sources.items() if d in shared} == {d: v for d, v in committed.items() if d in shared}:
            new = {yesterday: committed[yesterday]} if yesterday in committed else {}
            return HistorySources(yesterday, previous["version"], new, committed)
    return HistorySources(yesterday, None, committed, committed)
