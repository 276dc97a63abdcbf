"""The sampler and the fading energy against answers computed without them.

- Langevin on a correlated Gaussian energy: the discretised chain is a vector AR(1) process
  whose stationary covariance is known exactly, *including the off-diagonal terms*, so noise
  that is shared between pixels (or between chains) shows up even where each pixel's own mean
  and variance look right.
- The fading energy of Sec. 3.2(i): E(x; β) is the rest of the network applied to
  β·Primal(x) + (1−β)·Fade(x), with both paths computed here from the blocks themselves.
"""

import torch
import torch.nn.functional as F

from cfebm.config import ModelConfig
from cfebm.model import EnergyNet
from cfebm.sampling import langevin

# A 4-pixel (1×2×2) Gaussian N(μ, Σ) with strong, unequal correlations.
MU = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64)
SIGMA = 0.25 * torch.tensor([[1.0, 0.7, 0.3, -0.2],
                             [0.7, 1.0, 0.5, 0.1],
                             [0.3, 0.5, 1.0, 0.6],
                             [-0.2, 0.1, 0.6, 1.0]], dtype=torch.float64)
PRECISION = torch.linalg.inv(SIGMA)


def correlated_energy(x):
    # E(x) = ½ (x − μ)ᵀ Σ⁻¹ (x − μ) on x flattened to (N, 4).
    d = x.flatten(1) - MU
    return 0.5 * ((d @ PRECISION) * d).sum(1)


def test_langevin_matches_a_correlated_gaussian_full_covariance():
    """x ← x − h·P(x − μ) + √(2h)·ε is AR(1) with A = I − hP. Its stationary covariance C solves
    C = A C Aᵀ + 2h·I; as A and P commute, C = (P − (h/2)·P²)⁻¹, which tends to Σ as h → 0."""
    h, n_steps, n = 0.01, 800, 4000
    exact = torch.linalg.inv(PRECISION - 0.5 * h * PRECISION @ PRECISION)
    assert torch.linalg.eigvalsh(torch.eye(4, dtype=torch.float64) - h * PRECISION).abs().max() < 1
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(n, 1, 2, 2, generator=g, dtype=torch.float64) * 2 - 1
    x = langevin(correlated_energy, x0, n_steps, h, (2 * h) ** 0.5, clamp=None, generator=g)
    x = x.flatten(1)
    cov = torch.cov(x.T)
    # Standard errors: about 0.008 for the means and 0.005 for the covariances here.
    torch.testing.assert_close(x.mean(0), MU, atol=0.03, rtol=0)
    torch.testing.assert_close(cov, exact, atol=0.025, rtol=0)
    # The correlations themselves, which per-pixel checks cannot see.
    corr = cov / cov.diag().sqrt().outer(cov.diag().sqrt())
    exact_corr = exact / exact.diag().sqrt().outer(exact.diag().sqrt())
    torch.testing.assert_close(corr, exact_corr, atol=0.05, rtol=0)


def test_fading_energy_is_the_affine_blend_of_two_independent_paths():
    """Expand(x) = β·Primal_16(FromRGB_16(x)) + (1−β)·FromRGB_8(pool₂(x)), then the 8² block,
    the top and the head. Both paths are computed from the blocks directly; β = 1 is the
    primal path alone, and the default β is 1."""
    net = EnergyNet(ModelConfig(channels=4, image_channels=1, max_resolution=16)).eval()
    x = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        primal = net.blocks["16x16"](net.from_rgb["16x16"](x))      # (5, 16, 8, 8)
        fade = net.from_rgb["8x8"](F.avg_pool2d(x, 2))              # (5, 16, 8, 8)

        def rest(h):
            return net.head(net.top(net.blocks["8x8"](h))).squeeze(1)

        for beta in (0.0, 0.2, 0.5, 0.9, 1.0):
            torch.testing.assert_close(net(x, beta), rest(beta * primal + (1 - beta) * fade))
        torch.testing.assert_close(net(x), rest(primal))
        # The blend matters: halfway differs from either end.
        assert not torch.allclose(net(x, 0.5), net(x, 1.0))
        assert not torch.allclose(net(x, 0.5), net(x, 0.0))


def test_smooth_init_without_coarse_steps_is_the_configured_mix_of_two_uniform_draws():
    """With T(s−1)·(1−β) < 1 no coarse Langevin step runs, so Algorithm 1's smooth start is
    mix(Upsample(U₈), U₁₆) with U₈ then U₁₆ drawn from the generator in that order:
    √(1−β²)·up + β·U (variance-preserving, may leave [−1, 1]: clamped) or (1−β)·up + β·U
    ("linear")."""
    from cfebm.config import SamplerConfig
    from cfebm.sampling import smooth_init

    def energy(x):
        raise AssertionError("no coarse step should run")

    beta, n = 0.5, 64
    g = torch.Generator().manual_seed(0)
    u8 = torch.rand(n, 1, 8, 8, generator=g) * 2 - 1
    u16 = torch.rand(n, 1, 16, 16, generator=g) * 2 - 1
    up = u8.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    unclamped = (1 - beta**2) ** 0.5 * up + beta * u16
    assert unclamped.abs().max() > 1  # so the clamp is visible
    expected = {"sqrt": unclamped.clamp(-1, 1), "linear": (1 - beta) * up + beta * u16}
    for mix, want in expected.items():
        got = smooth_init(energy, n, 1, 16, beta, 1, SamplerConfig(mix=mix),
                          generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(got, want)
