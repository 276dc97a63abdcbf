"""Short-run Langevin sampling, smooth coarse-to-fine initialisation, and Algorithm 2.

Implements Eq. (3), the smooth MCMC sampling of Algorithm 1 (Sec. 3.2(ii)b) and the sampling of
Algorithm 2 of Zhao, Xie & Li, "Learning Energy-Based Generative Models via Coarse-to-Fine
Expanding and Sampling", ICLR 2021, plus the coarse-to-fine cascade of Appendix A.8.

One convention: ``energy(x) -> (N,)`` is an energy (lower = more likely) and a Langevin step is
``x <- x - step_size·∇ₓE(x) + noise_std_t·ε``. Eq. (3) couples the two as step η/2 and noise √η;
like the paper's experiments (A.2: step 1.0 with a separately decaying noise), we keep them as two
numbers. Samplers take the energy as a plain function of x, so they work for any callable: wrap
a network in ``model.frozen(net)`` first so that no graph is built through its weights.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cfebm.config import SamplerConfig
from cfebm.growth import Growth
from cfebm.model import EnergyNet

Energy = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class LangevinStep:
    """What a sampler callback sees after step ``i`` (0-based) has been applied."""

    i: int
    x: Tensor          # the state after the step, (N, C, H, W); do not modify in place
    grad: Tensor       # ∇ₓE at the state before the step, (N, C, H, W)
    energy: Tensor     # E at the state before the step, (N,)
    step_size: float
    noise_std: float


# ------------------------------------------------------------------------------------------------
# Schedules


def noise_schedule(kind: str, n_steps: int, eta0: float) -> Tensor:
    """Per-step noise standard deviations, shape (n_steps,).

    - "linear": η0 decaying linearly to exactly 0 at the last step (Sec. 3.1, the authors' code).
    - "a2": Appendix A.2's variance η_t = η0 − η0/(T − t + 1), t = 1..T, as the std √η_t of Eq. 3.
    - "constant": η0 at every step.
    """
    if n_steps == 0:
        return torch.zeros(0, dtype=torch.float64)
    if kind == "linear":
        return torch.linspace(eta0, 0.0, n_steps, dtype=torch.float64)
    if kind == "a2":
        t = torch.arange(1, n_steps + 1, dtype=torch.float64)
        return (eta0 - eta0 / (n_steps - t + 1)).sqrt()
    if kind == "constant":
        return torch.full((n_steps,), float(eta0), dtype=torch.float64)
    raise ValueError(f"unknown noise schedule {kind!r}; choose 'linear', 'a2' or 'constant'")


def init_uniform(
    n: int, channels: int, resolution: int, *, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Initial chain states x ~ U(−1, 1), shape (n, channels, resolution, resolution)."""
    shape = (n, channels, resolution, resolution)
    return torch.rand(shape, generator=generator, device=device) * 2.0 - 1.0


# ------------------------------------------------------------------------------------------------
# Langevin dynamics (Eq. 3)


def langevin(
    energy: Energy,
    x: Tensor,
    n_steps: int,
    step_size: float | Tensor,
    noise_std: float | Tensor,
    *,
    clamp: tuple[float, float] | None = (-1.0, 1.0),
    mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[LangevinStep], None] | None = None,
) -> Tensor:
    """Run ``n_steps`` of x <- x − step_size·∇ₓE(x) + noise_std·ε and return the final x.

    Args:
        energy: maps (N, C, H, W) to energies (N,).
        x: initial state (N, C, H, W); not modified.
        n_steps: number of steps T.
        step_size: a scalar or a per-step tensor (n_steps,).
        noise_std: a scalar or a per-step tensor (n_steps,) of noise standard deviations.
        clamp: after every step, clamp x into this range; None disables it.
        mask: 1 where a pixel is known and held fixed, 0 where it is sampled; broadcastable to x.
            Known pixels keep their initial value exactly.
        generator: source of the noise ε (on x's device).
        callback: called with a ``LangevinStep`` after each step.

    Returns:
        The final state, detached, with x's shape and dtype.

    No graph outlives a step, so memory does not grow with ``n_steps``, and no parameter
    gradient is accumulated as long as the energy's parameters do not require grad.
    """
    step_sizes = _per_step(step_size, n_steps, "step_size")
    noise_stds = _per_step(noise_std, n_steps, "noise_std")
    x = x.detach().clone()
    known = None if mask is None else mask.to(dtype=torch.bool, device=x.device).expand_as(x)
    x_known = None if known is None else x.clone()
    for i in range(n_steps):
        with torch.enable_grad():
            x_in = x.requires_grad_(True)
            e = energy(x_in)
            (grad,) = torch.autograd.grad(e.sum(), x_in)
        x = x.detach()
        h, sigma = step_sizes[i], noise_stds[i]
        x = x - h * grad
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if clamp is not None:
            x = x.clamp_(*clamp)
        if known is not None:
            x = torch.where(known, x_known, x)
        if callback is not None:
            callback(LangevinStep(i, x, grad, e.detach(), h, sigma))
    return x


