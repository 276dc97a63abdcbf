"""Image sets and the pixel conventions: uint8 (C, R, R) items at the run's top resolution R, with
C = 1 (gray) or 3 (RGB); float images (N, C, H, W) in [-1, 1] (``to_float``, ``to_uint8``).

Small datasets are held in memory as a ``TensorImages``; folders, CelebA and LSUN are decoded
per item by ``LazyImages``; a prepared cache is memory-mapped (``cache.CachedImages``).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image
from torch import Tensor

from cfebm.data import readers
from cfebm.sampling import Slice, draw

# Pixel conventions


def to_float(x: Tensor) -> Tensor:
    """uint8 images -> float32 in [-1, 1]: x / 127.5 - 1."""
    return x.float() / 127.5 - 1


def to_uint8(x: Tensor) -> Tensor:
    """Float images in [-1, 1] -> uint8: round((clamp(x, -1, 1) + 1) * 127.5)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def random_hflip(x: Tensor, generator: torch.Generator | Slice) -> Tensor:
    """Mirror each image of (N, C, H, W) left-right with probability 1/2, drawn from generator."""
    flip = draw(torch.rand, (x.shape[0],), generator, generator.device) < 0.5
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


def match_channels(x: Tensor, channels: int) -> Tensor:
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
