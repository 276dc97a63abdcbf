"""The cost of class-conditional sampling (issue 39): seconds per image of guided chains
against unguided ones, timed back to back in one process on the same seeds and batches, the
unguided chains before and after the guided ones (a change of load shows as a gap between the
two). The default is ``cfebm sample --class``'s: 4 candidates at λ = 3.

    python benchmarks/steer_cost.py fmnist32-2h --json runs/steer-cost.json
"""

from __future__ import annotations

import argparse

from record import timed, write_report

from cfebm import guides
from cfebm.trained import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--class", dest="k", type=int, default=9, help="the class index")
    parser.add_argument("--weight", type=float, default=3.0, help="guidance weight λ")
    parser.add_argument("--candidates", type=int, default=4, help="K candidates a sample")
    parser.add_argument("--n", type=int, default=500, help="unguided chains per timing")
    parser.add_argument("--n-guided", type=int, default=200, help="guided samples")
    parser.add_argument("--json", help="write the timings as JSON")
    args = parser.parse_args()

    model, (net, _) = load(args.model), guides.load_classifier()
    guide = guides.classifier(net, args.k, args.weight)
    seconds = {}
    for name, n, options in [("unguided", args.n, {}),
                             ("guided", args.n_guided, {"guide": guide,
                                                        "candidates": args.candidates}),
                             ("unguided again", args.n, {})]:
        seconds[name] = timed(lambda n=n, options=options: model.sample(n, seed=0, **options))[1]
        print(f"{name:15s} {seconds[name]:.3f} s/image", flush=True)
    ratio = seconds["guided"] / ((seconds["unguided"] + seconds["unguided again"]) / 2)
    print(f"guided / unguided: {ratio:.2f}x", flush=True)
    if args.json:
        write_report(args.json, {"model": args.model, "class": args.k, "weight": args.weight,
                                 "candidates": args.candidates, "seconds_per_image": seconds,
                                 "ratio": ratio})


if __name__ == "__main__":
    main()
