"""Where a deployment's config YAMLs are, and the one way assets, checks and sensors read them.

Empty = the file packaged with the code (recsys_assets/config/). A deployment points at its own files with
RECSYS_DATAGEN_CONFIG / RECSYS_TRAINING_CONFIG / RECSYS_SERVING_CONFIG; one run can override them in its run
config (`resources: {config_files: {config: {datagen: /path/to/experiment.yaml}}}`, the launchpad in the UI).

One setting shapes the asset graph: the training window (`window_days`), which sets how many training_events days
each model partition depends on (lineage and Declarative Automation). It is read once, when the code location
loads, from the same deployment file the runs read (`lineage_window_days`); a run whose training YAML says
otherwise (a launchpad override) is refused with both values named, never trained on another window than the graph
shows.
"""

from __future__ import annotations

import functools
import os
from typing import Literal

from dagster import ConfigurableResource, EnvVar
from pydantic import Field

from recsys_assets.config.datagen import DatagenSpec, load_datagen_spec
from recsys_assets.config.serving import ServingSpec, load_serving_spec
from recsys_assets.config.training import (
    DEFAULT_TRAINING_CONFIG_PATH,
    TrainingConfigError,
    TrainingSpec,
    load_training_spec,
)

ConfigKind = Literal["datagen", "training", "serving"]
ENV_VARS: dict[ConfigKind, str] = {
    "datagen": "RECSYS_DATAGEN_CONFIG",
    "training": "RECSYS_TRAINING_CONFIG",
    "serving": "RECSYS_SERVING_CONFIG",
}


def deployment_config_path(kind: ConfigKind) -> str:
    """The deployment's file of this kind (its environment variable), "" for the packaged one."""
    return os.environ.get(ENV_VARS[kind], "")


@functools.cache
def lineage_window_days() -> int:
    """The training window of this code location's asset graph: the deployment training YAML's window_days, read
    once at load."""
    return load_training_spec(deployment_config_path("training") or None).window_days


class ConfigFilesResource(ConfigurableResource):
    datagen: str = Field(default="", description="datagen YAML path; empty = the packaged datagen.yaml.")
    training: str = Field(default="", description="training YAML path; empty = the packaged training.yaml.")
    serving: str = Field(default="", description="serving YAML path; empty = the packaged serving.yaml.")

    @classmethod
    def from_env(cls) -> ConfigFilesResource:
        """The deployment's files: an EnvVar (resolved in the run, never stored) for each variable that is set."""
        return cls(**{k: EnvVar(v) if os.environ.get(v) else "" for k, v in ENV_VARS.items()})

    def datagen_spec(self) -> DatagenSpec:
        return load_datagen_spec(self.datagen or None)

    def serving_spec(self) -> ServingSpec:
        return load_serving_spec(self.serving or None)

    def training_spec(self) -> TrainingSpec:
        """The training YAML, refused when its window differs from the one the asset graph was built with."""
        spec = load_training_spec(self.training or None)
        lineage = lineage_window_days()
        if spec.window_days != lineage:
            loaded_from = deployment_config_path("training") or str(DEFAULT_TRAINING_CONFIG_PATH)
            raise TrainingConfigError(
                f"training config {self.training or DEFAULT_TRAINING_CONFIG_PATH} sets window_days {spec.window_days}, "
                f"but this code location's asset graph was loaded with window_days {lineage} (from {loaded_from}): "
                "its lineage and automation cover that many days. Set window_days in the deployment's training YAML "
                "(RECSYS_TRAINING_CONFIG) and reload the code location, rather than overriding it for one run"
            )
        return spec
