"""Restoration on the Fashion-MNIST test split: a trained model against simple baselines.

Paper Sec. 4.1 (Fig. 5, 6, 11) shows restorations; this measures them. The first ``--val``
images of the validation split (held out of the training files) tune every method's one knob
(by mean PSNR); the first ``--n`` test images score it. A model trained before the split
existed (``data.validation = 0``) saw those images in training; the report says so.

- Denoising at σ = 0.1, 0.2, 0.3 (noise added, then clamped into [−1, 1]): the EBM's chain from
  the noisy image for K steps (K and η0 ∈ {0, training's} tuned), against the best Gaussian blur
  (scipy.ndimage.gaussian_filter, its σ tuned) and the best median filter (its size tuned).
- Inpainting for each mask of ``cfebm.apps.restore.MASKS``: the EBM's completions (the mean of
  their PSNR/SSIM, and the PSNR/SSIM of their average), against filling the hole with the mean
  training image and with the training image nearest on the known pixels; plus the diversity of
  the completions (RMS between them on the hidden pixels).

    python benchmarks/restoration.py runs/qs/checkpoints/latest.pt --json runs/restoration.json \\
        --grids docs/restoration
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from record import machine
from scipy import ndimage

from cfebm.apps import restore
from cfebm.apps.figures import save_rows
from cfebm.config import DataConfig
from cfebm.data import load_images, to_float
from cfebm.trained import load

SIGMAS = (0.1, 0.2, 0.3)
STEPS = (1, 2, 3, 5, 8, 12, 20, 30, 50)  # denoising chain lengths tried on the validation slice
BLUR = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2, 1.5, 2.0)
MEDIAN = (2, 3, 4, 5)


def mean_psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(restore.psnr_ssim(x, ref)[0].mean())


def scores(x: torch.Tensor, ref: torch.Tensor) -> dict:
    psnr, ssim = restore.psnr_ssim(x, ref)
    return {"psnr": float(psnr.mean()), "ssim": float(ssim.mean())}


def filtered(x: torch.Tensor, fn, size) -> torch.Tensor:
    """A per-image, per-channel 2D filter of scipy.ndimage over (N, C, R, R)."""
    a = x.numpy()
    out = np.stack([[fn(c, size) for c in img] for img in a])
    return torch.from_numpy(out).float()


def blur(x, s):
    return filtered(x, lambda c, s: ndimage.gaussian_filter(c, s, mode="reflect"), s)


def median(x, k):
    return filtered(x, lambda c, k: ndimage.median_filter(c, size=k, mode="reflect"), k)


def best(knobs, run, clean) -> tuple:
    """The knob with the highest mean PSNR on the validation images, and that PSNR."""
    results = [(mean_psnr(run(k), clean), k) for k in knobs]
    psnr, knob = max(results, key=lambda r: r[0])
    return knob, psnr


def denoising(model, val, test, seed: int, grids: Path | None) -> list[dict]:
    rows, eta = [], model.cfg.sampler.eta0
    for sigma in SIGMAS:
        noisy_val = restore.corrupt(val, sigma, seed=seed)
        noisy = restore.corrupt(test, sigma, seed=seed + 1)
        t0 = time.time()
        # K steps without noise are the first K of one long noiseless chain: record them.
        states = []  # states[k - 1]: after k steps
        restore.denoise(model, noisy_val, steps=max(STEPS), noise=0.0, seed=seed,
                        callback=lambda s, states=states: states.append(s.x.clone()))
        tried = {(k, 0.0): mean_psnr(states[k - 1], val) for k in STEPS}
        for k in STEPS[:6]:
            out = restore.denoise(model, noisy_val, steps=k, noise=eta, seed=seed)
            tried[(k, eta)] = mean_psnr(out, val)
        (k, noise), _ = max(tried.items(), key=lambda item: item[1])
        ebm = restore.denoise(model, noisy, steps=k, noise=noise, seed=seed + 1)
        seconds = time.time() - t0
        s_blur, _ = best(BLUR, lambda s, y=noisy_val: blur(y, s), val)
        s_med, _ = best(MEDIAN, lambda k, y=noisy_val: median(y, k), val)
        row = {"sigma": sigma, "noisy": scores(noisy, test),
               "ebm": {**scores(ebm, test), "steps": k, "noise": noise, "seconds": seconds},
               "blur": {**scores(blur(noisy, s_blur), test), "sigma": s_blur},
               "median": {**scores(median(noisy, s_med), test), "size": s_med},
               "val_psnr_by_steps": {f"{kk}@{nn:g}": v for (kk, nn), v in tried.items()}}
        rows.append(row)
        print(json.dumps({kk: v for kk, v in row.items() if kk != "val_psnr_by_steps"}))
        if grids and sigma == 0.2:
            m = 10
            save_rows([noisy[:m], ebm[:m], blur(noisy[:m], s_blur), median(noisy[:m], s_med),
                       test[:m]], grids / "denoise_sigma0.2.png", scale=2,
                      labels=["noisy σ 0.2", f"EBM, {k} steps", f"blur σ {s_blur:g}",
                              f"median {s_med}", "clean"])
    return rows


def nearest_fill(x, mask, train) -> torch.Tensor:
    """Each image's unknown pixels from the training image nearest on its known pixels (L2)."""
    m = mask.expand_as(x).flatten(1)              # (N, D)
    t = train.flatten(1)                          # (M, D)
    xm = (x.flatten(1) * m)
    d = -2 * xm @ t.T + m @ (t * t).T             # ||m⊙(x − t)||² − ||m⊙x||², (N, M)
    nearest = train[d.argmin(1)]
    return torch.where(mask.bool(), x, nearest)


