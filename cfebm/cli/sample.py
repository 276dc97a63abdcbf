"""``cfebm sample`` and ``cfebm export``: draw from a trained model, write its inference weights.

    cfebm sample MODEL --n 64 --out samples.png [--steps T] [--noise η0] [--cascade]
    cfebm sample MODEL --n 8 --trajectory chains/ --every 5     (Fig. 10: strip, GIF, energies)
    cfebm export runs/f32/checkpoints/latest.pt --out f32.safetensors
    cfebm export runs/f32 --out f32-model      (a folder: model.safetensors, config.json, README.md)
"""

from __future__ import annotations

import argparse

from cfebm.apps.chains import sample_with_trajectory
from cfebm.apps.figures import save_trajectory
from cfebm.cli.common import (
    FORMATTER,
    add_chains,
    add_model,
    count,
    describe_schedule,
    image_file,
    load_model,
)
from cfebm.share import FOLDER_FILES
from cfebm.viz import save_grid, save_images


def cmd_sample(args: argparse.Namespace) -> None:
    model = load_model(args)
    kwargs = {"steps": args.steps, "noise": args.noise, "seed": args.seed,
              "cascade": args.cascade, "batch_size": args.batch_size,
              "progress": not args.no_progress}
    if args.trajectory:
        x, trajectory = sample_with_trajectory(model, args.n, every=args.every, **kwargs)
        paths = save_trajectory(trajectory, args.trajectory)
        print(f"wrote the chains of the first {trajectory.keep} samples, every {args.every} "
              f"step(s): {', '.join(str(p) for p in paths.values())}")
    else:
        x = model.sample(args.n, **kwargs)
    out = save_grid(x, args.out, scale=args.scale)
    schedule = model.schedule(steps=args.steps, cascade=args.cascade)
    print(f"wrote {args.n} samples of {model} ({describe_schedule(schedule)}) to {out}")
    if args.each:
        paths = save_images(x, args.each)
        print(f"wrote {len(paths)} image files to {args.each}")


def cmd_export(args: argparse.Namespace) -> None:
    model = load_model(args)
    path = model.export(args.out)
    if path.is_dir():
        print(f"wrote {model} to {path}/: {', '.join(FOLDER_FILES)} "
              f"({(path / FOLDER_FILES[0]).stat().st_size / 1e6:.1f} MB of weights), a folder a "
              "model hub takes as it is; cfebm.load and every command read it")
    else:
        print(f"wrote {model} to {path} ({path.stat().st_size / 1e6:.1f} MB)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="draw samples as the model was trained (Algorithm 2)",
                       formatter_class=FORMATTER)
    add_model(p)
    add_chains(p)
    p.add_argument("--n", type=count(1), default=64, help="number of samples")
    p.add_argument("--out", default="samples.png", type=image_file,
                   help="the grid image to write")
    p.add_argument("--each", metavar="DIR", help="also write one PNG per sample into DIR")
    p.add_argument("--scale", type=count(1), default=2, help="enlarge the grid this many times")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--trajectory", metavar="DIR", help="also write the first 8 chains as a strip "
                   "of every --every-th state, an animated GIF and an energy plot (Fig. 10)")
    p.add_argument("--every", type=count(1), default=5, help="record every k-th Langevin step")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("export", help="write a model's inference weights and config: to a "
                       ".safetensors file, or to a folder with its model card, ready for a "
                       "model hub", formatter_class=FORMATTER)
    add_model(p)
    p.add_argument("--out", required=True, help="a .safetensors file to write, or a folder "
                   "(any other name) to write model.safetensors, config.json and README.md, "
                   "a model card, into")
    p.set_defaults(func=cmd_export)
