"""Super-resolution as a linear constraint, avgpool(x) = y (issue 38): the projection is exact
and orthogonal, chains keep it to float precision, and on a Gaussian energy the projected
Langevin chain samples the constrained Gaussian, whose mean and variance are known in closed
form: for x ~ N(μ, s²I) and A = avgpool_f, x | Ax = y has mean μ + up_f(y − Aμ) and, per pixel,
variance s²(1 − 1/f²) (the f² pixels of a block share one linear constraint)."""

import pytest
import torch
from conftest import gaussian_energy

from cfebm.apps.restore import upscale
from cfebm.sampling import AveragePooled, downsample, langevin
from cfebm.trained import load


def test_the_projection_is_exact_idempotent_and_orthogonal():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(3, 2, 16, 16, generator=g) * 2 - 1, torch.rand(3, 2, 4, 4, generator=g)
    project = AveragePooled(y)
    p = project(x)
    torch.testing.assert_close(downsample(p, 4), y, rtol=0, atol=1e-6)
    torch.testing.assert_close(project(p), p, rtol=0, atol=1e-6)
    # x − P(x) is constant on each 4×4 block, so orthogonal to every image that pools to 0:
    # P(x) is the nearest image to x that pools to y
    zero_mean = torch.rand(3, 2, 16, 16, generator=g)
    zero_mean = zero_mean - torch.nn.functional.interpolate(downsample(zero_mean, 4),
                                                            scale_factor=4)
    assert abs(((x - p) * zero_mean).sum().item()) < 1e-4
    other = p + 0.1 * zero_mean  # also pools to y, and is further from x
    assert (x - other).norm() > (x - p).norm()


@pytest.mark.parametrize("factor", [2, 4])
def test_a_projected_gaussian_chain_samples_the_constrained_gaussian(factor):
    mu, s, h, n = 0.2, 0.3, 0.005, 4_000
    g = torch.Generator().manual_seed(1)
    y = (torch.rand(1, 1, 8 // factor, 8 // factor, generator=g) - 0.5).expand(n, -1, -1, -1)
    start = torch.rand(n, 1, 8, 8, generator=g) * 2 - 1
    x = langevin(lambda v: gaussian_energy(v, mu, s), start, 400, h, (2 * h) ** 0.5, clamp=None,
                 constraint=AveragePooled(y), generator=g)
    torch.testing.assert_close(downsample(x, 8 // factor), y, rtol=0, atol=1e-5)
    mean = mu + torch.nn.functional.interpolate(y[:1] - mu, scale_factor=factor)[0]
    torch.testing.assert_close(x.mean(0), mean, rtol=0, atol=0.02)
    # unadjusted Langevin on a Gaussian overshoots its variance by 1 / (1 − h / (2 s²))
    variance = s**2 * (1 - 1 / factor**2) / (1 - h / (2 * s**2))
    assert x.var(0).mean().item() == pytest.approx(variance, rel=0.05)


def test_a_trained_models_samples_pool_to_the_low_resolution_images(tiny_checkpoint):
    model = load(tiny_checkpoint)
    g = torch.Generator().manual_seed(2)
    truth = torch.rand(5, 1, 16, 16, generator=g) * 2 - 1
    y = downsample(truth, 8)
    start = torch.nn.functional.interpolate(y, scale_factor=2) + 0.3 * torch.randn(
        5, 1, 16, 16, generator=g)
    out = model.sample(start=start, pooled=y, steps=6, seed=0)
    torch.testing.assert_close(downsample(out, 8), y, rtol=0, atol=1e-6)
    assert not torch.allclose(out, torch.nn.functional.interpolate(y, scale_factor=2))
    with pytest.raises(ValueError, match="pooled images must be"):
        model.sample(start=start, pooled=downsample(truth, 8)[:3], steps=1)
    with pytest.raises(ValueError, match="need start images"):
        model.sample(4, pooled=y)


@pytest.mark.parametrize("method", ["nearest", "bicubic", "lanczos"])
def test_the_baselines_upscale_to_the_models_side_and_keep_a_flat_image_flat(method):
    flat = torch.full((2, 1, 8, 8), 0.25)
    torch.testing.assert_close(upscale(flat, 32, method), torch.full((2, 1, 32, 32), 0.25),
                               rtol=0, atol=1e-4)
    low = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    up = upscale(low, 32, method)
    assert up.shape == (2, 1, 32, 32) and up.abs().max() <= 1
    if method == "nearest":  # the only one that pools back exactly
        torch.testing.assert_close(downsample(up, 8), low, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="unknown upscaling"):
        upscale(low, 32, "cubic")
