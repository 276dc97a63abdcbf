"""``cfebm fid-ref`` and ``cfebm eval``: reference statistics and sample quality.

    cfebm fid-ref --dataset fashion_mnist --split test --features fmnist --out fmnist_test.npz
    cfebm eval runs/qs/checkpoints/latest.pt --n 10000 --features fmnist [--ref fmnist_test.npz]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from cfebm.cli.common import FORMATTER, add_chains, add_model, count, load_model
from cfebm.config import Config, DataConfig, apply_overrides
from cfebm.data import SPLITS, load_images
from cfebm.metrics.evaluate import (
    FEATURES,
    at_resolution,
    class_predictor,
    evaluate_samples,
    make_extractor,
    nearest_neighbours,
    neighbour_grid,
)
from cfebm.metrics.reference import (
    EvalError,
    Reference,
    check_reference,
    compute_reference,
    load_reference,
    reference_path,
    save_reference,
)
from cfebm.runtime import resolve_device
from cfebm.viz import save_grid

GRAYSCALE = ("fashion_mnist", "digits")   # --image-channels defaults to 1 for these


def _with_data_overrides(cfg: Config, overrides: list[str]) -> Config:
    """``apply_overrides`` for ``data.*`` keys only (the model and sampler stay as trained)."""
    for item in overrides:
        if not item.strip().startswith("data."):
            raise EvalError(f"--set takes data.KEY=VALUE here, got {item!r}")
    return apply_overrides(cfg, overrides)


def cmd_fid_ref(args: argparse.Namespace) -> None:
    data = _with_data_overrides(Config(data=DataConfig(dataset=args.dataset)), args.set).data
    out = reference_path(args.out)
    channels = args.image_channels or (1 if data.dataset in GRAYSCALE else 3)
    device = resolve_device(args.device)
    extractor = make_extractor(args.features, dataset=data.dataset, channels=channels,
                               device=device)
    ref = compute_reference(data, args.split, at_resolution(extractor, args.resolution),
                            resolution=args.resolution, image_channels=channels,
                            batch_size=args.batch_size, device=device,
                            progress=not args.no_progress)
    path = save_reference(ref, out)
    print(f"wrote statistics of {ref.stats.count:,} {data.dataset} {args.split} images "
          f"({args.resolution}x{args.resolution}, {ref.metadata['name']}) to {path}")


def cmd_eval(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    model = load_model(args)
    cfg, growth = _with_data_overrides(model.cfg, args.set), model.growth
    data, res, channels = cfg.data, growth.resolution, cfg.model.image_channels
    features = args.features or ("fmnist" if data.dataset == "fashion_mnist" else "inception")
    extractor = at_resolution(make_extractor(features, dataset=data.dataset, channels=channels,
                                             device=device), res)
    ref = _reference(args, cfg, extractor, device, res)
    schedule = model.schedule(steps=args.steps, cascade=args.cascade)
    batches = model.sample_batches(args.n, steps=args.steps, noise=args.noise, seed=args.seed,
                                   cascade=args.cascade, batch_size=args.batch_size,
                                   progress=not args.no_progress)
    result, kept = evaluate_samples(
        batches, ref, extractor, classifier=class_predictor(data.dataset, channels, extractor,
                                                            res, device),
        kid_subsets=args.kid_subsets, keep=args.nn_samples, seed=args.seed)
    report = {"checkpoint": str(args.model), "n_images": model.n_images,
              "ema": model.weights == "ema", "seed": args.seed,
              "schedule": schedule, "features": extractor.name,
              "reference": {**ref.metadata, "file": args.ref}, **dataclasses.asdict(result)}
    if args.nn_samples:
        out = args.nn_out or Path(model.source).parent / "neighbours.png"
        report["neighbours"] = _neighbours(kept, cfg, args.nn_k, out, res)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


def _reference(args: argparse.Namespace, cfg: Config, extractor, device,
               resolution: int) -> Reference:
    """--ref, checked against the checkpoint; else ``--split`` of the model's dataset (test by
    default: the numbers one reports), saved with --save-ref."""
    m = cfg.model
    if args.ref:
        if args.save_ref or args.split != "test":
            raise EvalError("--save-ref and --split describe a reference computed without "
                            "--ref; drop one")
        ref = load_reference(args.ref)
        check_reference(ref, extractor, dataset=cfg.data.dataset, resolution=resolution,
                        image_channels=m.image_channels, validation=cfg.data.validation)
        return ref
    out = args.save_ref and reference_path(args.save_ref)
    ref = compute_reference(cfg.data, args.split, extractor, resolution=resolution,
                            image_channels=m.image_channels, batch_size=args.batch_size,
                            device=device)
    if out:
        save_reference(ref, out)
    return ref


def _neighbours(x, cfg: Config, k: int, out: str | Path, resolution: int) -> dict:
    """Fig. 12: each sample beside its k nearest training images (pixel L2), as one grid."""
    images = load_images(cfg.data, split="train", resolution=resolution,
                         image_channels=cfg.model.image_channels)
    distances, indices = nearest_neighbours(x, images, k)
    path = save_grid(neighbour_grid(x, images, indices), out, nrow=k + 1,
                     scale=max(1, 64 // resolution))
    return {"file": str(path), "metric": "pixel L2 in [-1, 1]", "indices": indices.tolist(),
            "distances": distances.tolist()}


def format_report(r: dict) -> str:
    """The evaluation as a small two-column table."""
    ref = r["reference"]
    steps = " -> ".join(f"{res}px×{t}" for res, t in r["schedule"])
    rows = [
        ("checkpoint", (f"{r['checkpoint']} ({r['n_images']:,} images seen, "
                       f"{'EMA' if r['ema'] else 'raw'} weights)")),
        ("samples", f"{r['n']:,} ({steps}, seed {r['seed']})"),
        ("reference", (f"{ref.get('dataset')} {ref.get('split')}, {int(ref['count']):,} images, "
                      f"{ref.get('resolution')}px, {r['features']}")),
        ("FID", f"{r['fid']:.3f}"),
    ]
    if r["kid"] is not None:
        rows.append(("KID", f"{r['kid']:.5f} ± {r['kid_std']:.5f}"))
    if r["precision"] is not None:
        rows += [("precision", f"{r['precision']:.3f}"), ("recall", f"{r['recall']:.3f}")]
    if r["coverage"] is not None:
        c, k = r["coverage"], len(r["coverage"]["frequencies"])
        rows.append(("coverage", (f"{c['n_covered']}/{k} classes within ±50% of uniform, "
                                 f"{c['n_present']} present, entropy {c['entropy']:.3f} of "
                                 f"{c['max_entropy']:.3f} nats")))
    if "neighbours" in r:
        nn = r["neighbours"]
        rows.append(("neighbours", (f"{nn['file']} ({len(nn['indices'])} samples × "
                                   f"{len(nn['indices'][0])} nearest training images, "
                                   f"{nn['metric']})")))
    return "\n".join(f"{name:<12}{value}" for name, value in rows)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``fid-ref`` and ``eval`` on the ``cfebm`` subparsers."""
    fmt = FORMATTER
    overrides = {"action": "append", "default": [], "metavar": "KEY=VALUE"}

    p = sub.add_parser("fid-ref", help="write reference feature statistics (.npz) of a dataset",
                       formatter_class=fmt)
    p.add_argument("--batch-size", type=int, default=500, help="images per feature batch")
    p.add_argument("--dataset", default="fashion_mnist", help="dataset name (see cfebm.data)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--features", choices=FEATURES, default="fmnist", help="feature extractor")
    p.add_argument("--image-channels", type=int, choices=(1, 3),
                   help="1 or 3 (default: 1 for fashion_mnist and digits, else 3)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--out", required=True, help="the .npz file to write")
    p.add_argument("--resolution", type=int, default=32, help="image side, as the model's")
    p.add_argument("--set", **overrides, help="data option, e.g. data.root=/data or "
                   "data.limit=1000 (repeatable)")
    p.add_argument("--split", choices=SPLITS, default="test",
                   help="dataset split: test for reports, validation for choosing")
    p.set_defaults(func=cmd_fid_ref)

    p = sub.add_parser("eval", help="FID, KID, precision/recall, class coverage and nearest "
                       "neighbours of a model's samples", formatter_class=fmt)
    add_model(p)
    add_chains(p)
    p.add_argument("--features", choices=FEATURES,
                   help="feature extractor (default: fmnist for Fashion-MNIST, else inception)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--kid-subsets", type=count(1), default=100, help="random subsets for KID")
    p.add_argument("--n", type=count(2), default=10_000, help="number of samples")
    p.add_argument("--nn-k", type=count(1), default=5, help="nearest training images per sample")
    p.add_argument("--nn-out", help="the nearest-neighbour grid (default: neighbours.png "
                   "beside the model file)")
    p.add_argument("--nn-samples", type=count(0), default=8,
                   help="samples shown with their nearest training images (0: none)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--ref", help="reference statistics from `cfebm fid-ref` (default: computed "
                   "from the model's dataset, --split)")
    p.add_argument("--save-ref", metavar="PATH", help="save the reference computed without --ref")
    p.add_argument("--split", choices=SPLITS, default="test",
                   help="the split the reference is computed from: test (the numbers to report) "
                   "or validation (to choose a checkpoint or a setting)")
    p.add_argument("--set", **overrides, help="override the model's config for the "
                   "reference and neighbours, e.g. data.root=/data (repeatable)")
    p.set_defaults(func=cmd_eval)
