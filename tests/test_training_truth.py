"""Training goes the right way: checks of ``train_step``, ``data_batch`` and a whole toy run
against answers known without running cfebm.

- For a linear energy E(x) = w·x + b the gradient of the loss of Eq. (2) is exactly
  mean(x_data) − mean(x_sample) for w and 0 for b. With a huge Langevin step and no noise, every
  chain ends in the energy's minimiser over [−1, 1]^d, x_sample = −sign(w), so the whole update
  is known in closed form, including the learning rate × ``lr_scale`` it is taken with.
- A data batch is the batch stream's images at the stage's resolution (block means).
- Training on images with a fixed pattern moves the model's sample moments toward the data's.
"""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cfebm.config import ModelConfig, apply_overrides, load_preset
from cfebm.data import BatchStream, TensorImages
from cfebm.model import frozen
from cfebm.sampling import cascade, init_uniform
from cfebm.train.loop import run_training
from cfebm.train.step import TrainState, data_batch, new_state, train_step


class LinearEnergy(nn.Module):
    """E(x) = w·x + b on (N, C, r, r) images: the Gibbs density is a product of truncated
    exponentials, and ∂E/∂w = x, ∂E/∂b = 1, so Eq. (2) is a difference of image means."""

    def __init__(self, cfg: ModelConfig, resolution: int, seed: int = 0):
        super().__init__()
        self.cfg = cfg  # the sampler reads cfg.image_channels
        g = torch.Generator().manual_seed(seed)
        d = cfg.image_channels * resolution * resolution
        self.w = nn.Parameter(torch.randn(d, generator=g))
        self.b = nn.Parameter(torch.tensor(0.3))

    def forward(self, x, beta=1.0):
        return x.flatten(1) @ self.w + self.b


def linear_state(lr_scale: float = 1.0) -> TrainState:
    # One Langevin step of size 10⁶ without noise: |10⁶·w_i| ≫ 2 for every pixel, so after
    # the clamp each chain sits at the box corner −sign(w), whatever it started from.
    cfg = apply_overrides(load_preset("tiny"), [
        "growth.n_steps=[1, 1]", "sampler.step_size=1e6", "sampler.eta0=0.0",
        "growth.lr=[0.01, 0.01]"])
    net = LinearEnergy(cfg.model, 8)
    optimizer = torch.optim.SGD(net.parameters(), lr=123.0)  # train_step must set the lr
    state = TrainState(cfg, net, None, optimizer, torch.Generator().manual_seed(0))
    state.lr_scale = lr_scale
    return state


def test_linear_energy_gradient_is_data_mean_minus_sample_mean():
    """Eq. (2): ∇_w loss = mean(x_data) − mean(x_sample), with x_sample = −sign(w)."""
    state = linear_state()
    w0, b0 = state.net.w.detach().clone(), state.net.b.detach().clone()
    x_data = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    metrics = train_step(state, x_data)

    x_sample = -torch.sign(w0)
    torch.testing.assert_close(state.net.w.grad, x_data.flatten(1).mean(0) - x_sample)
    assert state.net.b.grad.item() == 0.0
    # The energies it reports are those of the data and of the minimiser.
    assert metrics["e_data"] == pytest.approx((x_data.flatten(1) @ w0 + b0).mean().item(), abs=1e-5)
    assert metrics["e_sample"] == pytest.approx((-w0.abs().sum() + b0).item(), abs=1e-5)
    assert metrics["loss"] == pytest.approx(metrics["e_data"] - metrics["e_sample"], abs=1e-5)
    assert state.n_images == 16


@pytest.mark.parametrize("lr_scale", [1.0, 0.25])
def test_update_is_a_descent_step_with_the_schedule_lr_times_lr_scale(lr_scale):
    """SGD on the known gradient: w ← w − lr·lr_scale·(mean(x_data) + sign(w)); the energy of
    the data drops relative to the samples', and every param group carries that lr."""
    state = linear_state(lr_scale)
    w0 = state.net.w.detach().clone()
    x_data = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    train_step(state, x_data)
    lr = 0.01 * lr_scale
    torch.testing.assert_close(state.net.w.detach(),
                               w0 - lr * (x_data.flatten(1).mean(0) + torch.sign(w0)))
    assert [g["lr"] for g in state.optimizer.param_groups] == [lr]
    # Going the right way: the data's energy falls relative to the samples'.
    gap = lambda w: (x_data.flatten(1) @ w).mean() - (-w.abs().sum())
    assert gap(state.net.w.detach()) < gap(w0)


