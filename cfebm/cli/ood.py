"""``cfebm ood``: rank out-of-distribution sets against the model's test split (Table 4).

    cfebm ood fmnist32-2h --ood uniform constant interp vflip invert mnist my_images/

The default score, ``ratio+features+upright``, is fitted to the validation split of the model's
dataset first, its upright weight chosen there (under a minute on a CPU at 32²); ``--score all``
reports every score (``cfebm.apps.ood_scores``).
"""

from __future__ import annotations

import argparse

from cfebm.apps.ood import SYNTHETIC, evaluate_ood
from cfebm.apps.ood_scores import DEFAULT_SCORE, SCORES, Detector
from cfebm.cli.common import FORMATTER, add_model, count, load_model, non_negative


def cmd_ood(args: argparse.Namespace) -> None:
    model = load_model(args)
    kinds = SCORES if args.score == "all" else (args.score,)
    detector = Detector.for_kinds(model, kinds, coarse=args.ratio_resolution,
                                  upright_weight=args.weights and args.weights[1],
                                  batch_size=args.batch_size)
    if args.weights:
        detector.weight = args.weights[0]
    if detector.fitted_on:
        print(f"fitted on {detector.fitted_on}")
    if detector.choice:
        print(choice_table(detector) + "\n")
    report = evaluate_ood(model, args.ood, n=args.n, kinds=kinds, seed=args.seed,
                          batch_size=args.batch_size, detector=detector,
                          progress=not args.no_progress)
    for metric in ("auroc", "fpr95"):
        print(report.table(metric) + "\n")
    print(f"in-distribution: {report.in_set.how}")
    for s in report.sets:
        print(f"{s.name}: {s.how}")
    paths = report.write(args.out)
    print(f"wrote {', '.join(str(p) for p in paths)}")


def choice_table(detector: Detector) -> str:
    """The validation AUROCs the upright weight b was chosen by, as a Markdown table."""
    names = list(detector.choice["energy"])
    head = (f"upright weight b = {detector.upright_weight:g}, chosen on validation (the largest "
            "worst AUROC, Interp at least the energy's):\n")
    rows = [head, "| score (validation AUROC) | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|"]
    for key, per_set in detector.choice.items():
        label = key if key == "energy" else f"default, b = {key}"
        rows.append(f"| {label} | " + " | ".join(f"{per_set[n]:.3f}" for n in names) + " |")
    return "\n".join(rows)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ood", help="out-of-distribution detection: AUROC, AUPR and FPR@95 of "
                       "sets against the model's test split", formatter_class=FORMATTER)
    add_model(p)
    p.add_argument("--ood", nargs="+", default=list(SYNTHETIC), metavar="SET",
                   help=f"{', '.join(SYNTHETIC)}, a dataset name or an image folder")
    p.add_argument("--score", choices=(*SCORES, "all"), default=DEFAULT_SCORE,
                   help="energy: −E(x) (the paper); grad_norm: +‖∇E(x)‖ (the authors' code); "
                   "ratio: −E_R(x) + E_r(pool x); features: a Gaussian on the network's "
                   "features; upright: −softplus(E(x) − E(flip x)); ratio+features; "
                   "ratio+features+upright (default): the three standardised and weighted; "
                   "all higher = more in-distribution")
    p.add_argument("--weights", nargs=2, type=non_negative, metavar=("A", "B"),
                   help="the default score's weights on z(features) and z(upright) (default: "
                   "0.5, and b chosen on the validation split: docs/applications/ood.md)")
    p.add_argument("--ratio-resolution", type=count(8), default=0, metavar="R",
                   help="the ratio's coarse scale r (default: half the model's resolution)")
    p.add_argument("--n", type=count(2), default=1000, help="images per set")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sets")
    p.add_argument("--batch-size", type=count(1), default=500, help="images per batch")
    p.add_argument("--out", default="ood", help="folder for ood.md, ood.csv and histograms")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=cmd_ood)
