"""cfebm.load and TrainedModel: exports round-trip exactly, chains start where they are told,
known pixels never move, samples do not depend on the batch size, and each checkpoint is sampled
at the stage it was trained as."""

import pytest
import torch
import torch.nn.functional as F

from cfebm.cli import main
from cfebm.files import CheckpointError, canonical_safetensors
from cfebm.model import frozen
from cfebm.sampling import langevin_cfg
from cfebm.trained import TrainedModel, load


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny preset (8² then 16² with a 64-image fade), EMA on, stopped mid-fade."""
    run_dir = tmp_path_factory.mktemp("run")
    assert main(["train", "--preset", "tiny", "--run-dir", str(run_dir), "--no-progress",
                 "--set", "train.ema_decay=0.9", "--stop-at", "160"]) == 0
    return run_dir


def test_export_round_trips_the_energy_exactly(tiny_run, tmp_path):
    ckpt = tiny_run / "checkpoints" / "latest.pt"
    for ema in (True, False):
        model = load(ckpt, ema=ema)
        path = model.export(tmp_path / f"m{ema}.safetensors")
        again = load(path)
        x = torch.rand(5, 1, model.resolution, model.resolution) * 2 - 1
        assert torch.equal(model.energy(x), again.energy(x))
        assert (again.weights, again.n_images, again.beta) == (model.weights, 160, model.beta)
    assert not torch.equal(load(ckpt, ema=True).energy(x), load(ckpt, ema=False).energy(x))


def test_exporting_twice_gives_the_same_bytes(tiny_run, tmp_path):
    """Exports carry a sha256 in model cards: the same weights must give the same file, though
    safetensors writes its metadata in a random order (here: 5 metadata keys, 3 exports)."""
    model = load(tiny_run / "checkpoints" / "latest.pt")
    blobs = {model.export(tmp_path / f"m{i}.safetensors").read_bytes() for i in range(3)}
    assert len(blobs) == 1


def test_canonical_safetensors_keeps_every_tensor_and_metadata_entry():
    from safetensors.torch import load as load_bytes
    from safetensors.torch import save

    tensors = {"b": torch.arange(3.0), "a": torch.ones(2, 2, dtype=torch.bfloat16)}
    metadata = {k: str(i) for i, k in enumerate("zyxwv")}
    blob = canonical_safetensors(save(tensors, metadata=metadata))
    assert len({canonical_safetensors(save(tensors, metadata=metadata)) for _ in range(5)}) == 1
    again = load_bytes(blob)
    assert again.keys() == tensors.keys() and all(torch.equal(again[k], v) for k, v in tensors.items())
    header_size = int.from_bytes(blob[:8], "little")
    assert header_size % 8 == 0 and blob.index(b'"v"') < blob.index(b'"z"')


def test_an_export_is_readable_by_others_as_the_umask_allows(tiny_run, tmp_path):
    """An export is made to be shared: it gets the permissions of any new file (safetensors'
    own writer gives 0600), and nothing else is left in the folder."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = load(tiny_run / "checkpoints" / "latest.pt").export(tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_a_run_folder_loads_its_latest_checkpoint(tiny_run):
    by_folder, by_file = load(tiny_run), load(tiny_run / "checkpoints" / "latest.pt")
    assert by_folder.source == str(tiny_run / "checkpoints" / "latest.pt")
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(by_folder.energy(x), by_file.energy(x))


def test_default_weights_are_the_ema_when_kept(tiny_run):
    ckpt = tiny_run / "checkpoints" / "latest.pt"
    assert load(ckpt).weights == "ema" and load(ckpt, ema=False).weights == "trained"


def test_mid_fade_model_is_sampled_with_the_smooth_initialisation(tiny_run):
    """At 160 images the tiny run is 32 images into its 64-image fade (β = 0.5): sampling as
    trained runs ⌊5·(1−0.5)⌋ = 2 steps of the coarse energy at 8², then 5 at 16²."""
    model = load(tiny_run / "checkpoints" / "latest.pt")
    assert (model.resolution, model.beta) == (16, 0.5)
    sides = []
    x = model.sample(3, callback=lambda s: sides.append(s.x.shape[-1]))
    assert sides == [8, 8] + [16] * 5 and x.shape == (3, 1, 16, 16)
    assert x.min() >= -1 and x.max() <= 1


def test_stage_checkpoint_is_sampled_at_its_own_stage(tiny_run):
    model = load(tiny_run / "checkpoints" / "stage0-8x8.pt")
    assert (model.n_images, model.resolution, model.beta) == (128, 8, 1.0)
    assert model.sample(2, steps=1).shape == (2, 1, 8, 8)


