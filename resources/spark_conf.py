"""Spark session properties shared by the Spark resources and the stage code that runs in Spark jobs (no Dagster
here: the stages import it on Dataproc's workers)."""

# The Parquet file size a day's write aims at (SparkResource.target_file_mb): a session property the stages read
# (recsys_assets/datagen/stages.py sized_write), set with the others on every backend.
TARGET_FILE_BYTES_CONF = "spark.recsys.targetFileBytes"
DEFAULT_TARGET_FILE_MB = 256  # SparkResource.target_file_mb's default, and the stages' when the session lacks it
