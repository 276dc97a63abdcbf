"""Energy-based unpaired image-to-image translation: training's side (Sec. 3.3, Eq. 4).

A translation run learns the energy E_Y of the target domain with Algorithm 1 unchanged except
where its negatives start: the short-run chain of Eq. (4) starts at a source image,
y_0 = x ~ p_data(x), instead of U(−1, 1). The chain is the translator.

Coarse to fine: at stage s the source batch is area-pooled to the stage's resolution r, like the
target data. While a new block fades in (β < 1) smooth sampling runs as in Algorithm 1, with
the source in place of the noise: ⌊T(s−1)(1−β)⌋ steps of the coarse energy from the source
pooled to r/2, a 2× upsampling, then ``(1−β)·up + β·x_r``. The linear blend ends at the source
itself when β reaches 1 (the √(1−β²) weights of Algorithm 1 keep the variance of *independent*
noise, but here both terms are the same image and they would brighten it by up to 41%).

The source batch at images seen n is the n-th position of its own ``BatchStream`` (seeded apart
from the target stream), a pure function of progress, so a resumed run draws exactly the
sources an uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import Tensor

from cfebm.config import Config, SamplerConfig
from cfebm.data import BatchStream, ImageSet, downsample, load_images, to_float
from cfebm.data.domains import domains
from cfebm.distributed import Shard
from cfebm.growth import Growth
from cfebm.model import EnergyNet, frozen
from cfebm.sampling import (
    Generator,
    LangevinStep,
    coarse_step_count,
    energy_of,
    langevin_cfg,
    upsample,
)


def translating(cfg: Config) -> bool:
    return cfg.task.kind == "translate"


def source_seed(seed: int) -> int:
    """The source stream's seed, independent of the target stream's ``seed``."""
    digest = hashlib.blake2b(f"cfebm-translation-source:{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def training_data(cfg: Config) -> tuple[ImageSet, BatchStream | None]:
    """The images the energy learns (the target domain, or [data] for generation) and, for a
    translation run, the stream of source images its chains start from."""
    m = cfg.model
    if not translating(cfg):
        return load_images(cfg.data, split="train", resolution=m.max_resolution,
                           image_channels=m.image_channels), None
    d = domains(cfg, "train")
    return d.target, BatchStream(d.source, source_seed(cfg.train.seed))


def source_batch(stream: BatchStream | None, n_images: int, growth: Growth,
                 device: torch.device, shard: Shard | None = None) -> Tensor | None:
    """The source images of the iteration at ``n_images``: (B, C, r, r) in [−1, 1] at the
    stage's resolution (a data-parallel rank's rows of the global batch, as ``data_batch``),
    or None for a generation run (``stream`` None)."""
    if stream is None:
        return None
    shard, batch = Shard() if shard is None else shard, growth.batch_size
    x = shard.read_batch(stream, n_images, batch).to(device)
    return downsample(to_float(x), growth.resolution)


def translation_chain(
    net: EnergyNet, growth: Growth, source: Tensor, cfg: SamplerConfig, *,
    generator: Generator = None,
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    steps: int | None = None, eta0: float | None = None,
    callback: Callable[[LangevinStep], None] | None = None,
) -> Tensor:
    """Chains of Eq. (4) from ``source`` (N, C, r, r) in [−1, 1], r = the stage's resolution:
    the smooth coarse start while fading (module docstring), then T(s) Langevin steps of
    E(s)(·; β). Returns (N, C, r, r) in [−1, 1]. Call inside ``frozen(net)``.

    ``steps`` and ``eta0`` change the final chain (inference); training uses neither.
    """
    if source.shape[-1] != growth.resolution:
        raise ValueError(f"source images must be {growth.resolution}x{growth.resolution} at "
                         f"this stage, got {tuple(source.shape)}")
    beta, x = growth.beta, source
    if growth.fading and cfg.smooth:
        coarse = langevin_cfg(energy_of(net, 1.0, autocast), downsample(source, x.shape[-1] // 2),
                              coarse_step_count(growth.n_steps_coarse, beta), cfg,
                              generator=generator, callback=callback)
        x = ((1.0 - beta) * upsample(coarse) + beta * source).clamp(-1.0, 1.0)
    return langevin_cfg(energy_of(net, beta, autocast), x,
                        growth.n_steps if steps is None else steps, cfg, eta0=eta0,
                        generator=generator, callback=callback)


def grid_sources(cfg: Config, n: int) -> Tensor:
    """The first ``n`` source-domain test images at the top resolution, float (n, C, R, R)."""
    source = domains(cfg, "test").source
    return to_float(source.get_batch(torch.arange(min(n, len(source)))))


def translation_grid(net: EnergyNet, growth: Growth, cfg: Config, *, generator: Generator,
                     device: torch.device,
                     autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext
                     ) -> Tensor:
    """Source test images and their translations interleaved row by row for a sample grid:
    (2·n, C, r, r) with n = ``run.n_grid`` // 2, rows of 8 sources then their 8 outputs."""
    source = downsample(grid_sources(cfg, cfg.run.n_grid // 2).to(device), growth.resolution)
    with frozen(net):
        out = translation_chain(net, growth, source, cfg.sampler, generator=generator,
                                autocast=autocast)
    rows = [t for pair in zip(source.split(8), out.split(8)) for t in pair]
    return torch.cat(rows)