def test_the_gradient_norm_is_logged_and_the_step_is_not_clipped():
    """The gradient is g = (mean(x_data) + sign(w), 0) in closed form; its norm is logged as
    ``grad_norm``, and SGD steps along the whole of g (‖g‖ ≈ 8: no clipping anywhere)."""
    state = linear_state()
    w0 = state.net.w.detach().clone()
    x_data = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    g = x_data.flatten(1).mean(0) + torch.sign(w0)
    metrics = train_step(state, x_data)
    assert metrics["grad_norm"] == pytest.approx(g.norm().item(), rel=1e-5)
    assert g.norm().item() > 1.0
    torch.testing.assert_close(state.net.w.detach(), w0 - 0.01 * g)


def test_data_batch_is_the_streams_images_at_the_stage_resolution():
    """Algorithm 1 trains on data: the batch is the stream's next images, block-averaged to the
    stage's side, as floats in [−1, 1] (no flips or noise in this config)."""
    cfg = load_preset("tiny")
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (40, 1, 16, 16), dtype=torch.uint8, generator=g)
    stream = BatchStream(TensorImages(images), seed=5)
    state = new_state(cfg)
    state.n_images = 24
    x = data_batch(state, stream)
    raw = images[stream.indices(24, 16)].double() / 127.5 - 1      # positions 24..39
    expected = raw.reshape(16, 1, 8, 2, 8, 2).mean(dim=(3, 5))       # 2×2 block means
    torch.testing.assert_close(x.double(), expected, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------
# A toy run: samples move toward the data


def _write_halves(folder, n=64):
    """n 8×8 gray images: left half bright (≈224), right half dark (≈32), small noise."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        a = np.full((8, 8), 32.0)
        a[:, :4] = 224.0
        a += rng.normal(0, 12, a.shape)
        Image.fromarray(a.clip(0, 255).astype(np.uint8), "L").save(folder / f"{i:03d}.png")
    return torch.tensor(np.stack([np.array(Image.open(folder / f"{i:03d}.png"))
                                  for i in range(n)])).double() / 127.5 - 1


def _sample_moments(state, steps):
    net = state.net
    with frozen(net):
        g = torch.Generator().manual_seed(123)
        x = cascade([net], init_uniform(256, 1, 8, generator=g), [steps], state.cfg.sampler,
                    generator=g)
    x = x[:, 0].double()
    return x.mean(0), x[..., :4].mean() - x[..., 4:].mean()


@pytest.mark.slow
def test_toy_run_moves_sample_moments_toward_the_data(tmp_path):
    """Maximum likelihood on left-bright/right-dark images: a fresh net's samples have no
    left/right contrast (uniform noise, 10 short steps); after 20 iterations their per-pixel
    mean is much closer to the data's and their contrast has the data's sign and most of its
    size. Training on the wrong data, or with the loss's sign flipped, cannot do this."""
    x_data = _write_halves(tmp_path / "data")
    m_data = x_data.mean(0)
    contrast_data = (x_data[..., :4].mean() - x_data[..., 4:].mean()).item()   # ≈ 1.5
    cfg = apply_overrides(load_preset("tiny"), [
        'data.dataset="folder"', f'data.root="{tmp_path / "data"}"', "data.limit=0",
        "model.max_resolution=8", "growth.resolutions=[8]", "growth.batch_size=[16]",
        "growth.lr=[1e-3]", "growth.n_steps=[10]", "growth.fade_images=[0]",
        "growth.stage_images=[320]", "run.sample_every=100000",
        "run.checkpoint_every=100000", "run.log_every=100000"])
    m0, contrast0 = _sample_moments(new_state(cfg), 10)
    state = run_training(cfg, tmp_path / "run", progress=False)
    m1, contrast1 = _sample_moments(state, 10)
    err0, err1 = ((m0 - m_data) ** 2).mean().item(), ((m1 - m_data) ** 2).mean().item()
    assert abs(contrast0) < 0.2
    assert err1 < 0.1 * err0
    assert contrast1 > 0.6 * contrast_data


class FadingLinearEnergy(nn.Module):
    """At 16²: E(x; β) = β·w·x + (1−β)·v·pool₂(x); at 8²: v·x. With v = 0 the fading energy is
    β·w·x, so the loss's gradient for w is β·(mean(x_data) − mean(x_sample))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.w = nn.Parameter(torch.randn(256, generator=torch.Generator().manual_seed(0)))
        self.v = nn.Parameter(torch.zeros(64))

    def forward(self, x, beta=1.0):
        if x.shape[-1] == 8:
            return x.flatten(1) @ self.v
        pooled = torch.nn.functional.avg_pool2d(x, 2).flatten(1)
        return beta * (x.flatten(1) @ self.w) + (1 - beta) * (pooled @ self.v)


def test_the_loss_is_taken_at_the_current_fading_factor():
    """Mid-fade (160 images: β = 0.5) the update of Eq. (2) uses E(·; β), not the grown net."""
    cfg = apply_overrides(load_preset("tiny"), [
        "growth.n_steps=[1, 1]", "sampler.step_size=1e6", "sampler.eta0=0.0"])
    net = FadingLinearEnergy(cfg.model)
    state = TrainState(cfg, net, None, torch.optim.SGD(net.parameters(), lr=1.0),
                       torch.Generator().manual_seed(0))
    state.n_images = 160
    assert state.growth.beta == 0.5
    w0 = net.w.detach().clone()
    x_data = torch.rand(16, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    train_step(state, x_data)
    # The fine chain's one huge step on ∇ₓE = β·w lands on the corner −sign(w).
    torch.testing.assert_close(net.w.grad, 0.5 * (x_data.flatten(1).mean(0) + torch.sign(w0)))


def test_data_sigma_adds_gaussian_noise_of_that_size():
    """train.data_sigma = σ perturbs each data pixel by N(0, σ²) (Sec. 3.4's option)."""
    cfg = apply_overrides(load_preset("tiny"), ["train.data_sigma=0.1",
                                                "growth.batch_size=[64, 16]"])
    images = torch.full((64, 1, 16, 16), 128, dtype=torch.uint8)
    state = new_state(cfg)
    x = data_batch(state, BatchStream(TensorImages(images), seed=0))
    residual = x.double() - (128 / 127.5 - 1)
    assert residual.mean().abs() < 0.01
    assert residual.std().item() == pytest.approx(0.1, rel=0.05)


def test_without_flips_or_data_noise_a_data_batch_draws_no_random_numbers():
    """The chains' random stream does not depend on reading data when σ = 0 and flips are off."""
    cfg = apply_overrides(load_preset("tiny"), ["train.data_sigma=0", "data.hflip=false"])
    state = new_state(cfg)
    before = state.generator.get_state()
    data_batch(state, BatchStream(TensorImages(torch.zeros(64, 1, 16, 16, dtype=torch.uint8)), 0))
    assert torch.equal(state.generator.get_state(), before)


def test_bf16_precision_autocasts_and_the_ema_holds_no_gradients():
    state = new_state(apply_overrides(load_preset("tiny"), ["train.precision=\"bf16\"",
                                                         "train.ema_decay=0.9"]))
    with state.autocast():
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.bfloat16
    assert state.ema is not None and not any(p.requires_grad for p in state.ema.parameters())


def test_channels_last_option_stores_conv_weights_channels_last():
    """train.channels_last converts the network's 4-D weights to that memory format."""
    state = new_state(apply_overrides(load_preset("tiny"), ["train.channels_last=true"]))
    conv = [m for m in state.net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    raw = conv[0].parametrizations.weight.original  # spectral norm's stored weight
    assert raw.is_contiguous(memory_format=torch.channels_last) and not raw.is_contiguous()
