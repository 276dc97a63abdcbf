"""Class-conditional sampling of an unconditional model by a classifier guide (issue 39).

For each Fashion-MNIST class k, the model's chains (as trained: U(−1, 1) at 32², its T steps)
steered by λ·(−log p(k | x)) of the packaged guide classifier (``cfebm.guides``, trained on
noisy images). Scored by a *different* network, the FMNIST-FID feature net
(``cfebm.metrics.FMNISTFeatures``), so guidance cannot game the score:

- accuracy: the fraction of class-k samples the feature net assigns to class k;
- per-class FID: the samples' FMNIST-FID against the real images of class k.

The weight λ is chosen on the validation split (the last 5,000 training images,
``data.validation=5000``), then reported on the test split with fresh seeds. The rule, fixed
before the run: among the swept weights whose mean validation accuracy is ≥ 90%, the one with
the lowest mean per-class validation FID; if none reaches 90%, the most accurate. The
unconditional model's FID against all test images, with as many samples as one class gets,
is the like-for-like baseline (FID rises as the sample count falls). Cost: seconds per image
of guided against unguided chains, timed in the same process.

    OMP_NUM_THREADS=1 python benchmarks/steer.py fmnist32-2h --weights 1,3,10 --n-val 40 \\
        --n 200 --json runs/steer.json --grid docs/steer_fmnist32_2h.png
    OMP_NUM_THREADS=1 python benchmarks/steer.py fmnist32-2h --weight 3 --n 200   # no sweep
    python benchmarks/steer.py fmnist32-2h --weights 1,3,10 --candidates 4   # best of 4 chains
    python benchmarks/steer.py fmnist32-2h --weight 3 --candidates 4 --n 1000 \\
        --record benchmarks/results/steer-1000.json   # the issue's 1,000 a class at the default

A long report resumes class by class from ``--record``: a JSON file (small, committed) that
keeps each class's scores as soon as they are measured, with the date, machine and code they
were measured with; a rerun with the same model, λ, K, n and seed takes them from it. Its cost
ratio is of the classes sampled in the run that also timed the unguided chains.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch
from record import machine, timed, write_report
from torch import Tensor

from cfebm import guides
from cfebm.apps.figures import save_rows
from cfebm.config import DataConfig
from cfebm.data import load_images
from cfebm.data.readers import CLASS_NAMES
from cfebm.metrics import FeatureStats, FMNISTFeatures, fid_from_stats
from cfebm.metrics.reference import image_batches
from cfebm.trained import TrainedModel, load

VAL_SEED, TEST_SEED = 100, 0   # the sweep and the report draw different chains


def class_stats(split: str, extractor: FMNISTFeatures) -> tuple[list[FeatureStats], FeatureStats]:
    """Feature statistics of the real images of ``split``: one per class, and all together."""
    data = DataConfig(dataset="fashion_mnist", validation=5000)
    images = load_images(data, split=split, resolution=32, image_channels=1)
    with torch.no_grad():
        features = torch.cat([extractor(x) for x in image_batches(images, 500)])
    labels = images.labels
    per_class = [FeatureStats().update(features[labels == k]) for k in range(len(CLASS_NAMES))]
    return per_class, FeatureStats().update(features)


def score(x: Tensor, k: int, extractor: FMNISTFeatures, ref: FeatureStats) -> tuple[float, float]:
    """(accuracy, FID): the share of ``x`` the feature net calls class k, and x's FID to ref."""
    accuracy = (extractor.predict_classes(x) == k).float().mean().item()
    return accuracy, fid_from_stats(FeatureStats().update(extractor(x)), ref)


def guided(model: TrainedModel, net, k: int, weight: float, n: int, seed: int,
           candidates: int = 1) -> tuple[Tensor, float]:
    """n chains steered toward class k (each the best of ``candidates``), and the seconds per
    image they took."""
    return timed(lambda: model.sample(n, seed=seed, guide=guides.classifier(net, k, weight),
                                      candidates=candidates))


class Record:
    """Scores kept in a JSON file as soon as they are measured, so that a stopped report resumes
    where it stopped, on this machine or another (the file is small enough to commit). Each
    entry carries the date, machine and commit it was measured with, and the run (process) that
    measured it: timings compare only within a run."""

    def __init__(self, path: Path | None, model: str):
        self.path, self.model = path, model
        self.entries = json.loads(path.read_text()) if path and path.exists() else {}
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False, cwd=Path(__file__).parent).stdout.strip()
        self.facts = {"machine": machine(), "threads": torch.get_num_threads(), "commit": commit,
                      "run": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())}

    def get(self, key: str) -> dict | None:
        return self.entries.get(f"{self.model} {key}")

    def put(self, key: str, scores: dict) -> dict:
        entry = {**scores, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 **self.facts}
        if self.path:
            self.entries[f"{self.model} {key}"] = entry
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.entries, indent=2) + "\n")
        return entry


def sweep(model, net, extractor, weights: list[float], n: int,
          candidates: int = 1) -> tuple[float, list[dict]]:
    """Each weight on the validation split; returns the chosen weight and the rows."""
    refs, _ = class_stats("validation", extractor)
    rows = []
    for w in weights:
        scores = [score(guided(model, net, k, w, n, VAL_SEED, candidates)[0], k, extractor,
                        refs[k])
                  for k in range(len(CLASS_NAMES))]
        acc, fid = (sum(s[i] for s in scores) / len(scores) for i in (0, 1))
        rows.append({"weight": w, "accuracy": acc, "fid": fid,
                     "per_class": [{"accuracy": a, "fid": f} for a, f in scores]})
        print(f"validation  λ {w:5.1f}  accuracy {acc:.3f}  mean per-class FID {fid:6.1f}  "
              f"(worst class {min(s[0] for s in scores):.2f})", flush=True)
    good = [r for r in rows if r["accuracy"] >= 0.9]
    best = min(good, key=lambda r: r["fid"]) if good else max(rows, key=lambda r: r["accuracy"])
    return best["weight"], rows


