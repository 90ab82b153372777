"""Indexes' definitions: the retrieval and cold-start indexes (run by training_job, which selects this group), and
their checks live with the other model checks (checks/)."""

from dagster import Definitions

from recsys_assets.indexes.assets import index_assets

defs = Definitions(assets=index_assets)
