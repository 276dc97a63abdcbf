"""Unpaired image-to-image translation (Sec. 3.3, Eq. 4): data, chains, saliency, runs.

Independent truths used: a chain of zero steps is its start, and one noiseless step from x is
clamp(x − h·∇E(x)) with ∇E from autograd; during a fade with no coarse steps the start is the
closed form (1 − β)·up(pool(x)) + β·x; masked pixels never move; domains come from the files
or classes they are defined by; a stopped and resumed run equals the straight one bit for bit.
"""

import contextlib
import copy

import numpy as np
import pytest
import torch
from PIL import Image
from test_recovery_resume import assert_same_run, poison_batch

from cfebm import guides
from cfebm.apps import translate
from cfebm.apps.figures import save_translation
from cfebm.chains import as_trained, translation_chain
from cfebm.cli import main
from cfebm.cli.train import translation_runs
from cfebm.config import apply_overrides, load_preset
from cfebm.data import downsample, to_float, to_uint8
from cfebm.data.domains import domains, texture_crops
from cfebm.data.readers import DataError
from cfebm.files import read
from cfebm.growth import growth_at
from cfebm.model import EnergyNet, frozen
from cfebm.sampling import step_size_at, upsample
from cfebm.train import loop, step
from cfebm.train.data import training_data
from cfebm.train.step import new_state
from cfebm.trained import TrainedModel
from cfebm.viz import save_grid


def textures(*overrides):
    """The tiny preset as a grass -> gravel translation run (no data files needed)."""
    return apply_overrides(load_preset("tiny"), ["task.kind=translate", "task.pair=grass2gravel",
                                                 *overrides])


def tiny_model(cfg=None, n_images=384) -> TrainedModel:
    cfg = cfg or textures()
    torch.manual_seed(0)
    return TrainedModel(EnergyNet(cfg.model), cfg, n_images)


def sources(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 16, 16, generator=g) * 1.6 - 0.8


# ------------------------------------------------------------------------------------------------
# Chains start at the source


def test_one_noiseless_step_starts_exactly_at_the_source():
    model = tiny_model()
    x = sources()
    out = translate.translate(model, x, steps=1, noise=0.0).output
    with torch.enable_grad():
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model.energy(xr).sum(), xr)
    h = model.cfg.sampler.step_size
    torch.testing.assert_close(out, (x - h * grad).clamp(-1, 1), rtol=0, atol=1e-6)
    assert torch.equal(translate.translate(model, x, steps=0).output, x)


def test_training_chain_starts_at_source_and_fades_from_the_pooled_source():
    cfg = textures("growth.n_steps=[0,0]")
    net = EnergyNet(cfg.model)
    x = sources()
    grown = growth_at(383, cfg.growth)
    assert not grown.fading
    with frozen(net):
        assert torch.equal(translation_chain(net, grown, x, cfg.sampler), x)
        mid = growth_at(128 + 16, cfg.growth)  # β = 16 / 64
        assert mid.beta == 0.25
        start = translation_chain(net, mid, x, cfg.sampler)
    expected = 0.75 * upsample(downsample(x, 8)) + 0.25 * x
    torch.testing.assert_close(start, expected, rtol=0, atol=1e-6)
    unsmoothed = textures("growth.n_steps=[0,0]", "sampler.smooth=false")
    with frozen(net):   # the ablation: mid-fade, the chain starts at the source itself
        assert torch.equal(translation_chain(net, mid, x, unsmoothed.sampler), x)


def test_training_chain_runs_algorithm_1s_coarse_steps_then_the_fine_chain():
    cfg = textures("growth.n_steps=[4,2]")
    net, sizes = EnergyNet(cfg.model), []
    with frozen(net):
        translation_chain(net, growth_at(128 + 16, cfg.growth), sources(), cfg.sampler,
                          callback=lambda step: sizes.append(step.x.shape[-1]))
    assert sizes == [8] * 3 + [16] * 2   # ⌊4·(1−0.25)⌋ = 3 coarse steps


def test_every_energy_of_a_translation_chain_runs_under_the_runs_precision():
    """A run's autocast (bf16 where it is native) is entered once per Langevin step, for the
    step's one gradient: the fade's 3 coarse steps and the 2 fine ones."""
    cfg = textures("growth.n_steps=[4,2]")
    net, entered = EnergyNet(cfg.model), []

    def autocast():
        entered.append(True)
        return contextlib.nullcontext()

    with frozen(net):
        translation_chain(net, growth_at(128 + 16, cfg.growth), sources(), cfg.sampler,
                          autocast=autocast)
    assert len(entered) == 3 + 2