def report(model, net, extractor, weight: float, n: int, candidates: int = 1,
           record: Record | None = None) -> tuple[dict, list[Tensor]]:
    """The test split at ``weight``: per class accuracy and FID, the unconditional baseline and
    the cost; also the first 10 samples of each class sampled in this run, for the figure."""
    record = record or Record(None, "")
    refs, everything = class_stats("test", extractor)
    unguided = record.get(f"unguided n{n} s{TEST_SEED}")
    if unguided is None:
        plain, seconds = timed(lambda: model.sample(n, seed=TEST_SEED))
        unguided = record.put(f"unguided n{n} s{TEST_SEED}", {
            "fid": fid_from_stats(FeatureStats().update(extractor(plain)), everything),
            "seconds_per_image": seconds})
    print(f"test  unconditional, {n} samples: FID {unguided['fid']:.1f} against all test images; "
          f"{unguided['seconds_per_image']:.3f} s/image", flush=True)
    classes, rows = [], []
    for k, name in enumerate(CLASS_NAMES):
        key = f"class{k} w{weight:g} k{candidates} n{n} s{TEST_SEED}"
        entry = record.get(key)
        if entry is None:
            x, seconds = guided(model, net, k, weight, n, TEST_SEED, candidates)
            acc, fid = score(x, k, extractor, refs[k])
            entry = record.put(key, {"accuracy": acc, "fid": fid, "seconds_per_image": seconds})
            rows.append(x[:10])
        classes.append({"class": name, **entry})
        seconds = entry["seconds_per_image"]   # None where a record kept no timing
        print(f"test  λ {weight:g}  {name:12s} accuracy {entry['accuracy']:.3f}  "
              f"FID {entry['fid']:6.1f}  {seconds or float('nan'):.3f} s/image  "
              f"({entry['date']})", flush=True)
    # The cost compares the timings of one run: the unguided chains' and the classes timed with them.
    same_run = [c for c in classes if c["run"] == unguided["run"]]
    guided_seconds = sum(c["seconds_per_image"] for c in same_run) / max(len(same_run), 1)
    summary = {"weight": weight, "candidates": candidates, "n_per_class": n, "classes": classes,
               "mean_accuracy": sum(c["accuracy"] for c in classes) / len(classes),
               "min_accuracy": min(c["accuracy"] for c in classes),
               "mean_fid": sum(c["fid"] for c in classes) / len(classes),
               "max_fid": max(c["fid"] for c in classes),
               "unconditional_fid": unguided["fid"],
               "unguided_seconds_per_image": unguided["seconds_per_image"],
               "guided_seconds_per_image": guided_seconds,
               "cost_ratio": guided_seconds / unguided["seconds_per_image"],
               "cost_classes": [c["class"] for c in same_run]}
    print(f"test  mean accuracy {summary['mean_accuracy']:.3f} (min {summary['min_accuracy']:.3f})"
          f"  mean per-class FID {summary['mean_fid']:.1f} (max {summary['max_fid']:.1f}, "
          f"unconditional {unguided['fid']:.1f})  cost {summary['cost_ratio']:.2f}x", flush=True)
    return summary, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--weights", default="1,3,10", help="guidance weights λ to sweep")
    parser.add_argument("--weight", type=float, help="no sweep: report the test split at this "
                        "λ (a point on the trade-off, not a choice)")
    parser.add_argument("--n-val", type=int, default=40, help="samples per class per weight")
    parser.add_argument("--n", type=int, default=200, help="test samples per class (0: the "
                        "validation sweep alone)")
    parser.add_argument("--candidates", type=int, default=1, help="K: each sample the best of "
                        "K candidate chains by the guide (TrainedModel.sample's candidates)")
    parser.add_argument("--record", type=Path, help="a JSON file keeping each class's test "
                        "scores as measured: a stopped report resumes from it")
    parser.add_argument("--json", help="write the results as JSON")
    parser.add_argument("--grid", help="a figure: one row of 10 samples per class")
    parser.add_argument("--classifier", default=str(guides.GUIDE_WEIGHTS),
                        help="the guide classifier's weights")
    args = parser.parse_args()

    started = time.time()
    model, (net, info) = load(args.model), guides.load_classifier(args.classifier)
    extractor = FMNISTFeatures(device=model.device)
    weight, sweep_rows = args.weight, []
    if weight is None:
        weights = [float(w) for w in args.weights.split(",")]
        weight, sweep_rows = sweep(model, net, extractor, weights, args.n_val, args.candidates)
        print(f"chosen on validation: λ = {weight:g}", flush=True)
    summary, rows = (report(model, net, extractor, weight, args.n, args.candidates,
                            Record(args.record, args.model))
                     if args.n else (None, []))   # --n 0: the validation sweep alone
    if args.grid and len(rows) == len(CLASS_NAMES):   # every class sampled in this run
        save_rows(rows, args.grid, labels=list(CLASS_NAMES), scale=1)
    if args.json:
        write_report(args.json, {"model": args.model, "guide": info, "candidates": args.candidates,
                                 "sweep": sweep_rows,
                                 "test": summary, "n_val_per_class": args.n_val,
                                 "seconds": time.time() - started})


if __name__ == "__main__":
    main()