def _per_step(value: float | Tensor, n_steps: int, name: str) -> list[float]:
    if isinstance(value, Tensor) and value.ndim > 0:
        if value.shape != (n_steps,):
            raise ValueError(f"{name} schedule has shape {tuple(value.shape)}, expected ({n_steps},)")
        return [float(v) for v in value]
    return [float(value)] * n_steps


def langevin_cfg(
    energy: Energy, x: Tensor, n_steps: int, cfg: SamplerConfig, *,
    noise_std: float | None = None, generator: torch.Generator | None = None, **kwargs,
) -> Tensor:
    """``langevin`` with the step size, noise schedule and clamp of a ``SamplerConfig``.

    ``noise_std`` overrides the config's η0 (the test-time noise level of Fig. 16). With
    ``cfg.clamp`` the result lies in [−1, 1]: clamped after every step, or only at the end when
    ``cfg.clamp_every_step`` is off.
    """
    eta0 = cfg.noise_std if noise_std is None else noise_std
    every_step = cfg.clamp and cfg.clamp_every_step
    x = langevin(
        energy, x, n_steps, cfg.step_size, noise_schedule(cfg.noise_schedule, n_steps, eta0),
        clamp=(-1.0, 1.0) if every_step else None, generator=generator, **kwargs,
    )
    # The authors clamp once, at the end of each scale's chain (upsampling keeps the range).
    return x.clamp_(-1.0, 1.0) if cfg.clamp and not every_step else x


# ------------------------------------------------------------------------------------------------
# Coarse-to-fine initialisation (Algorithm 1, smooth MCMC sampling)


