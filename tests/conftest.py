"""Test-wide setup: rewritten models are cached in a temporary folder, never in ~/.cache;
albumentations (a test reference) does not look for updates over the network."""
import os

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


@pytest.fixture(scope="session", autouse=True)
def _private_model_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONNXLENS_CACHE", str(tmp_path_factory.mktemp("onnxlens-cache")))
        yield
