"""Tests for cfebm.data (images and readers): real Fashion-MNIST, generated files in each on-disk
format, and pooling to coarse resolutions. Batch streams and pixel conversions are in
test_data_stream.py."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cfebm.config import Config, DataConfig, apply_overrides
from cfebm.data import (
    DataError,
    LazyImages,
    downsample,
    load_images,
    readers,
    to_float,
    to_uint8,
)

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _cfg(**kw) -> DataConfig:
    return DataConfig(**{"download": False, **kw})


def _write_idx(path: Path, a: np.ndarray) -> None:
    raw = b"\0\0\x08" + bytes([a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    n, c, h, w = a.shape
    return a.reshape(n, c, h // f, f, w // f, f).mean(axis=(3, 5))


# ------------------------------------------------------------------------------------------------
# Real Fashion-MNIST (the Debian package)

needs_fmnist = pytest.mark.fmnist  # skipped without the files, failed under CFEBM_REQUIRE_DATA=1


@pytest.fixture(scope="module")
def fmnist_train():
    return load_images(_cfg(), split="train", resolution=32, image_channels=1)


def _raw_fmnist(prefix: str) -> np.ndarray:
    """Fashion-MNIST's images (N, 28, 28), read here without the library's parser."""
    with gzip.open(FMNIST / f"{prefix}-images-idx3-ubyte.gz") as f:
        data = f.read()
    return np.frombuffer(data, np.uint8, offset=16).reshape(-1, 28, 28)


@needs_fmnist
def test_fashion_mnist_sizes_labels_and_pixels(fmnist_train):
    test = load_images(_cfg(), split="test", resolution=32, image_channels=1)
    validation = load_images(_cfg(), split="validation", resolution=32, image_channels=1)
    assert (len(fmnist_train), len(validation), len(test)) == (55000, 5000, 10000)
    assert fmnist_train.images.shape == (55000, 1, 32, 32)
    assert fmnist_train.images.dtype == torch.uint8
    both = torch.cat([fmnist_train.labels, validation.labels])
    assert both.bincount().tolist() == [6000] * 10
    assert test.labels.bincount().tolist() == [1000] * 10
    # The interior is the raw file, byte for byte: train its first 55,000 images, validation
    # the last 5,000, so no validation image is trained on.
    assert np.array_equal(test.images[:, 0, 2:30, 2:30].numpy(), _raw_fmnist("t10k"))
    raw = _raw_fmnist("train")
    assert np.array_equal(fmnist_train.images[:, 0, 2:30, 2:30].numpy(), raw[:55000])
    assert np.array_equal(validation.images[:, 0, 2:30, 2:30].numpy(), raw[55000:])
    whole = load_images(_cfg(validation=0), split="train", resolution=32, image_channels=1)
    assert len(whole) == 60000


@needs_fmnist
def test_fashion_mnist_padding_is_background(fmnist_train):
    x = to_float(fmnist_train.images[:5000])
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (x[..., border] == -1).all()
    assert (x[..., ~border] > -1).any()


@needs_fmnist
def test_fashion_mnist_pooled_resolution_is_block_mean(fmnist_train):
    x32 = fmnist_train.images[:2000]
    x16 = load_images(_cfg(limit=2000), split="train", resolution=16, image_channels=1).images
    assert np.array_equal(x16.numpy(), np.round(_block_mean(x32.numpy().astype(np.float64), 2)))
    expected = _block_mean(to_float(x32).double().numpy(), 2)
    assert np.allclose(downsample(to_float(x32), 16).numpy(), expected, atol=1e-6)
    x3 = load_images(_cfg(limit=10), split="train", resolution=64, image_channels=3)
    assert x3.images.shape == (10, 3, 64, 64)
    assert torch.equal(x3.images[:, 0], x3.images[:, 2])


def test_fashion_mnist_reads_root_before_system_copy(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8), np.arange(7, dtype=np.uint8) % 10
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", x)
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", y)
    images = load_images(_cfg(root=str(tmp_path)), split="test", resolution=32, image_channels=1)
    assert len(images) == 7 and images.labels.tolist() == y.tolist()
    assert np.array_equal(images.images[:, 0, 2:30, 2:30].numpy(), x)


def test_mnist_reads_its_own_files_not_fashion_mnists(tmp_path, monkeypatch):
    """MNIST's IDX files under root/MNIST/raw are read (padded to 32 px like Fashion-MNIST's);
    a root holding only Fashion-MNIST files is not taken for MNIST."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), np.arange(6, dtype=np.uint8)
    for name, images in (("MNIST", x), ("FashionMNIST", 255 - x)):
        raw = tmp_path / name / "raw"
        raw.mkdir(parents=True)
        _write_idx(raw / "train-images-idx3-ubyte", images)
        _write_idx(raw / "train-labels-idx1-ubyte", y)
    cfg = _cfg(dataset="mnist", root=str(tmp_path), validation=0)
    digits = load_images(cfg, split="train", resolution=32, image_channels=1)
    assert np.array_equal(digits.images[:, 0, 2:30, 2:30].numpy(), x)
    assert digits.labels.tolist() == y.tolist() and digits.images[:, :, :2].sum() == 0
    only_fashion = tmp_path / "only"
    (tmp_path / "FashionMNIST").rename(only_fashion)
    with pytest.raises(DataError, match="MNIST train-"):
        load_images(_cfg(dataset="mnist", root=str(only_fashion)), split="train",
                    resolution=32, image_channels=1)


