"""Out-of-distribution detection benchmark (paper Table 4) on every set our machines hold offline.

For each model: its test split against uniform noise, per-image constants, Interp, scikit-learn's
digits, crops of scikit-image's sample photographs and textures, and the synthetic blobs of the
`fake` dataset, scored by the energy and by the gradient norm (``cfebm.apps.ood``).

    python benchmarks/ood.py --models fmnist32-2h runs/qs/checkpoints/latest.pt --out runs/ood
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from cfebm.apps.ood import evaluate_ood
from cfebm.trained import load

SKIMAGE_IMAGES = ("astronaut", "camera", "coffee", "chelsea", "rocket", "brick", "grass",
                  "gravel", "moon", "page", "text", "coins", "horse")


def skimage_crops(folder: Path, n: int, size: int = 64, seed: int = 0) -> Path:
    """``n`` random ``size``² crops of scikit-image's sample images, written as PNGs."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = []
    for name in SKIMAGE_IMAGES:
        img = np.asarray(getattr(data, name)())
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        images.append(img.astype(np.uint8))
    for i in range(n):
        img = images[i % len(images)]
        y, x = rng.integers(0, img.shape[0] - size), rng.integers(0, img.shape[1] - size)
        Image.fromarray(img[y:y + size, x:x + size]).save(folder / f"{i:05d}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", required=True, help="paths or packaged names")
    parser.add_argument("--out", type=Path, default=Path("runs/ood"))
    parser.add_argument("--n", type=int, default=1000, help="images per set")
    args = parser.parse_args()
    crops = skimage_crops(args.out / "skimage_crops", args.n)
    for name in args.models:
        model = load(name)
        sets = ["uniform", "constant", "interp", "digits", str(crops), "fake"]
        report = evaluate_ood(model, sets, n=args.n, progress=True)
        out = args.out / Path(str(name)).stem
        report.write(out)
        print(f"## {name} ({model})\n")
        for metric in ("auroc", "fpr95"):
            print(report.table(metric) + "\n")
        for s in [report.in_set, *report.sets]:
            print(f"- {s.name}: {s.how}")
        print()


if __name__ == "__main__":
    main()
