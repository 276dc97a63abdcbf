"""``cfebm prepare``'s cache: the same images as the direct loader, bit for bit; refused when
corrupted; resumed when interrupted; and training from it equals training without it."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cfebm import data
from cfebm.cli import main
from cfebm.config import DataConfig, apply_overrides, load_preset
from cfebm.data import DataError, cache, load_images, prepare
from cfebm.train import loop


def folder_of_images(root, n=20, size=(40, 28)):
    g = np.random.default_rng(0)
    for i in range(n):
        pixels = g.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i:03d}.png")
    return root


def block_means(x: np.ndarray, factor: int) -> np.ndarray:
    """Exact means of factor × factor blocks (float64), computed without cfebm."""
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // factor, factor, w // factor, factor).astype(np.float64)
    return blocks.mean(axis=(3, 5))


@pytest.mark.parametrize("source", ["folder", "fake"])
def test_round_trip_equals_the_direct_loader_bit_for_bit(tmp_path, source):
    if source == "folder":
        cfg = DataConfig(dataset="folder", root=str(folder_of_images(tmp_path)), center_crop=24)
    else:
        cfg = DataConfig(dataset="fake", limit=300)  # more than one chunk of 256
    prepare.prepare(cfg, tmp_path / "cache", resolution=16, channels=3, progress=False)
    cached_cfg = DataConfig(**{**cfg.__dict__, "cache": str(tmp_path / "cache")})
    for split in ("train", "test"):
        direct = load_images(cfg, split=split, resolution=16, image_channels=3)
        cached = load_images(cached_cfg, split=split, resolution=16, image_channels=3)
        assert isinstance(cached, cache.CachedImages) and len(cached) == len(direct)
        everything = torch.arange(len(direct))
        assert torch.equal(cached.get_batch(everything), direct.get_batch(everything))
        order = torch.randperm(len(direct), generator=torch.Generator().manual_seed(1))[:7]
        assert torch.equal(cached.get_batch(order), direct.get_batch(order))
        assert torch.equal(cached[3], direct[3])
        top = np.load(tmp_path / "cache" / f"{split}-16x16.npy")
        coarse = np.load(tmp_path / "cache" / f"{split}-8x8.npy")
        # the nearest grey level to each exact 2×2 mean (a tie, x.5, may go either way)
        assert np.abs(coarse - block_means(top, 2)).max() <= 0.5


def test_corrupted_cache_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "cache"
    prepare.prepare(DataConfig(dataset="fake", limit=64), out, resolution=16, channels=1,
                  progress=False)
    with (out / "train-16x16.npy").open("r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    code = main(["train", "--preset", "tiny", "--run-dir", str(tmp_path / "run"), "--no-progress",
                 "--set", f"data.cache={out}", "--set", "data.limit=64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "train-16x16.npy is missing or does not match its checksum" in err[0]


def test_cache_of_other_data_is_refused(tmp_path):
    out = tmp_path / "cache"
    prepare.prepare(DataConfig(dataset="fake", limit=64), out, resolution=16, channels=1,
                  progress=False)
    with pytest.raises(DataError, match="prepared from other data"):
        load_images(DataConfig(dataset="fake", limit=32, cache=str(out)), split="train",
                    resolution=16, image_channels=1)
    with pytest.raises(DataError, match="holds a cache of other data"):
        prepare.prepare(DataConfig(dataset="fake", limit=32), out, resolution=16, channels=1,
                      progress=False)


def test_interrupted_prepare_resumes_where_it_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "CHUNK", 32)
    real, calls = data.TensorImages.get_batch, []

    def get_batch(self, indices):
        calls.append(int(indices[0]))
        if len(calls) == 4:
            raise KeyboardInterrupt  # the user's Ctrl-C during the fourth chunk
        return real(self, indices)

    monkeypatch.setattr(data.TensorImages, "get_batch", get_batch)
    cfg, out = DataConfig(dataset="fake", limit=256), tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(cfg, out, resolution=16, channels=1, progress=False)
    assert json.loads((out / "progress.json").read_text())["done"] == {"train": 96}
    with pytest.raises(DataError, match="manifest.json missing"):
        load_images(DataConfig(**{**cfg.__dict__, "cache": str(out)}), split="train",
                    resolution=16, image_channels=1)
    monkeypatch.setattr(data.TensorImages, "get_batch", lambda self, i: (calls.append(int(i[0])),
                                                                         real(self, i))[1])
    calls.clear()
    prepare.prepare(cfg, out, resolution=16, channels=1, progress=False)
    # the rest of train, then validation and test
    assert calls == list(range(96, 256, 32)) + 2 * list(range(0, 256, 32))
    assert not (out / "progress.json").exists()
    cached = load_images(DataConfig(**{**cfg.__dict__, "cache": str(out)}), split="train",
                         resolution=16, image_channels=1)
    direct = load_images(cfg, split="train", resolution=16, image_channels=1)
    assert torch.equal(cached.get_batch(torch.arange(256)), real(direct, torch.arange(256)))


def test_training_from_the_cache_equals_training_without_it(tmp_path):
    cfg = load_preset("tiny")
    prepare.prepare(cfg.data, tmp_path / "cache", resolution=16, channels=1, progress=False)
    cached_cfg = apply_overrides(cfg, [f"data.cache={tmp_path / 'cache'}"])
    a = loop.run_training(cfg, tmp_path / "a", stop_at=48, progress=False)
    b = loop.run_training(cached_cfg, tmp_path / "b", stop_at=48, progress=False)
    for key, value in a.net.state_dict().items():
        assert torch.equal(value, b.net.state_dict()[key]), key


def test_prepare_command_writes_a_cache_that_train_reads(tmp_path, capsys):
    out = tmp_path / "cache"
    assert main(["prepare", "--preset", "tiny", "--out", str(out), "--no-progress"]) == 0
    assert f"data.cache={out}" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["n"] == 256 and manifest["key"]["resolution"] == 16
    assert main(["train", "--preset", "tiny", "--run-dir", str(tmp_path / "run"), "--stop-at",
                 "32", "--no-progress", "--set", f"data.cache={out}"]) == 0


@pytest.mark.parametrize("change", [
    {"center_crop": 12}, {"limit": 48}, {"validation": 0}, {"resolution": 32}, {"channels": 3},
], ids=lambda change: next(iter(change)))
def test_a_cache_is_refused_for_data_that_differs_in_any_one_field(tmp_path, change):
    """Every field that changes the images (crop, count, the held-out split, size, channels)
    is part of the cache's key: a cache of other images is never read as these."""
    out = tmp_path / "cache"
    prepare.prepare(DataConfig(dataset="fake", limit=64), out, resolution=16, channels=1,
                    progress=False)
    size = {"resolution": change.pop("resolution", 16), "image_channels": change.pop("channels", 1)}
    cfg = DataConfig(**{"dataset": "fake", "limit": 64, "cache": str(out), **change})
    with pytest.raises(DataError, match="prepared from other data"):
        load_images(cfg, split="train", **size)
