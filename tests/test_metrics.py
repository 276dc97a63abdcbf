"""Tests of cfebm.metrics: FID/KID/precision-recall maths against independent references, the
streaming statistics, and the two feature extractors (offline, CPU)."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cfebm.metrics import (
    FeatureStats,
    FMNISTFeatures,
    InceptionFeatures,
    class_coverage,
    feature_stats,
    fid_from_stats,
    frechet_distance,
    kid,
    precision_recall,
)
from cfebm.metrics.classifier import (
    FMNIST_DEFAULT_ROOT,
    FMNISTClassifier,
    load_fashion_mnist,
    read_idx,
    save_classifier,
)
from cfebm.metrics.features import (
    FMNIST_WEIGHTS,
    INCEPTION_WEIGHTS_ENV,
    FeatureExtractor,
    to_uint8,
)


def random_cov(rng: np.random.Generator, d: int, n: int | None = None) -> np.ndarray:
    """A random SPD matrix (full rank unless n < d samples are used)."""
    a = rng.normal(size=(n or 2 * d, d))
    return a.T @ a / a.shape[0]


# ------------------------------------------------------------------------------------------------
# Fréchet distance


def test_fid_diagonal_gaussians_closed_form():
    rng = np.random.default_rng(0)
    d = 32
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-12)


def test_fid_matches_scipy_sqrtm_on_full_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    for d in (8, 64):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = random_cov(rng, d), random_cov(rng, d)
        covmean = linalg.sqrtm(s1 @ s2).real
        expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
        # Symmetric, and the same through torch float32 inputs up to float32 rounding.
        assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-9)
        t = [torch.tensor(v, dtype=torch.float32) for v in (mu1, s1, mu2, s2)]
        assert frechet_distance(*t) == pytest.approx(expected, rel=1e-4)


def test_fid_matches_torch_fidelity():
    metric_fid = pytest.importorskip("torch_fidelity.metric_fid")
    rng = np.random.default_rng(2)
    d = 48
    s1 = {"mu": rng.normal(size=d), "sigma": random_cov(rng, d)}
    s2 = {"mu": rng.normal(size=d), "sigma": random_cov(rng, d)}
    expected = metric_fid.fid_statistics_to_metric(s1, s2, verbose=False)[metric_fid.KEY_METRIC_FID]
    assert frechet_distance(s1["mu"], s1["sigma"], s2["mu"], s2["sigma"]) == pytest.approx(
        expected, rel=1e-10
    )


@pytest.mark.parametrize("n", [200, 20])   # full-rank and rank-deficient (20 samples in 64-d)
def test_fid_of_identical_statistics_is_zero(n):
    rng = np.random.default_rng(3)
    mu, s = rng.normal(size=64), random_cov(rng, 64, n)
    # Rank-deficient Σ² has eigenvalues ~1e-16·‖Σ‖² whose square roots (~1e-8) do not cancel.
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-6 * np.trace(s)


def test_fid_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ------------------------------------------------------------------------------------------------
# FeatureStats


def test_feature_stats_streaming_and_merge_equal_numpy():
    rng = np.random.default_rng(4)
    x = rng.normal(loc=3.0, size=(257, 12))   # non-zero mean tests the one-pass covariance
    parts = np.split(x, [1, 50, 51, 130])
    a, b = FeatureStats(), FeatureStats()
    for p in parts[:3]:
        a.update(torch.from_numpy(p))                      # tensors ...
    for p in parts[3:]:
        b.update(p)                                      # ... and numpy arrays
    a.merge(b).merge(FeatureStats())                     # an empty merge is a no-op
    assert a.count == len(x)
    np.testing.assert_allclose(a.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(a.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)


def test_feature_stats_errors():
    s = FeatureStats().update(np.ones((1, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        _ = s.cov
    with pytest.raises(ValueError, match="D=4"):
        s.update(np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        s.update(np.ones(3))


def test_feature_stats_npz_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(100, 6)), rng.normal(size=(30, 6))
    stats = FeatureStats(metadata={"protocol": "p1"}).update(x)
    path = tmp_path / "ref.npz"
    stats.save_npz(path, dataset="fmnist-train", note="ünïcode ok")
    with np.load(path, allow_pickle=False) as f:   # plain arrays, no pickle needed
        assert set(f.files) == {"mu", "sigma", "count", "metadata"}
    loaded = FeatureStats.load_npz(path)
    assert loaded.count == 100
    assert loaded.metadata == {"protocol": "p1", "dataset": "fmnist-train", "note": "ünïcode ok"}
    np.testing.assert_allclose(loaded.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(loaded.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    # The sums are rebuilt, so loaded statistics keep streaming correctly.
    loaded.update(y)
    xy = np.concatenate([x, y])
    np.testing.assert_allclose(loaded.cov, np.cov(xy, rowvar=False), rtol=1e-9, atol=1e-12)
    with pytest.raises(TypeError, match="strings"):
        stats.save_npz(tmp_path / "bad.npz", n=3)


def test_all_reduce_is_noop_without_process_group():
    s = FeatureStats().update(np.eye(3))
    assert s.all_reduce() is s and s.count == 3


def _all_reduce_worker(rank: int, world_size: int, init_file: str, result_file: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        x = np.random.default_rng(6).normal(size=(50, 5))
        shard = x[:20] if rank == 0 else x[20:]
        stats = FeatureStats(5).update(shard).all_reduce()
        if rank == 0:
            np.savez(result_file, mean=stats.mean, cov=stats.cov, count=stats.count)
    finally:
        torch.distributed.destroy_process_group()


def test_all_reduce_sums_across_two_processes(tmp_path):
    torch.multiprocessing.start_processes(
        _all_reduce_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path / "result.npz")),
        nprocs=2,
        start_method="fork",
    )
    x = np.random.default_rng(6).normal(size=(50, 5))
    with np.load(tmp_path / "result.npz") as r:
        assert int(r["count"]) == 50
        np.testing.assert_allclose(r["mean"], x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(r["cov"], np.cov(x, rowvar=False), rtol=1e-10)


class TinyExtractor(nn.Module):
    """A fixed-seed conv + global pool: a cheap stand-in for a real feature network."""

    name = "tiny"
    protocol = "tiny-v1"
    dim = 8

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            self.conv.weight.copy_(torch.randn(8, 1, 3, 3, generator=g))

    def forward(self, x):
        return torch.tanh(self.conv(x)).mean((2, 3))


def test_feature_stats_pipeline_and_protocol_check():
    extractor = TinyExtractor()
    assert isinstance(extractor, FeatureExtractor)
    g = torch.Generator().manual_seed(7)
    x = torch.rand(64, 1, 16, 16, generator=g) * 2 - 1
    stats = feature_stats(extractor, x.split(10))
    assert stats.metadata == {"name": "tiny", "protocol": "tiny-v1"}
    f = extractor(x).detach().double().numpy()
    np.testing.assert_allclose(stats.cov, np.cov(f, rowvar=False), rtol=1e-9, atol=1e-14)
    assert fid_from_stats(stats, stats) == pytest.approx(0.0, abs=1e-10)
    other = FeatureStats(metadata={"protocol": "tiny-v2"}).update(f)
    with pytest.raises(ValueError, match="different feature protocols"):
        fid_from_stats(stats, other)


# ------------------------------------------------------------------------------------------------
# KID


def explicit_unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(a, b) = (a·b/d + 1)³, written out term by term (O(n²) loops)."""
    m, d = x.shape
    k = lambda a, b: (a @ b / d + 1.0) ** 3
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2.0 * xy / (m * m)