def test_chains_start_exactly_at_the_start_images(tiny_run):
    model = load(tiny_run / "checkpoints" / "latest.pt")
    start = torch.rand(4, 1, 16, 16) * 2 - 1
    assert torch.equal(model.sample(start=start, steps=0), start)
    first = []
    model.sample(start=start, steps=1, noise=0.0, callback=lambda s: first.append(s))
    # One noiseless step from `start` is start − step·∇E(start), clamped.
    x = start.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.energy(x).sum(), x)
    torch.testing.assert_close(first[0].x, (start - grad).clamp(-1, 1))


def test_known_pixels_never_change_under_inpainting(tiny_run):
    model = load(tiny_run / "checkpoints" / "latest.pt")
    start = torch.rand(3, 1, 16, 16) * 2 - 1
    mask = (torch.rand(1, 1, 16, 16) < 0.3).float()
    seen = []
    x = model.sample(start=start, steps=6, noise=0.05, mask=mask,
                     callback=lambda s: seen.append(s.x.clone()))
    known = mask.bool().expand_as(x)
    for state in [*seen, x]:
        assert torch.equal(state[known], start[known])
    assert not torch.equal(x[~known], start[~known])


def test_samples_do_not_depend_on_the_batch_size(tiny_run):
    model = load(tiny_run / "checkpoints" / "latest.pt")
    # Same random numbers per chain; convolutions of another batch size may round differently.
    a = model.sample(120, seed=3, batch_size=50)
    b = model.sample(120, seed=3, batch_size=500)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert (a - model.sample(120, seed=4)).abs().max() > 0.1
    start = torch.rand(70, 1, 16, 16) * 2 - 1
    torch.testing.assert_close(model.sample(start=start, steps=2, batch_size=50),
                               model.sample(start=start, steps=2, batch_size=100),
                               rtol=0, atol=1e-5)


