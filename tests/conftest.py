import os

import numpy as np
import pytest
from hypothesis import settings

import dlc

# CI replays the same examples every run (a red build must be reproducible); locally hypothesis explores.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def fresh_store():
    """Each test starts with an empty default parameter store."""
    dlc.reset_default_store()
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)
