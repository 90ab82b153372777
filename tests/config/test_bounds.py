"""Values a YAML can hold that used to pass loading and fail deep inside (a Py4J NumberFormatException, an
OverflowError in a sensor, a MemoryError, a model nobody can train): refused when the file is loaded, naming the
key and never echoing the value."""

from __future__ import annotations

import pytest
import yaml

from recsys_assets.config.base import ConfigFileError
from recsys_assets.config.datagen import DEFAULT_CONFIG_PATH as DATAGEN
from recsys_assets.config.datagen import load_datagen_spec
from recsys_assets.config.serving import DEFAULT_SERVING_CONFIG as SERVING
from recsys_assets.config.serving import load_serving_spec
from recsys_assets.config.training import DEFAULT_TRAINING_CONFIG_PATH as TRAINING
from recsys_assets.config.training import load_training_spec


def _set(raw: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for p in parents:
        raw = raw[int(p)] if p.isdigit() else raw.setdefault(p, {})
    raw[last] = value


PER_REASON = "quarantine.max_event_pct_per_reason.default"
CASES = [
    (DATAGEN, load_datagen_spec, "filters.0.min", float("nan"), "filters[0].range"),
    (DATAGEN, load_datagen_spec, "sample.seed", 10**40, "sample.seed"),
    (DATAGEN, load_datagen_spec, "quarantine.max_event_pct_per_reason.default", -1.0, "max_event_pct_per_reason"),
    (
        DATAGEN,
        load_datagen_spec,
        "quarantine.max_event_pct_per_reason.default",
        float("nan"),
        "max_event_pct_per_reason",
    ),
    (DATAGEN, load_datagen_spec, "freshness.raw_due_hours_after_day_end", 1e300, "raw_due_hours_after_day_end"),
    (DATAGEN, load_datagen_spec, "training_events.normalized_columns", ["nope"], "training_events"),
    (DATAGEN, load_datagen_spec, "training_events.normalized_columns", [], "training_events"),
    (SERVING, load_serving_spec, "ab.buckets", 10**13, "ab.buckets"),
    (TRAINING, load_training_spec, "ranker.embedding_dim", 10**10, "ranker.embedding_dim"),
    (TRAINING, load_training_spec, "checks.ranker_min_auc.liked", 5.0, "checks.ranker_min_auc.liked"),
    (TRAINING, load_training_spec, "checks.max_oov_rate.default", -0.1, "checks.max_oov_rate.default"),
    (TRAINING, load_training_spec, "retrieval.hidden_sizes", [10**9], "retrieval.hidden_sizes"),
]


@pytest.mark.parametrize("default, load, path, value, key", CASES, ids=[f"{c[2]}={c[3]!r}"[:60] for c in CASES])
def test_out_of_bounds_values_are_refused_at_load_naming_the_key(tmp_path, default, load, path, value, key):
    raw = yaml.safe_load(default.read_text())
    if path.startswith("filters.0."):  # the first range filter of the chain
        first = next(i for i, f in enumerate(raw["filters"]) if f["kind"] == "range")
        path = path.replace("filters.0.", f"filters.{first}.")
        key = key.replace("filters[0]", f"filters[{first}]")
    _set(raw, path, value)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigFileError) as e:
        load(str(config))
    assert key in str(e.value)
    assert repr(value) not in str(e.value) or isinstance(value, list)
