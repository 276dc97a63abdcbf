"""Reading a prepared image cache (``cfebm prepare``, ``data.prepare``): the top-resolution
array of a split, memory-mapped, after checking that the cache was prepared from the same data
and that its files match their checksums.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cfebm.config import DataConfig
from cfebm.data.readers import DataError
from cfebm.data.sets import ImageSet

FORMAT = "cfebm-image-cache-v1"
# The DataConfig fields that decide which images a cache holds (not hflip, workers, download).
CONTENT_KEYS = ("dataset", "root", "subset", "center_crop", "limit", "validation")


def content_key(cfg: DataConfig, resolution: int, channels: int) -> dict:
    """What a cache must have been prepared from to stand in for ``load_images(cfg, …)``."""
    key = {k: getattr(cfg, k) for k in CONTENT_KEYS}
    key["root"] = str(Path(cfg.root).resolve()) if cfg.root else ""
    return {**key, "resolution": resolution, "channels": channels}


def resolutions_up_to(resolution: int) -> list[int]:
    return [2**k for k in range(3, resolution.bit_length())]


def array_name(split: str, r: int) -> str:
    return f"{split}-{r}x{r}.npy"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# Writing


# ------------------------------------------------------------------------------------------------
# Reading


class CachedImages(ImageSet):
    """The top-resolution array of a prepared cache, memory-mapped: uint8 (C, R, R) items."""

    def __init__(self, array: np.ndarray, labels: Tensor | None, name: str):
        super().__init__(resolution=array.shape[-1], channels=array.shape[1], name=name,
                         labels=labels)
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> Tensor:
        return torch.from_numpy(np.array(self.array[int(i)]))

    def get_batch(self, indices: Tensor) -> Tensor:
        return torch.from_numpy(self.array[indices.numpy()])


def open_cache(cfg: DataConfig, *, split: str, resolution: int, channels: int) -> CachedImages:
    """The images of ``split`` from the cache in ``cfg.cache``, after checking that it was
    prepared from ``cfg``'s data at this resolution and that its files match their checksums."""
    folder = Path(cfg.cache)
    manifest_path = folder / "manifest.json"
    hint = f"run `cfebm prepare` with this config and --out {folder}"
    if not manifest_path.is_file():
        raise DataError(f"no prepared cache in {folder} (manifest.json missing); {hint}")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise DataError(f"{manifest_path} is not a cfebm image cache")
    if manifest["key"] != content_key(cfg, resolution, channels):
        raise DataError(f"the cache in {folder} was prepared from other data or another "
                        f"resolution ({manifest['key']}); {hint}")
    if split not in manifest["splits"]:
        raise DataError(f"the cache in {folder} has no {split!r} split; {hint}")
    entry = manifest["splits"][split]
    for name, digest in entry["sha256"].items():
        if not (folder / name).is_file() or sha256(folder / name) != digest:
            raise DataError(f"{folder / name} is missing or does not match its checksum in "
                            f"manifest.json; {hint} again")
    array = np.load(folder / array_name(split, resolution), mmap_mode="r")
    labels_path = folder / f"{split}-labels.npy"
    labels = torch.from_numpy(np.load(labels_path)) if labels_path.is_file() else None
    return CachedImages(array, labels, name=entry["name"])
