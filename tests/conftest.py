import pytest
import torch

from cfebm.config import ModelConfig

# Two CPU cores on CI and tiny tensors in tests: one intra-op thread is several times faster
# than two here. Set at import so that module-scoped fixtures run with it too.
torch.set_num_threads(1)


@pytest.fixture
def tiny_model_cfg() -> ModelConfig:
    return ModelConfig(channels=4, image_channels=1, max_resolution=32)


@pytest.fixture
def fashion_mnist_available():
    from pathlib import Path

    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
