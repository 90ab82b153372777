"""Where a deployment's config YAMLs are: one resource for the datagen (filter chain, input limits, check
thresholds), training and serving files, used by assets, checks and sensors alike.

Empty = the file packaged with the code (recsys_assets/config/). A deployment points at its own files with
RECSYS_DATAGEN_CONFIG / RECSYS_TRAINING_CONFIG / RECSYS_SERVING_CONFIG; one run can override them in its run
config (`resources: {config_files: {config: {datagen: /path/to/experiment.yaml}}}`, the launchpad in the UI).
"""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field


class ConfigFilesResource(ConfigurableResource):
    datagen: str = Field(default="", description="datagen YAML path; empty = the packaged datagen.yaml.")
    training: str = Field(default="", description="training YAML path; empty = the packaged training.yaml.")
    serving: str = Field(default="", description="serving YAML path; empty = the packaged serving.yaml.")
