"""Dagster resources: one concern each (storage, Spark, notifications). Environments differ only in their config."""
