"""user_history: each user's recent positives as of a day, in one home: the Spark stage that builds it, what a day
is built from, the asset, its job and its checks (the models read it through recsys_assets/ml/history.py)."""
