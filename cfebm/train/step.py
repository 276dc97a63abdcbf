"""Coarse-to-fine maximum-likelihood training of the expanding EBM (Algorithm 1, Eq. 2).

``TrainState`` holds everything a run needs to continue exactly: the network, its EMA, the
optimiser, the number of images seen (the only progress state; stage and β derive from it),
the random generator and the run's own record (``RunRecord``: recoveries, the FID watch, the
time spent). ``train_step`` is one iteration of Algorithm 1; the loop with its files, progress
bar and checkpoints lives in ``loop.py``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from cfebm import runtime
from cfebm.chains import as_trained
from cfebm.config import ADAM_BETAS, Config
from cfebm.data import BatchStream, downsample, random_hflip, to_float
from cfebm.growth import Growth, growth_at
from cfebm.model import EnergyNet, frozen, frozen_copy
from cfebm.runtime import CompiledEnergy, resolve_device
from cfebm.sampling import (
    Generator,
    Slice,
    draw,
)
from cfebm.train.distributed import Shard
from cfebm.train.recovery import LossWatch

log = logging.getLogger(__name__)


def cd_loss(e_data: Tensor, e_sample: Tensor) -> Tensor:
    """Maximum-likelihood loss whose gradient is Eq. (2): mean E(data) − mean E(samples)."""
    return e_data.mean() - e_sample.mean()


def gradient_norm(params: Sequence[Tensor]) -> float:
    """The global L2 norm of the gradients of ``params`` (all ranks' average), for the metrics."""
    return torch.nn.utils.get_total_norm([p.grad for p in params]).item()


@torch.no_grad()
def update_ema(ema: EnergyNet, net: EnergyNet, decay: float) -> None:
    """ema ← decay·ema + (1−decay)·net for parameters; buffers (spectral-norm u, v) are copied.

    Averaging the power-iteration vectors would leave them non-unit and mis-scale the weights.
    """
    for p_ema, p in zip(ema.parameters(), net.parameters()):
        p_ema.lerp_(p, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)


@dataclass
class RunRecord:
    """What the run keeps about its own course, beside the training state proper: the recovery
    from divergence (``recovery``) and the FID watch (``evaluation``) read and write it, and it
    travels in the checkpoint so that a resumed run judges as an uninterrupted one would."""

    loss_watch: LossWatch    # the recent losses that tell a spike; new_state sets the config's
    recoveries: int = 0      # divergences rolled back so far
    rolled_back_to: int | None = None  # images of the checkpoint the last recovery loaded
    # the FID watch: the last kept FIDs at each resolution it compares with, and its rollbacks
    # in a row
    watch_reference: dict[int, list[float]] = field(default_factory=dict)
    watch_retries: int = 0
    train_seconds: float = 0.0  # wall-clock time spent in training iterations (a measurement)


@dataclass
class TrainState:
    cfg: Config
    net: EnergyNet
    ema: EnergyNet | None
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    n_images: int = 0
    lr_scale: float = 1.0    # halved at each recovery from a divergence
    # images of the data stream skipped by the FID watch's rollbacks (the batch at n_images is
    # the stream's at n_images + data_skip)
    data_skip: int = 0
    record: RunRecord = field(default_factory=lambda: RunRecord(LossWatch(0.0)))
    # sampler.init="frozen" (A.8): a frozen copy of the model as each finished stage ended,
    # which samples that stage's resolution in the cascade; coarse[k] is stage k's.
    coarse: list[EnergyNet] = field(default_factory=list)
    # This process's part of a data-parallel run (cfebm.train.distributed); not saved: a run resumes
    # on any number of processes.
    shard: Shard = field(default_factory=Shard)
    # train.compile: the network as the Langevin chains call it, compiled (runtime.py); not saved.
    compiled: CompiledEnergy | None = None

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def growth(self) -> Growth:
        return growth_at(self.n_images, self.cfg.growth)

    def sampling_net(self) -> EnergyNet:
        """The EMA network if the run keeps one, else the trained network."""
        return self.ema if self.ema is not None else self.net

    def sampling_energy(self) -> EnergyNet | CompiledEnergy:
        """What chains of the sampling network call: the compiled Langevin energy when that
        network is the trained one (``train.compile``, no EMA), else the sampling network.
        Call inside ``frozen(self.sampling_net())``."""
        if self.ema is None and self.compiled is not None:
            return self.compiled
        return self.sampling_net()

    def chains(self, batch: int) -> Generator:
        """The generator of this rank's rows of a global batch of ``batch`` (all of it alone)."""
        if self.shard.world == 1:
            return self.generator
        return Slice(self.generator, self.shard.start(batch), self.shard.local_batch(batch),
                     batch)

    def autocast(self) -> AbstractContextManager:
        return runtime.autocast(self.cfg.train.precision, self.device)


def new_state(cfg: Config, device: torch.device | None = None) -> TrainState:
    """A fresh run: network initialised from ``cfg.train.seed``, Adam(β1, β2) of A.2."""
    device = device or resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    net = EnergyNet(cfg.model).to(device)
    if cfg.train.channels_last:
        net = net.to(memory_format=torch.channels_last)
    ema = ema_of(net) if cfg.train.ema_decay > 0 else None
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.growth.lr[0],
                                 betas=ADAM_BETAS)
    generator = torch.Generator(device=device).manual_seed(cfg.train.seed)
    compiled = runtime.compiled_energy(net, cfg, device)
    record = RunRecord(LossWatch(cfg.run.spike_factor))
    return TrainState(cfg, net, ema, optimizer, generator, record=record, compiled=compiled)


