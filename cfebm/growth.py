"""Stage schedule of coarse-to-fine training (Algorithm 1), as a pure function of progress.

Progress is counted in training images seen (``n_images``), the only progress state a run keeps.
The stage, its resolution and the fading factor β are always recomputed from it (the idea of
PGGAN's ``TrainingSchedule(cur_nimg)``), so a resumed run can never disagree with itself.

Stage s trains for ``stage_images[s]`` images. Its first ``fade_images[s]`` images fade the new
block in: β = min(1, images seen in the stage / fade length). The first stage has nothing to
fade from, so its β is always 1. With ``lr_decay = "linear"`` the last stage's learning rate
falls linearly from its value at the end of that stage's fade to 0 at the end of the schedule.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from cfebm.config import GrowthConfig


@dataclass(frozen=True)
class Growth:
    stage: int            # 0-based index into GrowthConfig.resolutions
    resolution: int       # side length the energy net sees in this stage
    beta: float           # fading factor of the newest block, 0 -> 1; 1.0 = fully grown
    images_in_stage: int  # training images seen since this stage began
    batch_size: int
    lr: float
    n_steps: int          # Langevin steps T(s) at this stage
    n_steps_coarse: int   # T(s-1): steps of the previous stage (0 in the first stage)
    cascade: tuple[tuple[int, int], ...]  # (resolution, T) of stages 0..s, coarse to fine

    @property
    def fading(self) -> bool:
        return self.beta < 1.0


def stage_starts(cfg: GrowthConfig) -> list[int]:
    """Images seen when each stage begins; the last entry is the end of training."""
    return [0, *itertools.accumulate(cfg.stage_images)]


def total_images(cfg: GrowthConfig) -> int:
    return stage_starts(cfg)[-1]


def crossed(before: int, after: int, every: int) -> bool:
    """Whether an iteration from ``before`` to ``after`` images passes a multiple of ``every``."""
    return before // every != after // every


def growth_at(n_images: int, cfg: GrowthConfig) -> Growth:
    """The training state after ``n_images`` images. Past the end, the last stage at β = 1."""
    if n_images < 0:
        raise ValueError(f"n_images must be >= 0, got {n_images}")
    starts = stage_starts(cfg)
    stage = next((s for s in range(len(cfg.resolutions)) if n_images < starts[s + 1]),
                 len(cfg.resolutions) - 1)
    seen = n_images - starts[stage]
    fade = cfg.fade_images[stage]
    beta = 1.0 if stage == 0 or fade == 0 else min(1.0, seen / fade)
    return Growth(
        stage=stage,
        resolution=cfg.resolutions[stage],
        beta=beta,
        images_in_stage=seen,
        batch_size=cfg.batch_size[stage],
        lr=cfg.lr[stage] * _decay(n_images, stage, starts, cfg),
        n_steps=cfg.n_steps[stage],
        n_steps_coarse=cfg.n_steps[stage - 1] if stage > 0 else 0,
        cascade=tuple(zip(cfg.resolutions[:stage + 1], cfg.n_steps[:stage + 1])),
    )


def _decay(n_images: int, stage: int, starts: list[int], cfg: GrowthConfig) -> float:
    """The factor in [0, 1] on ``stage``'s lr after ``n_images`` images (1 without decay)."""
    if cfg.lr_decay == "none" or stage < len(cfg.resolutions) - 1:
        return 1.0
    decay_from, end = starts[stage] + cfg.fade_images[stage], starts[stage + 1]
    if n_images <= decay_from:
        return 1.0
    return 0.0 if n_images >= end else (end - n_images) / (end - decay_from)
