"""The images a training run reads: the training split for generation; for a translation run
(Sec. 3.3, Eq. 4) the target domain's images, which the energy learns, and a stream of source
images, where its chains start.

The source batch at images seen n is the n-th position of its own ``BatchStream`` (seeded
apart from the target stream), a pure function of progress, so a resumed run draws exactly the
sources an uninterrupted one would have. The chains themselves are ``chains.translation_chain``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import Tensor

from cfebm.chains import translation_chain
from cfebm.config import Config
from cfebm.data import BatchStream, ImageSet, load_images, to_float
from cfebm.data.domains import domains, grid_sources
from cfebm.growth import Growth
from cfebm.model import EnergyNet, frozen
from cfebm.runtime import derived_seed
from cfebm.sampling import Generator, downsample
from cfebm.train.distributed import Shard


def translating(cfg: Config) -> bool:
    return cfg.task.kind == "translate"


def training_data(cfg: Config) -> tuple[ImageSet, BatchStream | None]:
    """The images the energy learns (the target domain, or [data] for generation) and, for a
    translation run, the stream of source images its chains start from."""
    m = cfg.model
    if not translating(cfg):
        return load_images(cfg.data, split="train", resolution=m.max_resolution,
                           image_channels=m.image_channels), None
    d = domains(cfg, "train")
    return d.target, BatchStream(d.source, derived_seed("translation-source", cfg.train.seed))


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
