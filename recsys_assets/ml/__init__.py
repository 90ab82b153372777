"""The model library: feature encoding and vocab merge, the training-data loader, the models, the trainer, ranker and
two-tower training, baselines, evaluation metrics, history arrays, FAISS indexes, export, releases and scoring, and the
day-level entry points (train.py, indexing.py, scoring.py). It imports torch, numpy, pyarrow, faiss and the ground
(recsys_assets/core, recsys_assets/config, resources/store.py) only: no Dagster, so a torchrun worker or a Spark
executor imports it alone (an import-linter contract and tests/test_layers.py hold that)."""