def upsample(x: Tensor) -> Tensor:
    """2× nearest-neighbour upsampling, (N, C, r, r) -> (N, C, 2r, 2r)."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


def mix_with_noise(x_up: Tensor, noise: Tensor, beta: float, mix: str = "sqrt") -> Tensor:
    """Blend upsampled coarse samples with uniform noise by β.

    "sqrt" is Algorithm 1's √(1−β²)·Upsample(x) + β·U, which preserves variance; "linear" is the
    (1−β)·Upsample(x) + β·U of older versions of the authors' code.
    """
    if mix == "sqrt":
        return math.sqrt(max(0.0, 1.0 - beta**2)) * x_up + beta * noise
    if mix == "linear":
        return (1.0 - beta) * x_up + beta * noise
    raise ValueError(f"unknown mix {mix!r}; choose 'sqrt' or 'linear'")


def smooth_init(
    coarse_energy: Energy, n: int, channels: int, resolution: int, beta: float,
    n_steps_coarse: int, cfg: SamplerConfig, *, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Initial states for the grown energy at ``resolution`` during a fade (Algorithm 1).

    Runs ⌊T(s−1)·(1−β)⌋ Langevin steps (the authors' int()) of the coarse energy from U(−1, 1)
    at resolution/2, upsamples 2×, and mixes with fresh uniform noise by β.
    Returns (n, channels, r, r).
    """
    x = init_uniform(n, channels, resolution // 2, generator=generator, device=device)
    x = langevin_cfg(coarse_energy, x, int(n_steps_coarse * (1.0 - beta)), cfg,
                     generator=generator)
    noise = init_uniform(n, channels, resolution, generator=generator, device=device)
    x = mix_with_noise(upsample(x), noise, beta, cfg.mix)
    return x.clamp(-1.0, 1.0) if cfg.clamp else x


# ------------------------------------------------------------------------------------------------
# Sampling from an EnergyNet: Algorithm 1's negatives, Algorithm 2 and the cascade (A.8)


def energy_of(net: EnergyNet, beta: float,
              autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext) -> Energy:
    """``net`` at fading factor ``beta`` as an energy function, run under ``autocast``."""
    def energy(x: Tensor) -> Tensor:
        with autocast():
            return net(x, beta)
    return energy


def sample_negatives(
    net: EnergyNet, growth: Growth, n: int, cfg: SamplerConfig, *,
    coarse: Sequence[EnergyNet] = (), generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> Tensor:
    """The MCMC samples of one training iteration (Algorithm 1), (n, C, r, r) in [−1, 1].

    ``cfg.init == "noise"`` (the paper): while a new block fades in (β < 1) and ``cfg.smooth``
    is set, the chains start from the coarse energy's samples (``smooth_init``), otherwise from
    U(−1, 1); then T(s) steps of E(s)(·; β). ``"cascade"``: U(−1, 1) at the first resolution
    and T steps at every stage up to this one (``sample`` over ``growth.cascade``), the coarse
    scales by ``net`` itself; ``"frozen"`` (A.8, Table 9(e)): the coarse scales by ``coarse``,
    the frozen copies of the finished stages. Call inside ``frozen(net)``.
    """
    if cfg.init != "noise":
        return sample(net, n, list(growth.cascade), cfg, beta=growth.beta,
                      coarse=coarse if cfg.init == "frozen" else (), generator=generator,
                      device=device, autocast=autocast)
    channels, r, beta = net.cfg.image_channels, growth.resolution, growth.beta
    if growth.fading and cfg.smooth:
        x = smooth_init(energy_of(net, 1.0, autocast), n, channels, r, beta,
                        growth.n_steps_coarse, cfg, generator=generator, device=device)
    else:
        x = init_uniform(n, channels, r, generator=generator, device=device)
    return langevin_cfg(energy_of(net, beta, autocast), x, growth.n_steps, cfg,
                        generator=generator)


def sampling_schedule(growth: Growth, *, steps: int | None = None, cascade: bool = False,
                      init: str = "noise") -> list[tuple[int, int]]:
    """(resolution, Langevin steps) pairs for ``sample`` from the model of ``growth``'s stage.

    Algorithm 2 at its resolution with its training T, or every stage up to it in turn (A.8)
    with each stage's T when ``cascade`` is asked for or the model was trained with cascade
    chains (``init``, its ``sampler.init``). ``steps`` replaces T everywhere.
    """
    cascade = cascade or init != "noise"
    pairs = list(growth.cascade) if cascade else [(growth.resolution, growth.n_steps)]
    return [(r, t if steps is None else steps) for r, t in pairs]


def sample(
    net: EnergyNet, n: int, schedule: list[tuple[int, int]], cfg: SamplerConfig, *,
    noise_std: float | None = None, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu", beta: float = 1.0, coarse: Sequence[EnergyNet] = (),
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    callback: Callable[[LangevinStep], None] | None = None,
) -> Tensor:
    """Draw n samples: Algorithm 2, or the coarse-to-fine cascade of Appendix A.8.

    ``schedule`` lists (resolution, Langevin steps) from coarse to fine. A single entry
    [(R, T)] is Algorithm 2: U(−1, 1) at R, then T steps. Several entries run a chain at each
    resolution in turn, upsampling 2× between them, e.g. [(8, 15), (16, 15), (32, 15)].
    Entry k is sampled by ``coarse[k]`` when given (A.8's frozen coarse EBMs), else by ``net``;
    the last resolution sees ``net`` at fading factor ``beta``, the others fully grown.
    ``noise_std`` sets the test-time η0 (Fig. 16). Call inside ``frozen(net)``.

    Returns:
        (n, C, R, R) samples in [−1, 1] at the last resolution of the schedule.
    """
    resolutions = [r for r, _ in schedule]
    if not schedule or any(b != 2 * a for a, b in zip(resolutions, resolutions[1:])):
        raise ValueError(f"schedule must list doubling resolutions, got {resolutions}")
    if len(coarse) >= len(schedule):
        raise ValueError(f"{len(coarse)} coarse models for a {len(schedule)}-scale schedule")
    x = init_uniform(n, net.cfg.image_channels, resolutions[0], generator=generator,
                     device=device)
    for k, (_, n_steps) in enumerate(schedule):
        if k > 0:
            x = upsample(x)
        last = k == len(schedule) - 1
        model = coarse[k] if k < len(coarse) else net
        x = langevin_cfg(energy_of(model, beta if last else 1.0, autocast), x, n_steps, cfg,
                         noise_std=noise_std, generator=generator, callback=callback)
    return x
