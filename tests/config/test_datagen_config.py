"""The datagen YAML is validated once and errors name the offending key."""

from __future__ import annotations

import pytest
import yaml

from recsys_assets.config.datagen import DEFAULT_CONFIG_PATH, DatagenConfigError, load_datagen_spec, parse_datagen_spec


def _raw():
    return yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())


def test_default_config_lists_production_filters_in_order():
    spec = load_datagen_spec()
    assert [f.name for f in spec.filters] == [
        "item_moderation",
        "feed_source",
        "client_events",
        "video_length",
        "play_duration",
        "item_age",
        "item_events",
    ]
    assert spec.sample.fraction == 0.7
    assert spec.thresholds.min_new_items_pct_1d == 3.0


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r["filters"][1].update(column="feed_src"), "filters[1]"),
        (lambda r: r["filters"][1].update(column="feed_src"), "unknown column 'feed_src'"),
        (lambda r: r["filters"].append(dict(r["filters"][0])), "duplicate filter names: ['item_moderation']"),
        (lambda r: r["filters"][3].update(min=500.0), "min 500.0 > max 180.0"),
        (lambda r: r["filters"][0].update(kind="regex"), "filters[0]"),
        (lambda r: r["sample"].update(fraction=1.5), "sample.fraction"),
        (lambda r: r["thresholds"].pop("min_new_items_pct_1d"), "thresholds.min_new_items_pct_1d"),
        (lambda r: r.update(item_age_bucket_edges=[0, 2, 1]), "strictly increasing"),
        (lambda r: r["filters"][0].update(name="sample"), "reserved"),
    ],
)
def test_invalid_config_fails_fast_naming_the_key(mutate, message):
    raw = _raw()
    mutate(raw)
    with pytest.raises(DatagenConfigError) as e:
        parse_datagen_spec(raw, source="test.yaml")
    assert message in str(e.value)
    assert "test.yaml" in str(e.value)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(DatagenConfigError, match="not found"):
        load_datagen_spec(str(tmp_path / "nope.yaml"))
