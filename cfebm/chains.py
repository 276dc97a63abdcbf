"""The chains of a model as it trains: Algorithm 1's negatives (noise, the smooth start during
a fade, the A.8 cascade) and Eq. (4)'s translation chains from source images. ``as_trained``
chooses between the two; training, the run's sample grids and ``TrainedModel.sample`` all call
it, so a model samples exactly as it trained.

Translation (Sec. 3.3): a translation run learns the energy E_Y of the target domain with Algorithm 1 unchanged except
where its negatives start: the short-run chain of Eq. (4) starts at a source image,
y_0 = x ~ p_data(x), instead of U(−1, 1). The chain is the translator.

Coarse to fine: at stage s the source batch is area-pooled to the stage's resolution r, like the
target data. While a new block fades in (β < 1) smooth sampling runs as in Algorithm 1, with
the source in place of the noise: ⌊T(s−1)(1−β)⌋ steps of the coarse energy from the source
pooled to r/2, a 2× upsampling, then ``(1−β)·up + β·x_r``. The linear blend ends at the source
itself when β reaches 1 (the √(1−β²) weights of Algorithm 1 keep the variance of *independent*
noise, but here both terms are the same image and they would brighten it by up to 41%).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch
from torch import Tensor

from cfebm.config import SamplerConfig
from cfebm.growth import Growth
from cfebm.model import EnergyNet
from cfebm.sampling import (
    Energy,
    Generator,
    LangevinStep,
    cascade,
    coarse_step_count,
    downsample,
    energy_of,
    init_noise,
    init_uniform,
    langevin_cfg,
    smooth_init,
    upsample,
)


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
    callback: Callable[[LangevinStep], None] | None = None, guide: Energy | None = None,
) -> Tensor:
    """The MCMC samples of one training iteration (Algorithm 1), (n, C, r, r) in [−1, 1]:
    the model of ``growth`` sampled exactly as it trains. Call inside ``frozen(net)``.

    ``cfg.init == "noise"`` (the paper): while a new block fades in (β < 1) and ``cfg.smooth``
    is set, the chains start from the coarse energy's samples (``smooth_init``), otherwise from
    U(−1, 1); then T(s) steps of E(s)(·; β). ``"cascade"``: U(−1, 1) at the first resolution and
    T steps at every stage up to this one, the coarse scales by ``net`` itself; ``"frozen"``
    (A.8, Table 9(e)): the coarse scales by ``coarse``, the frozen copies of finished stages.
    ``steps``, ``eta0`` (the test-time noise) and ``cascade_all`` (the cascade for any model) change the final
    chains for inference, and ``guide`` (x at any scale -> (N,), ``cfebm.guides``) is added to
    the energy of every chain they run; training uses none of them.
    """
    schedule = sampling_schedule(growth, cfg, steps=steps, cascade=cascade_all)
    channels, beta = net.cfg.image_channels, growth.beta
    last = energy_of(net, beta, autocast, guide)
    if len(schedule) > 1:
        frozen_copies = coarse if cfg.init == "frozen" else ()
        energies = [energy_of(frozen_copies[k] if k < len(frozen_copies) else net, 1.0,
                              autocast, guide)
                    for k in range(len(schedule) - 1)] + [last]
        x = init_uniform(n, channels, schedule[0][0], generator=generator, device=device)
        return cascade(energies, x, [t for _, t in schedule], cfg, eta0=eta0,
                       generator=generator, callback=callback)
    first = growth.cascade[0][0]  # the first stage's resolution, where nested noise begins
    if growth.fading and cfg.smooth:
        x = smooth_init(energy_of(net, 1.0, autocast, guide), n, channels, growth.resolution, beta,
                        growth.n_steps_coarse, cfg, first=first, generator=generator,
                        device=device, callback=callback)
    else:
        x = init_noise(n, channels, growth.resolution, cfg.start_noise, first=first,
                       generator=generator, device=device)
    return langevin_cfg(last, x, schedule[0][1], cfg, eta0=eta0, generator=generator,
                        callback=callback)


def translation_chain(
    net: EnergyNet, growth: Growth, source: Tensor, cfg: SamplerConfig, *,
    generator: Generator = None,
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    steps: int | None = None, eta0: float | None = None,
    callback: Callable[[LangevinStep], None] | None = None, guide: Energy | None = None,
) -> Tensor:
    """Chains of Eq. (4) from ``source`` (N, C, r, r) in [−1, 1], r = the stage's resolution:
    the smooth coarse start while fading (module docstring), then T(s) Langevin steps of
    E(s)(·; β). Returns (N, C, r, r) in [−1, 1]. Call inside ``frozen(net)``.

    ``steps`` and ``eta0`` change the final chain and ``guide`` is added to both chains'
    energies (inference); training uses none of them.
    """
    if source.ndim != 4 or source.shape[-2:] != (growth.resolution, growth.resolution):
        raise ValueError(f"source images must be {growth.resolution}x{growth.resolution} at "
                         f"this stage, got {tuple(source.shape)}")
    beta, x = growth.beta, source
    if growth.fading and cfg.smooth:
        coarse = langevin_cfg(energy_of(net, 1.0, autocast, guide),
                              downsample(source, x.shape[-1] // 2),
                              coarse_step_count(growth.n_steps_coarse, beta), cfg,
                              generator=generator, callback=callback)
        x = ((1.0 - beta) * upsample(coarse) + beta * source).clamp(-1.0, 1.0)
    return langevin_cfg(energy_of(net, beta, autocast, guide), x,
                        growth.n_steps if steps is None else steps, cfg, eta0=eta0,
                        generator=generator, callback=callback)


def as_trained(
    net: EnergyNet, growth: Growth, n: int, cfg: SamplerConfig, *,
    source: Tensor | None = None, coarse: Sequence[EnergyNet] = (), generator: Generator = None,
    device: torch.device | str = "cpu",
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    steps: int | None = None, eta0: float | None = None, cascade_all: bool = False,
    callback: Callable[[LangevinStep], None] | None = None, guide: Energy | None = None,
) -> Tensor:
    """The ``n`` chains of the model of ``growth`` as it trains, (n, C, r, r) in [−1, 1]: a
    translation run's from its ``source`` images (n, C, r, r) in [−1, 1] (Eq. 4,
    ``translation_chain``), a generation run's from noise (Algorithm 1, ``sample_negatives``;
    ``coarse``, ``device`` and ``cascade_all`` serve only these). Call inside ``frozen(net)``.

    ``steps``, ``eta0`` and ``guide`` (an energy term added to every chain, ``cfebm.guides``)
    change the chains for inference; training uses none of them.
    """
    if source is None:
        return sample_negatives(net, growth, n, cfg, coarse=coarse, generator=generator,
                                device=device, autocast=autocast, steps=steps, eta0=eta0,
                                cascade_all=cascade_all, callback=callback, guide=guide)
    if len(source) != n:
        raise ValueError(f"{n} chains need {n} source images, got {len(source)}")
    return translation_chain(net, growth, source, cfg, generator=generator, autocast=autocast,
                             steps=steps, eta0=eta0, callback=callback, guide=guide)
