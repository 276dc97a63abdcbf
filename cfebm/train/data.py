"""The images a training run reads: the training split for generation; for a translation run
(Sec. 3.3, Eq. 4) the target domain's images, which the energy learns, and a stream of source
images, where its chains start.

The source batch at images seen n is the n-th position of its own ``BatchStream`` (seeded
apart from the target stream), a pure function of progress, so a resumed run draws exactly the
sources an uninterrupted one would have. The chains themselves are ``chains.as_trained``'s.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cfebm.config import Config
from cfebm.data import BatchStream, ImageSet, load_images, to_float
from cfebm.data.domains import domains, grid_sources
from cfebm.growth import Growth
from cfebm.runtime import derived_seed
from cfebm.sampling import downsample
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


def grid_source(cfg: Config, growth: Growth, device: torch.device) -> Tensor | None:
    """Where a translation run's sample-grid chains start: ``run.n_grid`` // 2 source test
    images (n, C, r, r) in [−1, 1] at the stage's resolution; None for a generation run."""
    if not translating(cfg):
        return None
    return downsample(grid_sources(cfg, cfg.run.n_grid // 2).to(device), growth.resolution)
