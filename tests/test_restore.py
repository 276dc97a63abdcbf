"""cfebm.apps: restoration and chains against closed forms (a Gaussian prior's posterior mean,
exact mask geometry, interpolation endpoints) and properties (known pixels bit-exact at every
step, chains that start where they are told, recording that does not change the samples)."""

import numpy as np
import pytest
import torch
from PIL import Image

from cfebm.apps import chains, restore
from cfebm.apps.restore import MaskError
from cfebm.config import apply_overrides, load_preset
from cfebm.growth import total_images
from cfebm.model import EnergyNet
from cfebm.trained import TrainedModel, load


class GaussianPrior(TrainedModel):
    """A TrainedModel whose energy is E(x) = ||x − μ||² / (2s²) per image; everything else
    (chains, streams, masks, clamping) is the real TrainedModel's."""

    def __init__(self, mu: float, s2: float, step_size: float):
        cfg = apply_overrides(load_preset("tiny"), [f"sampler.step_size={step_size}"])
        super().__init__(EnergyNet(cfg.model), cfg, total_images(cfg.growth))
        self.mu, self.s2 = mu, s2

    def energy(self, x):
        self.check_images(x)
        return ((x - self.mu) ** 2).flatten(1).sum(1) / (2 * self.s2)


def _gaussian_data(prior: GaussianPrior, sigma: float, n: int = 64):
    g = torch.Generator().manual_seed(0)
    x = prior.mu + prior.s2 ** 0.5 * torch.randn(n, 1, 16, 16, generator=g)
    y = x + sigma * torch.randn(x.shape, generator=g)
    assert y.abs().max() < 1  # no clamping anywhere, so the closed forms hold
    return x, y


def test_denoising_a_gaussian_prior_reaches_the_posterior_mean():
    """With s² = 2h one noiseless step from y shrinks y − μ by half; with σ² = s² the posterior
    mean E[x | y] = μ + s²/(s² + σ²)·(y − μ) is exactly that half way point."""
    prior = GaussianPrior(mu=0.2, s2=0.02, step_size=0.01)
    sigma = prior.s2 ** 0.5
    _, y = _gaussian_data(prior, sigma)
    posterior_mean = prior.mu + prior.s2 / (prior.s2 + sigma**2) * (y - prior.mu)
    torch.testing.assert_close(restore.denoise(prior, y, steps=0), y, rtol=0, atol=0)
    out = restore.denoise(prior, y, steps=1, noise=0.0)
    torch.testing.assert_close(out, posterior_mean, rtol=0, atol=1e-6)
    assert torch.equal(restore.denoise(prior, y, 0.1, noise=0.0), out)  # σ 0.1: one step
    # More steps keep shrinking toward μ: 2^−k of the way left.
    for k in (2, 3):
        torch.testing.assert_close(restore.denoise(prior, y, steps=k, noise=0.0),
                                   prior.mu + 0.5**k * (y - prior.mu), rtol=0, atol=1e-6)


def test_denoising_with_langevin_noise_nears_the_bayes_error():
    """The posterior mean's error E||x − E[x|y]||² per pixel is s²σ²/(s² + σ²) (here s²/2);
    the chain (one step, training's small η0) gets within a few percent of it, y does not."""
    prior = GaussianPrior(mu=-0.1, s2=0.02, step_size=0.01)
    sigma = prior.s2 ** 0.5
    x, y = _gaussian_data(prior, sigma, n=128)
    out = restore.denoise(prior, y, steps=1)
    bayes = prior.s2 * sigma**2 / (prior.s2 + sigma**2)
    assert abs(((y - x) ** 2).mean() / sigma**2 - 1) < 0.05
    assert abs(((out - x) ** 2).mean() / bayes - 1) < 0.05
    assert (out - x).pow(2).mean() < 0.6 * (y - x).pow(2).mean()


def test_corruption_has_the_asked_std_and_stays_in_range():
    x = torch.zeros(32, 1, 16, 16)
    y = restore.corrupt(x, 0.2, seed=3)
    assert abs(float(y.std()) - 0.2) < 0.01 and y.abs().max() <= 1
    assert torch.equal(y, restore.corrupt(x, 0.2, seed=3))
    assert not torch.equal(y, restore.corrupt(x, 0.2, seed=4))
    assert restore.corrupt(torch.ones(4, 1, 8, 8), 0.5).max() == 1  # clamped


