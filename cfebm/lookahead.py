"""Lookahead (Zhang, Lucas, Hinton & Ba, 2019) around the run's optimiser.

The trained ("fast") weights take ``k`` optimiser steps; then the "slow" weights move a
fraction ``alpha`` of the way to them and the fast weights restart from the slow ones. In a
two-player game such as maximum-likelihood EBM training (the energy against its own short-run
chains) this damps the oscillation that plain Adam keeps going (Chavdarova et al., 2021, for
GANs). Off by default (``train.lookahead = 0``); the paper trains with plain Adam.

Every step count is the run's own, so a resumed run syncs on the same iterations as an
uninterrupted one; the slow weights and the count travel in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Lookahead:
    """Slow weights for ``params`` (a fixed list: a network's ``parameters()``), synced every
    ``k`` calls of ``step()``. ``slow`` and ``steps`` restore a saved state; without them the
    slow weights start at the parameters' current values."""

    def __init__(self, params: Sequence[nn.Parameter], k: int, alpha: float,
                 slow: Sequence[Tensor] | None = None, steps: int = 0):
        self.params, self.k, self.alpha, self.steps = list(params), k, alpha, steps
        source = self.params if slow is None else slow
        self.slow = [s.detach().clone().to(p.device) for s, p in zip(source, self.params)]
        if len(self.slow) != len(self.params):
            raise ValueError(f"{len(self.slow)} slow tensors for {len(self.params)} parameters")

    @torch.no_grad()
    def step(self) -> None:
        """Count one optimiser step; on every k-th, slow ← slow + α·(fast − slow), then
        fast ← slow."""
        self.steps += 1
        if self.steps % self.k:
            return
        for slow, fast in zip(self.slow, self.params):
            slow.lerp_(fast, self.alpha)
            fast.copy_(slow)

    def state_dict(self) -> dict:
        return {"slow": [s.clone() for s in self.slow], "steps": self.steps}
