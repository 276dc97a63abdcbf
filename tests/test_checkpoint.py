"""Checkpoint fields survive a round trip, old files still load, bad files are named; and the
divergence test's boundary. (Whole-run round trips are in test_training.py and
test_recovery_resume.py.)"""

import hashlib
import os

import pytest
import torch

from cfebm import __version__, runtime
from cfebm.config import apply_overrides, load_preset
from cfebm.files import CheckpointError, atomic_save, keep_as, read
from cfebm.train.checkpoint import load_state, save_state, state_dict
from cfebm.train.step import match_config, new_state


def test_progress_record_round_trips(tmp_path):
    """n_images, recoveries, lr_scale, the measured training time and the losses the
    divergence watch judges by come back as saved."""
    state = new_state(load_preset("tiny"), torch.device("cpu"))
    state.n_images, state.lr_scale = 48, 0.25
    state.record.recoveries, state.record.train_seconds = 2, 12.5
    for loss in (0.5, -0.25, 2.0):
        state.record.loss_watch.update(loss)
    save_state(state, tmp_path / "s.pt")
    loaded = load_state(tmp_path / "s.pt", device="cpu")
    assert (loaded.n_images, loaded.lr_scale) == (48, 0.25)
    assert (loaded.record.recoveries, loaded.record.train_seconds) == (2, 12.5)
    assert loaded.record.loss_watch.state() == [0.5, 0.25, 2.0]
    assert loaded.record.loss_watch.factor == state.record.loss_watch.factor


def test_a_checkpoint_without_the_later_fields_loads_as_a_fresh_run(tmp_path):
    """Files written before a field existed lack it: no training time, no data to skip, no
    rollback, an empty loss and FID watch, no frozen coarse copies."""
    ckpt = state_dict(new_state(load_preset("tiny"), torch.device("cpu")))
    for key in ("train_seconds", "data_skip", "rolled_back_to", "loss_watch", "fid_watch",
                "coarse"):
        ckpt.pop(key, None)
    atomic_save(ckpt, tmp_path / "old.pt")
    loaded = load_state(tmp_path / "old.pt", device="cpu")
    assert loaded.record.train_seconds == 0.0 and loaded.data_skip == 0
    assert loaded.record.rolled_back_to is None and loaded.record.loss_watch.state() == []
    assert loaded.record.watch_reference == {} and loaded.record.watch_retries == 0
    assert loaded.coarse == []


def test_a_checkpoint_from_before_the_fid_watch_loads_with_an_empty_watch(tmp_path):
    """Files written before the FID watch existed have no "fid_watch": no reference FIDs, no
    retries."""
    ckpt = state_dict(new_state(load_preset("tiny"), torch.device("cpu")))
    del ckpt["fid_watch"]
    atomic_save(ckpt, tmp_path / "old.pt")
    record = load_state(tmp_path / "old.pt", device="cpu").record
    assert (record.watch_reference, record.watch_retries) == ({}, 0)


def test_a_gpu_checkpoint_resumes_on_the_cpu(tmp_path, caplog):
    """A CUDA generator's state (16 bytes: seed and Philox offset) cannot be a CPU generator's
    (5,056 bytes); loading such a file on the CPU seeds the chains from it, the same way twice,
    and says so. The device asked for wins over the run's ``train.device = "cuda"``."""
    ckpt = state_dict(new_state(load_preset("tiny"), torch.device("cpu")))
    ckpt["generator"] = torch.tensor([7, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0],
                                     dtype=torch.uint8)
    ckpt["config"]["train"]["device"] = "cuda"
    atomic_save(ckpt, tmp_path / "gpu.pt")
    with pytest.raises(RuntimeError):  # the case the loader has to handle
        torch.Generator().set_state(ckpt["generator"])
    states = [load_state(tmp_path / "gpu.pt", device="cpu") for _ in range(2)]
    assert {s.device for s in states} == {torch.device("cpu")}
    draws = [torch.rand(4, generator=s.generator) for s in states]
    assert torch.equal(draws[0], draws[1])
    assert "saved on another device type than cpu;" in caplog.text
    # the seed is the state's SHA-256, first 8 bytes, little-endian, to 63 bits
    digest = hashlib.sha256(ckpt["generator"].numpy().tobytes()).digest()
    seed = int.from_bytes(digest[:8], "little") & (2**63 - 1)
    assert torch.equal(draws[0], torch.rand(4, generator=torch.Generator().manual_seed(seed)))
    assert not torch.equal(draws[0], torch.rand(4, generator=torch.Generator().manual_seed(0)))


def test_a_torch_file_that_is_not_a_checkpoint_is_named(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"model": {}}, path)
    with pytest.raises(CheckpointError, match=r"weights\.pt.* is not a cfebm training checkpoint"):
        read(path)


def test_a_checkpoint_records_the_package_version(tmp_path):
    save_state(new_state(load_preset("tiny"), torch.device("cpu")), tmp_path / "s.pt")
    assert read(tmp_path / "s.pt")["version"] == __version__


def test_a_pickle_the_weights_unpickler_cannot_parse_is_named(tmp_path):
    """An unsupported opcode (not a forbidden object) is "not a PyTorch file of weights"."""
    path = tmp_path / "junk.pt"
    path.write_bytes(b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01\xff")
    with pytest.raises(CheckpointError, match=r"^cannot read '.*junk\.pt' as a cfebm checkpoint "
                       r"\(not a PyTorch file of weights\)$"):
        read(path)


def test_a_checkpoint_with_an_invalid_config_is_named(tmp_path):
    ckpt = state_dict(new_state(load_preset("tiny"), torch.device("cpu")))
    ckpt["config"]["model"]["no_such_field"] = 1
    atomic_save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="the checkpoint's config is invalid: .*no_such_field"):
        load_state(tmp_path / "bad.pt", device="cpu")


@pytest.mark.parametrize("links", [True, False])
def test_keep_as_keeps_the_old_file_when_the_original_is_rewritten(tmp_path, monkeypatch, links):
    """previous.pt must survive latest.pt being replaced, by hard link or, without links, copy."""
    if not links:
        def no_link(*_):
            raise OSError("hard links not supported")
        monkeypatch.setattr(os, "link", no_link)
    latest, previous = tmp_path / "latest.pt", tmp_path / "previous.pt"
    atomic_save({"n": torch.tensor(1)}, latest)
    keep_as(latest, previous)
    atomic_save({"n": torch.tensor(2)}, latest)
    assert torch.load(previous)["n"] == 1 and torch.load(latest)["n"] == 2
    keep_as(latest, previous)  # replaces the older copy
    assert torch.load(previous)["n"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt", "previous.pt"]


def test_a_resumed_cpu_run_asking_for_cuda_graphs_compiles_without_them():
    """train.cuda_graphs is a GPU switch: on a CPU the resumed run's Langevin energy is compiled
    (lazily, nothing runs here) and replays no graphs, whatever the config asks."""
    cfg = apply_overrides(load_preset("tiny"), ["train.compile=true", "train.cuda_graphs=true"])
    state = new_state(cfg, torch.device("cpu"))
    state.compiled = None
    match_config(state)
    assert isinstance(state.compiled, runtime.CompiledEnergy)
    assert not runtime.cuda_graphs(cfg, state.device)
