"""Out-of-distribution detection with a trained energy (paper Sec. 4.2, Table 4).

A model scores images by how in-distribution they look; the held-out test split of its own
dataset is the in-distribution set, and each out-of-distribution set is ranked against it by
AUROC, AUPR (in-distribution as the positive class, and as the negative) and the false-positive
rate at 95% true positives, all from scikit-learn.

Scores (``ood_scores``), each oriented so that **higher means more in-distribution**: the
paper's −E(x), the authors' code's +‖∇ₓE(x)‖₂, a likelihood ratio across the model's scales, a
Gaussian on the network's features fitted to validation images, a ratio against the image upside
down, and the default, those three together.

Sets: ``uniform`` U(−1, 1); ``constant`` (one random value per image and channel, so colour
images get a random colour); ``interp`` (the midpoint of two random held-out images, as in the
paper's Interp); ``vflip`` and ``invert`` (held-out images upside down, and with their
intensities negated); any dataset name ``cfebm.data`` loads (``mnist`` for a Fashion-MNIST
model: the field's hard case, Nalisnick et al. 2019), or a folder of images; each is read at the
model's resolution and channel count (``load_images`` resizes and converts) and the conversion
is reported.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from torch import Tensor

from cfebm.apps.ood_scores import DEFAULT_SCORE, Detector, labelled, own_set
from cfebm.config import DataConfig
from cfebm.data import DATASETS, DataError, load_images, to_float
from cfebm.trained import TrainedModel

SYNTHETIC = ("uniform", "constant", "interp", "vflip", "invert")
SET_HOW = {"uniform": "U(-1, 1) per pixel",
           "constant": "one random value in [-1, 1] per image and channel",
           "interp": "midpoints of random pairs of held-out in-distribution images",
           "vflip": "held-out in-distribution images upside down",
           "invert": "held-out in-distribution images, intensities inverted"}


AXIS_LABELS = {"energy": "−E(x)", "grad_norm": "‖∇ₓE(x)‖", "ratio": "−E_R(x) + E_r(pool x)",
               "features": "−Mahalanobis distance of features",
               "upright": "−softplus(E(x) − E(flip x))",
               "ratio+features": "z(ratio) + w·z(features)",
               "ratio+features+upright": "z(ratio) + w·z(features) + u·z(upright)"}


@dataclass(frozen=True)
class OODSet:
    name: str
    images: Tensor        # (N, C, R, R) float in [−1, 1], at the model's resolution
    how: str              # where the images came from and how they were converted


def in_distribution(model: TrainedModel, n: int) -> OODSet:
    """The first ``n`` images of the test split of the model's own dataset."""
    images = load_images(model.cfg.data, split="test", resolution=model.resolution,
                         image_channels=model.channels)
    x = to_float(images.get_batch(torch.arange(min(n, len(images)))))
    return OODSet(model.cfg.data.dataset, x, f"{model.cfg.data.dataset} test split, "
                  f"{len(x)} images at {model.resolution}x{model.resolution}")


def build_set(name: str, model: TrainedModel, n: int, seed: int = 0,
              held_out: Tensor | None = None) -> OODSet:
    """An out-of-distribution set of ``n`` images for ``model`` (see the module docstring).

    ``held_out`` are in-distribution images for ``interp`` (default: the test split's).
    Raises ``DataError`` for a name that is neither a set, a dataset nor a folder.
    """
    g = torch.Generator().manual_seed(seed)
    c, r = model.channels, model.resolution
    if name in ("uniform", "constant"):
        return OODSet(name, own_set(name, torch.empty(n, c, r, r), g), SET_HOW[name])
    if name in ("interp", "vflip", "invert"):
        x = in_distribution(model, 10 * n).images if held_out is None else held_out
        return OODSet(name, own_set(name, x if name == "interp" else x[:n], g, n), SET_HOW[name])
    if name in DATASETS:
        cfg = DataConfig(dataset=name)
    elif Path(name).is_dir():
        cfg = DataConfig(dataset="folder", root=name)
    else:
        raise DataError(f"unknown OOD set {name!r}: use {', '.join(SYNTHETIC)}, a dataset "
                        f"({', '.join(d for d in DATASETS if d != 'folder')}) or a folder")
    images = load_images(cfg, split="test", resolution=r, image_channels=c)
    pick = torch.randperm(len(images), generator=g)[:n].sort().values
    return OODSet(Path(name).name or name, to_float(images.get_batch(pick)),
                  f"{name}: {len(pick)} test images resized to {r}x{r}, {c} channel(s)")


def score(model: TrainedModel, x: Tensor, kind: str = DEFAULT_SCORE, *,
          detector: Detector | None = None, batch_size: int = 500,
          progress: bool = False) -> Tensor:
    """OOD scores (N,) float32 of images ``x`` (N, C, R, R) in [−1, 1], higher = more
    in-distribution; a fitted ``kind`` (see ``ood_scores``) fits a ``Detector`` on the
    validation split unless one is given."""
    detector = detector or Detector.for_kinds(model, [kind], batch_size=batch_size)
    return detector.score(x, kind, batch_size=batch_size, progress=progress)


