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

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from cfebm.config import DataConfig
from cfebm.data import readers
from cfebm.data.readers import DataError
from cfebm.sampling import Slice, draw

__all__ = ["DATASETS", "SPLITS", "BatchStream", "DataError", "ImageSet", "LazyImages",
           "TensorImages", "downsample", "fake_images", "load_images", "random_hflip", "to_float",
           "to_uint8"]

DATASETS = ("fashion_mnist", "folder", "digits", "cifar10", "cifar100", "svhn", "celeba", "lsun",
            "fake")

# ------------------------------------------------------------------------------------------------
# Pixel conventions


def to_float(x: Tensor) -> Tensor:
    """uint8 images -> float32 in [-1, 1]: x / 127.5 - 1."""
    return x.float() / 127.5 - 1


def to_uint8(x: Tensor) -> Tensor:
    """Float images in [-1, 1] -> uint8: round((clamp(x, -1, 1) + 1) * 127.5)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def downsample(x: Tensor, resolution: int) -> Tensor:
    """Average-pool (N, C, R, R) to (N, C, r, r); R / r must be a power of two (r == R: x)."""
    size = x.shape[-1]
    factor = size // resolution if resolution >= 1 else 0
    if x.shape[-2] != size or factor < 1 or factor * resolution != size or factor & (factor - 1):
        raise ValueError(f"cannot downsample {tuple(x.shape[-2:])} images to {resolution}x"
                         f"{resolution}: needs square images and a power-of-two factor")
    return x if factor == 1 else F.avg_pool2d(x, factor)


def random_hflip(x: Tensor, generator: torch.Generator | Slice) -> Tensor:
    """Mirror each image of (N, C, H, W) left-right with probability 1/2, drawn from generator."""
    flip = draw(torch.rand, (x.shape[0],), generator, generator.device) < 0.5
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


def _match_channels(x: Tensor, channels: int) -> Tensor:
    """uint8 (N, C, H, W) -> ``channels``: gray is replicated, RGB -> L uses PIL's luma."""
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    w = torch.tensor([19595, 38470, 7471], dtype=torch.int32)  # ITU-R 601-2 / 2^16, as PIL
    luma = (x.int() * w[:, None, None]).sum(1, keepdim=True)
    return ((luma + 0x8000) >> 16).to(torch.uint8)


# ------------------------------------------------------------------------------------------------
# Image sets


class ImageSet(torch.utils.data.Dataset):
    """Images as uint8 (C, R, R); ``labels`` is a LongTensor (N,) or None."""

    def __init__(self, *, resolution: int, channels: int, name: str,
                 labels: Tensor | None = None):
        self.resolution, self.channels, self.name, self.labels = resolution, channels, name, labels

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> Tensor:
        raise NotImplementedError

    def get_batch(self, indices: Tensor) -> Tensor:
        """Images ``indices`` (B,) as uint8 (B, C, R, R), in order."""
        return _stack([self[i] for i in indices.tolist()], self)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, n={len(self)}, "
                f"{self.channels}x{self.resolution}x{self.resolution})")


def _stack(items: list[Tensor], images: ImageSet) -> Tensor:
    if not items:
        return torch.empty(0, images.channels, images.resolution, images.resolution,
                           dtype=torch.uint8)
    return torch.stack(items)


class TensorImages(ImageSet):
    """An image set held in memory as one uint8 tensor (N, C, R, R)."""

    def __init__(self, images: Tensor, labels: Tensor | None = None, *, name: str = "tensor"):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3) \
                or images.shape[2] != images.shape[3]:
            raise ValueError(f"TensorImages wants uint8 (N, 1|3, R, R), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if labels is not None and labels.shape != (len(images),):
            raise ValueError(f"{len(images)} images but labels of shape {tuple(labels.shape)}")
        super().__init__(resolution=images.shape[-1], channels=images.shape[1], name=name,
                         labels=None if labels is None else labels.long())
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]

    def get_batch(self, indices: Tensor) -> Tensor:
        return self.images[indices]


class LazyImages(ImageSet):
    """Images decoded on access from a sequence of PIL images (files, LMDB records).

    Each is converted to "L" or "RGB", centre-cropped to ``center_crop`` px if set, then to a
    square, and resized to ``resolution`` with PIL's Lanczos filter. ``get_batch`` decodes on
    ``num_workers`` threads (0: in the caller); the result is in order and deterministic.
    """

    def __init__(self, source: Sequence[Image.Image], *, resolution: int, channels: int,
                 name: str, center_crop: int = 0, num_workers: int = 0):
        super().__init__(resolution=resolution, channels=channels, name=name)
        self.source, self.center_crop, self.num_workers = source, center_crop, num_workers

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> Tensor:
        return readers.prepare_image(self.source[int(i)], mode="L" if self.channels == 1 else
                                      "RGB", resolution=self.resolution,
                                      center_crop=self.center_crop)

    def get_batch(self, indices: Tensor) -> Tensor:
        indices = indices.tolist()
        if self.num_workers == 0 or len(indices) < 2:
            return _stack([self[i] for i in indices], self)
        with ThreadPoolExecutor(min(self.num_workers, len(indices))) as pool:
            return _stack(list(pool.map(self.__getitem__, indices)), self)


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
        cfg: which dataset, where its files are, ``limit``, ``validation``, ``subset`` (LSUN
            category) and ``center_crop`` (folder, CelebA, LSUN). ``hflip`` is the caller's:
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
        from cfebm.data.cache import open_cache  # cache.py builds on this module

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
    elif name == "digits":
        x, labels = readers.digits(files, resolution, rows)
    elif name in ("cifar10", "cifar100"):
        x, labels = readers.cifar(root, download, files, resolution, rows,
                                  n_classes=10 if name == "cifar10" else 100)
    else:
        x, labels = readers.svhn(root, download, files, resolution, rows)
    return TensorImages(_match_channels(x, image_channels), labels, name=name)


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


def _epoch_seed(seed: int, epoch: int) -> int:
    digest = hashlib.blake2b(f"cfebm-data:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


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
            g = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
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
