"""A small Fashion-MNIST classifier, used as a domain-specific feature extractor.

Inception features are a poor fit for 28×28 grayscale clothing, and the Inception weights are not
always at hand; a small CNN trained on Fashion-MNIST gives a cheap "FMNIST-FID" (Fréchet distance
of its 128-d penultimate features) and a class-coverage check of generated samples. The weights
are trained by ``scripts/train_fmnist_classifier.py`` and committed as
``cfebm/weights/fmnist_classifier.safetensors``; ``cfebm.metrics.features.FMNISTFeatures`` loads
them.

Input convention (the same as the rest of cfebm): float images in [−1, 1] of shape (N, 1, 32, 32),
i.e. the 28×28 images zero-padded by 2 px on each side (the background is 0, i.e. −1 after
scaling). This module also holds a tiny reader for the IDX files Fashion-MNIST ships as.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

ARCHITECTURE = "fmnist-cnn-v1"   # stored in the weights' metadata; bump when the layers change
FEATURE_DIM = 128
N_CLASSES = 10
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


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
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    info = {**info, "architecture": ARCHITECTURE}
    save_file(state, str(path), metadata={_METADATA_KEY: json.dumps(info, sort_keys=True)})


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
# Fashion-MNIST IDX files

FMNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"   # Debian package dataset-fashion-mnist
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes into an array of its shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, found {array.size} bytes")
    return array.reshape(shape)


def load_fashion_mnist(
    split: str = "train", root: str | Path = FMNIST_DEFAULT_ROOT
) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST as cfebm sees it.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        root: folder holding the four ``*-ubyte.gz`` IDX files.

    Returns:
        ``(x, y)``: x float32 (N, 1, 32, 32) in [−1, 1], zero-padded 28→32 (2 px each side);
        y int64 (N,) class labels 0..9.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images_file, labels_file = (Path(root) / name for name in _FILES[split])
    images = torch.from_numpy(read_idx(images_file).copy())       # (N, 28, 28) uint8
    labels = torch.from_numpy(read_idx(labels_file).astype(np.int64))
    x = images.to(torch.float32).div(127.5).sub(1.0).unsqueeze(1)  # (N, 1, 28, 28) in [−1, 1]
    x = nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)             # background 0 maps to −1
    return x, labels
