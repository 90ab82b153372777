"""Typed settings and their YAML files, one source per setting: datagen.yaml (filter chain, input limits, check
thresholds), training.yaml (window, vocab, labels, model sizes, model-check thresholds), serving.yaml (A/B arms, feed,
skew, online evaluation), and the resource that says which files a deployment uses (files.py)."""
