"""Training images: datasets by name, reproducible batches and the pixel conventions.

Every dataset is delivered as uint8 (C, R, R) at the run's top resolution R, with C = 1 (gray)
or 3 (RGB). The coarser stages of Zhao, Xie & Li, "Learning Energy-Based Generative Models via
Coarse-to-Fine Expanding and Sampling", ICLR 2021 (Sec. 3.1) see the same images 2x2
average-pooled: ``downsample(to_float(x), r)``. Float images are (N, C, H, W) in [-1, 1].

Small datasets (Fashion-MNIST, digits, CIFAR, SVHN, fake) are held in memory as a
``TensorImages``; folders, CelebA and LSUN are decoded per item by ``LazyImages``.
``BatchStream`` turns an image set and a seed into batches that depend only on the position in
the stream, so a resumed run sees exactly the data an uninterrupted one would have.

>>> images = load_images(DataConfig(dataset="fake", limit=64), split="train", resolution=16,
...                      image_channels=3)
>>> x = to_float(BatchStream(images, seed=0).batch(0, 8))   # (8, 3, 16, 16) in [-1, 1]
"""

from __future__ import annotations

import torch
from torch import Tensor

from cfebm.config import DataConfig
from cfebm.data import readers
from cfebm.data.cache import open_cache
from cfebm.data.readers import DataError
from cfebm.data.sets import (
    ImageSet,
    LazyImages,
    TensorImages,
    match_channels,
    to_uint8,
)
from cfebm.runtime import derived_seed

DATASETS = ("fashion_mnist", "mnist", "folder", "digits", "cifar10", "cifar100", "svhn", "celeba", "lsun",
            "fake")

# ------------------------------------------------------------------------------------------------
# Loading by name


SPLITS = ("train", "validation", "test")
VALIDATION_SHARE = 10  # the validation split holds at most 1/10 of the training files
FAKE_IMAGES = 512  # images per split of the fake dataset without data.limit