def test_a_translation_chain_refuses_sources_not_at_the_stages_resolution():
    cfg = textures()
    net, x = EnergyNet(cfg.model), sources()
    with frozen(net):
        for wrong in (downsample(x, 8), x[..., :8], x[..., :8, :]):  # 8², 16 rows of 8, 8 of 16
            with pytest.raises(ValueError, match="must be 16x16"):
                translation_chain(net, growth_at(383, cfg.growth), wrong, cfg.sampler)


def test_a_mid_fade_model_translates_with_its_training_chain():
    """A model stopped at β = ¼ translates as it trained: with no coarse steps and no fine ones
    the output is the closed-form blend; with steps, the training chain from the same seeds,
    and the saliency and the recorded states stay at the model's resolution."""
    blend = tiny_model(textures("growth.n_steps=[0,0]"), n_images=128 + 16)
    x = sources()
    expected = 0.75 * upsample(downsample(x, 8)) + 0.25 * x
    torch.testing.assert_close(translate.translate(blend, x, steps=0).output, expected,
                               rtol=0, atol=1e-6)

    model = tiny_model(textures("growth.n_steps=[3,2]"), n_images=128 + 16)
    out = model.sample(start=x, translation=True, generator=torch.Generator().manual_seed(5))
    with frozen(model.net):
        chain = translation_chain(model.net, model.growth, x, model.cfg.sampler,
                                  generator=torch.Generator().manual_seed(5))
    assert torch.equal(out, chain)
    result = translate.translate(model, x, every=1)
    assert result.saliency.shape == (6, 1, 16, 16) and result.saliency.amax() > 0
    assert {tuple(s.shape[-2:]) for s in result.trajectory.states} == {(16, 16)}
    with pytest.raises(ValueError, match="mask"):
        model.sample(start=x, translation=True, mask=torch.ones(1, 1, 16, 16))


def test_a_translation_run_grid_is_its_test_sources_each_row_followed_by_their_chains(tmp_path):
    """Mid-fade (β = ¼), the run's sample grid holds rows of 8 source-domain test crops, each
    followed by the training chains (Eq. 4) started at them from the grid's seed."""
    cfg = textures("run.n_grid=16", "growth.n_steps=[3,2]")
    state = new_state(cfg)
    state.n_images = 128 + 16
    grid = np.asarray(Image.open(loop.save_samples(state, tmp_path / "grid.png")))

    crops = texture_crops("grass", "test", 16)[:8]
    with frozen(state.net):
        chains = translation_chain(state.net, state.growth, to_float(crops), cfg.sampler,
                                   generator=torch.Generator().manual_seed(cfg.train.seed + 1))
    assert not torch.equal(to_uint8(chains), crops)
    expected = save_grid(torch.cat([to_float(crops), chains]), tmp_path / "expected.png",
                         nrow=8, scale=8)
    assert np.array_equal(grid, np.asarray(Image.open(expected)))
    assert np.array_equal(grid[16:16 + 128:8, 16:16 + 128:8], crops[0, 0].numpy())


def test_translation_chains_run_one_chain_per_source_image():
    cfg = textures()
    with frozen(net := EnergyNet(cfg.model)), pytest.raises(ValueError, match="5 source images"):
        as_trained(net, growth_at(383, cfg.growth), 5, cfg.sampler, source=sources(6))


# ------------------------------------------------------------------------------------------------
# Saliency maps


@pytest.mark.parametrize("kind", ["gradient", "change"])
def test_saliency_is_nonnegative_image_sized_and_zero_where_the_chain_is_held(kind):
    model = tiny_model()
    x = sources(4)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :, :8] = 1  # the left half is held at the source
    result = translate.translate(model, x, steps=4, saliency=kind, mask=mask, every=2, keep=2)
    assert result.saliency.shape == result.raw.shape == (4, 1, 16, 16)
    assert (result.raw >= 0).all() and (result.saliency >= 0).all()
    assert result.saliency.amax(dim=(1, 2, 3)).allclose(torch.ones(4))
    assert (result.raw[..., :8] == 0).all() and (result.raw[..., 8:] > 0).any()
    assert torch.equal(result.output[..., :8], x[..., :8])
    assert len(result.trajectory.states) == 3 and torch.equal(result.trajectory.states[0], x[:2])