def test_kid_matches_explicit_formula_with_one_full_subset():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(25, 7)), rng.normal(loc=0.3, size=(25, 7))
    mean, std = kid(x, y, n_subsets=1, subset_size=1000)   # clipped to 25: all samples
    assert mean == pytest.approx(explicit_unbiased_mmd2(x, y), rel=1e-10)
    assert std == 0.0


def test_kid_matches_torch_fidelity():
    metric_kid = pytest.importorskip("torch_fidelity.metric_kid")
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(120, 10)), rng.normal(loc=0.2, size=(90, 10))
    expected = metric_kid.kid_features_to_metric(
        torch.from_numpy(x), torch.from_numpy(y),
        kid_subsets=7, kid_subset_size=50, rng_seed=123, verbose=False,
    )  # fmt: skip
    mean, std = kid(x, y, n_subsets=7, subset_size=50, seed=123)
    assert mean == pytest.approx(expected[metric_kid.KEY_METRIC_KID_MEAN], rel=1e-10)
    assert std == pytest.approx(expected[metric_kid.KEY_METRIC_KID_STD], rel=1e-10)


def test_kid_of_same_distribution_is_near_zero():
    # Two draws of N(0, I) in 16-d, 1000 each, 20 subsets of 500: over 20 data seeds the estimate
    # had mean 0.0002 and standard deviation 0.0029 (measured), so |KID| < 0.012 is ~4 sd.
    # A mean shift of 0.2 per dimension gives ~0.12.
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(1000, 16)), rng.normal(size=(1000, 16))
    mean, _ = kid(x, y, n_subsets=20, subset_size=500)
    assert abs(mean) < 0.012
    shifted, _ = kid(x, y + 0.2, n_subsets=20, subset_size=500)
    assert shifted > 0.06
    small = {"n_subsets": 3, "subset_size": 100, "seed": 1}
    assert kid(x, y, **small) == kid(x, y, **small)   # seeded: reproducible


