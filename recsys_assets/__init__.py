"""recsys-platform: Dagster assets that turn daily short-video events into recommender training data."""
