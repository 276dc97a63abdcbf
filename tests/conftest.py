"""Shared fixtures and helpers.

Markers (declared in pyproject.toml):
  fmnist  needs the Fashion-MNIST IDX files; skipped without them, *failed* when the environment
          sets CFEBM_REQUIRE_DATA=1 (as .ci/run does), so CI cannot pass by skipping.
  gpu     needs a CUDA device; skipped without one.
  slow    an end-to-end run of a few seconds; still in the default run (deselect with
          -m "not slow" while iterating).
"""

import os
from pathlib import Path

import pytest
import torch

from cfebm.config import ModelConfig

# Two CPU cores on CI and tiny tensors in tests: one intra-op thread is several times faster
# than two here. Set at import so that module-scoped fixtures run with it too.
torch.set_num_threads(1)

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def require_fashion_mnist() -> None:
    """Skip the calling test when Fashion-MNIST is missing, or fail it under
    CFEBM_REQUIRE_DATA=1, where a missing dataset is a broken setup and not a reason to skip."""
    missing = [f for f in FASHION_MNIST_FILES if not (FASHION_MNIST / f).is_file()]
    if not missing:
        return
    message = (f"Fashion-MNIST files missing from {FASHION_MNIST}: {', '.join(missing)} "
               "(apt-get install dataset-fashion-mnist)")
    if os.environ.get("CFEBM_REQUIRE_DATA") == "1":
        pytest.fail(message + "; CFEBM_REQUIRE_DATA=1 makes this a failure", pytrace=False)
    pytest.skip(message)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # Before any fixture runs, so a module fixture that loads the data never sees it missing.
    if item.get_closest_marker("fmnist"):
        require_fashion_mnist()
    if item.get_closest_marker("gpu") and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


@pytest.fixture
def tiny_model_cfg() -> ModelConfig:
    return ModelConfig(channels=4, image_channels=1, max_resolution=32)


@pytest.fixture
def fashion_mnist_available():
    require_fashion_mnist()
