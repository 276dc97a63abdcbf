"""The contracts of cfebm.data that a caller sees at its edges: what a prepared cache holds and
which data it stands in for, the names image sets carry, the readers' download and split paths
(torchvision replaced by a stand-in that writes or refuses files), the translation domains'
pairs and crop bands, and the one-line errors that say what is wrong and how to fix it.

Independent truths: images and labels written into small files here, PIL's own Lanczos filter,
Fashion-MNIST's class names, the bands of rows the docstrings promise, and the exact text a user
reads.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import pickle
import re
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from cfebm.config import DataConfig
from cfebm.data import (
    BatchStream,
    DataError,
    ImageSet,
    TensorImages,
    load_images,
    random_hflip,
)
from cfebm.data.domains import (
    TEXTURE_TRAIN_ROWS,
    domain_names,
    fmnist_classes,
    pair_images,
    texture_positions,
)
from cfebm.data.prepare import prepare


def _cfg(**kw) -> DataConfig:
    return DataConfig(**{"download": False, **kw})


def _grey_folder(root, values, size=(12, 10)):
    """A folder of flat RGB images, image i of grey level values[i] (named so they sort)."""
    root.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(values):
        Image.new("RGB", size, (v, v, v)).save(root / f"{i:03d}.png")
    return root


def _write_idx(path, a: np.ndarray) -> None:
    """An IDX file of unsigned bytes, as Fashion-MNIST and MNIST ship them (gzipped)."""
    raw = b"\0\0\x08" + bytes([a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
    path.write_bytes(gzip.compress(raw))


def _write_mnist_like(folder, labels: list[int]) -> np.ndarray:
    """The four IDX files of an MNIST-like dataset in ``folder``: image i is the flat grey
    level 10 * i, label labels[i], in both the train and the t10k files."""
    folder.mkdir(parents=True, exist_ok=True)
    x = np.repeat(np.arange(len(labels), dtype=np.uint8) * 10, 28 * 28).reshape(-1, 28, 28)
    for prefix in ("train", "t10k"):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.array(labels, dtype=np.uint8))
    return x


def _cached(cfg: DataConfig, out) -> DataConfig:
    return dataclasses.replace(cfg, cache=str(out))


# ------------------------------------------------------------------------------------------------
# The prepared cache


def test_a_cache_is_keyed_by_its_folder_not_by_how_the_folder_is_spelled(tmp_path, monkeypatch):
    """A cache prepared from data.root=imgs (relative) serves the same folder named absolutely,
    and refuses a different folder of as many images of the same size: reading another folder's
    pixels as these would train on the wrong data without a word."""
    monkeypatch.chdir(tmp_path)
    _grey_folder(tmp_path / "imgs", [10, 20, 30])
    _grey_folder(tmp_path / "other", [200, 210, 220])
    prepare(_cfg(dataset="folder", root="imgs"), tmp_path / "cache", resolution=8, channels=3,
            splits=("train",), progress=False)
    cfg = _cfg(dataset="folder", root=str(tmp_path / "imgs"), cache=str(tmp_path / "cache"))
    images = load_images(cfg, split="train", resolution=8, image_channels=3)
    assert images.get_batch(torch.arange(3))[:, :, 0, 0].tolist() == [[10] * 3, [20] * 3, [30] * 3]
    with pytest.raises(DataError, match="prepared from other data"):
        load_images(dataclasses.replace(cfg, root=str(tmp_path / "other")), split="train",
                    resolution=8, image_channels=3)


def test_a_cache_stands_in_for_a_labelled_dataset_labels_name_and_size_included(tmp_path):
    """From the cache, the digits come with their labels, the direct loader's name and its
    (C, R, R): code that reads labels (class subsets, conditional metrics) or logs the set sees
    no difference."""
    cfg = _cfg(dataset="digits", limit=30, subset="0,2,4")
    out = tmp_path / "cache"
    prepare(cfg, out, resolution=16, channels=1, splits=("train", "test"), progress=False)
    for split in ("train", "test"):
        direct = load_images(cfg, split=split, resolution=16, image_channels=1)
        cached = load_images(_cached(cfg, out), split=split, resolution=16, image_channels=1)
        assert set(direct.labels.tolist()) == {0, 2, 4}
        assert torch.equal(cached.labels, direct.labels)
        assert torch.equal(cached.get_batch(torch.arange(len(direct))), direct.images)
        assert (cached.name, cached.channels, cached.resolution) == ("digits classes 0,2,4", 1, 16)


def test_a_cache_holds_one_array_per_resolution_from_8_px_to_the_top(tmp_path):
    """prepare writes r = 8, 16, ..., R (prepare.py's contract), nothing coarser: 1, 2 and 4 px
    arrays would be useless files, each hashed and checked on every open."""
    out = tmp_path / "cache"
    prepare(_cfg(dataset="fake", limit=8), out, resolution=32, channels=1, splits=("train",),
            progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json", "train-16x16.npy", "train-32x32.npy", "train-8x8.npy"]


def test_prepare_writes_a_split_that_holds_no_images(tmp_path):
    """A folder of fewer than ten images holds out no validation images; `cfebm prepare
    --splits validation` still writes a valid (empty) cache instead of crashing at the end."""
    cfg = _cfg(dataset="folder", root=str(_grey_folder(tmp_path / "imgs", [1, 2, 3, 4, 5])))
    out = tmp_path / "cache"
    prepare(cfg, out, resolution=8, channels=3, splits=("validation",), progress=False)
    assert not (out / "progress.json").exists()
    cached = load_images(_cached(cfg, out), split="validation", resolution=8, image_channels=3)
    assert len(cached) == 0 and cached.get_batch(torch.arange(0)).shape == (0, 3, 8, 8)


def test_a_folder_holding_another_cache_is_refused_with_the_fix(tmp_path):
    out = tmp_path / "cache"
    prepare(_cfg(dataset="fake", limit=8), out, resolution=8, channels=1, splits=("train",),
            progress=False)
    with pytest.raises(DataError, match="choose another folder or delete it"):
        prepare(_cfg(dataset="fake", limit=16), out, resolution=8, channels=1,
                splits=("train",), progress=False)


# ------------------------------------------------------------------------------------------------
# Names and empty sets


def test_image_sets_are_named_after_their_data(tmp_path):
    """The name is what errors, the cache's manifest and ``repr`` show the user."""
    _write_mnist_like(tmp_path, [7, 9, 7, 0, 9])  # Fashion-MNIST's files, under data.root
    sets = [load_images(_cfg(dataset=dataset, limit=4), split="test", resolution=8,
                        image_channels=1) for dataset in ("fake", "digits")]
    sets += pair_images("grass2gravel", _cfg(limit=2), "test", 8, 1)
    sets += pair_images("sneaker2ankleboot", _cfg(root=str(tmp_path)), "test", 8, 1)
    assert [s.name for s in sets] == ["fake", "digits", "grass", "gravel",
                                      "fashion_mnist class 7", "fashion_mnist class 9"]


def test_an_empty_image_set_is_refused_by_name():
    with pytest.raises(DataError, match="cannot draw batches from the empty image set 'my set'"):
        BatchStream(TensorImages(torch.zeros(0, 1, 8, 8, dtype=torch.uint8), name="my set"),
                    seed=0)


def test_an_empty_batch_of_decoded_files_is_zero_images_of_the_sets_shape(tmp_path):
    """get_batch of no indices is (0, C, R, R) uint8, the shape every batch has."""
    cfg = _cfg(dataset="folder", root=str(_grey_folder(tmp_path / "imgs", [1, 2])))
    for workers in (0, 2):
        images = load_images(dataclasses.replace(cfg, num_workers=workers), split="train",
                             resolution=8, image_channels=3)
        empty = images.get_batch(torch.arange(0))
        assert empty.shape == (0, 3, 8, 8) and empty.dtype == torch.uint8


def test_an_image_set_subclass_batches_its_items_in_order():
    """ImageSet's own get_batch (for sets that define only __len__ and __getitem__) stacks the
    items asked for, in the order asked."""
    class Constant(ImageSet):
        def __init__(self):
            super().__init__(resolution=4, channels=1, name="constant")

        def __len__(self):
            return 5

        def __getitem__(self, i):
            return torch.full((1, 4, 4), int(i), dtype=torch.uint8)

    batch = Constant().get_batch(torch.tensor([3, 0, 4]))
    assert batch.shape == (3, 1, 4, 4) and batch[:, 0, 0, 0].tolist() == [3, 0, 4]


# ------------------------------------------------------------------------------------------------
# Flips on another device than the generator's


def test_random_hflip_draws_on_the_generators_device_whatever_the_default_device():
    """With torch's default device elsewhere (torch.set_default_device("cuda") in a user's
    script; "meta" here, on CPU-only machines) a CPU generator still draws on the CPU."""
    x = torch.randint(0, 256, (16, 1, 3, 3), dtype=torch.uint8)
    expected = random_hflip(x, torch.Generator().manual_seed(0))
    with torch.device("meta"):
        out = random_hflip(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, expected)


def test_random_hflip_returns_images_on_their_own_device():
    """The flip mask is moved to the images' device (CUDA images with a CPU generator; "meta"
    stands in for CUDA on CPU-only machines)."""
    x = torch.empty(16, 1, 3, 3, device="meta")
    out = random_hflip(x, torch.Generator().manual_seed(0))
    assert out.device == x.device and out.shape == x.shape


# ------------------------------------------------------------------------------------------------
# Errors the user reads


def test_a_validation_split_without_validation_images_says_which_setting():
    with pytest.raises(DataError, match=r"^data\.validation = 0 holds out no validation images; "
                                        r"set it > 0$"):
        load_images(_cfg(dataset="fake", validation=0), split="validation", resolution=8,
                    image_channels=1)


def test_an_unreadable_cifar_batch_names_the_cause(tmp_path):
    """A batch the restricted unpickler refuses: the message says which file and why."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": {1, 2}}, protocol=2))
    with pytest.raises(DataError, match=r"test_batch \(UnpicklingError: refusing to load "
                                        r"__builtin__\.set\); re-download it"):
        load_images(_cfg(dataset="cifar10", root=str(tmp_path)), split="test", resolution=32,
                    image_channels=3)


# ------------------------------------------------------------------------------------------------
# Downloads, through a stand-in for torchvision's dataset classes


def _no_network(*args, **kwargs):
    raise ConnectionError("network is unreachable")


@pytest.mark.parametrize("dataset, torchvision_class, what", [
    ("mnist", "MNIST", "MNIST"),
    ("cifar10", "CIFAR10", "CIFAR-10"),
])
def test_a_failed_download_is_one_line_naming_the_dataset_folder_and_cause(
        tmp_path, monkeypatch, dataset, torchvision_class, what):
    import torchvision.datasets

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(torchvision.datasets, torchvision_class, _no_network)
    root = tmp_path / "data"
    with pytest.raises(DataError) as err:
        load_images(_cfg(dataset=dataset, root=str(root), download=True), split="train",
                    resolution=32, image_channels=1)
    assert str(err.value) == (f"could not download {what} into {root} (ConnectionError: network "
                              f"is unreachable); put the files there yourself or point "
                              f"data.root at them")


def test_a_download_is_read_from_where_torchvision_put_it(tmp_path, monkeypatch):
    import torchvision.datasets

    class FakeMNIST:  # writes the four IDX files where torchvision's MNIST puts them
        def __init__(self, root, train, download):
            assert download
            _write_mnist_like(tmp_path / "data" / "MNIST" / "raw", labels)

    labels = [3, 1, 4, 1, 5]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    images = load_images(_cfg(dataset="mnist", root=str(tmp_path / "data"), download=True),
                         split="test", resolution=32, image_channels=1)
    assert images.labels.tolist() == labels
    assert images.images[:, 0, 16, 16].tolist() == [0, 10, 20, 30, 40]  # centre of the 28 px


# ------------------------------------------------------------------------------------------------
# CelebA and LSUN training splits (the last training files held out for validation)


def test_celeba_train_split_reads_its_files_from_celeba_img_align_celeba(tmp_path, monkeypatch):
    """torchvision (here a stand-in) lists a split's file names; the images are read from
    ROOT/celeba/img_align_celeba, the last ones held out for validation."""
    import torchvision.datasets

    folder = _grey_folder(tmp_path / "celeba" / "img_align_celeba", [10 * i for i in range(12)])

    class FakeCelebA:
        def __init__(self, root, split, target_type, download):
            assert root == str(tmp_path) and target_type == []
            self.filename = np.array(sorted(p.name for p in folder.iterdir())[:10])

    monkeypatch.setattr(torchvision.datasets, "CelebA", FakeCelebA)
    cfg = _cfg(dataset="celeba", root=str(tmp_path), validation=1)
    train = load_images(cfg, split="train", resolution=8, image_channels=1)
    validation = load_images(cfg, split="validation", resolution=8, image_channels=1)
    assert train.get_batch(torch.arange(len(train)))[:, 0, 0, 0].tolist() == \
        [10 * i for i in range(9)]
    assert validation[0][0, 0, 0] == 90


def _write_lmdb(path, colours):
    import lmdb

    with lmdb.open(str(path), map_size=1 << 24) as env, env.begin(write=True) as txn:
        for i, c in enumerate(colours):
            buf = io.BytesIO()
            Image.new("RGB", (12, 12), c).save(buf, format="PNG")
            txn.put(f"key{i:02d}".encode(), buf.getvalue())


def test_lsun_train_split_reads_the_train_database_and_pickles_without_its_handle(tmp_path):
    """The train split reads <category>_train_lmdb, minus the held-out last records; a set
    that has read records pickles (for worker processes) and reads the same images after."""
    pytest.importorskip("lmdb", reason="lmdb (in the dev extras) is not installed")
    colours = [(20 * i, 0, 255 - 20 * i) for i in range(12)]
    _write_lmdb(tmp_path / "tower_train_lmdb", colours)
    cfg = _cfg(dataset="lsun", subset="tower", root=str(tmp_path), validation=1)
    train = load_images(cfg, split="train", resolution=8, image_channels=3)
    first = train.get_batch(torch.arange(len(train)))[:, :, 0, 0]
    assert first.tolist() == [list(c) for c in colours[:11]]
    blob = pickle.dumps(train)  # as for a worker process, which opens its own handle
    train.source.env().close()  # LMDB allows one handle per database and process
    copy = pickle.loads(blob)
    assert torch.equal(copy.get_batch(torch.arange(len(copy)))[:, :, 0, 0], first)


# ------------------------------------------------------------------------------------------------
# Resizing CIFAR


def test_cifar_is_resized_with_pils_lanczos(tmp_path):
    """The in-memory colour datasets are resized as files are: PIL's antialiased Lanczos."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.random.default_rng(0).integers(0, 256, (3, 3072), dtype=np.uint8)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1, 2]},
                                                     protocol=2))
    images = load_images(_cfg(dataset="cifar10", root=str(tmp_path)), split="test",
                         resolution=16, image_channels=3)
    for i, a in enumerate(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)):
        lanczos = np.asarray(Image.fromarray(a).resize((16, 16), Image.LANCZOS))
        assert np.array_equal(images.images[i].numpy().transpose(1, 2, 0), lanczos)


