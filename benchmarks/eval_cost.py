"""What an in-training evaluation costs, against a training iteration, stage by stage.

Times what ``cfebm train --minutes`` times to fit a schedule (``budget.measure``): one training
iteration and one batch of an evaluation's chains, mid-fade and grown, for every stage of a
preset, once with the Langevin energy compiled (``train.compile=true``, as the evaluation draws
it when the run samples with its trained weights) and once eager. An evaluation of
``eval.n`` samples costs about eval_n / batch such batches.

    python benchmarks/eval_cost.py --preset fmnist32 --set 'growth.fade_images=[0,12800,25600]'
"""

from __future__ import annotations

import argparse

import torch

from cfebm.config import apply_overrides, load_preset
from cfebm.train.budget import measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="fmnist32")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    print("| energy | stage | iteration fading (s) | iteration grown (s) | chains fading (s) "
          "| chains grown (s) |")
    print("|---|---|---|---|---|---|")
    for compiled in (True, False):
        cfg = apply_overrides(load_preset(args.preset), args.set + [
            f"train.compile={str(compiled).lower()}", "eval.every=1600"])
        for resolution, cost in zip(cfg.growth.resolutions, measure(cfg)):
            print(f"| {'compiled' if compiled else 'eager'} | {resolution}² | {cost.fading:.3f} "
                  f"| {cost.grown:.3f} | {cost.sampling_fading:.3f} | {cost.sampling_grown:.3f} |")


if __name__ == "__main__":
    main()