def held_out(n_files: int, validation: int) -> int:
    """How many of ``n_files`` training files the validation split holds: the last
    ``min(validation, n_files // VALIDATION_SHARE)`` (a small folder keeps most for training)."""
    return min(validation, n_files // VALIDATION_SHARE)


def load_images(cfg: DataConfig, *, split: str, resolution: int, image_channels: int) -> ImageSet:
    """Load one split of the dataset ``cfg.dataset`` at the run's top resolution.

    The dataset's training files are cut in two, deterministically: ``"validation"`` is their
    last ``held_out(n, cfg.validation)`` images, ``"train"`` the rest, so no validation image is
    ever trained on. In-training evaluation, the best checkpoint, the FID watch and any default
    tuned by a sweep read ``"validation"``; ``"test"`` (the dataset's own test files) is for the
    numbers reported. ``fake`` draws each split from its own seed.

    Args:
        cfg: which dataset, where its files are, ``limit``, ``validation``, ``subset`` (LSUN's
            category; for a labelled dataset the classes to keep, e.g. "0,2,4,6": every split
            then holds only their images, ``limit`` counting files before the choice) and
            ``center_crop`` (folder, CelebA, LSUN). ``hflip`` is the caller's:
            ``random_hflip``. ``cache``: read the same images from a folder ``cfebm prepare``
            wrote (cache.py).
        split: "train", "validation" or "test" (LSUN's test is its val set; a folder without
            train/ and test/ subfolders serves all of itself as the training files and as test).
        resolution: side R of the delivered images, a power of two >= 8.
        image_channels: 1 (gray) or 3 (RGB); gray datasets are replicated to RGB and colour
            ones converted with PIL's luma weights.

    Returns:
        An ImageSet of uint8 (C, R, R) images: the first ``cfg.limit`` of the split (0: all;
        the validation split is never cut by ``limit``).

    Raises:
        DataError (a ValueError): unknown dataset or split, a validation split with
            ``cfg.validation = 0``, bad resolution, files missing or unreadable, folder images
            smaller than ``resolution``, or an optional package missing; the message says what
            to do.
    """
    if cfg.dataset not in DATASETS:
        raise DataError(f"unknown dataset {cfg.dataset!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "validation" and cfg.validation == 0:
        raise DataError("data.validation = 0 holds out no validation images; set it > 0")
    if not isinstance(resolution, int) or resolution < 8 or resolution & (resolution - 1):
        raise DataError(f"resolution must be a power of two >= 8, got {resolution!r}")
    if image_channels not in (1, 3):
        raise DataError(f"image_channels must be 1 or 3, got {image_channels!r}")
    if cfg.cache:
        return open_cache(cfg, split=split, resolution=resolution, channels=image_channels)
    if cfg.dataset == "fake":
        n = cfg.limit or FAKE_IMAGES
        n = min(n, cfg.validation) if split == "validation" else n
        return TensorImages(fake_images(split, resolution, image_channels, n), name="fake")
    files, rows = ("test" if split == "test" else "train"), split_rows(cfg, split)
    name, root, download = cfg.dataset, cfg.root, cfg.download
    if name in ("folder", "celeba", "lsun"):
        if name == "folder":
            source = readers.image_files(root, files, rows)
            readers.check_sizes(source, resolution, cfg.center_crop)
        elif name == "celeba":
            source = readers.celeba(root, download, files, rows)
        else:
            source = readers.lsun(root, cfg.subset, files, rows)
        return LazyImages(source, resolution=resolution, channels=image_channels, name=name,
                          center_crop=cfg.center_crop, num_workers=cfg.num_workers)
    if name == "fashion_mnist":
        x, labels = readers.fashion_mnist(root, download, files, resolution, rows)
    elif name == "mnist":
        x, labels = readers.mnist(root, download, files, resolution, rows)
    elif name == "digits":
        x, labels = readers.digits(files, resolution, rows)
    elif name in ("cifar10", "cifar100"):
        x, labels = readers.cifar(root, download, files, resolution, rows,
                                  n_classes=10 if name == "cifar10" else 100)
    else:
        x, labels = readers.svhn(root, download, files, resolution, rows)
    if cfg.subset:
        keep = torch.isin(labels.long(), torch.tensor(classes_of(cfg.subset, name)))
        if not keep.any():
            raise DataError(f"the {split} split of {name} holds no image of classes "
                            f"{cfg.subset} (data.subset)")
        x, labels, name = x[keep], labels[keep], f"{name} classes {cfg.subset}"
    return TensorImages(match_channels(x, image_channels), labels, name=name)


def classes_of(subset: str, dataset: str) -> list[int]:
    """The class indices ``data.subset`` names for a labelled dataset: "0,2,4,6" -> [0, 2, 4, 6].
    Raises a DataError (one line) for anything else."""
    parts = [p.strip() for p in subset.split(",")]
    if not all(p.isdigit() for p in parts):
        raise DataError(f"data.subset for {dataset} is a list of class indices such as "
                        f"'0,2,4,6', got {subset!r}")
    return sorted({int(p) for p in parts})


def split_rows(cfg: DataConfig, split: str) -> readers.Rows:
    """Which of the n files of the dataset's own train or test split ``split`` holds: test, its
    first ``cfg.limit`` (0: all); validation, the last ``held_out(n, cfg.validation)`` training
    files; train, the first ``cfg.limit`` of the training files before those."""
    def rows(n: int) -> slice:
        if split == "test":
            return slice(0, cfg.limit or n)
        first_validation = n - held_out(n, cfg.validation)
        if split == "validation":
            return slice(first_validation, n)
        return slice(0, min(cfg.limit or first_validation, first_validation))
    return rows


def fake_images(split: str, resolution: int, channels: int, n: int) -> Tensor:
    """``n`` deterministic uint8 images (n, C, R, R) of three soft coloured blobs on a flat
    background, for smoke tests without data.

    Blob parameters live in resolution-free coordinates and image i only uses row i of one
    random draw, so image i is the same whatever ``n`` is; every split has its own seed.
    """
    g = torch.Generator().manual_seed({"train": 0, "test": 1, "validation": 2}[split])
    k = 3
    p = torch.rand(n, channels + k * (3 + channels), generator=g)  # one row per image
    background = p[:, :channels] * 2 - 1                        # (n, C)
    blobs = p[:, channels:].reshape(n, k, 3 + channels)
    centre = 0.1 + 0.8 * blobs[..., :2]                         # (n, k, 2) in [0.1, 0.9]
    width = 0.06 + 0.18 * blobs[..., 2]                         # (n, k)
    colour = blobs[..., 3:] * 2 - 1                             # (n, k, C)
    grid = (torch.arange(resolution) + 0.5) / resolution
    out = []
    for i in range(0, n, 64):  # bounds the (b, k, R, R) weights at large R
        j = slice(i, i + 64)
        dy = grid[None, None, :, None] - centre[j, :, 0, None, None]
        dx = grid[None, None, None, :] - centre[j, :, 1, None, None]
        weight = torch.exp(-(dy**2 + dx**2) / (2 * width[j, :, None, None] ** 2))  # (b, k, R, R)
        x = background[j, :, None, None] + torch.einsum(
            "bkhw,bkc->bchw", weight, colour[j] - background[j, None])
        out.append(to_uint8(x))
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------
# Reproducible batches


class BatchStream:
    """An endless stream of images in shuffled epochs, addressed by position.

    The k-th image drawn (k = 0, 1, ...) is ``images[perm_e[k % N]]`` with e = k // N and perm_e
    a permutation from a generator seeded by (seed, e). A batch therefore depends only on
    (seed, position, batch_size), never on the batches drawn before it, and may span epochs.
    """

    def __init__(self, images: ImageSet, seed: int):
        if len(images) == 0:
            raise DataError(f"cannot draw batches from the empty image set {images.name!r}")
        self.images, self.seed = images, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def permutation(self, epoch: int) -> Tensor:
        """The order (N,) of epoch ``epoch``; the latest one is cached."""
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(derived_seed("data", self.seed, epoch))
            self._epoch, self._perm = epoch, torch.randperm(len(self.images), generator=g)
        return self._perm

    def indices(self, position: int, batch_size: int) -> Tensor:
        """Dataset indices (B,) of the images drawn at positions [position, position + B)."""
        if position < 0 or batch_size < 0:
            raise ValueError(f"position and batch_size must be >= 0, got {position}, {batch_size}")
        n = len(self.images)
        k = torch.arange(position, position + batch_size)
        out = torch.empty_like(k)
        for epoch in range(position // n, (position + batch_size - 1) // n + 1):
            here = k // n == epoch
            out[here] = self.permutation(epoch)[k[here] % n]
        return out

    def batch(self, position: int, batch_size: int) -> Tensor:
        """uint8 (B, C, R, R): the images drawn at positions [position, position + B)."""
        return self.images.get_batch(self.indices(position, batch_size))
