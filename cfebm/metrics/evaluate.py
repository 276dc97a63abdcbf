"""Sample quality of a trained model: reference statistics, FID/KID/coverage, nearest neighbours.

The evaluation of Zhao, Xie & Li, "Learning Energy-Based Generative Models via Coarse-to-Fine
Expanding and Sampling", ICLR 2021 (Sec. 4.1 and Fig. 12): draw N samples with Algorithm 2,
compare their features with those of the test split, and show a few samples beside their nearest
training images to check that the model does not copy its data. The metrics (``cfebm.metrics``):
FID (Heusel et al., 2017), KID (Bińkowski et al., 2018), improved precision and recall
(Kynkäänniemi et al., 2019) and, for Fashion-MNIST, class coverage.

Reference statistics live in ``cfebm.metrics.reference``; their protocol includes how images
reach the extractor. The Fashion-MNIST classifier takes 32×32 only, so images of side r < 32 are
upsampled by nearest neighbour (each pixel becomes a block of equal pixels) and r > 32 average-pooled
(``Resized``); references and samples of one resolution take the same route, and ``eval``
refuses statistics made another way (``check_reference``). Inception resizes any size itself.

The small-sample version run during training (``eval.every``) is ``train.evaluation.TrainingEval``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cfebm.data import ImageSet, downsample, to_float
from cfebm.metrics import (
    FeatureExtractor,
    FeatureStats,
    FMNISTFeatures,
    InceptionFeatures,
    class_coverage,
    fid_from_stats,
    kid,
    precision_recall,
)
from cfebm.metrics.reference import EvalError, Reference

FEATURES = ("fmnist", "inception")
FMNIST_SIDE = 32      # FMNISTFeatures takes (N, 1, 32, 32) only


# ------------------------------------------------------------------------------------------------
# Feature extractors for a dataset and resolution


class Resized:
    """A feature extractor fed images of side ``resolution`` that takes side ``size``.

    Up by nearest neighbour (an integer factor: every pixel becomes a block, no new values);
    down by average pooling, as cfebm's coarse stages see data. The step joins the protocol.
    """

    def __init__(self, extractor: FeatureExtractor, resolution: int, size: int):
        self.extractor, self.resolution, self.size = extractor, resolution, size
        how = "nearest-upsampled" if size > resolution else "average-pooled"
        self.name, self.dim = extractor.name, extractor.dim
        self.protocol = f"{extractor.protocol}; cfebm: {resolution}x{resolution} {how} to {size}"

    def resize(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.resolution:
            raise ValueError(f"expected {self.resolution}x{self.resolution} images, got "
                             f"{tuple(x.shape)}")
        if self.size > self.resolution:
            return F.interpolate(x, scale_factor=self.size // self.resolution, mode="nearest")
        return downsample(x, self.size)

    def __call__(self, x: Tensor) -> Tensor:
        return self.extractor(self.resize(x))

    def predict_classes(self, x: Tensor) -> Tensor:
        return self.extractor.predict_classes(self.resize(x))


def make_extractor(features: str, *, dataset: str, channels: int,
                   device: str | torch.device = "cpu") -> FeatureExtractor:
    """The extractor named ``features`` ("fmnist" or "inception") for one dataset's images.

    "fmnist" is the Fashion-MNIST classifier and only accepts grayscale Fashion-MNIST; "inception"
    needs torch-fidelity and its weights. Pass the result through ``at_resolution``.
    """
    if features not in FEATURES:
        raise EvalError(f"unknown features {features!r}; choose one of {', '.join(FEATURES)}")
    if features == "fmnist":
        if dataset != "fashion_mnist" or channels != 1:
            raise EvalError(f"fmnist features are for grayscale Fashion-MNIST, not {dataset!r} "
                            f"with {channels} channel(s); use inception features")
        return FMNISTFeatures(device=device)
    try:
        return InceptionFeatures(device=device)
    except (ImportError, RuntimeError) as e:  # torch-fidelity or its weights missing
        raise EvalError(str(e)) from e


def at_resolution(extractor: FeatureExtractor, resolution: int) -> FeatureExtractor:
    """``extractor`` for images of side ``resolution`` (``Resized`` where it needs 32 px)."""
    if isinstance(extractor, FMNISTFeatures) and resolution != FMNIST_SIDE:
        return Resized(extractor, resolution, FMNIST_SIDE)
    return extractor


def class_predictor(dataset: str, channels: int, extractor: FeatureExtractor, resolution: int,
                    device: str | torch.device = "cpu") -> FeatureExtractor | None:
    """Something with ``predict_classes`` for class coverage: the Fashion-MNIST classifier, for
    grayscale Fashion-MNIST only (reusing ``extractor`` when it is that classifier)."""
    if hasattr(extractor, "predict_classes"):
        return extractor
    if dataset == "fashion_mnist" and channels == 1:
        return at_resolution(FMNISTFeatures(device=device), resolution)
    return None


# ------------------------------------------------------------------------------------------------
# Samples and metrics


@dataclass(frozen=True)
class EvalResult:
    n: int                        # samples evaluated
    fid: float
    kid: float | None             # mean unbiased MMD² over subsets; None without ref features
    kid_std: float | None         # its std over the subsets
    precision: float | None       # Kynkäänniemi et al. (2019), k = 3
    recall: float | None
    coverage: dict | None         # class_coverage of the predicted classes (Fashion-MNIST)


def evaluate_samples(
    batches: Iterable[Tensor], ref: Reference, extractor: FeatureExtractor, *,
    classifier: FeatureExtractor | None = None, kid_subsets: int = 100,
    kid_subset_size: int = 1000, precision_recall_k: int | None = 3, keep: int = 0,
    seed: int = 0,
) -> tuple[EvalResult, Tensor]:
    """Compare image batches with ``ref``: FID, KID, precision/recall and class coverage.

    Args:
        batches: samples (B, C, R, R) in [−1, 1]; features are computed batch by batch and the
            images dropped, except the first ``keep``.
        ref: reference of real images made with the same ``extractor`` (``check_reference``).
        extractor: features for all metrics but coverage.
        classifier: something with ``predict_classes`` for class coverage, or None.
        kid_subsets, kid_subset_size: KID subsets (100 of 1000 as Bińkowski et al.).
        precision_recall_k: neighbourhood size; None skips precision and recall (so do k or
            fewer samples). The larger set is subsampled (seeded) to the size of the smaller, as
            the k-NN radii depend on it.
        keep: how many of the first samples to return, e.g. for nearest neighbours.
        seed: seed of the KID subsets and the precision/recall subsample.

    Returns:
        (EvalResult, the first ``keep`` samples on the CPU). KID and precision/recall are None
        when ``ref`` holds no features.
    """
    features, classes, kept = [], [], []
    with torch.no_grad():
        for x in batches:
            features.append(extractor(x).float())
            if classifier is not None:
                classes.append(classifier.predict_classes(x).cpu())
            kept.append(x[:keep - sum(len(k) for k in kept)].cpu())
    fake = torch.cat(features) if features else torch.zeros(0, extractor.dim)
    n = len(fake)
    if n < 2:
        raise EvalError(f"need at least 2 samples to evaluate, got {n}")
    stats = FeatureStats(metadata={"protocol": extractor.protocol}).update(fake)
    fid = fid_from_stats(stats, ref.stats)
    kid_mean = kid_std = precision = recall = None
    if ref.features is not None:
        real = ref.features.to(fake.device)
        kid_mean, kid_std = kid(fake, real, n_subsets=kid_subsets, subset_size=kid_subset_size,
                                seed=seed)
        if precision_recall_k is not None and n > precision_recall_k:
            m, generator = min(len(real), len(fake)), torch.Generator().manual_seed(seed)
            real, fake = (f[torch.randperm(len(f), generator=generator)[:m].to(f.device)]
                          if len(f) > m else f for f in (real, fake))
            precision, recall = precision_recall(real, fake, k=precision_recall_k)
    coverage = class_coverage(torch.cat(classes)) if classes else None
    result = EvalResult(n, fid, kid_mean, kid_std, precision, recall, coverage)
    return result, torch.cat(kept)


# ------------------------------------------------------------------------------------------------
# Nearest training images (Fig. 12)


def nearest_neighbours(x: Tensor, images: ImageSet, k: int = 5, *,
                       batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """The ``k`` images of ``images`` nearest to each of ``x`` in pixel space.

    Distance is the L2 norm over all pixels in [−1, 1], computed exactly (no matmul shortcut), so
    an image of the set is at distance 0 from itself.

    Args:
        x: queries (Q, C, R, R) in [−1, 1], e.g. samples; R and C must match ``images``.
        images: the training set (uint8), scanned in batches of ``batch_size``.

    Returns:
        (distances (Q, k) ascending, indices (Q, k) into ``images``), on the CPU.
    """
    shape = (images.channels, images.resolution, images.resolution)
    if tuple(x.shape[1:]) != shape:
        raise EvalError(f"queries of shape {tuple(x.shape[1:])} cannot be compared with "
                        f"images of shape {shape}")
    q = x.detach().float().cpu().flatten(1)                      # (Q, C·R·R)
    best_d = q.new_zeros(len(q), 0)
    best_i = torch.zeros(len(q), 0, dtype=torch.long)
    for start in range(0, len(images), batch_size):
        indices = torch.arange(start, min(start + batch_size, len(images)))
        y = to_float(images.get_batch(indices)).flatten(1)      # (B, C·R·R)
        d = torch.cdist(q, y, compute_mode="donot_use_mm_for_euclid_dist")   # (Q, B)
        all_d = torch.cat([best_d, d], 1)
        all_i = torch.cat([best_i, indices.expand(len(q), -1)], 1)
        best_d, pos = all_d.topk(min(k, all_d.shape[1]), dim=1, largest=False, sorted=True)
        best_i = all_i.gather(1, pos)
    return best_d, best_i


def neighbour_grid(x: Tensor, images: ImageSet, indices: Tensor) -> Tensor:
    """Rows of [sample, its neighbours...] as one batch ((Q·(k+1)), C, R, R) for ``save_grid``
    with ``nrow=k + 1``."""
    rows = [torch.cat([xi[None].cpu(), to_float(images.get_batch(idx))]) for xi, idx in
            zip(x, indices)]
    return torch.cat(rows)
