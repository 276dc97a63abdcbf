"""Feature-space sample-quality metrics: FID, KID, precision/recall.

Everything here works on features, never on images, so it is independent of the network that
made them (see ``cfebm.metrics.features`` for the extractors):

- ``FeatureStats`` accumulates float64 ``count``, ``Σx`` and ``Σxᵀx`` in one pass, can be merged
  and ``all_reduce``d across processes (the pattern of NVlabs/edm ``fid.py``), and is saved as
  reference statistics (``.npz`` with mu, sigma, count and string metadata, loaded without pickle).
- ``frechet_distance`` is the FID of Heusel et al. (2017), "GANs Trained by a Two Time-Scale
  Update Rule Converge to a Local Nash Equilibrium": ‖μ₁−μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^½.
- ``kid`` is the KID of Bińkowski et al. (2018), "Demystifying MMD GANs": the unbiased MMD² with
  the cubic kernel k(x, y) = (xᵀy/d + 1)³, averaged over random subsets.
- ``precision_recall`` is the k-NN manifold estimate of Kynkäänniemi et al. (2019), "Improved
  Precision and Recall Metric for Assessing Generative Models".

Only numpy and torch are used at runtime (no scipy).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

ArrayLike = np.ndarray | Tensor


def _as_float64_numpy(a: ArrayLike) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _as_float64_tensor(a: ArrayLike) -> Tensor:
    if isinstance(a, Tensor):
        return a.detach().to(torch.float64)
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


# ------------------------------------------------------------------------------------------------
# Streaming statistics


class FeatureStats:
    """Streaming first and second moments of features, in float64.

    Holds ``count`` (int), ``sum`` (D,) = Σx and ``sum_outer`` (D, D) = Σxᵀx; the tensors live on
    the device of the first features given. ``metadata`` is a dict of strings (e.g. the feature
    extractor's ``name`` and ``protocol``) that travels with saved statistics.

    Args:
        dim: feature dimension D. Optional, except that a process which may see no features
            before ``all_reduce`` must know D to take part.
        metadata: strings to store with the statistics.
    """

    def __init__(self, dim: int | None = None, *, metadata: dict[str, str] | None = None):
        self.count = 0
        self.sum: Tensor | None = None
        self.sum_outer: Tensor | None = None
        self.metadata: dict[str, str] = dict(metadata or {})
        if dim is not None:
            self._allocate(dim, torch.device("cpu"))

    def _allocate(self, dim: int, device: torch.device) -> None:
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.sum_outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    @property
    def dim(self) -> int | None:
        return None if self.sum is None else self.sum.shape[0]

    def update(self, features: ArrayLike) -> FeatureStats:
        """Add a batch of features (N, D); returns self."""
        x = _as_float64_tensor(features)
        if x.ndim != 2:
            raise ValueError(f"features must be (N, D), got shape {tuple(x.shape)}")
        if self.sum is None:
            self._allocate(x.shape[1], x.device)
        elif x.shape[1] != self.dim:
            raise ValueError(f"features have D={x.shape[1]}, these statistics have D={self.dim}")
        if self.count == 0 and x.device != self.sum.device:
            self.sum, self.sum_outer = self.sum.to(x.device), self.sum_outer.to(x.device)
        x = x.to(self.sum.device)
        self.count += x.shape[0]
        self.sum += x.sum(0)
        self.sum_outer += x.T @ x
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another ``FeatureStats`` (same D) into this one; returns self."""
        if other.sum is None:
            return self
        if self.sum is None:
            self._allocate(other.dim, other.sum.device)
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics with D={other.dim} into D={self.dim}")
        self.count += other.count
        self.sum += other.sum.to(self.sum.device)
        self.sum_outer += other.sum_outer.to(self.sum.device)
        return self

    def all_reduce(self) -> FeatureStats:
        """Sum count, Σx and Σxᵀx over all torch.distributed processes (no-op when not
        initialised); returns self. Every process must know D (see the ``dim`` argument)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self
        if self.sum is None:
            raise RuntimeError("FeatureStats.all_reduce needs the feature dimension: pass dim=")
        if torch.distributed.get_backend() == "nccl" and self.sum.device.type != "cuda":
            # NCCL reduces CUDA tensors only (a process that saw no features holds CPU zeros).
            device = torch.device("cuda", torch.cuda.current_device())
            self.sum, self.sum_outer = self.sum.to(device), self.sum_outer.to(device)
        count = torch.tensor([self.count], dtype=torch.float64, device=self.sum.device)
        for t in (count, self.sum, self.sum_outer):
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        self.count = int(count.item())
        return self

    @property
    def mean(self) -> np.ndarray:
        """μ (D,), float64 numpy."""
        if self.count < 1:
            raise ValueError("no features accumulated")
        return (self.sum / self.count).cpu().numpy()

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance Σ (D, D) = (Σxᵀx − n μμᵀ)/(n − 1), float64 numpy."""
        if self.count < 2:
            raise ValueError(f"the covariance needs at least 2 features, have {self.count}")
        n = self.count
        mu = self.sum / n
        cov = (self.sum_outer - n * torch.outer(mu, mu)) / (n - 1)
        return cov.cpu().numpy()

    def save_npz(
        self, path: str | os.PathLike, *, features: ArrayLike | None = None, **metadata: str
    ) -> None:
        """Write mu, sigma, count and metadata (``self.metadata`` updated by ``metadata``) to an
        uncompressed ``.npz`` that loads with ``allow_pickle=False``.

        ``features`` (N, D), if given, are stored too (as float32 ``features``), for metrics
        that need the samples themselves (KID, precision/recall); ``load_npz`` ignores them.
        """
        meta = {**self.metadata, **metadata}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise TypeError("metadata keys and values must be strings")
        extra = {}
        if features is not None:
            extra["features"] = _as_float64_numpy(features).astype(np.float32)
            if extra["features"].shape != (self.count, self.dim):
                raise ValueError(f"features of shape {extra['features'].shape} do not match "
                                 f"these statistics ({self.count}, {self.dim})")
        np.savez(
            path,
            mu=self.mean,
            sigma=self.cov,
            count=np.int64(self.count),
            metadata=np.array(json.dumps(meta, sort_keys=True)),   # 0-d unicode, no pickle
            **extra,
        )

    @classmethod
    def load_npz(cls, path: str | os.PathLike) -> FeatureStats:
        """Read statistics written by ``save_npz``. The sums are rebuilt from (mu, sigma, count),
        so loaded statistics can be merged or updated further."""
        with np.load(Path(path), allow_pickle=False) as f:
            mu, sigma, count = f["mu"], f["sigma"], int(f["count"])
            metadata = json.loads(str(f["metadata"])) if "metadata" in f.files else {}
        stats = cls(metadata=metadata)
        mu_t = torch.from_numpy(mu.astype(np.float64))
        sigma_t = torch.from_numpy(sigma.astype(np.float64))
        stats.count = count
        stats.sum = mu_t * count
        stats.sum_outer = sigma_t * (count - 1) + count * torch.outer(mu_t, mu_t)
        return stats


def feature_stats(
    extractor: Callable[[Tensor], Tensor],
    batches: Iterable[Tensor],
    *,
    dim: int | None = None,
    all_reduce: bool = True,
) -> FeatureStats:
    """Statistics of ``extractor`` features over an iterable of image batches.

    Args:
        extractor: a feature extractor (``cfebm.metrics.features``): images (N, C, H, W) in
            [−1, 1] -> features (N, D); its ``name`` and ``protocol`` go into the metadata.
        batches: image batches, e.g. this process's shard of a dataset or of samples.
        dim: D, needed when this process may get no batches (under torch.distributed).
        all_reduce: sum the statistics over torch.distributed processes (no-op when not
            initialised).
    """
    metadata = {k: str(getattr(extractor, k)) for k in ("name", "protocol")
                if hasattr(extractor, k)}
    stats = FeatureStats(dim or getattr(extractor, "dim", None), metadata=metadata)
    with torch.no_grad():
        for x in batches:
            stats.update(extractor(x))
    return stats.all_reduce() if all_reduce else stats


# ------------------------------------------------------------------------------------------------
# FID


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂), in float64.

    ‖μ₁−μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^½, where tr (Σ₁Σ₂)^½ = Σᵢ √λᵢ over the eigenvalues λᵢ
    of Σ₁Σ₂ (real and ≥ 0 in exact arithmetic, being those of Σ₁^½ Σ₂ Σ₁^½; round-off is removed
    by taking real parts clipped at 0).

    Args:
        mu1, mu2: means (D,). sigma1, sigma2: covariances (D, D). numpy arrays or tensors.
    """
    mu1, mu2 = _as_float64_numpy(mu1), _as_float64_numpy(mu2)
    sigma1, sigma2 = _as_float64_numpy(sigma1), _as_float64_numpy(sigma2)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"shape mismatch: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, "
            f"sigma2 {sigma2.shape}"
        )
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2)
    tr_sqrt = np.sqrt(np.clip(eigenvalues.real, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_sqrt)


def check_compatible(stats_a: FeatureStats, stats_b: FeatureStats) -> None:
    """Raise ``ValueError`` if both statistics record a feature protocol and they differ."""
    pa, pb = stats_a.metadata.get("protocol"), stats_b.metadata.get("protocol")
    if pa is not None and pb is not None and pa != pb:
        raise ValueError(
            "the statistics were computed with different feature protocols and are not "
            f"comparable:\n  {pa!r}\n  {pb!r}"
        )


def fid_from_stats(stats_a: FeatureStats, stats_b: FeatureStats) -> float:
    """FID between two ``FeatureStats``; refuses statistics of different protocols."""
    check_compatible(stats_a, stats_b)
    return frechet_distance(stats_a.mean, stats_a.cov, stats_b.mean, stats_b.cov)


# ------------------------------------------------------------------------------------------------
# KID


def _mmd2_unbiased_poly(x: Tensor, y: Tensor) -> float:
    """Unbiased MMD² of two equal-size samples (m, D) with k(a, b) = (aᵀb/D + 1)³."""
    m, d = x.shape
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    off_xx = k_xx.sum() - k_xx.diagonal().sum()
    off_yy = k_yy.sum() - k_yy.diagonal().sum()
    return float((off_xx + off_yy) / (m * (m - 1)) - 2 * k_xy.sum() / (m * m))


def kid(
    features_a: ArrayLike,
    features_b: ArrayLike,
    *,
    n_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD² with the cubic polynomial kernel, over subsets.

    Each of ``n_subsets`` draws picks ``subset_size`` rows of each set without replacement
    (``np.random.RandomState(seed).choice``, a then b, the order torch-fidelity uses), so with
    the same seed the result equals torch-fidelity's ``kid_features_to_metric(rng_seed=seed)``.
    The computation runs in float64 on the device of ``features_a``.

    Args:
        features_a, features_b: features (Na, D) and (Nb, D), numpy arrays or tensors.
        n_subsets: number of random subsets (100 in Bińkowski et al. and torch-fidelity).
        subset_size: rows per subset (1000 as there), clipped to min(Na, Nb).
        seed: seed of the subset sampler.

    Returns:
        ``(mean, std)`` of the per-subset MMD² (std with ddof=0, as torch-fidelity). The mean is
        unbiased, so it can be slightly negative when the two distributions are equal.
    """
    a, b = _as_float64_tensor(features_a), _as_float64_tensor(features_b)
    b = b.to(a.device)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"features must be (N, D) with equal D, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError(
            f"KID needs at least 2 samples per set, have {a.shape[0]} and {b.shape[0]}"
        )
    rng = np.random.RandomState(seed)
    mmds = np.empty(n_subsets)
    for i in range(n_subsets):
        ia = torch.from_numpy(rng.choice(a.shape[0], m, replace=False)).to(a.device)
        ib = torch.from_numpy(rng.choice(b.shape[0], m, replace=False)).to(a.device)
        mmds[i] = _mmd2_unbiased_poly(a[ia], b[ib])
    return float(mmds.mean()), float(mmds.std())


