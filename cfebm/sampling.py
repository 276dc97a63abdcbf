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


class Streams:
    """Independent random streams for consecutive groups of chains.

    ``Streams.for_chains(seed, start, n)`` gives chains start … start+n−1 the streams of their
    groups of ``CHAINS_PER_STREAM``, so a chain draws the same numbers whichever batch it runs
    in: samples do not depend on the batch size. Pass it wherever a generator is taken.
    """

    CHAINS_PER_STREAM = 50

    def __init__(self, generators: Sequence[torch.Generator], sizes: Sequence[int]):
        self.generators, self.sizes = list(generators), list(sizes)

    @classmethod
    def for_chains(cls, seed: int, start: int, n: int,
                   device: torch.device | str = "cpu") -> Streams:
        k = cls.CHAINS_PER_STREAM
        if start % k:
            raise ValueError(f"a batch must start at a multiple of {k} chains, got {start}")
        groups = range(start // k, (start + n + k - 1) // k)
        generators = [torch.Generator(device=device).manual_seed(hash((seed, g)) & (2**62 - 1))
                      for g in groups]
        sizes = [min(k, start + n - g * k) for g in groups]
        return cls(generators, sizes)


class Slice:
    """Rows [start, start + n) of what ``generator`` draws for a batch of ``total`` chains.

    A data-parallel rank samples its slice of the global batch with it (``cfebm.train.distributed``):
    every rank draws the global batch's numbers from the same generator and keeps its rows, so
    chain j gets the same numbers whatever the number of ranks.
    """

    def __init__(self, generator: torch.Generator, start: int, n: int, total: int):
        if not 0 <= start <= start + n <= total:
            raise ValueError(f"rows [{start}, {start + n}) are not in a batch of {total}")
        self.generator, self.start, self.n, self.total = generator, start, n, total

    @property
    def device(self) -> torch.device:
        return self.generator.device


class Rows:
    """Rows ``index`` of what ``generator`` draws for a batch of ``total`` chains: the chains
    that go on after a choice among candidates (``cfebm.guides.best_of``) keep drawing the
    numbers they would have drawn had every candidate gone on."""

    def __init__(self, generator: Generator, index: Tensor, total: int):
        if index.ndim != 1 or len(index) and not 0 <= int(index.min()) <= int(index.max()) < total:
            raise ValueError(f"row indices must be a vector in [0, {total})")
        self.generator, self.index, self.total = generator, index, total


Generator = torch.Generator | Streams | Slice | Rows | None


def draw(fn: Callable, shape: Sequence[int], generator: Generator,
         device: torch.device | str) -> Tensor:
    """``fn(shape)`` (torch.rand or torch.randn) from a generator, ``Streams``, a ``Slice`` or
    ``Rows``."""
    if isinstance(generator, Rows):
        if shape[0] != len(generator.index):
            raise ValueError(f"{len(generator.index)} rows, got a batch of {shape[0]}")
        full = draw(fn, (generator.total, *shape[1:]), generator.generator, device)
        return full[generator.index.to(full.device)]
    if isinstance(generator, Slice):
        if shape[0] != generator.n:
            raise ValueError(f"a slice of {generator.n} chains, got a batch of {shape[0]}")
        full = fn((generator.total, *shape[1:]), generator=generator.generator, device=device)
        return full[generator.start:generator.start + generator.n]
    if not isinstance(generator, Streams):
        return fn(tuple(shape), generator=generator, device=device)
    if sum(generator.sizes) != shape[0]:
        raise ValueError(f"streams for {sum(generator.sizes)} chains, got a batch of {shape[0]}")
    return torch.cat([fn((k, *shape[1:]), generator=g, device=device)
                      for g, k in zip(generator.generators, generator.sizes)])


# ------------------------------------------------------------------------------------------------
# Schedules


def noise_schedule(kind: str, n_steps: int, eta0: float) -> Tensor:
    """Per-step noise standard deviations, shape (n_steps,).

    - "std_linear": the std falls linearly from η0 to exactly 0 at the last step (the authors'
      final scripts).
    - "variance_linear": the variance falls linearly from η0 to 0 (Sec. 3.1: "linearly decay
      the noise variance till 0"); std √(variance).
    - "a2": Appendix A.2's variance η_t = η0 − η0/(T − t + 1), t = 1..T; std √η_t, as in Eq. 3.
    - "constant": std η0 at every step.
    """
    if n_steps == 0:
        return torch.zeros(0, dtype=torch.float64)
    if kind == "std_linear":
        return torch.linspace(eta0, 0.0, n_steps, dtype=torch.float64)
    if kind == "variance_linear":
        return torch.linspace(eta0, 0.0, n_steps, dtype=torch.float64).sqrt()
    if kind == "a2":
        t = torch.arange(1, n_steps + 1, dtype=torch.float64)
        return (eta0 - eta0 / (n_steps - t + 1)).sqrt()
    if kind == "constant":
        return torch.full((n_steps,), float(eta0), dtype=torch.float64)
    raise ValueError(f"unknown noise schedule {kind!r}; choose 'std_linear', 'variance_linear', "
                     "'a2' or 'constant'")


def init_uniform(
    n: int, channels: int, resolution: int, *, generator: Generator = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Initial chain states x ~ U(−1, 1), shape (n, channels, resolution, resolution)."""
    shape = (n, channels, resolution, resolution)
    return draw(torch.rand, shape, generator, device) * 2.0 - 1.0


def init_noise(
    n: int, channels: int, resolution: int, kind: str = "uniform", *, first: int | None = None,
    generator: Generator = None, device: torch.device | str = "cpu",
) -> Tensor:
    """Initial chain states from noise, (n, channels, r, r) in [−1, 1] (``sampler.start_noise``).

    "uniform" (Algorithms 1 and 2): U(−1, 1) at r. "nested": noise whose 2× average pooling is
    exactly the nested noise of the resolution below, down to U(−1, 1) at ``first`` (the first
    stage's resolution). With c = up(x_{r/2}) and u ~ U(−1, 1) at r,

        x_r = c + (1 − |c|) · (u − up(pool(u))) / 1.5.

    The detail u − up(pool(u)) averages to 0 over every 2×2 block and lies in [−1.5, 1.5], and
    its weight is constant over each block, so pool(x_r) = x_{r/2} and x_r stays in [−1, 1].
    Why: the coarse part of a grown net sees its input through 2× pooling, and U(−1, 1) at r
    pools to noise of half the spread of U(−1, 1) at r/2, a start the coarse stage never trained
    from; nested noise pools to the very noise it did.
    """
    if kind == "uniform":
        return init_uniform(n, channels, resolution, generator=generator, device=device)
    if kind != "nested":
        raise ValueError(f"unknown start noise {kind!r}; choose 'uniform' or 'nested'")
    if first is None or resolution < first or resolution % first:
        raise ValueError(f"nested noise at {resolution}x{resolution} needs the first stage's "
                         f"resolution, got {first}")
    x, r = init_uniform(n, channels, first, generator=generator, device=device), first
    while r < resolution:
        r *= 2
        u = init_uniform(n, channels, r, generator=generator, device=device)
        c = upsample(x)
        x = c + (1.0 - c.abs()) * (u - upsample(F.avg_pool2d(u, 2))) / 1.5
    return x


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
    constraint: Callable[[Tensor], Tensor] | None = None,
    generator: Generator = None,
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
        constraint: the orthogonal projection onto a set of images the chain must stay in
            (``AveragePooled``: a fixed low-resolution image), applied to the start and after
            every step, after the clamp, so it holds exactly (pixels may then leave the clamp's
            range by a little).
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
    if constraint is not None:
        x = constraint(x)
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
            x = x + sigma * draw(torch.randn, x.shape, generator, x.device).to(x.dtype)
        if clamp is not None:
            x = x.clamp_(*clamp)
        if known is not None:
            x = torch.where(known, x_known, x)
        if constraint is not None:
            x = constraint(x)
        if callback is not None:
            callback(LangevinStep(i, x, grad, e.detach(), h, sigma))
    return x


@dataclass(frozen=True)
class AveragePooled:
    """The linear constraint avgpool_f(x) = y of super-resolution, as its orthogonal projection:
    P(x) = x + up_f(y − avgpool_f(x)), with up_f nearest-neighbour upsampling by f = R / r.

    y: (N, C, r, r); x: (N, C, R, R), R a power-of-two multiple of r. avgpool_f(up_f(v)) = v,
    so avgpool_f(P(x)) = y exactly (to float rounding), and P moves each f×f block by one
    constant, the least change that does it (up_f = f²·avgpool_fᵀ). A Langevin chain projected
    after every step samples the energy's density restricted to the images whose pooled image
    is y (exactly so for a Gaussian energy; tests/test_superres.py).
    """

    y: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        residual = self.y.to(x) - downsample(x, self.y.shape[-1])
        return x + upsample(residual, x.shape[-1] // self.y.shape[-1])


def _per_step(value: float | Tensor, n_steps: int, name: str) -> list[float]:
    if isinstance(value, Tensor) and value.ndim > 0:
        if value.shape != (n_steps,):
            raise ValueError(f"{name} schedule has shape {tuple(value.shape)}, expected ({n_steps},)")
        return [float(v) for v in value]
    return [float(value)] * n_steps


def step_size_at(resolution: int, cfg: SamplerConfig) -> float:
    """The Langevin step size at ``resolution``: ``cfg.step_size``, times (r/r₀)² when
    ``cfg.step_base_resolution`` r₀ is set (a step proportional to the pixel count)."""
    if cfg.step_base_resolution == 0:
        return cfg.step_size
    return cfg.step_size * (resolution / cfg.step_base_resolution) ** 2


def langevin_cfg(
    energy: Energy, x: Tensor, n_steps: int, cfg: SamplerConfig, *,
    eta0: float | None = None, generator: Generator = None,
    part: tuple[int, int] | None = None, **kwargs,
) -> Tensor:
    """``langevin`` with the step size, noise schedule and clamp of a ``SamplerConfig``.

    ``eta0`` overrides the config's η0 (the test-time noise level of Fig. 16). The result lies
    in [−1, 1]: clamped after every step, or only at the end when ``cfg.clamp_every_step`` is
    off; a ``constraint`` (``langevin``'s) is projected onto last, so that it holds exactly.
    ``part`` (first, total): these ``n_steps`` are steps first … first + n_steps − 1 of a chain
    of ``total`` steps, with that chain's noise schedule (a chain run in two parts).
    """
    eta0 = cfg.eta0 if eta0 is None else eta0
    every_step = cfg.clamp_every_step
    first, total = (0, n_steps) if part is None else part
    if not 0 <= first <= first + n_steps <= total:
        raise ValueError(f"steps [{first}, {first + n_steps}) are not in a chain of {total}")
    x = langevin(
        energy, x, n_steps, step_size_at(x.shape[-1], cfg),
        noise_schedule(cfg.noise_schedule, total, eta0)[first:first + n_steps],
        clamp=(-1.0, 1.0) if every_step else None, generator=generator, **kwargs,
    )
    if every_step:
        return x
    # The authors clamp once, at the end of each scale's chain (upsampling keeps the range).
    constraint = kwargs.get("constraint")
    x = x.clamp_(-1.0, 1.0)
    return x if constraint is None else constraint(x)


# ------------------------------------------------------------------------------------------------
# Coarse-to-fine initialisation (Algorithm 1, smooth MCMC sampling)


def upsample(x: Tensor, factor: int = 2) -> Tensor:
    """Nearest-neighbour upsampling by an integer ``factor``: (N, C, r, r) -> (N, C, fr, fr),
    each pixel a factor × factor block (so ``downsample`` undoes it exactly)."""
    return F.interpolate(x, scale_factor=factor, mode="nearest")


def downsample(x: Tensor, resolution: int) -> Tensor:
    """Average-pool (N, C, R, R) to (N, C, r, r); R / r must be a power of two (r == R: x)."""
    size = x.shape[-1]
    factor = size // resolution if resolution >= 1 else 0
    if x.shape[-2] != size or factor < 1 or factor * resolution != size or factor & (factor - 1):
        raise ValueError(f"cannot downsample {tuple(x.shape[-2:])} images to {resolution}x"
                         f"{resolution}: needs square images and a power-of-two factor")
    return x if factor == 1 else F.avg_pool2d(x, factor)


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


def coarse_step_count(n_steps_coarse: int, beta: float) -> int:
    """Steps of the smooth start's coarse chain at fading factor β: ⌊T(s−1)·(1−β)⌋
    (Algorithm 1; the authors' int()). T(s−1) at every β, as some of the authors' scripts ran
    it, was measured no better and removed (docs/notebook/recipe-search.md)."""
    return int(n_steps_coarse * (1.0 - beta))


def smooth_init(
    coarse_energy: Energy, n: int, channels: int, resolution: int, beta: float,
    n_steps_coarse: int, cfg: SamplerConfig, *, first: int | None = None,
    generator: Generator = None, device: torch.device | str = "cpu",
    callback: Callable[[LangevinStep], None] | None = None,
) -> Tensor:
    """Initial states for the grown energy at ``resolution`` during a fade (Algorithm 1).

    Runs ``coarse_step_count`` Langevin steps (⌊T(s−1)·(1−β)⌋) of the coarse energy
    from noise at resolution/2, upsamples 2×, and mixes with fresh noise by β; both noises are
    ``cfg.start_noise`` (``init_noise``; ``first``: the first stage's resolution, which
    "nested" needs). Returns (n, channels, r, r).
    """
    def noise(r: int) -> Tensor:
        return init_noise(n, channels, r, cfg.start_noise, first=first, generator=generator,
                          device=device)

    x = langevin_cfg(coarse_energy, noise(resolution // 2),
                     coarse_step_count(n_steps_coarse, beta), cfg,
                     generator=generator, callback=callback)
    return mix_with_noise(upsample(x), noise(resolution), beta, cfg.mix).clamp(-1.0, 1.0)


# ------------------------------------------------------------------------------------------------
# Coarse-to-fine cascade (Algorithm 2 is its one-scale case; A.8)


def energy_of(net: Callable[..., Tensor], beta: float,
              autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
              guide: Energy | None = None) -> Energy:
    """An energy net at fading factor ``beta`` as a function of x alone, run under ``autocast``,
    plus a ``guide`` term when one is given (``steered``)."""
    def energy(x: Tensor) -> Tensor:
        with autocast():
            return net(x, beta)
    return steered(energy, guide)


def steered(energy: Energy, guide: Energy | None) -> Energy:
    """E(x) + G(x): ``energy`` steered by an additive term G (``cfebm.guides``), evaluated on
    the same x; ``energy`` itself when G is None."""
    if guide is None:
        return energy
    return lambda x: energy(x) + guide(x)


def cascade(
    energies: Sequence[Energy], x: Tensor, n_steps: Sequence[int], cfg: SamplerConfig, *,
    eta0: float | None = None, generator: Generator = None,
    callback: Callable[[LangevinStep], None] | None = None,
) -> Tensor:
    """Langevin chains at one resolution after another, upsampling 2× between them.

    ``energies[k]`` runs ``n_steps[k]`` steps (``langevin_cfg``) at scale k; ``x`` is the start
    at the first scale, (N, C, r, r). One scale from U(−1, 1) is Algorithm 2; several are the
    coarse-to-fine cascade of Appendix A.8. Returns (N, C, r·2^(K−1), r·2^(K−1)).
    """
    if len(energies) != len(n_steps) or not energies:
        raise ValueError(f"{len(energies)} energies for {len(n_steps)} step counts")
    for k, (energy, steps) in enumerate(zip(energies, n_steps)):
        if k > 0:
            x = upsample(x)
        x = langevin_cfg(energy, x, steps, cfg, eta0=eta0, generator=generator,
                         callback=callback)
    return x
