"""A prepared image cache: every image decoded once into memory-mapped uint8 arrays.

``cfebm prepare`` runs ``data.load_images`` over a dataset once and writes, per split, one ``.npy``
array (N, C, r, r) per resolution r = 8, 16, …, R, the labels if any, and ``manifest.json``
with the SHA-256 of every file. Training then reads the top-resolution array through the page
cache instead of decoding and resizing files (``data.cache = DIR``); its images are those of
the direct loader, bit for bit, so a run is the same with and without the cache.

The coarser arrays are the top one 2×2 average-pooled and rounded to uint8 (``to_uint8``), for
tools that want small images (previews, references at a coarse stage). Training does not use
them: it pools the top resolution in float as always, since rounding would move the coarse
stages' pixels by up to half a grey level.

Resumable: the arrays are created at full size first, filled chunk by chunk, and
``progress.json`` records how many images of each split are written after every chunk; an
interrupted ``prepare`` continues from there. The manifest is written last, so a cache without
one is incomplete and never read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from cfebm.config import DataConfig
from cfebm.data.images import SPLITS, ImageSet, downsample, load_images, to_float, to_uint8
from cfebm.data.readers import DataError

FORMAT = "cfebm-image-cache-v1"
CHUNK = 256  # images decoded and written between progress records
# The DataConfig fields that decide which images a cache holds (not hflip, workers, download).
CONTENT_KEYS = ("dataset", "root", "subset", "center_crop", "limit", "validation")


def content_key(cfg: DataConfig, resolution: int, channels: int) -> dict:
    """What a cache must have been prepared from to stand in for ``load_images(cfg, …)``."""
    key = {k: getattr(cfg, k) for k in CONTENT_KEYS}
    key["root"] = str(Path(cfg.root).resolve()) if cfg.root else ""
    return {**key, "resolution": resolution, "channels": channels}


def resolutions_up_to(resolution: int) -> list[int]:
    return [2**k for k in range(3, resolution.bit_length())]


def _array_name(split: str, r: int) -> str:
    return f"{split}-{r}x{r}.npy"


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# Writing


def prepare(cfg: DataConfig, out: str | Path, *, resolution: int, channels: int,
            splits: Sequence[str] = SPLITS, progress: bool = True) -> Path:
    """Write the cache of ``cfg`` (R = ``resolution``, C = ``channels``) into ``out``.

    Continues an interrupted ``prepare`` of the same data in ``out``; refuses a folder that
    holds another dataset's cache. Returns the manifest's path.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source_cfg = dataclasses.replace(cfg, cache="")  # read the data itself, not a cache
    key = content_key(cfg, resolution, channels)
    progress_path, manifest_path = out / "progress.json", out / "manifest.json"
    for path in (progress_path, manifest_path):
        if path.exists() and json.loads(path.read_text()).get("key") != key:
            raise DataError(f"{out} holds a cache of other data ({path.name}); choose another "
                            "folder or delete it")
    if manifest_path.exists() and set(splits) <= set(json.loads(
            manifest_path.read_text())["splits"]):
        return manifest_path  # prepared already (open_cache checks the files)
    record = (json.loads(progress_path.read_text()) if progress_path.exists()
              else {"key": key, "done": {}})
    manifest = {"format": FORMAT, "key": key, "splits": {}}
    for split in splits:
        images = load_images(source_cfg, split=split, resolution=resolution,
                             image_channels=channels)
        _fill(images, out, split, record, progress_path, progress)
        manifest["splits"][split] = _describe(images, out, split)
    _write_json(manifest_path, manifest)
    progress_path.unlink(missing_ok=True)
    return manifest_path


def _fill(images: ImageSet, out: Path, split: str, record: dict, progress_path: Path,
          progress: bool) -> None:
    """Write ``images`` chunk by chunk from where ``record`` says this split stopped."""
    n, c, top = len(images), images.channels, images.resolution
    done = record["done"].get(split, 0)
    mode = "r+" if done else "w+"
    arrays = {r: np.lib.format.open_memmap(out / _array_name(split, r), mode=mode,
                                           dtype=np.uint8, shape=(n, c, r, r))
              for r in resolutions_up_to(top)}
    with tqdm(total=n, initial=done, unit="img", desc=f"prepare {split}",
              disable=not progress) as bar:
        for start in range(done, n, CHUNK):
            x = images.get_batch(torch.arange(start, min(start + CHUNK, n)))
            for r, array in arrays.items():
                pooled = x if r == top else to_uint8(downsample(to_float(x), r))
                array[start:start + len(x)] = pooled.numpy()
            for array in arrays.values():
                array.flush()
            record["done"][split] = start + len(x)
            _write_json(progress_path, record)  # after the data it counts is on disk
            bar.update(len(x))
    if images.labels is not None:
        np.save(out / f"{split}-labels.npy", images.labels.numpy())


def _describe(images: ImageSet, out: Path, split: str) -> dict:
    files = [_array_name(split, r) for r in resolutions_up_to(images.resolution)]
    if images.labels is not None:
        files.append(f"{split}-labels.npy")
    return {"n": len(images), "name": images.name,
            "sha256": {name: sha256(out / name) for name in files}}


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
    array = np.load(folder / _array_name(split, resolution), mmap_mode="r")
    labels_path = folder / f"{split}-labels.npy"
    labels = torch.from_numpy(np.load(labels_path)) if labels_path.is_file() else None
    return CachedImages(array, labels, name=entry["name"])