# ------------------------------------------------------------------------------------------------
# Precision and recall


def _knn_radii(x: Tensor, k: int, block: int) -> Tensor:
    """Distance from each row of x to its k-th nearest other row (self excluded)."""
    return torch.cat([torch.cdist(xb, x).kthvalue(k + 1, dim=1).values for xb in x.split(block)])


def _in_manifold(queries: Tensor, points: Tensor, radii: Tensor, block: int) -> Tensor:
    """Whether each query lies in some ball B(points[j], radii[j])."""
    return torch.cat([(torch.cdist(qb, points) <= radii).any(dim=1) for qb in queries.split(block)])


def precision_recall(
    real_features: ArrayLike, fake_features: ArrayLike, *, k: int = 3, block: int = 1000
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019).

    Each set's manifold is the union of balls around its points, with radius the distance to the
    point's k-th nearest neighbour in the same set. Precision is the fraction of fake samples
    inside the real manifold; recall the fraction of real samples inside the fake manifold.

    Args:
        real_features, fake_features: (Nr, D) and (Nf, D); computed in float64.
        k: neighbourhood size (3 in the paper).
        block: rows per distance block (memory is about block × N × 8 bytes).

    Returns:
        ``(precision, recall)``, each in [0, 1].
    """
    real, fake = _as_float64_tensor(real_features), _as_float64_tensor(fake_features)
    fake = fake.to(real.device)
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(f"each set needs more than k={k} samples")
    precision = _in_manifold(fake, real, _knn_radii(real, k, block), block).double().mean()
    recall = _in_manifold(real, fake, _knn_radii(fake, k, block), block).double().mean()
    return float(precision), float(recall)