def ood_metrics(score_in: Tensor, score_out: Tensor) -> dict[str, float]:
    """AUROC, AUPR-in, AUPR-out and FPR at 95% TPR, in-distribution as the positive class
    (scores: higher = more in-distribution)."""
    y, s = labelled(score_in, score_out)
    fpr, tpr, _ = roc_curve(y, s)
    return {"auroc": float(roc_auc_score(y, s)),
            "aupr_in": float(average_precision_score(y, s)),
            "aupr_out": float(average_precision_score(1 - y, -s)),
            "fpr95": float(fpr[np.searchsorted(tpr, 0.95, side="left")])}


@dataclass
class OODReport:
    """Scores and metrics of one model against several sets, for one or more score kinds."""

    in_set: OODSet
    sets: list[OODSet]
    scores: dict[str, dict[str, Tensor]]     # kind -> set name (in-distribution too) -> (N,)
    metrics: dict[str, dict[str, dict]]      # kind -> OOD set name -> ood_metrics

    def table(self, metric: str = "auroc") -> str:
        """A Markdown table like Table 4: one row per score, one column per set, and Average."""
        names = [s.name for s in self.sets]
        head = f"| score ({metric}) | " + " | ".join(names) + " | Average |"
        rows = [head, "|---" * (len(names) + 2) + "|"]
        for kind, per_set in self.metrics.items():
            values = [per_set[name][metric] for name in names]
            cells = " | ".join(f"{v:.3f}" for v in values)
            rows.append(f"| {kind} | {cells} | {np.mean(values):.3f} |")
        return "\n".join(rows)

    def write(self, out: str | Path) -> list[Path]:
        """``ood.md`` (every metric's table and the sets' provenance), ``ood.csv`` and, per
        score kind, one PNG with a histogram per set against the in-distribution scores."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        md = [self.table(m) + "\n" for m in ("auroc", "aupr_in", "aupr_out", "fpr95")]
        md += [f"- in-distribution: {self.in_set.how}"]
        md += [f"- {s.name}: {s.how}" for s in self.sets]
        (out / "ood.md").write_text("\n".join(md) + "\n")
        with (out / "ood.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["score", "set", "auroc", "aupr_in", "aupr_out", "fpr95"])
            for kind, per_set in self.metrics.items():
                for name, m in per_set.items():
                    writer.writerow([kind, name, *(f"{m[k]:.6f}" for k in
                                                   ("auroc", "aupr_in", "aupr_out", "fpr95"))])
        return [out / "ood.md", out / "ood.csv", *(self._histogram(k, out) for k in self.scores)]

    def _histogram(self, kind: str, out: Path) -> Path:
        import matplotlib.pyplot as plt

        fig = self.histogram_figure(kind)
        path = out / f"ood_hist_{kind}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def histogram_figure(self, kind: str):
        """A matplotlib figure with one panel per OOD set, side by side: its ``kind`` scores
        against the in-distribution ones, each a density (sets of any size compare)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        scores, ref = self.scores[kind], self.in_set.name
        fig, axes = plt.subplots(1, len(self.sets), figsize=(3.2 * len(self.sets), 2.8),
                                 squeeze=False)
        for ax, s in zip(axes[0], self.sets):
            bins = np.histogram_bin_edges(torch.cat([scores[ref], scores[s.name]]).numpy(), 40)
            ax.hist(scores[ref].numpy(), bins=bins, alpha=0.5, density=True, label=ref)
            ax.hist(scores[s.name].numpy(), bins=bins, alpha=0.5, density=True, label=s.name)
            ax.set_title(f"{s.name}: AUROC {self.metrics[kind][s.name]['auroc']:.3f}",
                         fontsize=8)
            ax.set_xlabel(AXIS_LABELS[kind], fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6)
        fig.suptitle(f"OOD scores ({kind}): higher = more in-distribution", fontsize=9)
        fig.tight_layout()
        return fig


def evaluate_ood(model: TrainedModel, set_names: Sequence[str], *, n: int = 1000,
                 kinds: Sequence[str] = (DEFAULT_SCORE,), seed: int = 0, batch_size: int = 500,
                 detector: Detector | None = None, progress: bool = False) -> OODReport:
    """Score the model's test split and each named set with each score kind; a fitted score
    fits ``detector`` on the validation split first unless one is given."""
    detector = detector or Detector.for_kinds(model, kinds, batch_size=batch_size)
    in_set = in_distribution(model, n)
    sets = [build_set(name, model, n, seed, held_out=in_set.images) for name in set_names]
    scores, metrics = {}, {}
    for kind in kinds:
        scores[kind] = {s.name: detector.score(s.images, kind, batch_size=batch_size,
                                               progress=progress) for s in [in_set, *sets]}
        metrics[kind] = {s.name: ood_metrics(scores[kind][in_set.name], scores[kind][s.name])
                         for s in sets}
    return OODReport(in_set, sets, scores, metrics)