def test_sampling_from_noise_equals_the_training_sampler_for_a_plain_generator(tiny_run):
    """With one generator, TrainedModel.sample is Algorithm 2 / smooth sampling exactly as
    training draws its negatives (the same function and arguments)."""
    from cfebm.chains import sample_negatives

    model = load(tiny_run / "checkpoints" / "latest.pt")
    a = model.sample(4, generator=torch.Generator().manual_seed(1))
    with frozen(model.net):
        b = sample_negatives(model.net, model.growth, 4, model.cfg.sampler,
                             generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_bad_inputs_are_refused(tiny_run):
    model = load(tiny_run / "checkpoints" / "latest.pt")
    with pytest.raises(ValueError, match="shape"):
        model.energy(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="either n"):
        model.sample()
    with pytest.raises(ValueError, match=">= 0"):
        model.sample(2, noise=-1.0)
    with pytest.raises(ValueError, match="zeros and ones"):
        model.sample(start=torch.zeros(2, 1, 16, 16), mask=torch.full((1, 1, 16, 16), 0.5))
    with pytest.raises(ValueError, match="does not fit"):
        model.sample(start=torch.zeros(2, 1, 16, 16), mask=torch.ones(1, 1, 8, 8))


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_crafted_pickle_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": "cfebm-train-state-v1", "payload": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="not weights; it was not loaded"):
        load(path)
    assert main(["sample", str(path)]) == 2
    captured = capsys.readouterr()
    assert "pwned" not in captured.out
    assert captured.err.count("\n") == 1 and "not weights" in captured.err


def test_cli_export_then_sample_and_info(tiny_run, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert main(["export", str(tiny_run / "checkpoints" / "latest.pt"), "--out", str(out)]) == 0
    assert main(["sample", str(out), "--n", "3", "--out", str(tmp_path / "g.png"),
                 "--no-progress"]) == 0
    assert main(["info", str(out)]) == 0
    assert "beta 0.500" in capsys.readouterr().out


def test_cli_samples_equal_library_samples(tiny_run, tmp_path):
    """`cfebm sample --each` writes exactly the library's samples (as 8-bit images)."""
    import numpy as np
    from PIL import Image

    from cfebm.data import to_uint8

    ckpt = str(tiny_run / "checkpoints" / "latest.pt")
    assert main(["sample", ckpt, "--n", "3", "--seed", "5", "--steps", "2", "--noise", "0.1",
                 "--no-ema", "--each", str(tmp_path / "each"), "--out",
                 str(tmp_path / "g.png"), "--no-progress"]) == 0
    x = load(ckpt, ema=False).sample(3, seed=5, steps=2, noise=0.1)
    files = sorted((tmp_path / "each").glob("*.png"))
    got = np.stack([np.asarray(Image.open(f)) for f in files])
    assert np.array_equal(got, to_uint8(x)[:, 0].numpy())


@pytest.mark.parametrize("argv, message", [
    (["sample", "x.pt", "--noise", "-1"], "must be >= 0"),
    (["sample", "x.pt", "--steps", "-2"], "must be >= 0"),
    (["sample", "x.pt", "--n", "0"], "must be >= 1"),
])
def test_negative_counts_and_noise_are_refused_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_resume_without_a_checkpoint_needs_a_preset(tmp_path, capsys):
    assert main(["train", "--run-dir", str(tmp_path / "empty"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "holds no checkpoint" in err and err.count("\n") == 1


def test_from_state_copies_and_leaves_training_untouched(tiny_run):
    from cfebm.train.checkpoint import load_state

    state = load_state(tiny_run / "checkpoints" / "latest.pt")
    model = TrainedModel.from_state(state, ema=False)
    assert state.net.training and all(p.requires_grad for p in state.net.parameters())
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with frozen(state.net):
        expected = state.net(x, 0.5)
    assert torch.equal(model.energy(x), expected)
    y = langevin_cfg(model.energy, x, 1, model.cfg.sampler)
    assert y.shape == x.shape and not torch.equal(F.avg_pool2d(y, 2), F.avg_pool2d(x, 2))


def test_frozen_coarse_copies_travel_in_the_export(tmp_path):
    """A model trained with sampler.init=frozen samples its 8² scale with the frozen copy of
    stage 0; the export carries that copy, so both files give the same samples."""
    run_dir = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--run-dir", str(run_dir), "--no-progress",
                 "--set", "sampler.init=frozen"]) == 0
    model = load(run_dir / "checkpoints" / "latest.pt")
    assert len(model.coarse) == 1 and model.schedule() == [(8, 5), (16, 5)]
    again = load(model.export(tmp_path / "m.safetensors"))
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    assert torch.equal(model.coarse[0](x), again.coarse[0](x))
    assert not torch.equal(model.coarse[0](x), model.net(x))
    assert torch.equal(model.sample(4, seed=2), again.sample(4, seed=2))


def test_the_packaged_fmnist32_2h_model_loads_by_name_and_prefers_garments_to_noise(
        tmp_path, fashion_mnist_available):
    """cfebm/weights/fmnist32-2h.safetensors (its model card: cfebm/weights/fmnist32-2h.md)."""
    from cfebm.data import load_images, to_float

    model = load("fmnist32-2h", device="cpu")
    assert (model.resolution, model.channels, model.beta, model.weights) == (32, 1, 1.0, "trained")
    assert main(["sample", "fmnist32-2h", "--n", "2", "--steps", "1", "--out",
                 str(tmp_path / "s.png"), "--no-progress"]) == 0
    images = load_images(model.cfg.data, split="test", resolution=32, image_channels=1)
    garments = to_float(images.get_batch(torch.arange(64)))
    noise = torch.rand(64, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert model.energy(garments).mean() < model.energy(noise).mean()


def test_training_grids_sample_with_the_frozen_coarse_copies(tmp_path):
    """`save_samples` draws a frozen-init run's grid through its frozen 8² copy, exactly as the
    run samples its negatives; without the copy (the bug of issue 7) the grid differs."""
    import numpy as np
    from PIL import Image

    from cfebm.chains import sample_negatives
    from cfebm.data import to_uint8
    from cfebm.train.checkpoint import load_state
    from cfebm.train.loop import save_samples

    run_dir = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--run-dir", str(run_dir), "--no-progress",
                 "--set", "sampler.init=frozen", "--stop-at", "160"]) == 0
    state = load_state(run_dir / "checkpoints" / "latest.pt")
    assert len(state.coarse) == 1
    grid = np.asarray(Image.open(save_samples(state, tmp_path / "g.png")))

    def expected(coarse):
        g = torch.Generator().manual_seed(state.cfg.train.seed + 1)
        with frozen(state.net):
            x = sample_negatives(state.net, state.growth, state.cfg.run.n_grid,
                                 state.cfg.sampler, coarse=coarse, generator=g)
        return to_uint8(x)

    with_copy, without = expected(state.coarse), expected([])
    assert not torch.equal(with_copy, without)
    first = grid[16:16 + 128:8, 16:16 + 128:8]  # top-left sample: 2 px padding, then 8× scale
    assert np.array_equal(first, with_copy[0, 0].numpy())
