"""Looking at the chains: interpolation between initial noises, recorded Langevin trajectories
(Fig. 10) and samples at several test-time noise levels (Fig. 16).

Zhao, Xie & Li, "Learning Energy-Based Generative Models via Coarse-to-Fine Expanding and
Sampling", ICLR 2021, Appendix A.4 and A.7. Functions of a ``TrainedModel``; nothing is written
to disk here (see ``figures``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from cfebm.runtime import derived_seed
from cfebm.sampling import LangevinStep, Streams, init_uniform
from cfebm.trained import TrainedModel

# ------------------------------------------------------------------------------------------------
# Interpolation between two initial noises


def lerp(x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """(1 − t)·x0 + t·x1 for each t (T,): (T, *x0.shape)."""
    t = t.to(x0).view(-1, *[1] * x0.ndim)
    return (1 - t) * x0 + t * x1


def slerp(x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation of the flattened x0 and x1, (T, *x0.shape): it keeps the norm
    where the linear path shrinks it (the middle of a lerp of two noises has less contrast)."""
    a, b = x0.flatten(), x1.flatten()
    omega = torch.arccos((a @ b / (a.norm() * b.norm())).clamp(-1, 1))
    if omega.abs() < 1e-6:
        return lerp(x0, x1, t)
    t = t.to(x0).view(-1, *[1] * x0.ndim)
    return (torch.sin((1 - t) * omega) * x0 + torch.sin(t * omega) * x1) / torch.sin(omega)


def interpolate(model: TrainedModel, *, pairs: int = 1, points: int = 11, steps: int | None = None,
                noise: float | None = None, seed: int = 0, batch_size: int = 250,
                progress: bool = False) -> dict[str, Tensor]:
    """Chains from points between two initial noises, all with the same Langevin noise.

    For each of ``pairs`` pairs of U(−1, 1) noises at the model's resolution, ``points`` starts
    on the linear and on the spherical path (clamped into [−1, 1]) run the model's chain; every
    chain of a pair draws the same ε at every step, so a row changes only through its start.
    Chains run in batches of whole pairs, about ``batch_size`` chains each.

    Returns:
        {"linear": (P, T, C, R, R), "spherical": (P, T, C, R, R)} in [−1, 1].
    """
    shape = (model.channels, model.resolution, model.resolution)
    g = torch.Generator().manual_seed(derived_seed("interpolate", seed))
    ends = init_uniform(2 * pairs, shape[0], shape[1], generator=g).view(pairs, 2, *shape)
    t = torch.linspace(0, 1, points)
    per_batch = max(1, batch_size // points)
    out = {}
    for name, path in (("linear", lerp), ("spherical", slerp)):
        starts = torch.stack([path(x0, x1, t) for x0, x1 in ends]).clamp(-1, 1)  # (P, T, C, R, R)
        rows = []
        for first in range(0, pairs, per_batch):
            group = range(first, min(pairs, first + per_batch))
            # One generator per chain, seeded alike within a pair: the same ε for every point.
            streams = Streams([torch.Generator(device=model.device).manual_seed(
                derived_seed(f"interpolate-chain-{p}", seed)) for p in group
                for _ in range(points)], [1] * (len(group) * points))
            x = model.sample(start=starts[first:group.stop].flatten(0, 1).to(model.device),
                             steps=steps, noise=noise, generator=streams, progress=progress)
            rows.append(x.view(len(group), points, *shape))
        out[name] = torch.cat(rows)
    return out


# ------------------------------------------------------------------------------------------------
# Test-time noise level (Fig. 16)


def noise_levels(model: TrainedModel) -> list[float]:
    """Default η0 for a sweep: 0, ½, 1 and 2 times the training η0 (Fig. 16 shows 0 to 1×)."""
    eta = model.cfg.sampler.eta0
    return [0.0, 0.5 * eta, eta, 2.0 * eta]


def noise_sweep(model: TrainedModel, n: int, etas: Sequence[float], *, steps: int | None = None,
                seed: int = 0, cascade: bool = False, batch_size: int = 250,
                progress: bool = False) -> Tensor:
    """Samples from the same seeds (same initial noise, same ε) at each test-time η0:
    (len(etas), n, C, R, R) in [−1, 1]. Only the scale of the Langevin noise differs."""
    if any(e < 0 for e in etas):
        raise ValueError(f"noise levels must be >= 0, got {list(etas)}")
    return torch.stack([model.sample(n, steps=steps, noise=float(e), seed=seed, cascade=cascade,
                                     batch_size=batch_size, progress=progress) for e in etas])


# ------------------------------------------------------------------------------------------------
# Recorded chains (Fig. 10)


@dataclass
class Trajectory:
    """States and energies of the first chains of a sampling run, every ``every`` steps.

    ``states[j]`` (K, C, R, R) is the state after global step ``steps[j]`` (1-based, counting
    every scale and the smooth initialisation), upsampled to the final resolution; ``energy``
    (S, K) holds E before each step by the energy of its scale, whose side is ``resolution[s]``.
    """

    every: int
    keep: int
    steps: list[int] = field(default_factory=list)
    states: list[Tensor] = field(default_factory=list)
    energy: list[Tensor] = field(default_factory=list)
    resolution: list[int] = field(default_factory=list)
    recording: bool = True

    def __call__(self, step: LangevinStep) -> None:
        if not self.recording:
            return
        self.energy.append(step.energy[:self.keep].float().cpu())
        self.resolution.append(step.x.shape[-1])
        if len(self.energy) % self.every == 0:
            self.steps.append(len(self.energy))
            self.states.append(step.x[:self.keep].float().cpu())

    def finish(self, final: Tensor) -> Trajectory:
        """Stop recording and make sure the final state is the last one; returns self."""
        self.recording = False
        if not self.steps or self.steps[-1] != len(self.energy):
            self.steps.append(len(self.energy))
            self.states.append(final[:self.keep].float().cpu())
        side = final.shape[-1]
        self.states = [F.interpolate(s, scale_factor=side // s.shape[-1], mode="nearest")
                       if s.shape[-1] != side else s for s in self.states]
        return self


def sample_with_trajectory(model: TrainedModel, n: int, *, every: int = 1, keep: int = 8,
                           **kwargs) -> tuple[Tensor, Trajectory]:
    """``model.sample(n, **kwargs)`` that also records the first ``keep`` chains of its first
    batch every ``every`` steps. The samples are the same as without recording."""
    if every < 1 or keep < 1:
        raise ValueError(f"every and keep must be >= 1, got {every} and {keep}")
    trajectory = Trajectory(every=every, keep=min(keep, n))
    batches = []
    for x in model.sample_batches(n, callback=trajectory, **kwargs):
        if trajectory.recording:
            trajectory.finish(x)
        batches.append(x)
    return torch.cat(batches), trajectory


def energy_curves(trajectory: Trajectory) -> list[tuple[int, list[int], Tensor]]:
    """The energy trace split by scale: (resolution, global steps, energies (S, K)) per scale."""
    out, begin = [], 0
    res = trajectory.resolution
    for i in range(1, len(res) + 1):
        if i == len(res) or res[i] != res[begin]:
            out.append((res[begin], list(range(begin, i)), torch.stack(trajectory.energy[begin:i])))
            begin = i
    return out