# ------------------------------------------------------------------------------------------------
# Precision and recall


def brute_force_precision_recall(real, fake, k):
    def radii(a):
        d = np.linalg.norm(a[:, None] - a[None], axis=-1)
        return np.sort(d, axis=1)[:, k]   # column 0 is the point itself

    def coverage(q, p, r):
        d = np.linalg.norm(q[:, None] - p[None], axis=-1)
        return np.mean((d <= r[None]).any(axis=1))

    return coverage(fake, real, radii(real)), coverage(real, fake, radii(fake))


def test_precision_recall_matches_brute_force_and_torch_fidelity():
    rng = np.random.default_rng(11)
    real = rng.normal(size=(150, 4))
    fake = rng.normal(scale=0.5, size=(120, 4))   # a collapsed generator: precise, low recall
    precision, recall = precision_recall(real, fake, k=3, block=37)
    expected = brute_force_precision_recall(real, fake, 3)
    assert (precision, recall) == pytest.approx(expected, abs=1e-12)
    assert precision > 0.9 and recall < 0.8
    metric_prc = pytest.importorskip("torch_fidelity.metric_prc")
    tf = metric_prc.prc_features_to_metric(
        torch.from_numpy(fake), torch.from_numpy(real),
        prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=False, verbose=False,
    )  # fmt: skip
    assert precision == pytest.approx(tf["precision"], abs=1e-6)   # its mean is float32
    assert recall == pytest.approx(tf["recall"], abs=1e-6)


# ------------------------------------------------------------------------------------------------
# Inception features (torch-fidelity's real architecture, random local weights)


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory) -> Path:
    """torch-fidelity's Inception skeleton with random weights, saved as a local state dict.

    The constructor always loads weights, so the URL loader and ``load_state_dict`` are patched
    out while the skeleton is built."""
    tfi = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: {})
        mp.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None)
        torch.manual_seed(0)
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], verbose=False)
    path = tmp_path_factory.mktemp("inception") / "weights-inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


def test_to_uint8_protocol():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 1.5, -2.0])
    assert to_uint8(x).tolist() == [0, 0, 128, 191, 255, 255, 0]


def test_inception_features_offline_from_local_weights(inception_weights, monkeypatch):
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(inception_weights))   # the env-var route
    extractor = InceptionFeatures(batch_size=2)
    g = torch.Generator().manual_seed(12)
    gray = torch.rand(2, 1, 32, 32, generator=g) * 2 - 1
    features_gray = extractor(gray)
    features_rgb = extractor(gray.expand(-1, 3, -1, -1).contiguous())   # the same 2 as RGB
    for features in (features_gray, features_rgb):
        assert features.shape == (2, 2048) and features.dtype == torch.float32
        assert torch.isfinite(features).all() and features.abs().sum() > 0
    # Grayscale is replicated to RGB, so both give the same features.
    torch.testing.assert_close(features_gray, features_rgb)
    with pytest.raises(ValueError, match="channels"):
        extractor(torch.zeros(1, 2, 8, 8))


def test_inception_features_without_weights_offline_raises_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("torch_fidelity")
    attempts = []

    def blocked(*args, **kwargs):
        attempts.append(args)
        raise OSError("network blocked by test")

    monkeypatch.setattr(socket.socket, "connect", blocked)
    monkeypatch.setattr(socket, "getaddrinfo", blocked)
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))   # empty torch.hub cache
    with pytest.raises(RuntimeError, match=INCEPTION_WEIGHTS_ENV) as info:
        InceptionFeatures()
    message = str(info.value)
    assert "weights_path=" in message and "weights-inception-2015-12-05-6726825d.pth" in message
    assert attempts, "the download should have been tried (and blocked)"
    assert not list(tmp_path.rglob("*.pth")), "nothing may have been downloaded"
    with pytest.raises(FileNotFoundError):
        InceptionFeatures(weights_path=tmp_path / "missing.pth")


# ------------------------------------------------------------------------------------------------
# Fashion-MNIST classifier features

fmnist_available = pytest.mark.fmnist  # skipped without the files, failed under CFEBM_REQUIRE_DATA=1


