"""Sample-quality metrics: FID, KID, precision/recall and the feature extractors behind them.

``fid`` works on features only (streaming float64 statistics, Fréchet distance, KID, improved
precision/recall); ``features`` turns images in [−1, 1] into features (TF-FID Inception-v3 via
the optional torch-fidelity, or the project's Fashion-MNIST classifier). A typical use::

    from cfebm.metrics import FMNISTFeatures, FeatureStats, feature_stats, fid_from_stats

    extractor = FMNISTFeatures()
    fake = feature_stats(extractor, sample_batches)          # FeatureStats
    real = FeatureStats.load_npz("fmnist_train_stats.npz")   # made by the same protocol
    print(fid_from_stats(fake, real))
"""

from cfebm.metrics.features import (
    FeatureExtractor,
    FMNISTFeatures,
    InceptionFeatures,
    class_coverage,
)
from cfebm.metrics.fid import (
    FeatureStats,
    check_compatible,
    feature_stats,
    fid_from_stats,
    frechet_distance,
    kid,
    precision_recall,
)

__all__ = [
    "FMNISTFeatures",
    "FeatureExtractor",
    "FeatureStats",
    "InceptionFeatures",
    "check_compatible",
    "class_coverage",
    "feature_stats",
    "fid_from_stats",
    "frechet_distance",
    "kid",
    "precision_recall",
]
