"""Serving hand-off: model repository + registry, A/B serving config, published feed, skew and online evaluation."""
