"""What starts training: Declarative Automation conditions on the training and index assets (no run-status sensors).

A day's training starts when that day's datagen has finished (its datagen_monitoring_report partition was
updated: the report is written only from a committed training_events day, so a day withheld by a failed blocking
check never starts training), nothing upstream is still running (a range backfill finishes first) and the day is
not already running; the models, indexes and evaluation of the day follow in the same run. It covers the last
RECSYS_AUTOMATION_LOOKBACK_DAYS days (default 60), so a datagen backfill of past days retrains those days, not only
the newest. Only the listed trigger assets start a day: a change to another day inside a training window does not
retrain every later day, and the vocab's dependency on the previous day orders days without chaining them.
Dagster caveat: for a window dependency that condition holds when *any* day of the window passed, hence the
report trigger for the day itself (docs/backfills.md).
"""

from __future__ import annotations

from dagster import AssetSelection

from recsys_assets.core.automation import after_upstream

# The day's datagen finished (vocab, cold-start index), and every day of its training window has been through
# datagen (committed or withheld): the first days of a deployment, or a week after a day that never arrived, start no
# training run that could only fail for want of data (the freshness sensor alerts the missing day; a run launched
# by hand trains on the usable days, min_window_days of training.yaml).
TRAIN_AFTER_DATAGEN = after_upstream(
    AssetSelection.assets("datagen_monitoring_report"), present=AssetSelection.assets("training_events")
)
# The day's vocab / models / indexes updated (ranker, retrieval, retrieval index, offline evaluation).
TRAIN_AFTER_VOCAB = after_upstream(AssetSelection.groups("training", "indexes"))
