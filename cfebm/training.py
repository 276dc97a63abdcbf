"""Coarse-to-fine maximum-likelihood training of the expanding EBM (Algorithm 1, Eq. 2).

``TrainState`` holds everything a run needs to continue exactly: the network, its EMA, the
optimiser, the number of images seen (the only progress state; stage and β derive from it), the
random generator and the divergence-recovery record. ``train_step`` is one iteration of
Algorithm 1; the loop with its files, progress bar and checkpoints lives in ``loop.py``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from cfebm import speed
from cfebm.config import ADAM_BETAS, Config, SamplerConfig
from cfebm.data import BatchStream, downsample, random_hflip, to_float
from cfebm.distributed import Shard
from cfebm.divergence import LossWatch
from cfebm.growth import Growth, growth_at
from cfebm.model import EnergyNet, frozen, frozen_copy
from cfebm.sampling import (
    Generator,
    LangevinStep,
    Slice,
    cascade,
    draw,
    energy_of,
    init_noise,
    init_uniform,
    langevin_cfg,
    smooth_init,
)
from cfebm.speed import CompiledEnergy
from cfebm.translation import translation_chain

log = logging.getLogger(__name__)


def sampling_schedule(growth: Growth, cfg: SamplerConfig, *, steps: int | None = None,
                      cascade: bool = False) -> list[tuple[int, int]]:
    """(resolution, Langevin steps) of the chains that sample the model of ``growth``.

    Algorithm 2 at its resolution with its T, or every stage up to it in turn (A.8) when
    ``cascade`` is asked for or the model trains with cascade chains (``cfg.init``). ``steps``
    replaces T everywhere. (During a fade, ``sample_negatives`` also runs the smooth
    initialisation's coarse chain before these.)
    """
    pairs = (list(growth.cascade) if cascade or cfg.init != "noise"
             else [(growth.resolution, growth.n_steps)])
    return [(r, t if steps is None else steps) for r, t in pairs]


def sample_negatives(
    net: EnergyNet, growth: Growth, n: int, cfg: SamplerConfig, *,
    coarse: Sequence[EnergyNet] = (), generator: Generator = None,
    device: torch.device | str = "cpu",
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    steps: int | None = None, eta0: float | None = None, cascade_all: bool = False,
    callback: Callable[[LangevinStep], None] | None = None,
) -> Tensor:
    """The MCMC samples of one training iteration (Algorithm 1), (n, C, r, r) in [−1, 1]:
    the model of ``growth`` sampled exactly as it trains. Call inside ``frozen(net)``.

    ``cfg.init == "noise"`` (the paper): while a new block fades in (β < 1) and ``cfg.smooth``
    is set, the chains start from the coarse energy's samples (``smooth_init``), otherwise from
    U(−1, 1); then T(s) steps of E(s)(·; β). ``"cascade"``: U(−1, 1) at the first resolution and
    T steps at every stage up to this one, the coarse scales by ``net`` itself; ``"frozen"``
    (A.8, Table 9(e)): the coarse scales by ``coarse``, the frozen copies of finished stages.
    ``steps``, ``eta0`` (the test-time noise) and ``cascade_all`` (the cascade for any model) change the final
    chains for inference; training uses none of them.
    """
    schedule = sampling_schedule(growth, cfg, steps=steps, cascade=cascade_all)
    channels, beta = net.cfg.image_channels, growth.beta
    last = energy_of(net, beta, autocast)
    if len(schedule) > 1:
        frozen_copies = coarse if cfg.init == "frozen" else ()
        energies = [energy_of(frozen_copies[k] if k < len(frozen_copies) else net, 1.0, autocast)
                    for k in range(len(schedule) - 1)] + [last]
        x = init_uniform(n, channels, schedule[0][0], generator=generator, device=device)
        return cascade(energies, x, [t for _, t in schedule], cfg, eta0=eta0,
                       generator=generator, callback=callback)
    first = growth.cascade[0][0]  # the first stage's resolution, where nested noise begins
    if growth.fading and cfg.smooth:
        x = smooth_init(energy_of(net, 1.0, autocast), n, channels, growth.resolution, beta,
                        growth.n_steps_coarse, cfg, first=first, generator=generator,
                        device=device, callback=callback)
    else:
        x = init_noise(n, channels, growth.resolution, cfg.start_noise, first=first,
                       generator=generator, device=device)
    return langevin_cfg(last, x, schedule[0][1], cfg, eta0=eta0, generator=generator,
                        callback=callback)


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


def resolve_device(name: str) -> torch.device:
    """The device named in ``train.device`` ("auto": CUDA when available) for one process."""
    return Shard().device(name)


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
    rolled_back_to: int | None = None  # images of the checkpoint the last recovery loaded
    # eval.fid_watch (fidwatch.py): images of the data stream skipped by its rollbacks (the
    # batch at n_images is the stream's at n_images + data_skip), the last kept FIDs at each
    # resolution that it compares with, and its rollbacks in a row.
    data_skip: int = 0
    watch_reference: dict[int, list[float]] = field(default_factory=dict)
    watch_retries: int = 0
    # The recent losses that tell a spike (divergence.py); new_state sets the config's.
    watch: LossWatch = field(default_factory=lambda: LossWatch(0.0, 0.0))
    train_seconds: float = 0.0  # wall-clock time spent in training iterations (a measurement)
    # sampler.init="frozen" (A.8): a frozen copy of the model as each finished stage ended,
    # which samples that stage's resolution in the cascade; coarse[k] is stage k's.
    coarse: list[EnergyNet] = field(default_factory=list)
    # This process's part of a data-parallel run (cfebm.distributed); not saved: a run resumes
    # on any number of processes.
    shard: Shard = field(default_factory=Shard)
    # train.compile: the network as the Langevin chains call it, compiled (speed.py); not saved.
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
        return speed.autocast(self.cfg.train.precision, self.device)


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
    compiled = speed.compiled_energy(net, cfg, device)
    watch = LossWatch(cfg.run.spike_factor)
    return TrainState(cfg, net, ema, optimizer, generator, watch=watch, compiled=compiled)


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
    state.compiled = speed.compiled_energy(state.net, state.cfg, state.device)  # compiles lazily


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
    rank's slice of the global batch (``cfebm.distributed``)."""
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

    ``start`` (n, C, r, r): source images for a translation run, where the chains start (Eq. 4,
    ``translation.translation_chain``); None starts them from noise. In a data-parallel run
    ``x_data`` and ``start`` are this rank's slice of the global batch; the gradients and
    metrics are averaged over the ranks, and the images seen grow by the global batch.
    """
    cfg, growth, net = state.cfg, state.growth, state.net
    n = x_data.shape[0]

    # Smooth MCMC sampling: negatives from the current (and, while fading, coarse) energy.
    freeze_finished_stages(state)
    with frozen(net):
        generator = state.chains(n * state.shard.world)
        if start is None:
            x_sample = sample_negatives(state.compiled or net, growth, n, cfg.sampler,
                                        coarse=state.coarse, generator=generator,
                                        device=state.device, autocast=state.autocast)
        else:
            x_sample = translation_chain(state.compiled or net, growth, start, cfg.sampler,
                                         generator=generator, autocast=state.autocast)

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