def test_a_class_subset_keeps_those_classes_in_every_split(tmp_path):
    """data.subset="1,3" keeps exactly the images labelled 1 or 3, in file order, in train,
    validation and test; a subset of absent classes or of words is one line of error, and
    --set takes a lone class as text."""
    rng = np.random.default_rng(3)
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    files = {}
    for prefix, n in (("train", 40), ("t10k", 12)):
        x, y = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 5, n, np.uint8)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", x)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", y)
        files[prefix] = x, y
    cfg = _cfg(root=str(tmp_path), validation=4, subset="3,1")
    train_x, train_y = files["train"]
    expect = {"train": (train_x[:36], train_y[:36]), "validation": (train_x[36:], train_y[36:]),
              "test": files["t10k"]}
    for split, (x, y) in expect.items():
        keep = np.isin(y, [1, 3])
        images = load_images(cfg, split=split, resolution=32, image_channels=1)
        assert images.labels.tolist() == y[keep].tolist()
        assert np.array_equal(images.images[:, 0, 2:30, 2:30].numpy(), x[keep])
    with pytest.raises(DataError, match="holds no image of classes 9"):
        load_images(_cfg(root=str(tmp_path), subset="9"), split="test", resolution=32,
                    image_channels=1)
    with pytest.raises(DataError, match="list of class indices"):
        load_images(_cfg(root=str(tmp_path), subset="tops"), split="test", resolution=32,
                    image_channels=1)
    assert apply_overrides(Config(), ["data.subset=7"]).data.subset == "7"
    assert apply_overrides(Config(), ["data.subset=0,2"]).data.subset == "0,2"


def test_fashion_mnist_missing_files(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="data.download=true"):
        load_images(_cfg(root=str(tmp_path)), split="train", resolution=32, image_channels=1)


# ------------------------------------------------------------------------------------------------
# IDX parser


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_read_idx_round_trip(tmp_path, name):
    a = np.random.default_rng(1).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    _write_idx(tmp_path / name, a)
    assert np.array_equal(readers.read_idx(tmp_path / name), a)


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: b"\x01\x00" + b[2:], "magic"),
    (lambda b: b[:2] + b"\x0d" + b[3:], "0x0d"),
    (lambda b: b[:-1], "truncated"),
])
def test_read_idx_rejects_corrupt_files(tmp_path, corrupt, message):
    _write_idx(tmp_path / "a", np.zeros((2, 3), np.uint8))
    (tmp_path / "a").write_bytes(corrupt((tmp_path / "a").read_bytes()))
    with pytest.raises(DataError, match=message):
        readers.read_idx(tmp_path / "a")


# ------------------------------------------------------------------------------------------------
# Image folders


