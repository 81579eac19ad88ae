import numpy as np
import pytest

import dlc


@pytest.fixture(autouse=True)
def fresh_store():
    """Each test starts with an empty default parameter store."""
    dlc.reset_default_store()
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)
