"""``cfebm sample`` and ``cfebm export``: draw from a trained model, write its inference weights.

    cfebm sample MODEL --n 64 --out samples.png [--steps T] [--noise η0] [--cascade]
    cfebm sample MODEL --n 8 --trajectory chains/ --every 5     (Fig. 10: strip, GIF, energies)
    cfebm sample MODEL --class sneaker                          (steered: cfebm.guides)
    cfebm sample A --and B      cfebm sample A --not B --not-weight 3
    cfebm export runs/f32/checkpoints/latest.pt --out f32.safetensors
    cfebm export runs/f32 --out f32-model      (a folder: model.safetensors, config.json, README.md)
"""

from __future__ import annotations

import argparse

from cfebm.apps.chains import sample_with_trajectory
from cfebm.apps.figures import save_trajectory
from cfebm.cli.common import (
    FORMATTER,
    CLIError,
    add_chains,
    add_model,
    count,
    describe_schedule,
    image_file,
    load_model,
    non_negative,
)
from cfebm.guides import (
    EXCLUSION_WEIGHT,
    Guide,
    class_index,
    classifier,
    exclusion,
    load_classifier,
    product,
)
from cfebm.share import FOLDER_FILES
from cfebm.trained import TrainedModel, load
from cfebm.viz import save_grid, save_images

CLASS_CANDIDATES, CLASS_GUIDANCE = 4, 3.0   # --class's defaults (validation: notebook)
PLAIN_GUIDANCE = 10.0                        # --class's λ with --candidates 1


def cmd_sample(args: argparse.Namespace) -> None:
    if args.candidates is None:   # a choice among candidates needs single chains from noise
        chooses = args.class_name is not None and not (args.trajectory or args.cascade)
        args.candidates = CLASS_CANDIDATES if chooses else 1
    if args.guidance is None:
        args.guidance = CLASS_GUIDANCE if args.candidates > 1 else PLAIN_GUIDANCE
    model = load_model(args)
    guides = steering(args, model)
    kwargs = {"steps": args.steps, "noise": args.noise, "seed": args.seed,
              "cascade": args.cascade, "batch_size": args.batch_size,
              "progress": not args.no_progress, "guide": guides, "candidates": args.candidates}
    if args.candidates > 1 and not guides:
        raise CLIError("--candidates chooses by a guide: add --class, --and or --not")
    if args.trajectory:
        if args.candidates > 1:
            raise CLIError("--trajectory follows single chains: leave out --candidates")
        x, trajectory = sample_with_trajectory(model, args.n, every=args.every, **kwargs)
        paths = save_trajectory(trajectory, args.trajectory)
        print(f"wrote the chains of the first {trajectory.keep} samples, every {args.every} "
              f"step(s): {', '.join(str(p) for p in paths.values())}")
    else:
        x = model.sample(args.n, **kwargs)
    out = save_grid(x, args.out, scale=args.scale)
    schedule = model.schedule(steps=args.steps, cascade=args.cascade)
    steered = "".join(f", {g.name} (weight {g.weight:g})" for g in guides)
    if args.candidates > 1:
        steered += f", each the best of {args.candidates} candidates"
    print(f"wrote {args.n} samples of {model} ({describe_schedule(schedule)}{steered}) to {out}")
    if args.each:
        paths = save_images(x, args.each)
        print(f"wrote {len(paths)} image files to {args.each}")


def steering(args: argparse.Namespace, model: TrainedModel) -> list[Guide]:
    """The guides ``--class``, ``--and`` and ``--not`` ask for (``cfebm.guides``); checked
    against ``model`` here, so a bad one is refused before any chain runs."""
    guides = []
    if args.class_name is not None:
        net, _ = load_classifier()
        guides.append(classifier(net.to(model.device), class_index(args.class_name),
                                 args.guidance))
    device = model.device
    guides += [product(load(b, device=device)) for b in args.and_models]
    guides += [exclusion(model, load(b, device=device), args.not_weight)
               for b in args.not_models]
    for g in guides:
        g.check(model.channels, model.resolution)
    return guides


def cmd_export(args: argparse.Namespace) -> None:
    model = load_model(args)
    path = model.export(args.out)
    if path.is_dir():
        print(f"wrote {model} to {path}/: {', '.join(FOLDER_FILES)} "
              f"({(path / FOLDER_FILES[0]).stat().st_size / 1e6:.1f} MB of weights), a folder a "
              "model hub takes as it is; cfebm.load and every command read it")
    else:
        print(f"wrote {model} to {path} ({path.stat().st_size / 1e6:.1f} MB)")


def add_steering(p: argparse.ArgumentParser) -> None:
    """--class, --guidance, --and, --not, --not-weight: energies added to the model's;
    --candidates: a choice among chains by them."""
    p.add_argument("--class", dest="class_name", metavar="NAME",
                   help="steer toward a Fashion-MNIST class (sneaker, ankle-boot, t-shirt, ...) "
                   "with the packaged noise-trained guide classifier: adds λ·(−log p(class|x))")
    p.add_argument("--guidance", type=non_negative,
                   help="λ, the weight of --class (default 3 with candidates, 10 with "
                   "--candidates 1: each chosen on the validation split for fmnist32-2h, "
                   "docs/notebook/steering.md)")
    p.add_argument("--and", dest="and_models", metavar="MODEL", action="append", default=[],
                   help="also a model's energy (product of experts, A AND B); same resolution "
                   "and channels; repeatable")
    p.add_argument("--not", dest="not_models", metavar="MODEL", action="append", default=[],
                   help="a model whose images to avoid (A AND NOT B: the chains sample "
                   "p_A·P(A rather than B | x)^λ, cfebm.guides.exclusion); repeatable")
    p.add_argument("--not-weight", type=non_negative, default=EXCLUSION_WEIGHT,
                   help="λ of --not: λ·softplus(E_A − E_B − c), −λ·log P(A rather than B | x) "
                   "(cfebm.guides.exclusion; chosen on validation chains)")
    p.add_argument("--candidates", type=count(1), metavar="K",
                   help="K candidate chains per sample; each keeps the one the guides rate "
                   "best two thirds of the way, then finishes it (cfebm.guides.best_of): "
                   "classes the model rarely draws come out right and less overexposed, at "
                   "about 1 + (K−1)·2/3 times the chain steps (default 4 with --class, "
                   "else 1)")


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
    add_steering(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("export", help="write a model's inference weights and config: to a "
                       ".safetensors file, or to a folder with its model card, ready for a "
                       "model hub", formatter_class=FORMATTER)
    add_model(p)
    p.add_argument("--out", required=True, help="a .safetensors file to write, or a folder "
                   "(any other name) to write model.safetensors, config.json and README.md, "
                   "a model card, into")
    p.set_defaults(func=cmd_export)