@pytest.fixture
def image_folder(tmp_path):
    (tmp_path / "a" / "sub").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    Image.new("RGBA", (20, 20), (0, 255, 0, 128)).save(tmp_path / "a" / "sub" / "x.png")
    Image.new("RGB", (16, 16), (200, 100, 0)).save(tmp_path / "a" / "y.JPG", quality=95)
    gray = np.full((20, 30), 50, np.uint8)
    gray[:, :5] = gray[:, 25:] = 255  # outside the centred 20x20 square
    Image.fromarray(gray).save(tmp_path / "b" / "z.png")
    pal = Image.new("P", (12, 12), 3)
    pal.putpalette([0, 0, 0] * 3 + [10, 20, 30] + [0, 0, 0] * 252)
    pal.save(tmp_path / "b" / "zz.png", transparency=0)
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_folder_shapes_order_and_modes(image_folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = load_images(_cfg(dataset="folder", root=str(image_folder)), split="train",
                          resolution=8, image_channels=3)
        gray = load_images(_cfg(dataset="folder", root=str(image_folder)), split="test",
                           resolution=8, image_channels=1)
        x, g = rgb.get_batch(torch.arange(4)), gray.get_batch(torch.arange(4))
    assert [p.relative_to(image_folder).as_posix() for p in rgb.source.paths] == [
        "a/sub/x.png", "a/y.JPG", "b/z.png", "b/zz.png"]
    assert x.shape == (4, 3, 8, 8) and g.shape == (4, 1, 8, 8) and rgb.labels is None
    expected = torch.tensor([[0, 255, 0], [200, 100, 0], [50, 50, 50], [10, 20, 30]])
    assert (x.int() - expected[:, :, None, None]).abs().amax() <= 3  # 3 for the JPEG only
    assert (x[[0, 2, 3]].int() == expected[[0, 2, 3], :, None, None]).all()
    assert (g[0] == 150).all() and (g[2] == 50).all()  # 150: PIL's luma of pure green


def test_folder_center_crop_and_split_subfolders(tmp_path):
    for split, n in (("train", 3), ("test", 1)):
        (tmp_path / split).mkdir()
        for i in range(n):
            a = np.full((24, 24, 3), 255, np.uint8)
            a[6:18, 6:18] = 80
            Image.fromarray(a).save(tmp_path / split / f"{i}.png")
    cfg = _cfg(dataset="folder", root=str(tmp_path), center_crop=12)
    train = load_images(cfg, split="train", resolution=8, image_channels=3)
    test = load_images(cfg, split="test", resolution=8, image_channels=3)
    assert (len(train), len(test)) == (3, 1)
    assert (train[0] == 80).all()
    uncropped = load_images(_cfg(dataset="folder", root=str(tmp_path)), split="test",
                            resolution=8, image_channels=3)
    assert (uncropped[0] == 255).any()


def test_folder_threads_keep_order_and_bad_file_is_named(image_folder):
    source = readers.image_files(str(image_folder), "train")
    serial = LazyImages(source, resolution=8, channels=3, name="folder")
    threaded = LazyImages(source, resolution=8, channels=3, name="folder", num_workers=2)
    idx = torch.tensor([3, 0, 2, 0, 1])
    assert torch.equal(threaded.get_batch(idx), torch.stack([serial[i] for i in idx]))
    (image_folder / "b" / "zzz.png").write_bytes(b"this is not a png")
    broken = load_images(_cfg(dataset="folder", root=str(image_folder)), split="train",
                         resolution=8, image_channels=3)
    with pytest.raises(DataError, match="zzz.png"):
        broken[4]


def test_folder_images_smaller_than_the_resolution_are_refused(image_folder):
    # zz.png is 12x12: serving it at 16x16 would upsample it without a word.
    with pytest.raises(DataError, match=r"1 of 4 images are smaller than the 16x16.*zz.png, 12x12"):
        load_images(_cfg(dataset="folder", root=str(image_folder)), split="train", resolution=16,
                    image_channels=1)
    with pytest.raises(DataError, match="4 of 4 images"):  # the crop makes them all 8 px
        load_images(_cfg(dataset="folder", root=str(image_folder), center_crop=8), split="train",
                    resolution=16, image_channels=1)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no images"):
        load_images(_cfg(dataset="folder", root=str(tmp_path)), split="train", resolution=8,
                    image_channels=3)
    for root in ("", str(tmp_path / "missing")):
        with pytest.raises(DataError, match="data.root"):
            load_images(_cfg(dataset="folder", root=root), split="train", resolution=8,
                        image_channels=3)


# ------------------------------------------------------------------------------------------------
# digits and fake


def test_digits_split_values_and_labels():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train = load_images(_cfg(dataset="digits"), split="train", resolution=8, image_channels=1)
    test = load_images(_cfg(dataset="digits"), split="test", resolution=8, image_channels=1)
    validation = load_images(_cfg(dataset="digits"), split="validation", resolution=8,
                             image_channels=1)
    # a tenth of the 1,500 training files is held out, from their end
    assert (len(train), len(validation), len(test)) == (1350, 150, 297)
    assert np.array_equal(train.images[:, 0].numpy(), np.rint(bunch.images[:1350] * 255 / 16))
    assert validation.labels.tolist() == bunch.target[1350:1500].tolist()
    assert np.array_equal(test.images[:, 0].numpy(), np.rint(bunch.images[1500:] * 255 / 16))
    assert test.labels.tolist() == bunch.target[1500:].tolist()
    big = load_images(_cfg(dataset="digits", limit=20), split="train", resolution=32,
                      image_channels=3)
    assert big.images.shape == (20, 3, 32, 32)
    assert abs(big.images.float().mean() - train.images[:20].float().mean()) < 2


def test_digits_without_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match="pip install scikit-learn"):
        load_images(_cfg(dataset="digits"), split="train", resolution=8, image_channels=1)