def test_gradient_saliency_of_one_step_is_the_mean_absolute_gradient():
    model = tiny_model()
    x = sources(3)
    result = translate.translate(model, x, steps=1, noise=0.0)
    with torch.enable_grad():
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model.energy(xr).sum(), xr)
    out = result.output  # a step pushing a pixel out of [−1, 1] moved nothing and counts 0
    moved = ~((out <= -1) & (grad > 0) | (out >= 1) & (grad < 0))
    torch.testing.assert_close(result.raw, (grad * moved).abs().mean(1, keepdim=True),
                               rtol=1e-5, atol=1e-7)
    assert (translate.translate(model, x, steps=0).raw == 0).all()


def test_translation_files(tmp_path):
    result = translate.translate(tiny_model(), sources(3), steps=3, every=1)
    paths = save_translation(result, tmp_path, grid=2, scale=2)
    assert sorted(p.name for p in (tmp_path / "saliency").iterdir()) == [
        "0000.png", "0001.png", "0002.png"]
    heat = np.array(Image.open(tmp_path / "saliency" / "0000.png"))
    assert heat.shape == (16, 16, 3)
    width, height = Image.open(paths["triplets"]).size  # 2 examples of 4 images in one row
    assert width == (8 * (16 + 2) + 2) * 2 and (16 + 4) * 2 < height < 2 * (16 + 4) * 2
    assert paths["strip"].is_file() and paths["gif"].is_file()


# ------------------------------------------------------------------------------------------------
# Domains and directions


def test_texture_directions_are_not_swapped():
    ab, ba = textures(), textures("task.direction=ba")
    n = ab.data.limit  # the tiny preset's: each domain keeps its first n crops
    grass, gravel = texture_crops("grass", "test", 16)[:n], texture_crops("gravel", "test", 16)[:n]
    d = domains(ab, "test")
    assert torch.equal(d.source.images, grass) and torch.equal(d.target.images, gravel)
    assert (d.source_name, d.target_name) == ("grass", "gravel")
    d = domains(ba, "test")
    assert torch.equal(d.source.images, gravel) and torch.equal(d.target.images, grass)
    target, stream = training_data(ab)
    assert torch.equal(target.images, texture_crops("gravel", "train", 16)[:n])
    assert torch.equal(stream.images.images, texture_crops("grass", "train", 16)[:n])
    d = domains(textures("data.limit=5"), "test")
    assert torch.equal(d.source.images, grass[:5]) and torch.equal(d.target.images, gravel[:5])


def test_texture_crops_are_pooled_crops_from_their_own_rows():
    from skimage import data as skdata

    from cfebm.data.domains import texture_positions

    image = torch.from_numpy(skdata.gravel()).float()
    for split, (low, high) in (("train", (0, 384)), ("test", (384, 512))):
        rows, cols = texture_positions(split, 32)
        assert rows.min() >= low and (rows + 32).max() <= high
        crops = texture_crops("gravel", split, 16)
        for k in (0, 7, len(crops) - 1):
            r, c = int(rows[k]), int(cols[k])
            expected = torch.nn.functional.avg_pool2d(image[None, None, r:r + 32, c:c + 32], 2)
            assert torch.equal(crops[k, 0].float(), expected[0, 0].round())
    with pytest.raises(DataError, match="up to 64 px"):
        texture_crops("grass", "test", 128)


@pytest.mark.fmnist
def test_fashion_mnist_pair_classes_and_direction():
    from cfebm.data.readers import fashion_mnist

    cfg = apply_overrides(load_preset("translate-fmnist"), ["task.direction=ba"])
    d = domains(cfg, "test")
    assert (d.source.labels == 9).all() and (d.target.labels == 7).all()
    assert (d.source_name, d.target_name) == ("Ankle boot", "Sneaker")
    x, y = fashion_mnist("", False, "test", 16)
    assert torch.equal(d.target.images, x[y == 7]) and len(d.source) == (y == 9).sum()


def test_direction_both_makes_two_runs(tmp_path):
    cfg = textures()
    runs = translation_runs(cfg, tmp_path, "both")
    assert [(p.name, c.task.direction) for p, c in runs] == [("ab", "ab"), ("ba", "ba")]
    assert translation_runs(cfg, tmp_path, None) == [(tmp_path, cfg)]


