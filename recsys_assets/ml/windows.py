"""Which training_events partitions a model partition trains and validates on (the temporal split), and what
happened to each day of the window: a day is used only through its committed version (one that passed its
blocking checks), so a withheld day never trains a model; the window says which days it used and why others
are missing, and refuses to train on fewer than `min_window_days` of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from recsys_assets.core.datasets import TRAINING_EVENTS, USER_HISTORY
from recsys_assets.core.days import shift_day
from resources.store import DatasetStore


class NoTrainingDataError(RuntimeError):
    pass


def day_status(store: DatasetStore, dataset: str, day: str) -> str:
    """`used` (committed, nothing newer pending), `used (...)` (committed while a newer version is withheld or
    pending), `withheld (failed ...)`, `awaiting checks (...)` or `missing`."""
    state = store.gate_state(dataset, day)
    if state.state == "committed":
        return "used"
    if state.state == "missing":
        return "missing"
    what = (
        f"failed {', '.join(state.failed_checks)}"
        if state.state == "withheld"
        else f"awaiting {', '.join(state.pending_checks)}"
    )
    if state.committed_version:
        return (
            f"used (version {state.committed_version}; newer version {state.candidate_version} {state.state}: {what})"
        )
    return f"withheld ({what})" if state.state == "withheld" else f"awaiting checks ({what})"


@dataclass(frozen=True)
class TrainingWindow:
    """Train on the committed days of [day - window_days, day - 1]; validate on `day`."""

    train_days: list[str]
    validation_day: str
    versions: dict[str, str]
    status: dict[str, str]

    def as_dict(self) -> dict:
        return {
            "train_days": self.train_days,
            "validation_day": self.validation_day,
            "data_versions": self.versions,
            "window_status": self.status,
        }

    @property
    def unused_days(self) -> dict[str, str]:
        return {d: s for d, s in self.status.items() if not s.startswith("used") and d != self.validation_day}


def training_window(store: DatasetStore, day: str, window_days: int, min_days: int = 1) -> TrainingWindow:
    """The window of `day`; NoTrainingDataError naming every missing or withheld day when fewer than `min_days`
    of the `window_days` days before it, or the validation day itself, have a committed version."""
    candidates = [shift_day(day, -k) for k in range(window_days, 0, -1)]
    status = {d: day_status(store, TRAINING_EVENTS, d) for d in [*candidates, day]}
    train = [d for d in candidates if status[d].startswith("used")]
    unusable = {d: s for d, s in status.items() if not s.startswith("used")}
    if len(train) < min(min_days, window_days) or day in unusable:
        listed = "; ".join(f"{d}: {s}" for d, s in unusable.items())
        if not train:
            head = f"no committed training_events in the {window_days} days before {day}"
        elif day in unusable:
            head = f"the validation day {day} has no committed training_events"
        else:
            head = (
                f"only {len(train)} of the {window_days} days before {day} have committed training_events "
                f"(min_window_days: {min_days})"
            )
        raise NoTrainingDataError(
            f"{head} ({candidates[0]}..{candidates[-1]}); {listed}. Materialize (or fix and rerun) training_events "
            "for those days first"
        )
    versions = {d: store.committed_version(TRAINING_EVENTS, d) for d in [*train, day]}
    return TrainingWindow(train_days=train, validation_day=day, versions=versions, status=status)


def window_for(store: DatasetStore, day: str, spec) -> TrainingWindow:
    """`training_window` with the training YAML's window_days and min_window_days."""
    return training_window(store, day, spec.window_days, spec.min_window_days)


def stale_history(store: DatasetStore, day: str) -> list[str]:
    """Why the committed user_history of `day` no longer matches the data it folds in (empty when it does): a
    training_events day of its lookback recommitted with another version since, committed since (un-withheld, or
    delivered late), or no longer committed. Its manifest records the versions it was built from (`sources`)."""
    manifest = store.read_manifest(USER_HISTORY, day) or {}
    built_from = manifest.get("sources") or {}
    lookback = int(manifest.get("lookback_days") or 0)
    days = [shift_day(day, -k) for k in range(lookback, 0, -1)]
    now = {d: (store.read_manifest(TRAINING_EVENTS, d) or {}).get("version") for d in days}
    out = []
    for d in days:
        if built_from.get(d) == now[d]:
            continue
        if d not in built_from:
            out.append(f"training_events {d} committed since it was built")
        elif now[d] is None:
            out.append(f"training_events {d} no longer committed")
        else:
            out.append(f"training_events {d} recommitted ({built_from[d]} -> {now[d]})")
    return out


def with_user_history(store: DatasetStore, window: TrainingWindow, min_days: int) -> TrainingWindow:
    """The window restricted to days that also have a committed, current user_history (each event is joined with
    the history as of its own day); a day without one, or whose history is stale (it folded in a training_events
    version that has been replaced since), is reported as unused, and the validation day must have a current one."""
    status = dict(window.status)
    for d in [*window.train_days, window.validation_day]:
        if not store.is_committed(USER_HISTORY, d):
            status[d] = (
                f"no committed user_history ({day_status(store, USER_HISTORY, d)}); materialize user_history first"
            )
        elif stale := stale_history(store, d):
            status[d] = f"stale user_history ({'; '.join(stale)}): rebuild user_history from the earliest stale day on"
    train = [d for d in window.train_days if status[d].startswith("used")]
    if not status[window.validation_day].startswith("used") or len(train) < min(min_days, len(window.status) - 1):
        listed = "; ".join(f"{d}: {s}" for d, s in status.items() if not s.startswith("used"))
        raise NoTrainingDataError(
            f"the history-aware models of {window.validation_day} need user_history for the validation day and at "
            f"least {min_days} window days: {listed}. Backfill user_history (user_history_job) in date order "
            "(automation does it after a day is rewritten), or set history.enabled: false in training.yaml"
        )
    versions = {d: v for d, v in window.versions.items() if d in train or d == window.validation_day}
    return TrainingWindow(train_days=train, validation_day=window.validation_day, versions=versions, status=status)
