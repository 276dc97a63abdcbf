"""Coarse-to-fine maximum-likelihood training of the expanding EBM (Algorithm 1, Eq. 2).

``TrainState`` holds everything a run needs to continue exactly: the network, its EMA, the
optimiser, the number of images seen (the only progress state; stage and β derive from it), the
random generator and the divergence-recovery record. ``train_step`` is one iteration of
Algorithm 1; the loop with its files, progress bar and checkpoints lives in ``runner.py``.
"""

from __future__ import annotations

import contextlib
import copy
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from cfebm.config import Config
from cfebm.data import BatchStream, downsample, random_hflip, to_float
from cfebm.growth import Growth, growth_at
from cfebm.model import EnergyNet, frozen, frozen_copy
from cfebm.sampling import sample_negatives


def cd_loss(e_data: Tensor, e_sample: Tensor, energy_reg: float = 0.0) -> Tensor:
    """Maximum-likelihood loss whose gradient is Eq. (2): mean E(data) − mean E(samples).

    ``energy_reg`` adds energy_reg·mean(E(data)² + E(samples)²), a magnitude penalty that keeps
    energies near 0 (Du & Mordatch, 2019); 0 (the paper) disables it.
    """
    loss = e_data.mean() - e_sample.mean()
    if energy_reg > 0:
        loss = loss + energy_reg * (e_data.square().mean() + e_sample.square().mean())
    return loss


@torch.no_grad()
def update_ema(ema: EnergyNet, net: EnergyNet, decay: float) -> None:
    """ema ← decay·ema + (1−decay)·net for parameters; buffers (spectral-norm u, v) are copied.

    Averaging the power-iteration vectors would leave them non-unit and mis-scale the weights.
    """
    for p_ema, p in zip(ema.parameters(), net.parameters()):
        p_ema.lerp_(p, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


@dataclass
class TrainState:
    cfg: Config
    net: EnergyNet
    ema: EnergyNet | None
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    n_images: int = 0
    recoveries: int = 0      # divergences rolled back so far
    lr_scale: float = 1.0    # halved at each recovery
    train_seconds: float = 0.0  # wall-clock time spent in training iterations (a measurement)
    # sampler.init="frozen" (A.8): a frozen copy of the model as each finished stage ended,
    # which samples that stage's resolution in the cascade; coarse[k] is stage k's.
    coarse: list[EnergyNet] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def growth(self) -> Growth:
        return growth_at(self.n_images, self.cfg.growth)

    def sampling_net(self) -> EnergyNet:
        """The EMA network if the run keeps one, else the trained network."""
        return self.ema if self.ema is not None else self.net

    def autocast(self) -> AbstractContextManager:
        if self.cfg.train.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def new_state(cfg: Config, device: torch.device | None = None) -> TrainState:
    """A fresh run: network initialised from ``cfg.train.seed``, Adam(β1, β2) of A.2."""
    device = device or resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    net = EnergyNet(cfg.model).to(device)
    if cfg.train.channels_last:
        net = net.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(net).requires_grad_(False) if cfg.train.ema_decay > 0 else None
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.growth.lr[0],
                                 betas=cfg.train.adam_betas)
    generator = torch.Generator(device=device).manual_seed(cfg.train.seed)
    return TrainState(cfg, net, ema, optimizer, generator)


def freeze_finished_stages(state: TrainState) -> None:
    """With ``sampler.init="frozen"``, keep a frozen copy of the trained net for every stage
    that has ended, taken at the first iteration after it ended (A.8).

    The trained weights, not the EMA: at β = 0 the grown net equals the trained net on pooled
    input, so its chains start in equilibrium with it. An EMA that lags the weights would hand
    the new stage negatives from an older model, whose energy the new stage then drives up.
    """
    if state.cfg.sampler.init != "frozen":
        return
    while len(state.coarse) < state.growth.stage:
        state.coarse.append(frozen_copy(state.net))


def data_batch(state: TrainState, stream: BatchStream) -> Tensor:
    """The next batch of real images at the stage's resolution, (n, C, r, r) in [−1, 1]."""
    growth, cfg = state.growth, state.cfg
    x = stream.batch(state.n_images, growth.batch_size).to(state.device)
    x = downsample(to_float(x), growth.resolution)
    if cfg.data.hflip:
        x = random_hflip(x, state.generator)
    if cfg.train.data_sigma > 0:
        x = x + cfg.train.data_sigma * torch.randn(
            x.shape, generator=state.generator, device=x.device)
    return x


def train_step(state: TrainState, x_data: Tensor) -> dict[str, float]:
    """One iteration of Algorithm 1 on the batch ``x_data`` (n, C, r, r); returns its metrics."""
    cfg, growth, net = state.cfg, state.growth, state.net
    n = x_data.shape[0]

    # Smooth MCMC sampling: negatives from the current (and, while fading, coarse) energy.
    freeze_finished_stages(state)
    with frozen(net):
        x_sample = sample_negatives(net, growth, n, cfg.sampler, coarse=state.coarse,
                                    generator=state.generator, device=state.device,
                                    autocast=state.autocast)

    # Optimize the energy function with Eq. (2): one forward pass over data and samples.
    for group in state.optimizer.param_groups:
        group["lr"] = growth.lr * state.lr_scale
    net.train()
    with state.autocast():
        energies = net(torch.cat([x_data, x_sample]), growth.beta)
    e_data, e_sample = energies[:n], energies[n:]
    loss = cd_loss(e_data, e_sample, cfg.train.energy_reg)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.optimizer.step()
    if state.ema is not None:
        update_ema(state.ema, net, cfg.train.ema_decay)
    state.n_images += n
    return {
        "loss": loss.item(),
        "e_data": e_data.mean().item(),
        "e_sample": e_sample.mean().item(),
    }


def diverged(metrics: dict[str, float], max_abs_loss: float) -> bool:
    """True when the loss is NaN/inf or its magnitude exceeds ``max_abs_loss``."""
    loss = metrics["loss"]
    return not (abs(loss) <= max_abs_loss)
