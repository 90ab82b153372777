"""Asset checks: production's datagen alerts as partitioned Dagster checks with thresholds from config."""
