"""``cfebm denoise``, ``inpaint``, ``superres``, ``interpolate`` and ``noise-sweep``: restoration
and chains.

    cfebm denoise MODEL [--images DIR] [--sigma 0.2] [--steps K] --out denoise.png
    cfebm inpaint MODEL --mask centre|occlusion|pixels|right|bottom|MASK.png --completions 5
    cfebm interpolate MODEL --pairs 2 --points 11 --out interpolate.png
    cfebm noise-sweep MODEL --n 8 [--etas 0,0.01,0.02] --out noise_sweep.png

Images come from the test split of the model's own dataset, or from ``--images DIR`` (resized
and converted to the model's resolution and channels).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cfebm.apps import chains, restore
from cfebm.apps.figures import save_rows
from cfebm.cli.common import (
    FORMATTER,
    CLIError,
    add_chains,
    add_model,
    count,
    image_file,
    load_model,
    non_negative,
)
from cfebm.sampling import downsample


def _images(args: argparse.Namespace, model):
    x = restore.images_of(model, args.n, folder=args.images)
    where = f"images from {args.images}" if args.images else f"{model.cfg.data.dataset} test images"
    return x.to(model.device), f"{len(x)} {where}"


def _report(args: argparse.Namespace, lines: list[str], report: dict) -> None:
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


def cmd_denoise(args: argparse.Namespace) -> None:
    model = load_model(args)
    clean, what = _images(args, model)
    noisy = restore.corrupt(clean, args.sigma, seed=args.seed)
    steps = restore.denoise_steps(args.sigma) if args.steps is None else args.steps
    out = restore.denoise(model, noisy, args.sigma, steps=steps, noise=args.noise, seed=args.seed,
                          batch_size=args.batch_size, progress=not args.no_progress)
    (p0, s0), (p1, s1) = restore.psnr_ssim(noisy, clean), restore.psnr_ssim(out, clean)
    path = save_rows([noisy, out, clean], args.out, labels=["noisy", "denoised", "clean"],
                     scale=args.scale)
    report = {"model": str(args.model), "images": what, "sigma": args.sigma, "steps": steps,
              "noise": args.noise, "psnr_noisy": p0.mean(), "psnr_denoised": p1.mean(),
              "ssim_noisy": s0.mean(), "ssim_denoised": s1.mean(), "grid": str(path)}
    _report(args, [
        f"denoised {what} (σ {args.sigma:g}, {steps} Langevin steps) with {model}",
        (f"PSNR  noisy {p0.mean():6.2f} dB   denoised {p1.mean():6.2f} dB   gain "
         f"{p1.mean() - p0.mean():+.2f} dB"),
        (f"SSIM  noisy {s0.mean():6.3f}      denoised {s1.mean():6.3f}      gain "
         f"{s1.mean() - s0.mean():+.3f}"),
        f"wrote [noisy | denoised | clean] to {path}"], report)


def _mask(args: argparse.Namespace, model, n: int):
    if args.mask in restore.MASKS:
        return restore.make_mask(args.mask, n, model.resolution, missing=args.missing,
                                 seed=args.seed)
    if not Path(args.mask).is_file():
        raise CLIError(f"--mask takes one of {', '.join(restore.MASKS)} or a mask image; "
                       f"{args.mask!r} is neither")
    return restore.load_mask(args.mask, model.resolution, model.channels)


def cmd_inpaint(args: argparse.Namespace) -> None:
    model = load_model(args)
    x, what = _images(args, model)
    mask = _mask(args, model, len(x)).to(model.device)
    out = restore.inpaint(model, x, mask, completions=args.completions, steps=args.steps,
                          noise=args.noise, seed=args.seed, batch_size=args.batch_size,
                          progress=not args.no_progress)
    k = args.completions
    psnr, ssim = restore.psnr_ssim(out.flatten(0, 1), x.repeat_interleave(k, 0))
    spread = restore.diversity(out, mask)
    masked = x * mask  # unknown pixels shown as mid grey (0)
    path = save_rows([masked, *out.transpose(0, 1), x], args.out, scale=args.scale,
                     labels=["masked", *[f"completion {i + 1}" for i in range(k)], "original"])
    hidden = 1 - float(mask.float().mean())
    report = {"model": str(args.model), "images": what, "mask": args.mask, "hidden": hidden,
              "completions": k, "steps": args.steps, "noise": args.noise,
              "psnr": psnr.mean(), "ssim": ssim.mean(), "diversity": spread, "grid": str(path)}
    _report(args, [
        (f"inpainted {what} ({args.mask} mask, {hidden:.0%} hidden, {k} completion(s) "
         f"each) with {model}"),
        (f"PSNR {psnr.mean():.2f} dB   SSIM {ssim.mean():.3f}   diversity "
         f"{spread:.3f} (RMS between completions on the hidden pixels)"),
        f"wrote [masked | completions | original] to {path}"], report)


def cmd_superres(args: argparse.Namespace) -> None:
    model = load_model(args)
    truth, what = _images(args, model)
    side = model.resolution
    if side % args.factor or side // args.factor < 4:
        raise CLIError(f"--factor {args.factor} does not divide the model's {side}x{side} into "
                       "images of at least 4x4")
    low = downsample(truth, side // args.factor)
    out = restore.superresolve(model, low, completions=args.completions, steps=args.steps,
                               noise=args.noise, seed=args.seed, batch_size=args.batch_size,
                               progress=not args.no_progress)
    k = args.completions
    rows = {"low-res": restore.upscale(low, side, "nearest"),
            "bicubic": restore.upscale(low, side, "bicubic")}
    scores = {name: restore.psnr_ssim(x, truth) for name, x in rows.items()}
    scores["EBM"] = restore.psnr_ssim(out.flatten(0, 1), truth.repeat_interleave(k, 0))
    mean = [out.mean(1)] if k > 1 else []  # the posterior mean: what PSNR rewards
    if mean:
        scores["EBM mean"] = restore.psnr_ssim(mean[0], truth)
    path = save_rows([*rows.values(), *out.transpose(0, 1), *mean, truth], args.out,
                     scale=args.scale, labels=[*rows, *[f"EBM {i + 1}" for i in range(k)],
                                               *["EBM mean"] * len(mean), "truth"])
    report = {"model": str(args.model), "images": what, "factor": args.factor,
              "completions": k, "steps": args.steps, "noise": args.noise, "grid": str(path),
              **{f"{kind}_{name.replace(' ', '_')}": float(v[i].mean())
                 for name, v in scores.items()
                 for i, kind in enumerate(("psnr", "ssim"))}}
    _report(args, [
        (f"super-resolved {what} from {side // args.factor}x{side // args.factor} "
         f"(x{args.factor}, {k} completion(s) each) with {model}"),
        *(f"{name:8s} PSNR {v[0].mean():6.2f} dB   SSIM {v[1].mean():.3f}"
          for name, v in scores.items()),
        (f"wrote [low-res | bicubic | completions{' | their mean' if mean else ''} | truth] "
         f"to {path}")], report)


def cmd_interpolate(args: argparse.Namespace) -> None:
    model = load_model(args)
    out = chains.interpolate(model, pairs=args.pairs, points=args.points, steps=args.steps,
                             noise=args.noise, seed=args.seed, batch_size=args.batch_size,
                             progress=not args.no_progress)
    rows, labels = [], []
    for p in range(args.pairs):
        for kind in ("linear", "spherical"):
            rows.append(out[kind][p])
            labels.append(f"{kind} {p + 1}")
    path = save_rows(rows, args.out, labels=labels, scale=args.scale)
    print(f"wrote {args.pairs} pair(s) × {args.points} chains from linear and spherical "
          f"interpolations of two noises (same Langevin noise) of {model} to {path}")


def _etas(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}")
    if not values or any(not v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"noise levels must be >= 0, got {text!r}")
    return values


def cmd_noise_sweep(args: argparse.Namespace) -> None:
    if args.noise is not None:
        raise CLIError("noise-sweep takes its noise levels from --etas, not --noise")
    model = load_model(args)
    etas = args.etas or chains.noise_levels(model)
    x = chains.noise_sweep(model, args.n, etas, steps=args.steps, seed=args.seed,
                           cascade=args.cascade, batch_size=args.batch_size,
                           progress=not args.no_progress)
    trained = model.cfg.sampler.eta0
    labels = [f"η0 = {e:g}" + (" (trained)" if np.isclose(e, trained) else "") for e in etas]
    path = save_rows(list(x), args.out, labels=labels, scale=args.scale)
    print(f"wrote {args.n} samples of {model} at η0 = {', '.join(f'{e:g}' for e in etas)} "
          f"(same seeds) to {path}")


def _common(p: argparse.ArgumentParser, out: str, images: bool = True, **chains) -> None:
    add_model(p)
    add_chains(p, cascade=False, **chains)
    if images:
        p.add_argument("--images", metavar="DIR", help="a folder of your own images, instead of "
                       "the test split of the model's dataset")
        p.add_argument("--n", type=count(1), default=10, help="number of images")
        p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--out", default=out, type=image_file, help="the grid image to write")
    p.add_argument("--scale", type=count(1), default=2, help="enlarge the grid this many times")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("denoise", help="remove Gaussian noise by Langevin chains started at the "
                       "noisy images (Fig. 5)", formatter_class=FORMATTER)
    _common(p, "denoise.png", steps_help="Langevin steps (default: round(10·sigma), measured "
            "in docs/notebook/restoration.md)")
    p.add_argument("--sigma", type=non_negative, default=restore.SIGMA,
                   help="std of the added Gaussian noise (images in [-1, 1])")
    p.set_defaults(func=cmd_denoise)

    p = sub.add_parser("inpaint", help="fill masked pixels with diverse completions (Fig. 6, 11)",
                       formatter_class=FORMATTER)
    _common(p, "inpaint.png")
    p.add_argument("--mask", default="occlusion", help=f"one of {', '.join(restore.MASKS)} "
                   "(see cfebm.apps.restore.make_mask), or a mask image at the model's "
                   "resolution, white = known")
    p.add_argument("--missing", type=float, default=0.5,
                   help="fraction of hidden pixels for --mask pixels")
    p.add_argument("--completions", type=count(1), default=5, help="completions per image")
    p.set_defaults(func=cmd_inpaint)

    p = sub.add_parser("superres", help="super-resolution: completions whose average pooling is "
                       "exactly the low-resolution image", formatter_class=FORMATTER)
    _common(p, "superres.png")
    p.add_argument("--factor", type=int, choices=(2, 4, 8), default=2,
                   help="the low-resolution image is the truth average-pooled by this factor")
    p.add_argument("--completions", type=count(1), default=3, help="completions per image")
    p.set_defaults(func=cmd_superres)

    p = sub.add_parser("interpolate", help="chains from interpolations between two initial "
                       "noises, with the same Langevin noise", formatter_class=FORMATTER)
    _common(p, "interpolate.png", images=False)
    p.add_argument("--pairs", type=count(1), default=2, help="pairs of initial noises")
    p.add_argument("--points", type=count(2), default=11, help="chains per path")
    p.set_defaults(func=cmd_interpolate)

    p = sub.add_parser("noise-sweep", help="samples from the same seeds at several test-time "
                       "noise levels η0 (Fig. 16)", formatter_class=FORMATTER)
    _common(p, "noise_sweep.png", images=False)
    p.add_argument("--n", type=count(1), default=8, help="samples per noise level")
    p.add_argument("--etas", type=_etas, help="comma-separated η0 values; without it 0, 0.5, "
                   "1 and 2 times the training η0")
    p.add_argument("--cascade", action="store_true", help="sample through every coarse stage")
    p.set_defaults(func=cmd_noise_sweep)
