"""Is a bad in-training evaluation the sampler's fault or the model's?

Loads a training checkpoint (``RUN/checkpoints/latest.pt``, typically stopped with
``--stop-at`` where an evaluation jumped) and runs the run's own in-training evaluation on it
(``TrainingEval``: ``--n`` samples as trained, FID at the stage's resolution and pooled to the
stage before's) once as trained and once per sampler variant. Each variant is a name and
``--set``-style overrides separated by ';', e.g. ``cascade=sampler.init=cascade`` or
``T50=growth.n_steps=[15,50,20]``. If no variant comes near the coarse stage's level, the
chains' start and length are not what failed: the energy itself has.

Also prints the rms per pixel of ∇ₓE on ``--n`` validation images at the checkpoint's β: how steep the
learned energy is where the data lie (a Langevin step moves a pixel by about that much).

    python benchmarks/sampler_check.py runs/fz16-diag/checkpoints/latest.pt \
        "T50=growth.n_steps=[15,50,20]" \
        "cascade=sampler.init=cascade" "nested=sampler.start_noise=nested" \
        "noise=sampler.smooth=false" "T10=growth.n_steps=[15,10,20]"
    python benchmarks/sampler_check.py runs/s19e-8-s0/checkpoints/latest.pt --n 2000 \
        --at 19199 "s1=train.seed=1"     # a finished 8² stage, 2,000 samples, two chain seeds
"""

from __future__ import annotations

import argparse

import torch

from cfebm.config import apply_overrides
from cfebm.data import downsample, to_float
from cfebm.train.checkpoint import load_state
from cfebm.train.evaluation import TrainingEval
from cfebm.train.step import match_config


def gradient_rms(state, evaluation: TrainingEval, n: int) -> float:
    """rms over pixels of ∇ₓE(x; β) on the first ``n`` validation images (the in-training
    evaluation's) at the stage's resolution."""
    growth = state.growth
    x = downsample(to_float(evaluation.images[:n]), growth.resolution).requires_grad_(True)
    energy = state.net.eval()(x, growth.beta)
    (grad,) = torch.autograd.grad(energy.sum(), x)
    return grad.pow(2).mean().sqrt().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("checkpoint", help="a training checkpoint (not an export)")
    parser.add_argument("variants", nargs="*", help="NAME=KEY=VALUE[;KEY=VALUE...]")
    parser.add_argument("--n", type=int, default=500, help="samples per evaluation")
    parser.add_argument("--at", type=int, help="evaluate as of this many images (one before a "
                        "stage boundary: the finished stage at its own resolution)")
    args = parser.parse_intermixed_args()

    state = load_state(args.checkpoint, "cpu")
    if args.at is not None:
        state.n_images = args.at
    base = apply_overrides(state.cfg, [f"eval.n={args.n}", "train.compile=false"])
    state.cfg = base
    match_config(state)  # eager: each variant would otherwise compile its own graphs
    evaluation = TrainingEval(base, torch.device("cpu"))
    growth = state.growth
    print(f"{args.checkpoint}: {state.n_images:,} images, {growth.resolution}², "
          f"β = {growth.beta:.3f}; rms ∇ₓE on validation images {gradient_rms(state, evaluation, args.n):.4f}")
    for spec in ["as trained="] + args.variants:
        name, _, overrides = spec.partition("=")
        state.cfg = evaluation.cfg = apply_overrides(base, [s for s in overrides.split(";") if s])
        row, _ = evaluation(state)
        pooled = row.get("eval_fid_coarse")
        print(f"{name}: FID {row['eval_fid']:.1f}"
              + (f", pooled to {row['eval_coarse_resolution']}² {pooled:.1f}" if pooled else ""),
              flush=True)


if __name__ == "__main__":
    main()
