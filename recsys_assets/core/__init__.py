"""The ground floor inside recsys_assets: what every domain package shares (dataset declarations, config files)."""