def test_known_pixels_never_change_under_inpainting(tiny_checkpoint):
    model = load(tiny_checkpoint)
    x = restore.images_of(model, 4)
    mask = restore.make_mask("occlusion", 4, 16, seed=1)
    seen = []
    out = restore.inpaint(model, x, mask, completions=3, steps=6, noise=0.05,
                          callback=lambda s: seen.append(s.x.clone()))
    known = mask.bool().repeat_interleave(3, 0).expand(12, 1, 16, 16)
    xs = x.repeat_interleave(3, 0)
    for state in [*seen, out.flatten(0, 1)]:
        assert torch.equal(state[known], xs[known])
    assert len(seen) == 6 and out.shape == (4, 3, 1, 16, 16)
    assert restore.diversity(out, mask) > 0.05  # the completions differ where unknown
    # The first step starts from the image on known pixels and from U(−1, 1) elsewhere.
    first = restore.inpaint(model, x, mask, completions=3, steps=0)
    assert torch.equal(first.flatten(0, 1)[known], xs[known])
    assert not torch.equal(first.flatten(0, 1)[~known], xs[~known])


def test_inpainting_does_not_depend_on_the_batch_size(tiny_checkpoint):
    model = load(tiny_checkpoint)
    x = restore.images_of(model, 30)
    mask = restore.make_mask("pixels", 30, 16)
    a = restore.inpaint(model, x, mask, completions=2, steps=3, batch_size=50)
    b = restore.inpaint(model, x, mask, completions=2, steps=3, batch_size=250)
    # Same fills, same streams; a batch of 10 and one of 60 may round convolutions differently.
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind, hidden", [("centre", 0.25), ("occlusion", 0.25),
                                          ("right", 0.5), ("bottom", 0.5)])
def test_mask_geometry(kind, hidden):
    mask = restore.make_mask(kind, 6, 16, seed=2)
    assert mask.shape == (6, 1, 16, 16)
    assert torch.equal(1 - mask.mean((1, 2, 3)), torch.full((6,), hidden))
    holes = (mask == 0).nonzero()[:, 2:]
    if kind == "centre":
        assert holes.min() == 4 and holes.max() == 11
    if kind == "right":
        assert holes[:, 1].min() == 8 and (mask[..., :8] == 1).all()
    if kind == "bottom":
        assert holes[:, 0].min() == 8 and (mask[..., :8, :] == 1).all()
    if kind == "occlusion":  # an 8x8 square per image, not all in one place
        assert len({tuple((m[0] == 0).nonzero().min(0).values.tolist()) for m in mask}) > 1


def test_random_pixel_mask_hides_the_asked_fraction():
    mask = restore.make_mask("pixels", 64, 16, missing=0.3)
    assert abs(1 - float(mask.mean()) - 0.3) < 0.02