def inpainting(model, test, train, completions: int, steps, seed: int,
               grids: Path | None) -> list[dict]:
    rows = []
    mean_image = train.mean(0, keepdim=True)
    for kind in restore.MASKS:
        mask = restore.make_mask(kind, len(test), model.resolution, seed=seed)
        t0 = time.time()
        out = restore.inpaint(model, test, mask, completions=completions, steps=steps, seed=seed)
        seconds = time.time() - t0
        k = completions
        each = scores(out.flatten(0, 1), test.repeat_interleave(k, 0))
        mean_fill = torch.where(mask.bool(), test, mean_image)
        nn_fill = nearest_fill(test, mask, train)
        row = {"mask": kind, "hidden": 1 - float(mask.mean()),
               "ebm": {**each, "seconds": seconds}, "ebm_average": scores(out.mean(1), test),
               "diversity": restore.diversity(out, mask),
               "mean_image": scores(mean_fill, test), "nearest": scores(nn_fill, test)}
        rows.append(row)
        print(json.dumps(row))
        if grids:
            m = 10
            save_rows([test[:m] * mask[:m], *out[:m, :3].transpose(0, 1), mean_fill[:m],
                       nn_fill[:m], test[:m]], grids / f"inpaint_{kind}.png", scale=2,
                      labels=["masked", "EBM 1", "EBM 2", "EBM 3", "mean image",
                              "nearest train", "original"])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="checkpoint, export or name")
    p.add_argument("--n", type=int, default=500, help="test images scored")
    p.add_argument("--val", type=int, default=200, help="validation images that tune the knobs")
    p.add_argument("--completions", type=int, default=5, help="inpaintings per image")
    p.add_argument("--inpaint-steps", type=int, help="Langevin steps (default: the model's T)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write all results here")
    p.add_argument("--grids", help="folder for example grids (PNG)")
    p.add_argument("--skip", choices=("denoise", "inpaint"), help="run only the other part")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    model = load(args.model, device="cpu")
    data = {"resolution": model.resolution, "image_channels": model.channels}
    held_out = model.cfg.data.validation
    tuning = dataclasses.replace(model.cfg.data, validation=held_out or DataConfig().validation)
    val = to_float(load_images(tuning, split="validation", **data).get_batch(
        torch.arange(args.val)))
    test = to_float(load_images(model.cfg.data, split="test", **data).get_batch(
        torch.arange(args.n)))
    grids = Path(args.grids) if args.grids else None
    report = {"model": str(args.model), "describe": repr(model), "n": len(test),
              "val": len(val), "val_held_out": bool(held_out),
              "completions": args.completions, "seed": args.seed,
              "machine": f"{machine()}, "
                         f"{torch.get_num_threads()} thread(s), torch {torch.__version__}",
              "date": time.strftime("%Y-%m-%d")}
    print(report)
    if args.skip != "denoise":
        report["denoising"] = denoising(model, val, test, args.seed, grids)
    if args.skip != "inpaint":
        train_set = load_images(model.cfg.data, split="train", **data)
        train = to_float(train_set.get_batch(torch.arange(len(train_set))))
        report["inpainting"] = inpainting(model, test, train, args.completions,
                                          args.inpaint_steps, args.seed, grids)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