# ------------------------------------------------------------------------------------------------
# Translation domains


def test_fashion_mnist_pairs_take_any_two_different_classes_0_to_9():
    assert fmnist_classes("fmnist:9,0") == (9, 0)
    assert domain_names("fmnist:9,0") == ("Ankle boot", "T-shirt/top")
    for bad in ("fmnist:0,10", "fmnist:10,0", "fmnist:3,3"):
        with pytest.raises(DataError, match="needs two different Fashion-MNIST classes in 0..9"):
            fmnist_classes(bad)


def test_an_unknown_pair_lists_the_pairs_there_are():
    with pytest.raises(DataError, match=re.escape(
            "unknown translation pair 'horse2zebra'; choose one of cyclegan, sneaker2ankleboot, "
            "tshirt2dress, grass2gravel, fmnist:K,L")):
        fmnist_classes("horse2zebra")


@pytest.mark.parametrize("root, message", [
    ("", "pair 'cyclegan' needs data.root: a folder with trainA, trainB, testA and testB"),
    ("missing", "CycleGAN folder {root} does not exist; check data.root"),
    ("empty", ("{root}/trainA is missing: a CycleGAN folder holds trainA, trainB, testA and "
               "testB (found: no folders)")),
])
def test_a_bad_cyclegan_root_says_what_is_wrong(tmp_path, root, message):
    if root:
        root = tmp_path / root
        if root.name == "empty":
            root.mkdir()
    with pytest.raises(DataError) as err:
        pair_images("cyclegan", _cfg(root=str(root)), "train", 16, 3)
    assert str(err.value) == message.format(root=root)


def test_texture_training_crops_cover_the_whole_training_band():
    """Training crops reach from row 0 to the last row of the training band: none of it is left
    out (4096 draws of 353 start rows miss an end with probability about e^-11.6)."""
    side = 32
    rows, _ = texture_positions("train", side)
    assert (int(rows.min()), int((rows + side).max())) == (0, TEXTURE_TRAIN_ROWS)
