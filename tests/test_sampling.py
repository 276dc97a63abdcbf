import math
import re
import weakref

import pytest
import torch
from conftest import gaussian_energy as standard_gaussian_energy

from cfebm.chains import sample_negatives, sampling_schedule
from cfebm.config import ConfigError, ModelConfig, SamplerConfig
from cfebm.growth import Growth
from cfebm.model import EnergyNet, frozen
from cfebm.sampling import (
    Slice,
    Streams,
    cascade,
    coarse_step_count,
    energy_of,
    init_noise,
    init_uniform,
    langevin,
    langevin_cfg,
    mix_with_noise,
    noise_schedule,
    smooth_init,
    step_size_at,
    upsample,
)

MU, S = 0.3, 0.5


def gaussian_energy(x):
    return standard_gaussian_energy(x, MU, S)  # N(μ, s² I)


def test_langevin_matches_gaussian_stationary_distribution():
    # With step h and noise std √(2h) (Eq. 3 with η = 2h), the chain targets N(μ, s²). The
    # discretised chain is exactly AR(1): its stationary variance is s² / (1 − h / (2 s²)).
    h, n_steps = 0.01, 600
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4000, 1, 2, 2, generator=g) * 2 - 1
    x = langevin(gaussian_energy, x0, n_steps, h, math.sqrt(2 * h), clamp=None, generator=g)
    exact_var = S**2 / (1 - h / (2 * S**2))
    assert x.mean().item() == pytest.approx(MU, abs=0.02)
    assert x.var().item() == pytest.approx(exact_var, rel=0.04)
    assert x.var().item() == pytest.approx(S**2, rel=0.06)


def test_langevin_without_noise_is_gradient_descent_to_the_mode():
    x = langevin(gaussian_energy, torch.zeros(3, 1, 2, 2), 200, 0.05, 0.0, clamp=None)
    torch.testing.assert_close(x, torch.full_like(x, MU), atol=1e-6, rtol=0)


def test_single_step_is_the_update_rule():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x0 = torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    x1 = langevin(gaussian_energy, x0, 1, 0.1, 0.2, clamp=None, generator=g1)
    expected = x0 - 0.1 * (x0 - MU) / S**2 + 0.2 * torch.randn(x0.shape, generator=g2)
    torch.testing.assert_close(x1, expected)


def test_masked_pixels_stay_exactly_fixed():
    net = EnergyNet(ModelConfig(channels=4, image_channels=1, max_resolution=16))
    x0 = torch.rand(4, 1, 16, 16) * 2 - 1
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8, :] = 1
    with frozen(net):
        x = langevin(net, x0, 10, 1.0, 0.05, mask=mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x[..., :8, :], x0[..., :8, :])
    assert not torch.equal(x[..., 8:, :], x0[..., 8:, :])


