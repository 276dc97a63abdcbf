"""``cfebm translate``: unpaired image-to-image translation with a trained energy (Sec. 3.3).

    cfebm translate MODEL [--input PATH] [--n 16] [--saliency gradient|change] --out DIR

The model is a translation run's checkpoint (or any model: its chains start at the given
images). Without ``--input`` the model's own source-domain test images are translated.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cfebm.apps import translate
from cfebm.apps.figures import save_translation
from cfebm.cli.common import FORMATTER, add_chains, add_model, count, load_model


def cmd_translate(args: argparse.Namespace) -> None:
    model = load_model(args)
    source = translate.source_images(model, args.input, args.n)
    result = translate.translate(model, source, steps=args.steps, noise=args.noise,
                                 saliency=args.saliency, every=args.every, keep=args.keep,
                                 seed=args.seed, batch_size=args.batch_size,
                                 progress=not args.no_progress)
    paths = save_translation(result, args.out, grid=args.grid, scale=args.scale)
    what = args.input or f"{model.cfg.task.pair} source test images"
    steps = model.growth.n_steps if args.steps is None else args.steps
    report = {"model": str(args.model), "input": str(what), "n": len(source), "steps": steps,
              "saliency": args.saliency, **{k: str(v) for k, v in paths.items()}}
    Path(args.out, "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"translated {len(source)} images from {what} with {model} ({steps} Langevin steps)")
    print(f"wrote translated/, saliency/, overlay/, {paths['triplets'].name} and chain/ "
          f"in {args.out}")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("translate", help="translate images with a trained energy, with "
                       "generative saliency maps", formatter_class=FORMATTER)
    add_model(p)
    p.add_argument("--input", help="an image or a folder of images (default: the model's own "
                   "source-domain test images)")
    p.add_argument("--n", type=count(1), help="translate only the first N images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--saliency", choices=translate.SALIENCY, default="gradient",
                   help="gradient: Σ_t ∇E(y_t) (the paper); change: Σ_t |y_{t+1} - y_t|")
    p.add_argument("--every", type=count(1), default=5, help="chain strip: every k-th state")
    p.add_argument("--keep", type=count(1), default=8, help="chain strip: this many chains")
    p.add_argument("--grid", type=count(1), default=16, help="examples in the triplet grid (two to a row)")
    p.add_argument("--scale", type=count(1), default=4, help="enlargement of the grids")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_chains(p, cascade=False, steps_help="Langevin steps of each translation chain (default: "
               "the model's T; fewer keep more of the source)")
    p.set_defaults(func=cmd_translate)
