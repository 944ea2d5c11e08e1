import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))


@pytest.fixture(scope="session")
def shared_models():
    path = os.path.join(SHARED, "models")
    if not os.path.isdir(path):
        pytest.skip("../shared/models not present")
    return path


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory):
    """Exports are cached per session; set ONNXPRUNE_ZOO_CACHE to keep them across runs."""
    cache = os.environ.get("ONNXPRUNE_ZOO_CACHE")
    if cache:
        os.makedirs(cache, exist_ok=True)
        return cache
    return str(tmp_path_factory.mktemp("zoo"))
