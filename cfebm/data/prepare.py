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
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cfebm.config import DataConfig
from cfebm.data.cache import FORMAT, array_name, content_key, resolutions_up_to, sha256
from cfebm.data.images import SPLITS, load_images
from cfebm.data.readers import DataError
from cfebm.data.sets import ImageSet, to_float, to_uint8
from cfebm.sampling import downsample

CHUNK = 256  # images decoded and written between progress records


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


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
    arrays = {r: np.lib.format.open_memmap(out / array_name(split, r), mode=mode,
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
    files = [array_name(split, r) for r in resolutions_up_to(images.resolution)]
    if images.labels is not None:
        files.append(f"{split}-labels.npy")
    return {"n": len(images), "name": images.name,
            "sha256": {name: sha256(out / name) for name in files}}
