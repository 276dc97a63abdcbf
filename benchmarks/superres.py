"""Zero-shot super-resolution on the Fashion-MNIST test split (issue 38): a trained model's
constrained chains (``cfebm.apps.restore.superresolve``) against bicubic and Lanczos upscaling.

The low-resolution image is the truth average-pooled by the factor; every EBM output pools back
to it exactly. Reported per factor on the first ``--n`` test images: PSNR and SSIM against the
truth (scikit-image, data range 2; the EBM's first completion and, with ``--completions K``,
the mean of its K completions), and the FMNIST-FID of the
outputs against the whole test split (the classical upscalings are blurred, so their FID shows
how far from a garment a sharp-looking guess or a blur is). One more baseline is a lookup, not
a model: the training image whose pooled version is nearest to y (L2), projected onto
pool(x) = y like the chains' states are and clipped to [−1, 1]. The chains run the model's own
T; nothing is tuned, so no validation split is read. ``--baselines-only`` skips the chains.

    python benchmarks/superres.py fmnist32-2h --n 1000 --json runs/superres.json \\
        --grid docs/superres_fmnist32_2h.png
    python benchmarks/superres.py fmnist32-2h --n 200 --completions 6   # and their mean
    python benchmarks/superres.py fmnist32-2h --n 1000 --baselines-only
"""

from __future__ import annotations

import argparse
import time

import torch
from record import write_report

from cfebm.apps import restore
from cfebm.apps.figures import save_rows
from cfebm.metrics.evaluate import at_resolution, evaluate_samples, make_extractor
from cfebm.metrics.reference import compute_reference
from cfebm.sampling import downsample, upsample
from cfebm.trained import load

FACTORS = (2, 4)
METHODS = ("bicubic", "lanczos", "EBM")
NEAREST = "nearest training image"


def nearest_training(train: torch.Tensor, low: torch.Tensor, factor: int) -> torch.Tensor:
    """For each low-resolution y (N, C, r, r), the training image (M, C, R, R) whose
    average-pooled version is nearest in L2, plus up(y − pool(x)) so that it pools to y, then
    clipped to [−1, 1]: (N, C, R, R)."""
    side = train.shape[-1]
    pooled = downsample(train, side // factor).flatten(1)
    nearest = torch.cat([torch.cdist(chunk.flatten(1), pooled).argmin(1)
                         for chunk in low.split(250)])
    x = train[nearest]
    return (x + upsample(low - downsample(x, side // factor), factor)).clamp(-1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--n", type=int, default=1000, help="test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--completions", type=int, default=1,
                        help="K completions per image; K > 1 also scores their mean (the "
                             "posterior mean, the estimate PSNR rewards)")
    parser.add_argument("--baselines-only", action="store_true",
                        help="only the upscalings and the nearest training image (no chains)")
    parser.add_argument("--json", help="write the table as JSON")
    parser.add_argument("--grid", help="a figure: 10 images per factor, every method")
    args = parser.parse_args()

    model = load(args.model)
    side, data = model.resolution, model.cfg.data
    truth = restore.images_of(model, args.n)
    extractor = at_resolution(make_extractor("fmnist", dataset=data.dataset, channels=1,
                                             device=model.device), side)
    reference = compute_reference(data, "test", extractor, resolution=side, image_channels=1)
    train = restore.images_of(model, split="train")
    rows, grids, started = [], [], time.time()
    for factor in FACTORS:
        low = downsample(truth, side // factor)
        outputs = {m: restore.upscale(low, side, m) for m in METHODS[:2]}
        outputs[NEAREST] = nearest_training(train, low, factor)
        if not args.baselines_only:
            tic = time.time()
            completions = restore.superresolve(model, low, completions=args.completions,
                                               seed=args.seed)
            outputs["EBM"] = completions[:, 0]
            if args.completions > 1:
                outputs[f"EBM mean of {args.completions}"] = completions.mean(1)
            ebm_seconds = time.time() - tic
            pooled_error = (downsample(outputs["EBM"], side // factor) - low).abs().max().item()
        for method, x in outputs.items():
            psnr, ssim = restore.psnr_ssim(x, truth)
            result, _ = evaluate_samples(x.split(250), reference, extractor,
                                         precision_recall_k=None)
            rows.append({"factor": factor, "from": side // factor, "method": method,
                         "psnr": float(psnr.mean()), "ssim": float(ssim.mean()),
                         "fid": result.fid})
            print(f"x{factor} ({side // factor}² -> {side}²) {method:22s} PSNR {psnr.mean():6.2f} "
                  f"SSIM {ssim.mean():.3f} FMNIST-FID {result.fid:7.1f}", flush=True)
        if args.baselines_only:
            continue
        print(f"x{factor}: EBM {ebm_seconds:.0f} s for {args.n} images; max |pool(x) - y| "
              f"{pooled_error:.1e}", flush=True)
        grids += [restore.upscale(low[:10], side, "nearest"), *[outputs[m][:10] for m in METHODS]]
    grids.append(truth[:10])
    if args.grid and not args.baselines_only:
        labels = [f"x{f} {w}" for f in FACTORS for w in ("low-res", *METHODS)] + ["truth"]
        save_rows(grids, args.grid, labels=labels, scale=2)
    if args.json:
        write_report(args.json, {"model": args.model, "n": args.n, "seed": args.seed,
                                 "completions": args.completions, "rows": rows,
                                 "seconds": time.time() - started})


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
