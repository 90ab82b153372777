"""The model tests' data: small training_events partitions (tests/helpers.py) committed once per module."""

import pytest

from resources.store import DatasetStore
from tests.helpers import TRAIN_DAYS, VALID_DAY, populate


@pytest.fixture(scope="module")
def model_store(tmp_path_factory) -> DatasetStore:
    store = DatasetStore(str(tmp_path_factory.mktemp("model_data")))
    populate(store, [*TRAIN_DAYS, VALID_DAY])
    return store
