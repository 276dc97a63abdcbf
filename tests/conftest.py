"""Shared fixtures and helpers.

Markers (declared in pyproject.toml):
  fmnist  needs the Fashion-MNIST IDX files; skipped without them, *failed* when the environment
          sets CFEBM_REQUIRE_DATA=1 (as .ci/run does), so CI cannot pass by skipping.
  gpu     needs a CUDA device; skipped without one.
  slow    an end-to-end run of a few seconds; still in the default run (deselect with
          -m "not slow" while iterating).
"""

import json
import os
import re
from pathlib import Path

import pytest
import torch

from cfebm.cli import main
from cfebm.config import Config, ModelConfig, apply_overrides, load_preset

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


def tiny(*overrides: str) -> Config:
    """The tiny preset (seconds on any machine, synthetic images) with ``--set``-style
    overrides, e.g. ``tiny("train.ema_decay=0.9", "sampler.init=frozen")``."""
    return apply_overrides(load_preset("tiny"), list(overrides))


def gaussian_energy(x: torch.Tensor, mu: float = 0.0, s: float = 1.0) -> torch.Tensor:
    """E(x) = ‖x − μ‖² / (2s²), (N, ...) -> (N,): the Gibbs density exp(−E) is N(μ, s² I)."""
    return ((x - mu) ** 2).flatten(1).sum(1) / (2 * s**2)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny preset trained to its end through the CLI (16², β = 1), once per session: a real
    model whose samples mean nothing. Tests read it; none writes into it."""
    run_dir = tmp_path_factory.mktemp("tiny-run")
    assert main(["train", "--preset", "tiny", "--run-dir", str(run_dir), "--no-progress"]) == 0
    return run_dir


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run) -> str:
    """The tiny run's final checkpoint (``tiny_run``), as a path string."""
    return str(tiny_run / "checkpoints" / "latest.pt")


def card_header(card: str) -> dict[str, str]:
    """A model card's machine-readable header: the `key: value` lines between its `---`
    fences (YAML as the Hub reads it, one line per key)."""
    block = re.match(r"---\n(.*?)\n---\n", card, re.DOTALL)
    assert block, "a model card opens with a --- header"
    return dict(line.split(": ", 1) for line in block.group(1).splitlines())


def card_config(card: str) -> dict:
    """The resolved config a model card states: the JSON block under its `## Config` heading."""
    block = re.search(r"\n## Config\n.*?```json\n(.*?)\n```", card, re.DOTALL)
    assert block, "a model card ends with its config as a ```json block under ## Config"
    return json.loads(block.group(1))
