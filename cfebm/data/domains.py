"""The two image domains of unpaired image-to-image translation (Sec. 3.3, 4.3, A.9.1).

A translation run learns the energy of a *target* domain and starts its chains at images of a
*source* domain. ``[task] pair`` names the two domains A and B and ``[task] direction`` which way
the run goes ("ab": A is the source, B the target; "ba": the reverse). Pairs:

- ``"cyclegan"``: the folder layout of cat2dog, summer2winter, vangogh2photo, apple2orange and
  selfie2anime, ``data.root`` holding ``trainA``, ``trainB``, ``testA`` and ``testB`` (images
  anywhere below each). Every image is converted to gray or RGB, centre-cropped to a square and
  resized to the run's resolution with Lanczos (``readers.prepare_image``), so mixed sizes and
  aspect ratios are fine; images smaller than the resolution are refused.
- ``"sneaker2ankleboot"`` (Fashion-MNIST class 7 → 9), ``"tshirt2dress"`` (0 → 3) and any
  ``"fmnist:K,L"`` (class K → L): the classes of Fashion-MNIST's own train and test splits,
  zero-padded to 32 px as everywhere in cfebm.
- ``"grass2gravel"``: scikit-image's bundled 512×512 textures ``data.grass()`` (A) and
  ``data.gravel()`` (B), as crops of max(``TEXTURE_CROP``, 2R) px area-pooled to the
  resolution R (2× at 16², where grass blades and stones are still told apart). Crop
  positions are fixed by a seed: training crops lie in the top ``TEXTURE_TRAIN_ROWS`` rows,
  test crops below them, so no test pixel was ever trained on.

Every function returns uint8 ``ImageSet`` s at the run's top resolution, like ``load_images``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from cfebm.config import Config, DataConfig
from cfebm.data import readers
from cfebm.data.readers import CLASS_NAMES, DataError, resize_uint8
from cfebm.data.sets import ImageSet, LazyImages, TensorImages, match_channels, to_float

FMNIST_PAIRS = {"sneaker2ankleboot": (7, 9), "tshirt2dress": (0, 3)}
TEXTURE_PAIRS = {"grass2gravel": ("grass", "gravel")}
PAIRS = ("cyclegan", *FMNIST_PAIRS, *TEXTURE_PAIRS, "fmnist:K,L")
TEXTURE_CROP = 32            # side of a texture crop before pooling to the resolution (at least 2R)
TEXTURE_TRAIN_ROWS = 384     # crops of rows [0, 384) train, crops of rows [384, 512) test
TEXTURE_CROPS = {"train": 4096, "test": 512}


@dataclass(frozen=True)
class Domains:
    """The source and target images of one split, each uint8 (C, R, R), with their names."""

    source: ImageSet
    target: ImageSet
    source_name: str
    target_name: str


def domains(cfg: Config, split: str, resolution: int | None = None) -> Domains:
    """Source and target images of ``cfg``'s pair and direction for ``split`` ("train"/"test").

    ``resolution`` defaults to ``cfg.model.max_resolution``; channels follow the model. Raises a
    DataError (one line) for an unknown pair, a bad layout or missing files.
    """
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    resolution = resolution or cfg.model.max_resolution
    a, b = pair_images(cfg.task.pair, cfg.data, split, resolution, cfg.model.image_channels)
    names = domain_names(cfg.task.pair)
    if cfg.task.direction == "ba":
        a, b, names = b, a, names[::-1]
    return Domains(a, b, *names)


def domain_names(pair: str) -> tuple[str, str]:
    """Readable names of domains A and B, e.g. ("Sneaker", "Ankle boot")."""

    if pair in TEXTURE_PAIRS:
        return TEXTURE_PAIRS[pair]
    if pair == "cyclegan":
        return ("A", "B")
    k, m = fmnist_classes(pair)
    return CLASS_NAMES[k], CLASS_NAMES[m]


def fmnist_classes(pair: str) -> tuple[int, int]:
    """The Fashion-MNIST classes (A, B) of a Fashion-MNIST pair."""
    if pair in FMNIST_PAIRS:
        return FMNIST_PAIRS[pair]
    name, _, spec = pair.partition(":")
    parts = spec.split(",")
    if name != "fmnist" or len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise DataError(f"unknown translation pair {pair!r}; choose one of {', '.join(PAIRS)}")
    k, m = (int(p) for p in parts)
    if not (0 <= k <= 9 and 0 <= m <= 9 and k != m):
        raise DataError(f"pair {pair!r} needs two different Fashion-MNIST classes in 0..9")
    return k, m


def pair_images(pair: str, data: DataConfig, split: str, resolution: int,
                channels: int) -> tuple[ImageSet, ImageSet]:
    """Domain A and domain B images of ``split``, uint8 (C, R, R) each."""
    if pair == "cyclegan":  # both folders' layout first, then the images' sizes
        files = [cyclegan_files(data, split, d) for d in "AB"]
        return tuple(cyclegan_images(f, data, resolution, channels) for f in files)
    if pair in TEXTURE_PAIRS:
        return tuple(TensorImages(match_channels(texture_crops(name, split, resolution)
                                                  [:data.limit or None], channels), name=name)
                     for name in TEXTURE_PAIRS[pair])
    classes = fmnist_classes(pair)
    x, labels = readers.fashion_mnist(data.root, data.download, split, resolution)
    out = []
    for k in classes:
        keep = (labels == k).nonzero().squeeze(1)[:data.limit or None]
        out.append(TensorImages(match_channels(x[keep], channels), labels[keep],
                                name=f"fashion_mnist class {k}"))
    return tuple(out)


# ------------------------------------------------------------------------------------------------
# CycleGAN folders


def cyclegan_files(data: DataConfig, split: str, domain: str) -> readers.ImageFiles:
    """The image files of ``data.root/<split><domain>`` (e.g. ``trainA``), sorted, the first
    ``data.limit`` (0: all)."""
    if not data.root:
        raise DataError("pair 'cyclegan' needs data.root: a folder with trainA, trainB, testA "
                        "and testB")
    root = Path(data.root).expanduser()
    if not root.is_dir():
        raise DataError(f"CycleGAN folder {root} does not exist; check data.root")
    folder = root / f"{split}{domain}"
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(f"{folder} is missing: a CycleGAN folder holds trainA, trainB, testA and "
                        f"testB (found: {', '.join(present) or 'no folders'})")
    paths = sorted(p for p in folder.rglob("*")
                   if p.suffix.lower() in readers.IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        raise DataError(f"{folder} holds no images "
                        f"({'/'.join(readers.IMAGE_EXTENSIONS)})")
    return readers.ImageFiles(paths[:data.limit or None])


def cyclegan_images(files: readers.ImageFiles, data: DataConfig, resolution: int,
                    channels: int) -> LazyImages:
    """``files`` decoded lazily at ``resolution``; images smaller than it are refused."""
    readers.check_sizes(files, resolution, data.center_crop)
    return LazyImages(files, resolution=resolution, channels=channels,
                      name=str(files.paths[0].parent), center_crop=data.center_crop,
                      num_workers=data.num_workers)


# ------------------------------------------------------------------------------------------------
# scikit-image textures


def texture_crops(name: str, split: str, resolution: int) -> torch.Tensor:
    """``TEXTURE_CROPS[split]`` crops of the texture ``name`` as uint8 (N, 1, R, R).

    Crops are max(``TEXTURE_CROP``, 2R) px at positions drawn from a fixed seed per split, in
    rows [0, 384) for "train" and [384, 512) for "test", then area-pooled to R.
    """
    from skimage import data as skdata

    image = torch.from_numpy(getattr(skdata, name)())   # (512, 512) uint8, bundled
    side = max(TEXTURE_CROP, 2 * resolution)
    rows, cols = texture_positions(split, side, image.shape[0])
    crops = torch.stack([image[r:r + side, c:c + side] for r, c in zip(rows.tolist(),
                                                                        cols.tolist())])
    return resize_uint8(crops[:, None], resolution)


def texture_positions(split: str, side: int, size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners (rows (N,), cols (N,)) of the ``split``'s crops of ``side`` px in a
    ``size``-px texture: a fixed draw per split, whole crops inside its band of rows."""
    if side > size - TEXTURE_TRAIN_ROWS:
        raise DataError(f"texture pairs go up to {(size - TEXTURE_TRAIN_ROWS) // 2} px "
                        f"(crops of twice that fit the test rows), not {side // 2}")
    top, bottom = (0, TEXTURE_TRAIN_ROWS) if split == "train" else (TEXTURE_TRAIN_ROWS, size)
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    n = TEXTURE_CROPS[split]
    rows = torch.randint(top, bottom - side + 1, (n,), generator=g)
    return rows, torch.randint(0, size - side + 1, (n,), generator=g)


def grid_sources(cfg: Config, n: int) -> Tensor:
    """The first ``n`` source-domain test images at the top resolution, float (n, C, R, R)."""
    source = domains(cfg, "test").source
    return to_float(source.get_batch(torch.arange(min(n, len(source)))))