def test_fake_is_deterministic_and_splits_differ():
    def load(split, limit=0, resolution=16):
        return load_images(_cfg(dataset="fake", limit=limit), split=split,
                           resolution=resolution, image_channels=3).images

    train = load("train")
    assert train.shape == (512, 3, 16, 16) and train.dtype == torch.uint8
    assert torch.equal(train, load("train"))
    assert torch.equal(load("train", limit=40), train[:40])
    assert not torch.equal(load("test"), train)
    assert train.float().std(dim=(2, 3)).min() > 1  # no flat images
    # Blobs are resolution-free: the 32 px images pool to the 16 px ones (up to rounding).
    pooled = to_uint8(downsample(to_float(load("train", 64, 32)), 16))
    assert (pooled.int() - train[:64].int()).abs().float().mean() < 1.5


# ------------------------------------------------------------------------------------------------
# CIFAR and SVHN, on generated files in the real formats


def _write_cifar(root: Path, n_classes: int, rng) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / ("cifar-10-batches-py" if n_classes == 10 else "cifar-100-python")
    folder.mkdir()
    names = ([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if n_classes == 10
             else ["train", "test"])
    key = b"labels" if n_classes == 10 else b"fine_labels"
    written = {}
    for name in names:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels = rng.integers(0, n_classes, 4).tolist()
        batch = {b"batch_label": b"generated", b"data": data, key: labels}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))  # as the originals
        written[name] = data, labels
    return written


@pytest.mark.parametrize("n_classes", [10, 100])
def test_cifar_round_trips_pixels(tmp_path, n_classes):
    written = _write_cifar(tmp_path, n_classes, np.random.default_rng(2))
    name = f"cifar{n_classes}"
    train = load_images(_cfg(dataset=name, root=str(tmp_path)), split="train", resolution=32,
                        image_channels=3)
    test = load_images(_cfg(dataset=name, root=str(tmp_path)), split="test", resolution=32,
                       image_channels=3)
    parts = [f"data_batch_{i}" for i in range(1, 6)] if n_classes == 10 else ["train"]
    data = np.concatenate([written[p][0] for p in parts]).reshape(-1, 3, 32, 32)
    labels = [label for p in parts for label in written[p][1]]
    validation = load_images(_cfg(dataset=name, root=str(tmp_path)), split="validation",
                             resolution=32, image_channels=3)
    cut = len(data) - len(data) // 10  # the last tenth of the training files is held out
    assert len(validation) == len(data) // 10  # CIFAR-100's 4 files: none held out
    assert np.array_equal(train.images.numpy(), data[:cut])
    assert np.array_equal(validation.images.numpy(), data[cut:])
    assert train.labels.tolist() + validation.labels.tolist() == labels
    assert len(test) == 4 and test.images.shape == (4, 3, 32, 32)


def test_cifar_gray_and_resized(tmp_path):
    written = _write_cifar(tmp_path, 10, np.random.default_rng(3))
    gray = load_images(_cfg(dataset="cifar10", root=str(tmp_path)), split="test", resolution=32,
                       image_channels=1)
    rgb = written["test_batch"][0].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    luma = np.stack([np.asarray(Image.fromarray(a).convert("L")) for a in rgb])
    assert np.array_equal(gray.images[:, 0].numpy(), luma)
    small = load_images(_cfg(dataset="cifar10", root=str(tmp_path), limit=6), split="train",
                        resolution=16, image_channels=3)
    assert small.images.shape == (6, 3, 16, 16) and len(small.labels) == 6