def _png(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def test_mask_images(tmp_path):
    a = np.full((16, 16), 255)
    a[4:12, 4:12] = 0
    mask = restore.load_mask(_png(tmp_path / "m.png", a), 16, 1)
    assert torch.equal(mask, torch.from_numpy(a == 255).float()[None, None])
    rgb = restore.load_mask(_png(tmp_path / "rgb.png", np.stack([a] * 3, -1)), 16, 1)
    assert torch.equal(rgb, mask)  # equal channels are one gray mask
    per_channel = np.stack([a, a, np.full((16, 16), 255)], -1)
    assert restore.load_mask(_png(tmp_path / "pc.png", per_channel), 16, 3).shape == (1, 3, 16, 16)
    with pytest.raises(MaskError, match="is 8x8 but the model works at 16x16"):
        restore.load_mask(_png(tmp_path / "small.png", a[:8, :8]), 16, 1)
    grey = a.copy()
    grey[0, 0] = 128
    with pytest.raises(MaskError, match="not binary: 1 pixel"):
        restore.load_mask(_png(tmp_path / "grey.png", grey), 16, 1)
    with pytest.raises(MaskError, match="3 different colour channels but the model has 1"):
        restore.load_mask(tmp_path / "pc.png", 16, 1)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(MaskError, match="cannot read mask image"):
        restore.load_mask(tmp_path / "junk.png", 16, 1)


@pytest.mark.parametrize("mask, message", [
    (torch.ones(1, 1, 8, 8), "mask is 8x8 but the images are 16x16"),
    (torch.zeros(1, 2, 16, 16), "2 channels but the images have 1"),
    (torch.zeros(3, 1, 16, 16), "3 masks for 4 images"),
    (torch.full((1, 1, 16, 16), 0.5), "only 0 .unknown. and 1"),
    (torch.ones(1, 1, 16, 16), "every pixel as known"),
    (torch.ones(16, 16), "must be .N, C, H, W."),
])
def test_bad_mask_tensors(mask, message):
    with pytest.raises(MaskError, match=message):
        restore.check_mask(mask, torch.zeros(4, 1, 16, 16))


def test_psnr_ssim_and_diversity_against_hand_values():
    x = torch.zeros(2, 1, 16, 16)
    psnr, ssim = restore.psnr_ssim(x + 0.1, x)
    np.testing.assert_allclose(psnr, 10 * np.log10(2.0**2 / 0.1**2))  # data range 2
    noisy = x + 0.3 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    same = restore.psnr_ssim(x.clone(), x)
    assert (same[0] == np.inf).all() and (same[1] == 1).all()
    assert (restore.psnr_ssim(noisy, x)[1] < 0.9).all() and (ssim < 1).all()
    mask = torch.ones(1, 1, 16, 16)
    mask[..., :4] = 0
    completions = torch.zeros(2, 3, 1, 16, 16)
    completions[:, 1, ..., :4] = 0.5         # completion 1 differs by 0.5 on the hole
    completions[:, 2, ..., 4:] = 0.9         # completion 2 only on known pixels: not counted
    assert restore.diversity(completions, mask) == pytest.approx((0.5 + 0.5 + 0) / 3)


def test_interpolation_paths():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(1, 8, 8, generator=g), torch.randn(1, 8, 8, generator=g)
    t = torch.linspace(0, 1, 5)
    for path in (chains.lerp, chains.slerp):
        p = path(x0, x1, t)
        torch.testing.assert_close(p[0], x0)
        torch.testing.assert_close(p[-1], x1)
    a = torch.tensor([1.0, 0.0])
    b = torch.tensor([0.0, 1.0])
    mid = chains.slerp(a, b, torch.tensor([0.5]))[0]
    torch.testing.assert_close(mid, torch.tensor([0.5**0.5, 0.5**0.5]))  # norm kept
    torch.testing.assert_close(chains.lerp(a, b, torch.tensor([0.5]))[0], torch.tensor([.5, .5]))


def test_interpolation_chains_share_their_langevin_noise():
    """With E ≡ 0 a chain moves by its noise alone, so every point of a pair moves alike."""
    flat = GaussianPrior(mu=0.0, s2=float("inf"), step_size=0.01)
    out = chains.interpolate(flat, pairs=2, points=4, steps=3, noise=0.02, seed=5, batch_size=4)
    again = chains.interpolate(flat, pairs=2, points=4, steps=0, seed=5)
    assert out["linear"].shape == (2, 4, 1, 16, 16)
    for kind in ("linear", "spherical"):
        moved = out[kind] - again[kind]  # (P, T, C, R, R)
        inside = (again[kind].abs() < 0.85).all(1, keepdim=True).expand_as(moved)
        for p in range(2):
            ref = moved[p, :1].expand_as(moved[p])
            torch.testing.assert_close(moved[p][inside[p]], ref[inside[p]])
        assert not torch.allclose(moved[0], moved[1])  # other pairs, other noise


def test_noise_sweep_uses_the_same_seeds(tiny_checkpoint):
    model = load(tiny_checkpoint)
    x = chains.noise_sweep(model, 3, [0.0, 0.05], steps=4, seed=7)
    assert x.shape == (2, 3, 1, 16, 16)
    assert torch.equal(x[0], model.sample(3, steps=4, noise=0.0, seed=7))
    assert not torch.equal(x[0], x[1])
    assert chains.noise_levels(model) == [0.0, 0.0075, 0.015, 0.03]


def test_recorded_chains_are_the_sampled_chains(tiny_checkpoint):
    model = load(tiny_checkpoint)
    x, traj = chains.sample_with_trajectory(model, 60, every=2, keep=5, steps=5, batch_size=50)
    assert torch.equal(x, model.sample(60, steps=5, batch_size=50))
    assert traj.steps == [2, 4, 5] and len(traj.energy) == 5 and traj.keep == 5
    assert torch.equal(traj.states[-1], x[:5]) and traj.states[0].shape == (5, 1, 16, 16)
    assert [r for r, _, _ in chains.energy_curves(traj)] == [16]
