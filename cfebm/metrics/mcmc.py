"""The Markov kernels of AIS (``cfebm.metrics.ais``): bases, MALA and HMC with a Metropolis test.

Each kernel leaves its target exp(−E) exactly invariant, restricted to [−1, 1]ᴰ for the uniform
base: proposals are reflected at the walls and whatever still lies outside is rejected (the
module docstring of ``cfebm.metrics.ais.anneal`` explains why). Nothing is clamped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from cfebm.sampling import Energy

BASES = ("uniform", "gaussian")


@dataclass(frozen=True)
class Base:
    """A normalised base distribution π₀ = exp(−E₀) (Z₀ = 1): ``"uniform"`` on [−1, 1]ᴰ or
    ``"gaussian"`` N(0, std²·I) on ℝᴰ."""

    kind: str = "uniform"
    std: float = 1.0

    def __post_init__(self):
        if self.kind not in BASES:
            raise ValueError(f"unknown base {self.kind!r}; choose one of {', '.join(BASES)}")
        if not self.std > 0:
            raise ValueError(f"the base's std must be > 0, got {self.std}")

    def energy(self, x: Tensor) -> Tensor:
        """E₀(x), (N,) float64, on the support (``inside``; the transitions reject the rest)."""
        flat = x.flatten(1).double()
        d = flat.shape[1]
        if self.kind == "uniform":
            return torch.full((len(x),), d * math.log(2.0), dtype=torch.float64, device=x.device)
        return (flat.square().sum(1) / (2 * self.std ** 2)
                + 0.5 * d * math.log(2 * math.pi * self.std ** 2))

    def fold(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Reflect x into the box at its walls (as often as needed): the folded x and, per
        element, the sign (−1 after an odd number of reflections). The identity for the
        Gaussian base."""
        if self.kind == "gaussian":
            return x, torch.ones_like(x)
        t = torch.remainder(x + 1, 4.0)
        return torch.where(t <= 2, t - 1, 3 - t), torch.where(t <= 2, 1.0, -1.0).to(x.dtype)

    def inside(self, x: Tensor) -> Tensor:
        """(N,) bool: x lies in the support (the closed box for the uniform base)."""
        if self.kind == "gaussian":
            return torch.ones(len(x), dtype=torch.bool, device=x.device)
        return (x.flatten(1).abs() <= 1).all(1)

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None,
               device: torch.device | str, dtype: torch.dtype) -> Tensor:
        if self.kind == "uniform":
            return torch.rand(shape, generator=generator, device=device, dtype=dtype) * 2 - 1
        return self.std * torch.randn(shape, generator=generator, device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# Metropolis-corrected transitions


def _energy_grad(energy: Energy, x: Tensor) -> tuple[Tensor, Tensor]:
    """U(x) (N,) float64 and ∇U(x) (x's shape and dtype)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        u = energy(x)
        (grad,) = torch.autograd.grad(u.sum(), x)
    return u.detach().double(), grad.detach()


def _accept(x: Tensor, proposal: Tensor, log_ratio: Tensor, inside: Tensor,
            generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Metropolis–Hastings: keep ``proposal`` where log u < log_ratio and it is in the support."""
    log_u = torch.rand(len(x), generator=generator, device=x.device, dtype=torch.float64).log()
    accept = inside & (log_u < log_ratio.nan_to_num(nan=-math.inf))
    keep = accept.view(-1, *([1] * (x.ndim - 1)))
    return torch.where(keep, proposal, x), accept


def mala_step(energy: Energy, x: Tensor, step_size: float, *, base: Base | None = None,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One Metropolis-adjusted Langevin step leaving exp(−energy) (on ``base``'s support)
    invariant. x: (N, ...); returns the new x and (N,) bool accepted.

    With the uniform base the Gaussian proposal z is reflected once at the box walls
    (y = ±2 − z) and rejected if it would need a second reflection (|z| > 3); the proposal
    density of y is then exactly Σ over its three mirror images, which the MH ratio uses.
    """
    base = base or Base("gaussian")
    u, g = _energy_grad(energy, x)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    z = x - step_size * g + math.sqrt(2 * step_size) * noise
    reflect = base.kind == "uniform"
    y = torch.where(z > 1, 2 - z, torch.where(z < -1, -2 - z, z)) if reflect else z
    u_y, g_y = _energy_grad(energy, y)

    def log_q(to: Tensor, frm: Tensor, grad_frm: Tensor) -> Tensor:
        mean = frm - step_size * grad_frm
        images = (to, 2 - to, -2 - to) if reflect else (to,)
        logs = torch.stack([-(m - mean).double().square() / (4 * step_size) for m in images])
        return torch.logsumexp(logs, 0).flatten(1).sum(1)

    log_ratio = -u_y + u + log_q(x, y, g_y) - log_q(y, x, g)
    ok = (z.flatten(1).abs() <= 3).all(1) if reflect else base.inside(y)
    return _accept(x, y, log_ratio, ok, generator)


def hmc_step(energy: Energy, x: Tensor, step_size: float, *, leapfrog: int = 5,
             base: Base | None = None,
             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One HMC step (unit mass, ``leapfrog`` steps of ``step_size``) leaving exp(−energy) on
    ``base``'s support invariant. With the uniform base a position that crosses a wall of the
    box is reflected back and its momentum reversed (Neal 2011, Sec. 5.1): the map stays
    volume-preserving and reversible, so the Metropolis test is exact."""
    base = base or Base("gaussian")
    u, g = _energy_grad(energy, x)
    p = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    h0 = u + 0.5 * p.flatten(1).double().square().sum(1)
    y, u_y = x, u
    p = p - 0.5 * step_size * g
    for i in range(leapfrog):
        y, sign = base.fold(y + step_size * p)
        p = p * sign
        u_y, g_y = _energy_grad(energy, y)
        p = p - (step_size if i < leapfrog - 1 else 0.5 * step_size) * g_y
    h1 = u_y + 0.5 * p.flatten(1).double().square().sum(1)
    return _accept(x, y, h0 - h1, base.inside(y), generator)
