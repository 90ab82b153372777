"""Indexes' definitions: the retrieval and cold-start indexes and the day's offline evaluation (run by
training_job, which selects these groups)."""

from dagster import Definitions

from recsys_assets.indexes.assets import index_assets
from recsys_assets.indexes.offline_evaluation import offline_evaluation

defs = Definitions(assets=[*index_assets, offline_evaluation])