def test_same_seed_same_samples_and_no_parameter_grads():
    net = EnergyNet(ModelConfig(channels=4, image_channels=1, max_resolution=16))
    cfg = SamplerConfig()
    def algorithm2(seed):
        g = torch.Generator().manual_seed(seed)
        return cascade([net], init_uniform(4, 1, 16, generator=g), [5], cfg, generator=g)

    with frozen(net):
        a, b, c = algorithm2(3), algorithm2(3), algorithm2(4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert all(p.grad is None for p in net.parameters())
    assert a.min() >= -1 and a.max() <= 1


def test_callback_sees_every_step_and_the_gradient():
    seen = []
    x0 = torch.zeros(2, 1, 2, 2)
    langevin(gaussian_energy, x0, 4, 0.1, 0.0, clamp=None, callback=seen.append)
    assert [s.i for s in seen] == [0, 1, 2, 3]
    torch.testing.assert_close(seen[0].grad, (x0 - MU) / S**2)
    torch.testing.assert_close(seen[0].energy, gaussian_energy(x0))


def test_no_graph_outlives_its_step():
    # Memory cannot grow with the number of steps if every step's intermediate tensors are
    # freed before the next step ends: weak references to them must all be dead by then.
    refs = []

    def energy(x):
        h = torch.tanh(x)
        refs.append(weakref.ref(h))
        return (h**2).flatten(1).sum(1)

    alive_before = []
    langevin(energy, torch.rand(2, 1, 4, 4), 20, 0.1, 0.01,
             callback=lambda s: alive_before.append(sum(r() is not None for r in refs[:-1])))
    assert alive_before == [0] * 20


@pytest.mark.parametrize("kind", ["std_linear", "variance_linear", "a2", "constant"])
def test_noise_schedules(kind):
    s = noise_schedule(kind, 10, 0.04)
    assert s.shape == (10,) and (s >= 0).all()
    if kind == "std_linear":   # std 0.04, 0.04·8/9, …, 0: equal decrements of the std
        torch.testing.assert_close(s, 0.04 * (1 - torch.arange(10, dtype=torch.float64) / 9))
    elif kind == "variance_linear":   # the variance 0.04 falls by equal decrements to 0
        torch.testing.assert_close(s**2, 0.04 * (1 - torch.arange(10, dtype=torch.float64) / 9))
    elif kind == "a2":
        t = torch.arange(1, 11, dtype=torch.float64)
        torch.testing.assert_close(s**2, 0.04 - 0.04 / (10 - t + 1))
        assert s[-1] == 0
    else:   # exactly η0 in double precision, like every schedule (not float32's 0.04)
        assert torch.equal(s, torch.full((10,), 0.04, dtype=torch.float64))
    with pytest.raises(ValueError, match="choose 'std_linear', 'variance_linear', 'a2' or"):
        noise_schedule("cosine", 3, 0.1)


def test_schedule_shape_is_checked():
    with pytest.raises(ValueError, match="expected"):
        langevin(gaussian_energy, torch.zeros(1, 1, 2, 2), 3, 0.1, torch.zeros(4))


def test_mix_with_noise():
    up, noise = torch.ones(2, 1, 4, 4), -torch.ones(2, 1, 4, 4)
    assert torch.equal(mix_with_noise(up, noise, 0.0), up)
    assert torch.equal(mix_with_noise(up, noise, 1.0), noise)
    b = 0.6
    torch.testing.assert_close(mix_with_noise(up, noise, b), (math.sqrt(1 - b * b) - b) * up)
    torch.testing.assert_close(mix_with_noise(up, noise, b, "linear"), (1 - 2 * b) * up)
    with pytest.raises(ValueError, match="unknown mix 'cubic'"):
        mix_with_noise(up, noise, b, "cubic")


def test_smooth_init_at_beta_zero_is_the_upsampled_coarse_chain():
    cfg = SamplerConfig()
    net = EnergyNet(ModelConfig(channels=4, image_channels=1, max_resolution=16))
    with frozen(net):
        x = smooth_init(net, 3, 1, 16, 0.0, 7, cfg, generator=torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(0)
        coarse = langevin_cfg(net, init_uniform(3, 1, 8, generator=g), 7, cfg, generator=g)
    assert torch.equal(x[..., ::2, ::2], coarse) and torch.equal(x[..., 1::2, 1::2], coarse)


def test_sample_negatives_uses_the_coarse_chain_only_while_fading():
    net = EnergyNet(ModelConfig(channels=4, image_channels=1, max_resolution=16))
    cfg = SamplerConfig()
    steps = []

    def counting_net(x, beta=1.0):
        steps.append((x.shape[-1], beta))
        return net(x, beta)

    counting_net.cfg = net.cfg
    fading = Growth(1, 16, 0.25, 10, 4, 1e-3, n_steps=4, n_steps_coarse=8,
                    cascade=((8, 8), (16, 4)))
    with frozen(net):
        x = sample_negatives(counting_net, fading, 2, cfg, generator=torch.Generator())
    assert x.shape == (2, 1, 16, 16)
    assert steps == [(8, 1.0)] * 6 + [(16, 0.25)] * 4   # ⌊8·(1−0.25)⌋ = 6 coarse steps
    steps.clear()
    grown = Growth(1, 16, 1.0, 10, 4, 1e-3, n_steps=4, n_steps_coarse=8,
                    cascade=((8, 8), (16, 4)))
    with frozen(net):
        sample_negatives(counting_net, grown, 2, cfg, generator=torch.Generator())
    assert steps == [(16, 1.0)] * 4


def test_nested_noise_pools_to_the_uniform_noise_of_the_first_resolution():
    """Its first draw is U(−1, 1) at the first resolution; every 2×2 block (at 16²) or 4×4
    block (at 32²) averages exactly to that draw's pixel, and every value lies in [−1, 1]."""
    for r in (16, 32):
        x = init_noise(64, 1, r, "nested", first=8, generator=torch.Generator().manual_seed(3))
        coarse = init_uniform(64, 1, 8, generator=torch.Generator().manual_seed(3))
        k = r // 8
        blocks = x.unfold(2, k, k).unfold(3, k, k)          # (N, C, 8, 8, k, k)
        assert x.abs().max() <= 1 and x.std() > coarse.std()  # the blocks are not flat
        torch.testing.assert_close(blocks.mean((-2, -1)), coarse, rtol=0, atol=1e-6)
    assert torch.equal(init_noise(4, 1, 8, "nested", first=8,
                                  generator=torch.Generator().manual_seed(1)),
                       init_uniform(4, 1, 8, generator=torch.Generator().manual_seed(1)))


def test_nested_noise_is_the_documented_blend_of_the_generators_uniform_draws():
    """x_r = c + (1 − |c|)·(u − up(pool(u))) / 1.5 with c = up(x_{r/2}): U(−1, 1) at the first
    resolution, then one U(−1, 1) draw u per doubling, in that order from the generator
    (up: 2× nearest, written out here with repeat_interleave)."""
    def up(t):
        return t.repeat_interleave(2, -1).repeat_interleave(2, -2)

    g = torch.Generator().manual_seed(5)
    expected = torch.rand(3, 2, 4, 4, generator=g) * 2 - 1
    for r in (8, 16):
        u = torch.rand(3, 2, r, r, generator=g) * 2 - 1
        pooled = u.unfold(2, 2, 2).unfold(3, 2, 2).mean((-2, -1))
        c = up(expected)
        expected = c + (1 - c.abs()) * (u - up(pooled)) / 1.5
    x = init_noise(3, 2, 16, "nested", first=4, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["uniform", "nested"])
def test_start_noise_is_made_on_the_device_asked_for(kind):
    """Every draw on ``device``, checked without a GPU on PyTorch's "meta" device (shapes only),
    which the CPU-default device never matches."""
    x = init_noise(2, 1, 16, kind, first=4, device="meta")
    assert x.device.type == "meta" and x.shape == (2, 1, 16, 16)


def test_nested_noise_keeps_its_coarse_spread_where_uniform_noise_loses_it():
    """Pooled to 8², U(−1, 1) at 32² has std 0.577/4 (means of 16 draws); nested noise keeps
    the std of U(−1, 1) at 8², 1/√3."""
    g = torch.Generator().manual_seed(0)
    pooled = {kind: torch.nn.functional.avg_pool2d(
        init_noise(256, 1, 32, kind, first=8, generator=g), 4).std().item()
        for kind in ("uniform", "nested")}
    assert abs(pooled["uniform"] - 1 / math.sqrt(3) / 4) < 0.01
    assert abs(pooled["nested"] - 1 / math.sqrt(3)) < 0.01


def test_start_noise_reaches_both_starts_of_the_training_chains():
    """With no Langevin steps a grown model's negatives are the start noise itself, and a
    fading model's mixing noise is too (β = 1 at the coarse chain's end keeps none of it)."""
    net = EnergyNet(ModelConfig(channels=4, image_channels=1, max_resolution=16))
    cfg = SamplerConfig(start_noise="nested")
    grown = Growth(1, 16, 1.0, 10, 4, 1e-3, n_steps=0, n_steps_coarse=0,
                   cascade=((8, 0), (16, 0)))
    with frozen(net):
        x = sample_negatives(net, grown, 3, cfg, generator=torch.Generator().manual_seed(2))
        start = smooth_init(net, 3, 1, 16, 1.0, 0, cfg, first=8,
                            generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    assert torch.equal(x, init_noise(3, 1, 16, "nested", first=8, generator=g))
    g = torch.Generator().manual_seed(2)
    init_noise(3, 1, 8, "nested", first=8, generator=g)     # the coarse chain's start
    assert torch.equal(start, init_noise(3, 1, 16, "nested", first=8, generator=g))
    with pytest.raises(ValueError, match="first stage"):
        init_noise(1, 1, 16, "nested", first=None)
    with pytest.raises(ConfigError, match="start_noise"):
        SamplerConfig(start_noise="gaussian")


def test_coarse_step_count():
    assert [coarse_step_count(25, b) for b in (0.0, 0.5, 0.75, 0.99, 1.0)] == [25, 12, 6, 0, 0]


def test_cascade_runs_every_scale():
    net = EnergyNet(ModelConfig(channels=4, image_channels=1, max_resolution=32))
    seen = []
    with frozen(net):
        x = cascade([energy_of(net, 1.0)] * 3, init_uniform(2, 1, 8), [2, 2, 2], SamplerConfig(),
                    generator=torch.Generator(), callback=lambda s: seen.append(s.x.shape[-1]))
    assert x.shape == (2, 1, 32, 32) and seen == [8, 8, 16, 16, 32, 32]
    with pytest.raises(ValueError, match="energies"):
        cascade([net, net], init_uniform(2, 1, 8), [2], SamplerConfig())


def test_cascade_passes_the_test_time_noise_to_every_scale():
    """``eta0`` replaces the config's η0 at each scale: with η0 = 0 and no drift nothing moves."""
    def energy(x, beta=1.0):  # flat: no drift
        return (0.0 * x).flatten(1).sum(1)

    x0 = init_uniform(2, 1, 4, generator=torch.Generator().manual_seed(1))
    x = cascade([energy, energy], x0, [3, 3], SamplerConfig(eta0=0.5), eta0=0.0,
                generator=torch.Generator().manual_seed(2))
    assert torch.equal(x, upsample(x0))


def test_the_cascade_chains_of_a_model_run_at_the_test_time_noise():
    """``eta0`` reaches every scale of ``sampler.init = "cascade"``'s chains: each of the 3 + 2
    steps draws noise of std 0 at η0 = 0; without it, the config's std falls linearly from
    η0 = 0.5 to 0 at each scale (the default "std_linear" schedule)."""
    net = EnergyNet(ModelConfig(channels=4, image_channels=1, max_resolution=16))
    grown = Growth(1, 16, 1.0, 10, 4, 1e-3, n_steps=2, n_steps_coarse=3,
                   cascade=((8, 3), (16, 2)))
    cfg = SamplerConfig(init="cascade", eta0=0.5, noise_schedule="std_linear")
    for eta0, stds in ((0.0, [0.0] * 5), (None, [0.5, 0.25, 0.0, 0.5, 0.0])):
        seen = []
        with frozen(net):
            sample_negatives(net, grown, 2, cfg, eta0=eta0, generator=torch.Generator(),
                             callback=seen.append)
        assert [s.x.shape[-1] for s in seen] == [8] * 3 + [16] * 2
        assert [s.noise_std for s in seen] == stds


def test_a_single_chain_reports_each_step_to_the_callback():
    net = EnergyNet(ModelConfig(channels=4, image_channels=1, max_resolution=16))
    grown = Growth(1, 16, 1.0, 10, 4, 1e-3, n_steps=5, n_steps_coarse=3,
                   cascade=((8, 3), (16, 5)))
    seen = []
    with frozen(net):
        sample_negatives(net, grown, 2, SamplerConfig(), generator=torch.Generator(),
                         callback=lambda s: seen.append(s.x.shape[-1]))
    assert seen == [16] * 5


def test_cascade_init_ignores_frozen_copies_it_was_not_asked_to_use():
    """init="cascade" samples every scale with the net itself even when frozen copies exist."""
    net = EnergyNet(ModelConfig(channels=4, image_channels=1, max_resolution=16))
    other = EnergyNet(ModelConfig(channels=4, image_channels=1, max_resolution=16))
    growth = Growth(1, 16, 1.0, 10, 4, 1e-3, n_steps=2, n_steps_coarse=2,
                    cascade=((8, 4), (16, 2)))
    cfg = SamplerConfig(init="cascade")
    with frozen(net), frozen(other):
        plain = sample_negatives(net, growth, 3, cfg, generator=torch.Generator().manual_seed(0))
        given = sample_negatives(net, growth, 3, cfg, coarse=[other],
                                 generator=torch.Generator().manual_seed(0))
        used = sample_negatives(net, growth, 3, SamplerConfig(init="frozen"), coarse=[other],
                                generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain, given) and not torch.equal(plain, used)


def test_sampling_schedule_is_algorithm2_or_the_cascade():
    from cfebm.config import GrowthConfig
    from cfebm.growth import growth_at, total_images

    growth, cfg = growth_at(total_images(GrowthConfig()), GrowthConfig()), SamplerConfig()
    assert sampling_schedule(growth, cfg) == [(32, 50)]
    assert sampling_schedule(growth, cfg, cascade=True) == [(8, 15), (16, 30), (32, 50)]
    assert sampling_schedule(growth, cfg, steps=0, cascade=True) == [(8, 0), (16, 0), (32, 0)]
    assert sampling_schedule(growth, SamplerConfig(init="frozen")) == [(8, 15), (16, 30), (32, 50)]


def test_cascade_init_starts_from_the_coarsest_noise_and_runs_every_stage():
    net = EnergyNet(ModelConfig(channels=4, image_channels=1, max_resolution=16))
    steps = []

    def counting_net(x, beta=1.0):
        steps.append((x.shape[-1], beta))
        return net(x, beta)

    counting_net.cfg = net.cfg
    fading = Growth(1, 16, 0.25, 10, 4, 1e-3, n_steps=4, n_steps_coarse=8,
                    cascade=((8, 3), (16, 4)))
    with frozen(net):
        sample_negatives(counting_net, fading, 2, SamplerConfig(init="cascade"),
                         generator=torch.Generator())
    assert steps == [(8, 1.0)] * 3 + [(16, 0.25)] * 4
    assert sampling_schedule(fading, SamplerConfig(), cascade=True) == [(8, 3), (16, 4)]
    assert sampling_schedule(fading, SamplerConfig()) == [(16, 4)]


def test_cascade_init_hands_the_fine_chain_an_upsampled_coarse_image():
    # With no drift and no noise the chains stay put, so the 16² chain's start is visible:
    # a 2×-upsampled 8² uniform image (constant 2×2 blocks), where noise init has no blocks.
    net = EnergyNet(ModelConfig(channels=4, image_channels=1, max_resolution=16))
    growth = Growth(1, 16, 1.0, 10, 4, 1e-3, n_steps=2, n_steps_coarse=2,
                    cascade=((8, 2), (16, 2)))
    still = {"step_size": 1e-30, "eta0": 0.0}
    with frozen(net):
        x = sample_negatives(net, growth, 3, SamplerConfig(init="cascade", **still),
                             generator=torch.Generator().manual_seed(0))
        y = sample_negatives(net, growth, 3, SamplerConfig(**still),
                             generator=torch.Generator().manual_seed(0))
    blocks = x[..., ::2, ::2]
    assert torch.equal(x, upsample(blocks))
    assert torch.equal(blocks, init_uniform(3, 1, 8, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(y, upsample(y[..., ::2, ::2]))


def test_frozen_init_samples_each_coarse_scale_with_its_own_copy():
    net = EnergyNet(ModelConfig(channels=4, image_channels=1, max_resolution=16))
    calls = []

    def recording(name, model):
        def energy(x, beta=1.0):
            calls.append((name, x.shape[-1], beta))
            return model(x, beta)
        energy.cfg = model.cfg
        return energy

    coarse = EnergyNet(ModelConfig(channels=4, image_channels=1, max_resolution=16))
    growth = Growth(1, 16, 0.5, 10, 4, 1e-3, n_steps=2, n_steps_coarse=3,
                    cascade=((8, 3), (16, 2)))
    with frozen(net), frozen(coarse):
        sample_negatives(recording("live", net), growth, 2, SamplerConfig(init="frozen"),
                         coarse=[recording("stage 0", coarse)], generator=torch.Generator())
    assert calls == [("stage 0", 8, 1.0)] * 3 + [("live", 16, 0.5)] * 2


@pytest.mark.parametrize("every_step", [True, False])
def test_clamp_every_step_or_only_at_the_end(every_step):
    """E(x) = −3·Σx pushes every pixel up by 3 per step: clamped after each step the chain sits
    at 1 throughout; clamped only at the end (the authors' scripts) it runs past 1 first."""
    cfg = SamplerConfig(eta0=0.0, clamp_every_step=every_step)
    seen = []
    x = langevin_cfg(lambda x: -3.0 * x.flatten(1).sum(1), torch.zeros(2, 1, 4, 4), 3, cfg,
                     callback=lambda s: seen.append(s.x.max().item()))
    assert torch.equal(x, torch.ones_like(x))
    assert seen == ([1.0, 1.0, 1.0] if every_step else [3.0, 6.0, 9.0])


def test_streams_give_each_chain_its_own_numbers_whatever_the_batch():
    """Chains 0–149 drawn as one batch or as batches of 50 and 100 get the same numbers."""
    whole = init_uniform(150, 1, 4, generator=Streams.for_chains(7, 0, 150))
    parts = [init_uniform(50, 1, 4, generator=Streams.for_chains(7, 0, 50)),
             init_uniform(100, 1, 4, generator=Streams.for_chains(7, 50, 100))]
    assert torch.equal(whole, torch.cat(parts))
    assert not torch.equal(whole, init_uniform(150, 1, 4, generator=Streams.for_chains(8, 0, 150)))
    assert not torch.equal(whole[:50], whole[50:100])
    with pytest.raises(ValueError, match="multiple of 50"):
        Streams.for_chains(7, 10, 50)


def test_a_slice_outside_its_batch_is_refused_naming_its_rows():
    """A data-parallel rank's rows [start, start + n) must lie inside the global batch."""
    assert Slice(torch.Generator(), 2, 2, 4).n == 2
    for start, n in ((3, 2), (-1, 2)):
        message = f"rows [{start}, {start + n}) are not in a batch of 4"
        with pytest.raises(ValueError, match=re.escape(message)):
            Slice(torch.Generator(), start, n, 4)


@pytest.mark.parametrize("base, drift_matches", [(8, True), (0, False)])
def test_a_step_proportional_to_the_pixel_count_moves_the_pooled_image_as_the_coarse_chain(
        base, drift_matches):
    """E16(x) = E8(avgpool x) gives each 16² pixel a quarter of the coarse gradient; with the
    step scaled by (16/8)² the pooled noiseless chain is the 8² chain itself, step for step.
    With one step size for every resolution (the paper) it moves a quarter as far."""
    cfg = SamplerConfig(step_size=0.05, eta0=0.0, step_base_resolution=base)

    def fine(x):
        return gaussian_energy(torch.nn.functional.avg_pool2d(x, 2))

    x8 = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(4)) * 2 - 1
    coarse = langevin_cfg(gaussian_energy, x8, 7, cfg)
    pooled = torch.nn.functional.avg_pool2d(langevin_cfg(fine, upsample(x8), 7, cfg), 2)
    assert torch.allclose(pooled, coarse, atol=1e-6) == drift_matches
    one_step = torch.nn.functional.avg_pool2d(langevin_cfg(fine, upsample(x8), 1, cfg), 2)
    quarter = 0.25 if base == 0 else 1.0
    torch.testing.assert_close(one_step, x8 - quarter * 0.05 * (x8 - MU) / S**2)


def test_step_size_at_each_resolution():
    cfg = SamplerConfig(step_size=0.5, step_base_resolution=16)
    assert [step_size_at(r, cfg) for r in (8, 16, 32)] == [0.125, 0.5, 2.0]
    assert step_size_at(32, SamplerConfig(step_size=0.5)) == 0.5
    with pytest.raises(ConfigError, match="step_base_resolution"):
        SamplerConfig(step_base_resolution=-1)
