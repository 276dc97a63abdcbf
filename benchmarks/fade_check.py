"""Does the first chain of a fade hurt the coarse model's samples?

Takes the checkpoint that ended a stage (``RUN/checkpoints/stageK-RxR.pt``), draws samples of it
with Algorithm 2 at its resolution r, scores them at r, then runs them through what the next
stage's first chain does at β = 0 (upsample 2×, ``--fine-steps`` Langevin steps of
E(x) = E_r(avgpool(x)), which is the grown net at β = 0), pools them back to r and scores them
again, with the in-training evaluation's reference and features (``TrainingEval``).

``--betas`` also scores the whole smooth start of Algorithm 1 at each β with the coarse net left
as it is (the grown net's new block untrained, so E(x) = E_r(avgpool(x)) stands in for it):
⌊T(1−β)⌋ coarse steps from U(−1, 1), upsampling, mixing with
β·U, then ``--fine-steps`` steps, pooled back to r. What this loses against β = 0 is the
sampler's share of a fade's dip; the rest of the dip in training is the new block's.
``--start-noise`` chooses the noise (``sampler.start_noise``), and ``--fine-energy-scale`` k
multiplies the stand-in energy (k times the step size at 2r: through the pooling each fine
pixel sees a quarter of the coarse gradient, so k = 4 moves the pooled image as the coarse
chain would).

    python benchmarks/fade_check.py runs/t9d/cf-ebm/checkpoints/stage1-16x16.pt --fine-steps 20
    python benchmarks/fade_check.py runs/f32-T20/checkpoints/stage1-16x16.pt --fine-steps 20 \
        --betas 0.25 0.5 0.75 0.9
    python benchmarks/fade_check.py runs/f32/checkpoints/stage0-8x8.pt --fine-steps 25 \
        --betas 1 --start-noise nested --fine-energy-scale 4
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
import torch.nn.functional as F

from cfebm.sampling import (
    coarse_step_count,
    energy_of,
    init_noise,
    langevin_cfg,
    smooth_init,
    upsample,
)
from cfebm.train.evaluation import TrainingEval
from cfebm.trained import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("checkpoint", help="the checkpoint that ended a stage")
    parser.add_argument("--fine-steps", type=int, required=True,
                        help="T of the next stage: its chain's steps at β = 0")
    parser.add_argument("--n", type=int, default=512, help="samples")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--betas", type=float, nargs="*", default=[],
                        help="fading factors at which to score the whole smooth start")
    parser.add_argument("--start-noise", choices=("uniform", "nested"), default=None,
                        help="the chains' start noise (sampler.start_noise); default: the "
                             "checkpoint's")
    parser.add_argument("--fine-energy-scale", type=float, default=1.0,
                        help="multiply the stand-in fine energy E_r(avgpool(x)) by this (a step "
                             "size that many times larger at 2r)")
    args = parser.parse_args()

    model = load(args.checkpoint, ema=False)
    cfg = model.cfg
    sampler = dataclasses.replace(cfg.sampler,
                                  start_noise=args.start_noise or cfg.sampler.start_noise)
    first = model.growth.cascade[0][0]
    r, steps, channels = model.resolution, model.growth.n_steps, model.channels
    coarse = energy_of(model.net, 1.0, model.autocast)

    def fine(x: torch.Tensor) -> torch.Tensor:  # the grown net at β = 0
        return args.fine_energy_scale * coarse(F.avg_pool2d(x, 2))

    def fine_chain_pooled(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The fade's chain at 2r from ``x``, pooled back to r."""
        y = langevin_cfg(fine, x, args.fine_steps, sampler, generator=generator)
        return F.avg_pool2d(y.detach(), 2)

    sizes = [min(args.batch, args.n - start) for start in range(0, args.n, args.batch)]
    generator = torch.Generator().manual_seed(args.seed)
    before, after = [], []
    for n in sizes:
        x = init_noise(n, channels, r, sampler.start_noise, first=first, generator=generator)
        x = langevin_cfg(coarse, x, steps, sampler, generator=generator).detach()
        before.append(x)
        after.append(fine_chain_pooled(upsample(x), generator))
    score = TrainingEval(cfg, torch.device("cpu")).score
    change = (torch.cat(after) - torch.cat(before)).abs().mean().item()
    print(f"{args.checkpoint}: FID at {r}² of Algorithm 2's samples {score(before, r).fid:.1f}; "
          f"after {args.fine_steps} steps at {2 * r}² (β = 0), pooled back: "
          f"{score(after, r).fid:.1f}; mean |pixel change| {change:.4f}")
    for beta in args.betas:
        generator = torch.Generator().manual_seed(args.seed)
        pooled = [fine_chain_pooled(smooth_init(coarse, n, channels, 2 * r, beta, steps,
                                                sampler, first=first, generator=generator),
                                    generator)
                  for n in sizes]
        n_coarse = coarse_step_count(steps, beta)
        print(f"β = {beta:g}: {n_coarse} coarse steps, mix, {args.fine_steps} at {2 * r}², "
              f"pooled back: FID {score(pooled, r).fid:.1f}")


if __name__ == "__main__":
    main()