def ema_of(net: EnergyNet) -> EnergyNet:
    """An EMA that starts at ``net``'s current weights, without parameter gradients."""
    return copy.deepcopy(net).requires_grad_(False)


def match_config(state: TrainState) -> None:
    """Give a resumed state what its (possibly overridden) config asks for, where the
    checkpoint would otherwise silently win: the EMA (started now, at the current weights, when
    ``train.ema_decay`` was switched on; dropped when switched off) and the compiled Langevin
    energy (``train.compile``)."""
    train = state.cfg.train
    if train.ema_decay > 0 and state.ema is None:
        log.info("train.ema_decay %g: starting the EMA at the current weights", train.ema_decay)
        state.ema = ema_of(state.net)
    elif train.ema_decay == 0 and state.ema is not None:
        log.info("train.ema_decay 0: dropping the run's EMA; the trained weights sample")
        state.ema = None
    state.compiled = runtime.compiled_energy(state.net, state.cfg, state.device)  # compiles lazily


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
    """The next batch of real images at the stage's resolution, (n, C, r, r) in [−1, 1]: this
    rank's slice of the global batch (``cfebm.train.distributed``)."""
    growth, cfg, shard = state.growth, state.cfg, state.shard
    batch, generator = growth.batch_size, state.chains(growth.batch_size)
    x = shard.read_batch(stream, state.n_images + state.data_skip, batch)
    x = downsample(to_float(x.to(state.device)), growth.resolution)
    if cfg.data.hflip:
        x = random_hflip(x, generator)
    if cfg.train.data_sigma > 0:
        x = x + cfg.train.data_sigma * draw(torch.randn, x.shape, generator, x.device)
    return x


def train_step(state: TrainState, x_data: Tensor, start: Tensor | None = None) -> dict[str, float]:
    """One iteration of Algorithm 1 on the batch ``x_data`` (n, C, r, r); returns its metrics.

    ``start`` (n, C, r, r): source images for a translation run, where the chains start (Eq. 4);
    None starts them from noise (``chains.as_trained`` runs either). In a data-parallel run
    ``x_data`` and ``start`` are this rank's slice of the global batch; the gradients and
    metrics are averaged over the ranks, and the images seen grow by the global batch.
    """
    cfg, growth, net = state.cfg, state.growth, state.net
    n = x_data.shape[0]

    # Smooth MCMC sampling: negatives from the current (and, while fading, coarse) energy.
    freeze_finished_stages(state)
    with frozen(net):
        x_sample = as_trained(state.compiled or net, growth, n, cfg.sampler, source=start,
                              coarse=state.coarse, generator=state.chains(n * state.shard.world),
                              device=state.device, autocast=state.autocast)

    # Optimize the energy function with Eq. (2): one forward pass over data and samples.
    for group in state.optimizer.param_groups:
        group["lr"] = growth.lr * state.lr_scale
    net.train()
    with state.autocast():
        energies = net(torch.cat([x_data, x_sample]), growth.beta)
    e_data, e_sample = energies[:n], energies[n:]
    loss = cd_loss(e_data, e_sample)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in net.parameters() if p.grad is not None]
    metrics = state.shard.average(params, {
        "loss": loss, "e_data": e_data.mean(), "e_sample": e_sample.mean()})
    metrics["grad_norm"] = gradient_norm(params)
    state.optimizer.step()
    if state.ema is not None:
        update_ema(state.ema, net, cfg.train.ema_decay)
    state.n_images += n * state.shard.world
    return metrics

