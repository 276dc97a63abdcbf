"""Unpaired translation on the built-in pairs: a trained translator against the identity map.

Paper Sec. 4.3 (Table 5) scores translators by KID against the target domain; on our small
pairs we also measure whether the content survived and, where a classifier can tell, whether the
class changed. For each model (a translation run's checkpoint; the pair and direction come from
its config) every source-domain test image is translated by the model's chain, as trained:

- success: the share of outputs assigned to the target domain. Fashion-MNIST pairs: the packaged
  10-class classifier (``cfebm/metrics/classifier.py``, 32² input; 16² images are
  nearest-upsampled, as for FMNIST-FID) predicts the target class. Other pairs: a logistic
  regression on that classifier's 128-d features, fitted on both domains' training images, says
  "target" (its accuracy on the real test images is printed beside it).
- content: SSIM of low-pass images (Gaussian blur σ = 1 px, ``translate.lowpass_ssim``) between
  output and source; Fashion-MNIST pairs also the silhouette IoU (``translate.silhouette_iou``).
  Reference: a random target test image paired with each source (what a translator that ignored
  its input would score).
- KID between outputs and the target test images, Fashion-MNIST classifier features
  (100 subsets of up to 1,000; Inception features with ``--inception`` and for RGB models), and
  the same for the identity map and for the target's own training images (the floor).

    python benchmarks/translate.py runs/sneaker/checkpoints/latest.pt runs/grass/... \\
        --json runs/translate.json --grids docs/translate
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from record import machine

from cfebm.apps import translate
from cfebm.apps.figures import save_translation
from cfebm.data import downsample, to_float
from cfebm.data.domains import FMNIST_PAIRS, domains, fmnist_classes
from cfebm.files import read
from cfebm.metrics import FMNISTFeatures, kid
from cfebm.metrics.evaluate import at_resolution, make_extractor
from cfebm.model import count_parameters
from cfebm.trained import load


def images(image_set, resolution: int, n: int | None = None) -> torch.Tensor:
    n = len(image_set) if n is None else min(n, len(image_set))
    return downsample(to_float(image_set.get_batch(torch.arange(n))), resolution)


def kid_of(features, a: torch.Tensor, b: torch.Tensor) -> float:
    return kid(features(a), features(b), n_subsets=100, subset_size=1000)[0]


class DomainJudge:
    """Says which outputs belong to the target domain (module docstring)."""

    def __init__(self, model, features, train, resolution):
        self.features, self.target_class = features, None
        pair = model.cfg.task.pair
        if pair in FMNIST_PAIRS or pair.startswith("fmnist:"):
            a, b = fmnist_classes(pair)
            self.target_class = b if model.cfg.task.direction == "ab" else a
            self.name = "FMNIST classifier: target class"
            return
        from sklearn.linear_model import LogisticRegression

        xs, xt = images(train.source, resolution, 4000), images(train.target, resolution, 4000)
        f = torch.cat([features(xs), features(xt)]).numpy()
        y = np.r_[np.zeros(len(xs)), np.ones(len(xt))]
        self.fit = LogisticRegression(max_iter=2000).fit(f, y)
        self.name = "domain classifier (logistic regression on FMNIST features)"

    def success(self, x: torch.Tensor) -> float:
        if self.target_class is not None:
            return float((self.features.predict_classes(x) == self.target_class).float().mean())
        return float(self.fit.predict(self.features(x).numpy()).mean())


def evaluate(path: str, grids: Path | None, seed: int, inception: bool = False,
             steps: list[int] | None = None, grid_steps: int | None = None) -> dict:
    """The report of one model; ``steps``: test-time chain lengths to score (default: its T);
    the grid shows ``grid_steps`` (default: the longest)."""
    model = load(path, device="cpu")
    cfg, r = model.cfg, model.resolution
    test, train = domains(cfg, "test"), domains(cfg, "train")
    source, target = images(test.source, r), images(test.target, r)
    features = (make_extractor("inception", dataset="", channels=model.channels) if inception
                or model.channels == 3 else at_resolution(FMNISTFeatures(), r))
    judge = DomainJudge(model, features, train, r)

    g = torch.Generator().manual_seed(seed)
    random_target = target[torch.randint(len(target), (len(source),), generator=g)]
    fmnist = judge.target_class is not None

    def scores(x: torch.Tensor, with_kid: bool = True) -> dict:
        row = {"success": judge.success(x),
               "lowpass_ssim": float(translate.lowpass_ssim(x, source).mean())}
        if fmnist:
            row["silhouette_iou"] = float(translate.silhouette_iou(x, source).mean())
        return {**row, "kid": kid_of(features, x, target)} if with_kid else row

    rows, seconds, results = {}, {}, {}
    for t in steps or [model.growth.n_steps]:
        started = time.perf_counter()
        results[t] = translate.translate(model, source, steps=t, seed=seed, progress=True)
        seconds[t] = time.perf_counter() - started
        rows[f"translated, T = {t}"] = scores(results[t].output)
    rows["identity"] = scores(source)
    rows["random target image"] = scores(random_target, with_kid=False)
    rows["target train images"] = {"kid": kid_of(features, images(train.target, r, len(target)),
                                                 target)}
    shown = grid_steps if grid_steps in results else max(results)
    ckpt = read(path)
    report = {
        "model": path, "pair": cfg.task.pair, "direction": cfg.task.direction,
        "source": test.source_name, "target": test.target_name, "n_test": len(source),
        "resolution": r, "steps": model.growth.n_steps, "judge": judge.name,
        "target_test_success": judge.success(target),
        "parameters": count_parameters(model.net),
        "train_seconds": float(ckpt.get("train_seconds", float("nan"))),
        "train_images": int(ckpt["n_images"]),
        "translate_seconds": seconds, "rows": rows, "grid_steps": shown,
    }
    if grids is not None:
        name = f"{cfg.task.pair}_{cfg.task.direction}_T{shown}"
        out = save_translation(results[shown], Path("runs") / "translate-bench" / name, grid=8,
                               per_row=2, scale=4)
        grids.mkdir(parents=True, exist_ok=True)
        (grids / f"{name}.png").write_bytes(out["triplets"].read_bytes())
        report["grid"] = str(grids / f"{name}.png")
    return report


def table(report: dict) -> str:
    title = (f"{report['source']} → {report['target']} ({report['n_test']} test images, "
             f"{report['resolution']}², T = {report['steps']}; success by {report['judge']}, "
             f"{100 * report['target_test_success']:.1f}% on real target test images)")
    lines = [title,
             "| | success | low-pass SSIM | silhouette IoU | KID |", "|---|---|---|---|---|"]
    for name, row in report["rows"].items():
        cell = [f"{100 * row['success']:.1f}%" if "success" in row else "—",
                f"{row['lowpass_ssim']:.3f}" if "lowpass_ssim" in row else "—",
                f"{row['silhouette_iou']:.3f}" if "silhouette_iou" in row else "—",
                f"{row['kid']:.2f}" if "kid" in row else "—"]
        lines.append(f"| {name} | " + " | ".join(cell) + " |")
    timings = ", ".join(f"{s:.1f} s at T = {t}" for t, s in report["translate_seconds"].items())
    lines.append(f"parameters {report['parameters']:,}; training {report['train_seconds']:.0f} s "
                 f"({report['train_images']:,} images); translating the test set: {timings}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="translation checkpoints")
    p.add_argument("--json", help="write the reports here")
    p.add_argument("--grids", type=Path, help="copy each model's triplet grid into this folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=lambda t: [int(v) for v in t.split(",")],
                   help="test-time chain lengths to score, e.g. 5,10,25 (default: the model's T)")
    p.add_argument("--grid-steps", type=int, help="the chain length the grid shows "
                   "(default: the longest)")
    p.add_argument("--inception", action="store_true", help="Inception features for KID and the "
                   "domain classifier (CFEBM_INCEPTION_WEIGHTS; always for RGB models)")
    args = p.parse_args()
    reports = []
    for path in args.models:
        report = evaluate(path, args.grids, args.seed, args.inception, args.steps,
                          args.grid_steps)
        reports.append(report)
        print(table(report), flush=True)
    if args.json:
        meta = {"machine": machine(),
                "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                   time.gmtime())}
        Path(args.json).write_text(json.dumps({"meta": meta, "reports": reports}, indent=2))


if __name__ == "__main__":
    main()