def test_direction_both_resumes_without_the_preset(tmp_path):
    from cfebm.files import read

    run = ["train", "--run-dir", str(tmp_path), "--direction", "both", "--no-progress"]
    assert main([*run, "--preset", "tiny", "--set", "task.kind=translate",
                 "--set", "task.pair=grass2gravel", "--stop-at", "32"]) == 0
    assert main([*run, "--resume", "--stop-at", "64"]) == 0  # the config comes from the runs
    for d in ("ab", "ba"):
        ckpt = read(tmp_path / d / "checkpoints" / "latest.pt")
        assert ckpt["n_images"] == 64 and ckpt["config"]["task"]["direction"] == d


def test_direction_on_a_generation_preset_is_one_line(capsys):
    assert main(["train", "--preset", "tiny", "--direction", "ba", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--direction is for translation presets" in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------------------------------------
# CycleGAN folders


def write_cyclegan(root, skip=(), sizes=((40, 30), (24, 24))):
    for split in ("train", "test"):
        for d, value in (("A", 60), ("B", 200)):
            if f"{split}{d}" in skip:
                continue
            folder = root / f"{split}{d}" / "sub"
            folder.mkdir(parents=True)
            for i, (w, h) in enumerate(sizes):
                Image.new("RGB", (w, h), (value, value, i * 50)).save(folder / f"{i}.png")
    return root


def cyclegan(root, *overrides):
    return apply_overrides(load_preset("tiny"), ["task.kind=translate", "task.pair=cyclegan",
                                                 f"data.root={root}", *overrides])


def test_cyclegan_folders_load_cropped_and_resized(tmp_path):
    cfg = cyclegan(write_cyclegan(tmp_path), "model.image_channels=3")
    d = domains(cfg, "train")
    a, b = d.source.get_batch(torch.arange(2)), d.target.get_batch(torch.arange(2))
    assert a.shape == b.shape == (2, 3, 16, 16)
    assert (a[:, 0] == 60).all() and (b[:, 0] == 200).all() and (b[1, 2] == 50).all()
    gray = domains(cyclegan(tmp_path, "task.direction=ba"), "test")
    assert gray.source.get_batch(torch.arange(2)).shape == (2, 1, 16, 16)
    assert "testB" in gray.source.name


@pytest.mark.parametrize("case, message", [
    ("missing", "trainB is missing"),
    ("empty", "holds no images"),
    ("small", "smaller than the 16x16"),
])
def test_bad_cyclegan_layouts_give_one_line(tmp_path, capsys, case, message):
    root = tmp_path / "data"
    if case == "missing":
        write_cyclegan(root, skip=("trainB",))
    elif case == "empty":
        write_cyclegan(root, skip=("trainA",))
        (root / "trainA").mkdir()
    else:
        write_cyclegan(root, sizes=((40, 30), (12, 20)))
    with pytest.raises(DataError, match=message):
        domains(cyclegan(root), "train")
    code = main(["train", "--preset", "tiny", "--set", "task.kind=translate", "--set",
                 "task.pair=cyclegan", "--set", f"data.root={root}", "--run-dir",
                 str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------
# Training runs


@pytest.mark.slow
def test_translation_resume_mid_fade_after_a_recovery_is_bitwise(tmp_path, monkeypatch):
    """Divergence at iteration 10 (rolled back to 128 images), stop at 176 images (stage 1,
    β = 0.75), resume to the end: bit for bit the straight run, source stream included."""
    cfg = textures("train.ema_decay=0.9", "data.hflip=true", "run.n_grid=16")
    real = loop.data_batch
    poison_batch(monkeypatch, call=10)
    straight = loop.run_training(cfg, tmp_path / "a", progress=False)
    poison_batch(monkeypatch, call=10)
    loop.run_training(cfg, tmp_path / "b", stop_at=176, progress=False)
    assert read(tmp_path / "b" / "checkpoints" / "latest.pt")["n_images"] == 176
    monkeypatch.setattr(loop, "data_batch", real)
    resumed = loop.run_training(cfg, tmp_path / "b", resume=True, progress=False)
    assert straight.n_images == 384 and straight.record.recoveries == 1
    assert_same_run(straight, resumed)
    assert (tmp_path / "a" / "samples" / "final.png").is_file()


@pytest.mark.slow
def test_translation_negatives_are_chains_from_the_source_stream(tmp_path, monkeypatch):
    """With T = 0 the negatives are the source batch itself: the run learns nothing but the
    difference of the two domains, and every batch it saw came from domain A (grass)."""
    cfg = textures("growth.n_steps=[0,0]", "growth.stage_images=[32,32]",
                   "growth.fade_images=[0,0]")
    grass = to_float(texture_crops("grass", "train", 16))
    seen = []
    real = loop.train_step

    def train_step(state, x_data, start=None):
        seen.append(start)
        return real(state, x_data, start)

    monkeypatch.setattr(loop, "train_step", train_step)
    loop.run_training(cfg, tmp_path, progress=False)
    assert len(seen) == 4 and seen[0].shape == (16, 1, 8, 8) and seen[-1].shape == (16, 1, 16, 16)
    pooled = downsample(grass, 8)
    assert all(any(torch.equal(row, p) for p in pooled) for row in seen[0][:3])


@pytest.mark.slow
def test_cli_translate_writes_what_the_library_computes(tmp_path, capsys):
    from cfebm.data import to_uint8
    from cfebm.trained import load

    cfg = textures("run.n_grid=16")
    loop.run_training(cfg, tmp_path / "run", stop_at=32, progress=False)
    ckpt = tmp_path / "run" / "checkpoints" / "latest.pt"
    out = tmp_path / "out"
    assert main(["translate", str(ckpt), "--n", "3", "--steps", "2", "--out", str(out),
                 "--no-progress"]) == 0
    model = load(ckpt)
    x = translate.source_images(model, None, 3)
    assert torch.equal(x, downsample(to_float(texture_crops("grass", "test", 16)[:3]), 8))
    expected = to_uint8(translate.translate(model, x, steps=2).output)
    written = torch.stack([torch.from_numpy(np.array(Image.open(out / "translated" /
                                                                f"{i:04d}.png")))
                           for i in range(3)])
    assert torch.equal(written, expected[:, 0])
    assert (out / "triplets.png").is_file() and (out / "chain" / "strip.png").is_file()
    assert main(["translate", str(ckpt), "--input", str(tmp_path / "nothing"), "--out",
                 str(out)]) == 2
    assert "neither an image nor a folder" in capsys.readouterr().err


def test_a_translation_runs_training_negatives_are_its_source_images():
    """Eq. (4) in Algorithm 1's step: with no Langevin steps at a stage that is not fading, the
    negatives are the source batch itself, so the step's E(samples) is the net's mean energy of
    the sources (noise chains would give that of uniform noise)."""
    state = new_state(textures("growth.n_steps=[0,0]"), torch.device("cpu"))
    assert not state.growth.fading
    x_data, start = (downsample(sources(seed=s), state.growth.resolution) for s in (1, 2))
    twin = copy.deepcopy(state.net).train()   # the step's forward (train mode) on a copy
    with torch.no_grad():
        expected = twin(torch.cat([x_data, start]), state.growth.beta)[len(x_data):].mean()
    metrics = step.train_step(state, x_data, start)
    assert metrics["e_sample"] == pytest.approx(expected.item(), rel=1e-6, abs=1e-7)


def test_a_guide_steers_a_translation_chain_as_it_steers_a_noise_chain():
    """One noiseless step from the sources with a reference guide λ/2·‖x − ref‖² moves each
    image by −h·(∇E(x) + λ(x − ref)), as for chains from noise."""
    model, x = tiny_model(), sources()
    ref = torch.full((1, 16, 16), 0.5)
    with torch.enable_grad():
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model.energy(xr).sum(), xr)
    h = step_size_at(16, model.cfg.sampler)
    with frozen(model.net):
        out = as_trained(model.net, model.growth, len(x), model.cfg.sampler, source=x, steps=1,
                         eta0=0.0, guide=guides.summed(guides.reference(ref, 2.0)))
    expected = (x - h * (grad + 2.0 * (x - ref))).clamp(-1, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_as_trained_with_its_defaults_draws_noise_chains_on_the_cpu():
    model = tiny_model()
    with frozen(model.net):
        x = as_trained(model.net, model.growth, 3, model.cfg.sampler, steps=0)
    assert x.shape == (3, 1, 16, 16) and x.device.type == "cpu"
    assert x.min() >= -1 and x.max() <= 1 and len(x.flatten(1).unique(dim=0)) == 3