def test_cifar_unpickler_runs_no_code(tmp_path):
    class Exploit:
        def __reduce__(self):
            return os.mkdir, (str(tmp_path / "pwned"),)

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Exploit()}, protocol=2))
    with pytest.raises(DataError, match="test_batch"):
        load_images(_cfg(dataset="cifar10", root=str(tmp_path)), split="test", resolution=32,
                    image_channels=3)
    assert not (tmp_path / "pwned").exists()
    # Python 2 era files name numpy.core.multiarray; that spelling must still load.
    data = np.arange(3072 * 2, dtype=np.uint8).reshape(2, 3072)
    blob = pickle.dumps({b"data": data, b"labels": [1, 2]}, protocol=2)
    blob = blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    (folder / "test_batch").write_bytes(blob)
    assert np.array_equal(readers.read_cifar_batch(folder / "test_batch")[b"data"], data)


def test_svhn_round_trips_pixels_and_labels(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (32, 32, 3, 6), dtype=np.uint8)
    y = np.array([[10], [1], [2], [9], [10], [5]], dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y})
    images = load_images(_cfg(dataset="svhn", root=str(tmp_path)), split="train", resolution=32,
                         image_channels=3)
    assert np.array_equal(images.images.numpy(), x.transpose(3, 2, 0, 1))
    assert images.labels.tolist() == [0, 1, 2, 9, 0, 5]


# ------------------------------------------------------------------------------------------------
# Clear errors


@pytest.mark.parametrize("kw, message", [
    ({"dataset": "emnist"}, "fashion_mnist, mnist, folder"),
    ({"dataset": "cifar10"}, "CIFAR-10 files"),
    ({"dataset": "cifar100"}, "CIFAR-100 files"),
    ({"dataset": "svhn"}, "SVHN file"),
    ({"dataset": "celeba"}, "CelebA not available"),
    ({"dataset": "lsun"}, "data.subset"),
    ({"dataset": "lsun", "subset": "church_outdoor"}, "pip install lmdb|LSUN database"),
])
def test_clear_errors(tmp_path, kw, message):
    with pytest.raises(DataError, match=message) as err:
        load_images(_cfg(root=str(tmp_path), **kw), split="train", resolution=32,
                    image_channels=3)
    assert "\n" not in str(err.value)


def test_lsun_without_lmdb(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lmdb", None)
    with pytest.raises(DataError, match="pip install lmdb"):
        load_images(_cfg(dataset="lsun", subset="bedroom", root=str(tmp_path)), split="test",
                    resolution=32, image_channels=3)


@pytest.mark.parametrize("kw, message", [
    ({"split": "val", "resolution": 32, "image_channels": 3}, "split"),
    ({"split": "train", "resolution": 12, "image_channels": 3}, "power of two"),
    ({"split": "train", "resolution": 4, "image_channels": 3}, "power of two"),
    ({"split": "train", "resolution": 32, "image_channels": 2}, "image_channels"),
])
def test_bad_arguments(kw, message):
    with pytest.raises(ValueError, match=message):
        load_images(_cfg(dataset="fake"), **kw)


def test_lsun_reads_lmdb(tmp_path):
    lmdb = pytest.importorskip("lmdb", reason="lmdb (in the dev extras) is not installed, so "
                               "reading LSUN databases is untested here")
    path = tmp_path / "tower_val_lmdb"
    colours = [(255, 0, 0), (0, 0, 255), (0, 255, 0)]
    with lmdb.open(str(path), map_size=1 << 24) as env, env.begin(write=True) as txn:
        for i, c in enumerate(colours):
            buf = io.BytesIO()
            Image.new("RGB", (40, 30), c).save(buf, format="PNG")
            txn.put(f"key{i}".encode(), buf.getvalue())
    images = load_images(_cfg(dataset="lsun", subset="tower", root=str(tmp_path), limit=2),
                         split="test", resolution=8, image_channels=3)
    assert len(images) == 2
    corners = images.get_batch(torch.tensor([1, 0]))[:, :, 0, 0]
    assert torch.equal(corners, torch.tensor(colours[1::-1], dtype=torch.uint8))


# ------------------------------------------------------------------------------------------------
# Pooling to coarse resolutions


def test_downsample_is_block_mean():
    x = torch.randn(2, 3, 16, 16)
    for r, f in ((16, 1), (8, 2), (2, 8)):
        assert np.allclose(downsample(x, r).numpy(), _block_mean(x.double().numpy(), f),
                           atol=1e-6)
    assert downsample(x, 16) is x
    for bad in (12, 32, 0):
        with pytest.raises(ValueError, match="power-of-two"):
            downsample(x, bad)
    with pytest.raises(ValueError, match=r"cannot downsample \(16, 12\) images to 8x8"):
        downsample(torch.zeros(1, 1, 16, 12), 8)