@pytest.fixture(scope="module")
def fmnist_test_subset():
    x, y = load_fashion_mnist("test")
    return x[::5], y[::5]   # 2000 images, 200 per class


@fmnist_available
def test_fmnist_loader_layout():
    raw = read_idx(Path(FMNIST_DEFAULT_ROOT) / "t10k-images-idx3-ubyte.gz")
    x, y = load_fashion_mnist("test")
    assert raw.shape == (10000, 28, 28) and x.shape == (10000, 1, 32, 32) and y.shape == (10000,)
    assert (x[:, :, :2] == -1).all() and (x[:, :, :, -2:] == -1).all()   # zero padding
    torch.testing.assert_close(to_uint8(x[:, 0, 2:30, 2:30]), torch.from_numpy(raw.copy()))
    assert torch.bincount(y).tolist() == [1000] * 10


@fmnist_available
def test_fmnist_classifier_accuracy_and_features(fmnist_test_subset):
    x, y = fmnist_test_subset
    extractor = FMNISTFeatures()
    assert isinstance(extractor, FeatureExtractor)
    accuracy = (extractor.predict_classes(x) == y).double().mean().item()
    assert accuracy >= 0.90  # the full split's figure is recomputed in test_fmnist_features.py
    assert extractor.metadata["architecture"] == "fmnist-cnn-v1"
    assert extractor.metadata["recipe"]["epochs"] > 0
    features = extractor(x[:500])
    assert features.shape == (500, 128) and torch.isfinite(features).all()
    # Real vs real (disjoint halves) is far closer than real vs pixel-shuffled images.
    real_a, real_b = FeatureStats().update(features[:250]), FeatureStats().update(features[250:])
    perm = torch.randperm(32 * 32, generator=torch.Generator().manual_seed(13))
    shuffled = x[:250].flatten(1)[:, perm].view(-1, 1, 32, 32)
    fake = FeatureStats().update(extractor(shuffled))
    assert 5 * fid_from_stats(real_a, real_b) < fid_from_stats(real_a, fake)


def test_fmnist_features_reject_other_layouts():
    if not FMNIST_WEIGHTS.is_file():
        pytest.skip("committed classifier weights missing")
    extractor = FMNISTFeatures()
    for bad in (torch.zeros(2, 1, 16, 16), torch.zeros(2, 3, 32, 32), torch.zeros(2, 32, 32),
                torch.zeros(2, 1, 32, 32, dtype=torch.uint8)):
        with pytest.raises(ValueError, match=r"\(N, 1, 32, 32\)"):
            extractor(bad)


def test_classifier_file_round_trip_and_architecture_check(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = FMNISTClassifier().eval()
    save_classifier(net, tmp_path / "c.safetensors", {"seed": 0})
    extractor = FMNISTFeatures(tmp_path / "c.safetensors")
    assert extractor.metadata == {"seed": 0, "architecture": "fmnist-cnn-v1"}
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    torch.testing.assert_close(extractor(x), net.features(x), rtol=0, atol=0)
    assert extractor(x[:0]).shape == (0, 128)
    save_file(net.state_dict(), str(tmp_path / "other.safetensors"), metadata={"cfebm": "{}"})
    with pytest.raises(ValueError, match="architecture"):
        FMNISTFeatures(tmp_path / "other.safetensors")


def test_class_coverage():
    uniform = class_coverage(torch.arange(10).repeat(7))
    assert uniform["entropy"] == pytest.approx(math.log(10), rel=1e-12)
    assert uniform["n_covered"] == 10
    assert uniform["n_present"] == 10
    one_class = class_coverage(torch.full((50,), 3))
    assert one_class["entropy"] == 0.0 and one_class["n_present"] == 1
    assert one_class["n_covered"] == 0   # frequency 1.0 is far outside [0.05, 0.15]
    assert one_class["frequencies"][3] == 1.0
    # Two classes at 50% each: entropy log 2, and 0.5 > 1.5/10 so neither counts as covered.
    two = class_coverage(torch.tensor([0, 1] * 10))
    assert two["entropy"] == pytest.approx(math.log(2)) and two["n_covered"] == 0
    # Frequencies 0.05 and 0.15 are exactly on the ±50% bounds and count; 0.04 and 0.16 do not.
    edge = torch.tensor([0] * 5 + [1] * 15 + [2] * 4 + [3] * 16 + [4] * 60)
    assert class_coverage(edge)["n_covered"] == 2
    with pytest.raises(ValueError):
        class_coverage(torch.tensor([10]))
