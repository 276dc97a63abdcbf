"""Tests for cfebm.data's reproducible batch streams and pixel conventions."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from cfebm.data import (
    DATASETS,
    BatchStream,
    TensorImages,
    random_hflip,
    to_float,
    to_uint8,
)

# ------------------------------------------------------------------------------------------------
# BatchStream


def _numbered(n: int) -> TensorImages:
    """Image i is the constant i, so a batch reveals which images it drew."""
    return TensorImages(torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 1, 8, 8)
                        .contiguous(), torch.arange(n))


def _drawn(batch: Tensor) -> list[int]:
    return batch[:, 0, 0, 0].tolist()


def test_batch_stream_is_a_function_of_seed_and_position():
    images = _numbered(10)
    a, b = BatchStream(images, seed=3), BatchStream(images, seed=3)
    a.batch(0, 7)  # a different history: a has cached another epoch
    assert torch.equal(a.batch(25, 4), b.batch(25, 4))
    assert _drawn(a.batch(25, 4)) != _drawn(BatchStream(images, seed=4).batch(25, 4))


def test_batch_stream_epochs_are_permutations():
    stream = BatchStream(_numbered(10), seed=0)
    drawn = [i for p in range(0, 30, 3) for i in _drawn(stream.batch(p, 3))]
    epochs = [drawn[i:i + 10] for i in range(0, 30, 10)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    # One batch spanning three epoch boundaries gives the same images.
    assert _drawn(BatchStream(_numbered(10), seed=0).batch(0, 30)) == drawn


def test_batch_stream_span_and_batch_size_history():
    images = _numbered(10)
    one_by_one = [_drawn(BatchStream(images, seed=1).batch(k, 1))[0] for k in range(40)]
    a, b = BatchStream(images, seed=1), BatchStream(images, seed=1)
    pos_a = pos_b = 0
    for size in (3, 7, 5, 1, 6):
        assert _drawn(a.batch(pos_a, size)) == one_by_one[pos_a:pos_a + size]
        pos_a += size
    for size in (4, 4, 4, 4, 6):
        b.batch(pos_b, size)
        pos_b += size
    assert pos_a == pos_b == 22
    assert _drawn(a.batch(22, 11)) == _drawn(b.batch(22, 11)) == one_by_one[22:33]
    assert _drawn(b.batch(8, 5)) == one_by_one[8:13]  # crosses the first epoch boundary


# ------------------------------------------------------------------------------------------------
# Pixel conventions


def test_to_float_to_uint8_round_trip():
    x = torch.arange(256, dtype=torch.uint8)
    f = to_float(x)
    assert f.dtype == torch.float32 and f[0] == -1 and f[-1] == 1
    assert torch.equal(to_uint8(f), x)
    assert to_uint8(torch.tensor([-3.0, 3.0, 0.0])).tolist() == [0, 255, 128]


def test_random_hflip_is_deterministic():
    x = torch.randint(0, 256, (200, 3, 4, 4), dtype=torch.uint8)
    out = random_hflip(x, torch.Generator().manual_seed(5))
    assert torch.equal(out, random_hflip(x, torch.Generator().manual_seed(5)))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert (flipped | kept).all() and 60 < int(flipped.sum()) < 140
    other = random_hflip(x, torch.Generator().manual_seed(6))
    assert not torch.equal(out, other)


def test_tensor_images_validates_and_batches():
    images = _numbered(6)
    assert torch.equal(images.get_batch(torch.tensor([5, 1])), torch.stack([images[5], images[1]]))
    assert (images.resolution, images.channels) == (8, 1)
    with pytest.raises(ValueError):
        TensorImages(torch.zeros(2, 3, 8, 8))  # float, not uint8
    assert set(DATASETS) == {"fashion_mnist", "mnist", "folder", "digits", "cifar10", "cifar100",
                             "svhn", "celeba", "lsun", "fake"}
