"""A small Fashion-MNIST classifier, used as a domain-specific feature extractor.

Inception features are a poor fit for 28×28 grayscale clothing, and the Inception weights are not
always at hand; a small CNN trained on Fashion-MNIST gives a cheap "FMNIST-FID" (Fréchet distance
of its 128-d penultimate features) and a class-coverage check of generated samples. The weights
are trained by ``scripts/train_fmnist_classifier.py`` and committed as
``cfebm/weights/fmnist_classifier.safetensors``; ``cfebm.metrics.features.FMNISTFeatures`` loads
them.

Input convention (the same as the rest of cfebm): float images in [−1, 1] of shape (N, 1, 32, 32),
i.e. the 28×28 images zero-padded by 2 px on each side (the background is 0, i.e. −1 after
scaling), as ``cfebm.data.load_images`` delivers Fashion-MNIST at 32 px.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save
from torch import Tensor, nn

from cfebm.config import DataConfig
from cfebm.data import load_images, to_float
from cfebm.data.readers import (  # noqa: F401 (re-exported: read_idx, CLASS_NAMES)
    CLASS_NAMES,
    DEBIAN_FASHION_MNIST,
    read_idx,
)
from cfebm.files import atomic_write

ARCHITECTURE = "fmnist-cnn-v1"   # stored in the weights' metadata; bump when the layers change
FEATURE_DIM = 128
N_CLASSES = 10


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3×3 conv, batch norm, ReLU, 2×2 max pool (halves the side)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class FMNISTClassifier(nn.Module):
    """Three conv blocks (32→16→8→4 px) and a 128-d penultimate layer; about 155k parameters.

    ``features(x)`` returns the penultimate activations (N, 128) (after ReLU, ≥ 0);
    ``forward(x)`` returns class logits (N, 10).
    """

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(_conv_block(1, 16), _conv_block(16, 32), _conv_block(32, 64))
        self.fc = nn.Linear(64 * 4 * 4, FEATURE_DIM)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(FEATURE_DIM, N_CLASSES)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features (N, 128) of images (N, 1, 32, 32) in [−1, 1]."""
        h = self.blocks(x).flatten(1)   # (N, 64·4·4)
        return torch.relu(self.fc(h))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(x)))


# ------------------------------------------------------------------------------------------------
# Weights file: safetensors (no pickle), training info as one sorted-JSON metadata entry.
# safetensors writes a multi-key metadata map in a per-process random order, so a single key
# keeps the file byte-for-byte reproducible.

_METADATA_KEY = "cfebm"


def save_classifier(net: FMNISTClassifier, path: str | Path, info: dict) -> None:
    """Write ``net``'s weights and ``info`` (JSON-serialisable; ``architecture`` is added)."""
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    metadata = {_METADATA_KEY: json.dumps({**info, "architecture": ARCHITECTURE}, sort_keys=True)}
    atomic_write(path, lambda f: f.write(save(state, metadata=metadata)))


def load_classifier(path: str | Path) -> tuple[FMNISTClassifier, dict]:
    """Read a file written by ``save_classifier``: (network in eval mode, info dict)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    info = json.loads(metadata.get(_METADATA_KEY, "{}"))
    if info.get("architecture") != ARCHITECTURE:
        raise ValueError(
            f"{path} holds architecture {info.get('architecture')!r}, expected {ARCHITECTURE!r}"
        )
    net = FMNISTClassifier()
    net.load_state_dict(load_file(str(path)))
    return net.eval(), info


# ------------------------------------------------------------------------------------------------
# Fashion-MNIST, read through cfebm.data (the IDX reader is ``cfebm.data.readers.read_idx``)

FMNIST_DEFAULT_ROOT = str(DEBIAN_FASHION_MNIST)   # Debian package dataset-fashion-mnist


def load_fashion_mnist(
    split: str = "train", root: str | Path = FMNIST_DEFAULT_ROOT
) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST as cfebm sees it (``cfebm.data.load_images`` at 32 px, never downloading).

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        root: folder holding the four ``*-ubyte[.gz]`` IDX files.

    Returns:
        ``(x, y)``: x float32 (N, 1, 32, 32) in [−1, 1], zero-padded 28→32 (2 px each side);
        y int64 (N,) class labels 0..9.
    """
    data = DataConfig(dataset="fashion_mnist", root=str(root), download=False)
    images = load_images(data, split=split, resolution=32, image_channels=1)
    return to_float(images.get_batch(torch.arange(len(images)))), images.labels
