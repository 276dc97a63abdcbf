"""Tests of cfebm.metrics.evaluate and the fid-ref / eval commands: reference statistics and their
protocol checks, the metrics on real data against itself, nearest neighbours, an end-to-end
evaluation of a tiny checkpoint, and the in-training evaluation with its best checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from conftest import require_fashion_mnist
from PIL import Image

from cfebm.chains import sample_negatives
from cfebm.cli import main
from cfebm.config import ConfigError, DataConfig, apply_overrides, load_preset
from cfebm.data import load_images, to_float
from cfebm.files import config_of, read
from cfebm.metrics import FeatureStats, FMNISTFeatures, kid
from cfebm.metrics.evaluate import (
    Resized,
    at_resolution,
    evaluate_samples,
    make_extractor,
    nearest_neighbours,
)
from cfebm.metrics.reference import image_batches, load_reference
from cfebm.model import frozen
from cfebm.train.evaluation import EVAL_SEED_OFFSET, TrainingEval, best_fid, features_for
from cfebm.train.loop import run_training
from cfebm.train.step import new_state

# The tiny preset (8 -> 16 px, 384 images) on the first 256 Fashion-MNIST images of each split.
TINY_FMNIST = ['data.dataset="fashion_mnist"', "data.limit=256"]


def _skip_without_fashion_mnist() -> None:
    require_fashion_mnist()  # skips, or fails under CFEBM_REQUIRE_DATA=1


@pytest.fixture(scope="module")
def fmnist_run(tmp_path_factory):
    _skip_without_fashion_mnist()
    cfg = apply_overrides(load_preset("tiny"), TINY_FMNIST + [
        "eval.every=128", "eval.n=32", "train.ema_decay=0.9"])
    run_dir = tmp_path_factory.mktemp("fmnist_run")
    run_training(cfg, run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="module")
def ref_16(tmp_path_factory, fmnist_run):
    path = tmp_path_factory.mktemp("ref") / "test16.npz"
    assert main(["fid-ref", "--split", "test", "--resolution", "16", "--out", str(path),
                 "--set", "data.limit=256", "--no-progress"]) == 0
    return path


# ------------------------------------------------------------------------------------------------
# Reference statistics


def test_fid_ref_records_dataset_split_count_and_protocol(ref_16, capsys):
    ref = load_reference(ref_16)
    meta = ref.metadata
    assert {k: meta[k] for k in ("dataset", "split", "count", "resolution", "image_channels",
                                 "name")} == {
        "dataset": "fashion_mnist", "split": "test", "count": "256", "resolution": "16",
        "image_channels": "1", "name": "fmnist-classifier-v1"}
    assert meta["protocol"].endswith("cfebm: 16x16 nearest-upsampled to 32")
    assert ref.stats.count == 256 and ref.features.shape == (256, 128)
    # The stored μ is the mean of the stored features.
    np.testing.assert_allclose(ref.stats.mean, ref.features.double().mean(0).numpy(), atol=1e-5)


def test_resized_extractor_upsamples_by_nearest_neighbour():
    extractor = FMNISTFeatures()
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    up = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    resized = at_resolution(extractor, 16)
    assert isinstance(resized, Resized) and at_resolution(extractor, 32) is extractor
    torch.testing.assert_close(resized(x), extractor(up), rtol=0, atol=0)
    assert resized.protocol != extractor.protocol and resized.name == extractor.name


@pytest.mark.parametrize("change, message", [
    ({"resolution": "32"}, "resolution '32'"),
    ({"dataset": "cifar10"}, "dataset 'cifar10'"),
    ({"protocol": "some other resize"}, "protocol 'some other resize'"),
])
def test_eval_refuses_a_reference_of_another_protocol(fmnist_run, ref_16, tmp_path, change,
                                                      message, capsys):
    ref = load_reference(ref_16)
    bad = tmp_path / "bad.npz"
    ref.stats.save_npz(bad, **change)
    ckpt = fmnist_run / "checkpoints" / "latest.pt"
    assert main(["eval", str(ckpt), "--n", "8", "--ref", str(bad), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cfebm: error:") and message in err and "\n" not in err


@pytest.mark.parametrize("argv, message", [
    (["fid-ref", "--dataset", "cifar10", "--out", "x.npz"], "fmnist features are for"),
    (["fid-ref", "--out", "x.txt", "--set", "data.limit=8"], ".npz"),
    (["fid-ref", "--out", "x.npz", "--set", "model.channels=3"], "data.KEY=VALUE"),
])
def test_fid_ref_bad_input_gives_one_clear_error(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cfebm: error:") and message in err and "\n" not in err


def test_real_test_split_against_its_own_reference_is_zero(ref_16):
    """The path eval takes (features batch by batch, FID/KID/P&R against a file made by fid-ref)
    gives 0 and 1 where the samples are the reference images themselves."""
    ref = load_reference(ref_16)
    images = load_images(DataConfig(limit=256), split="test", resolution=16, image_channels=1)
    extractor = at_resolution(make_extractor("fmnist", dataset="fashion_mnist", channels=1), 16)
    result, kept = evaluate_samples(image_batches(images, 100), ref, extractor,
                                    classifier=extractor, kid_subsets=5, keep=3)
    assert result.n == 256 and abs(result.fid) < 1e-6
    # With both sets identical (not independent) the unbiased MMD² is negative, not 0; it must
    # equal KID of the stored features with themselves, i.e. the features are the same.
    assert result.kid < 0 and result.kid == pytest.approx(
        kid(ref.features, ref.features, n_subsets=5)[0], rel=1e-9)
    assert result.precision == 1.0 and result.recall == 1.0
    assert result.coverage["n_present"] == 10
    torch.testing.assert_close(kept, to_float(images.get_batch(torch.arange(3))))


# ------------------------------------------------------------------------------------------------
# Nearest neighbours


def test_nearest_neighbour_of_a_training_image_is_itself():
    images = load_images(DataConfig(dataset="fake", limit=300), split="train", resolution=16,
                         image_channels=3)
    queries = torch.tensor([5, 17, 299])
    x = to_float(images.get_batch(queries))
    distances, indices = nearest_neighbours(x, images, k=4, batch_size=64)
    assert distances.shape == indices.shape == (3, 4)
    assert (distances[:, 0] == 0).all() and indices[:, 0].tolist() == queries.tolist()
    assert (distances[:, 1:] > 0).all() and (distances.diff(dim=1) >= 0).all()
    # Against brute force over the whole set at once.
    d_all = (x.flatten(1)[:, None] - to_float(images.images).flatten(1)[None]).norm(dim=-1)
    torch.testing.assert_close(distances, d_all.topk(4, largest=False).values)


# ------------------------------------------------------------------------------------------------
# cfebm eval end to end


def test_eval_prints_metrics_and_writes_json_and_neighbour_grid(fmnist_run, tmp_path, capsys):
    out_json, grid = tmp_path / "eval.json", tmp_path / "nn.png"
    assert main(["eval", str(fmnist_run / "checkpoints" / "latest.pt"), "--n", "64",
                 "--features", "fmnist", "--batch-size", "32", "--kid-subsets", "10",
                 "--nn-samples", "4", "--nn-k", "3", "--nn-out", str(grid),
                 "--json", str(out_json), "--no-progress"]) == 0
    out = capsys.readouterr().out
    for name in ("FID", "KID", "precision", "recall", "coverage", "neighbours"):
        assert f"\n{name} " in out, name
    report = json.loads(out_json.read_text())
    assert report["n"] == 64 and report["schedule"] == [[16, 5]]
    assert report["reference"]["count"] == "256" and report["reference"]["split"] == "test"
    assert math.isfinite(report["fid"]) and report["fid"] > 0 and report["kid_std"] >= 0
    assert 0 <= report["precision"] <= 1 and sum(report["coverage"]["frequencies"]) == 1
    nn = report["neighbours"]
    assert len(nn["indices"]) == 4 and len(nn["indices"][0]) == 3
    assert all(0 <= i < 256 for row in nn["indices"] for i in row)
    # 4 rows of (sample + 3 neighbours), 16 px cells with 2 px padding, enlarged 4x.
    assert Image.open(grid).size == (4 * (4 * 18 + 2), 4 * (4 * 18 + 2))


def test_eval_with_a_saved_reference_gives_the_same_fid(fmnist_run, ref_16, tmp_path):
    ckpt = str(fmnist_run / "checkpoints" / "latest.pt")
    common = ["--n", "16", "--kid-subsets", "2", "--nn-samples", "0", "--no-progress"]
    saved, a, b = tmp_path / "saved.npz", tmp_path / "a.json", tmp_path / "b.json"
    assert main(["eval", ckpt, *common, "--save-ref", str(saved), "--json", str(a)]) == 0
    assert main(["eval", ckpt, *common, "--ref", str(ref_16), "--json", str(b)]) == 0
    fid_a, fid_b = (json.loads(p.read_text())["fid"] for p in (a, b))
    # The two references' features come from different batchings, and float32 kernels may
    # sum in a batch-dependent order: 1.5e-9 apart on an AVX-512 machine (within 1e-9 on AVX2).
    assert fid_a == pytest.approx(fid_b, rel=1e-7)
    np.testing.assert_allclose(load_reference(saved).stats.mean, load_reference(ref_16).stats.mean,
                               rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# In-training evaluation


def test_training_logs_eval_lines_and_keeps_the_best_checkpoint(fmnist_run):
    rows = [json.loads(line) for line in (fmnist_run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_fid" in r]
    # Every 128 images of 384: at 128 the 16 px block is fading in (β = 0), so only the
    # evaluations at 256 and 384 compete for the best checkpoint.
    assert [(r["n_images"], r["eval_resolution"]) for r in evals] == [(128, 16), (256, 16),
                                                                      (384, 16)]
    assert all(math.isfinite(r["eval_fid"]) and r["eval_kid"] is not None for r in evals)
    # After the first stage the same samples are also scored pooled to the stage before (8²).
    assert [r["eval_beta"] for r in evals] == [0.0, 1.0, 1.0]
    assert all(r["eval_coarse_resolution"] == 8 and math.isfinite(r["eval_fid_coarse"])
               and r["eval_fid_coarse"] != r["eval_fid"] for r in evals)
    assert not evals[0]["eval_best"] and evals[1]["eval_best"]
    best = read(fmnist_run / "checkpoints" / "best.pt")
    candidates = [r for r in evals if r["n_images"] >= 256]
    winner = min(candidates, key=lambda r: r["eval_fid"])
    assert best["eval"]["eval_fid"] == winner["eval_fid"]
    assert best["n_images"] == winner["n_images"]
    # A resumed run compares with it only if it measures the same way (FID depends on n).
    cfg = config_of(best)
    assert best_fid(fmnist_run / "checkpoints" / "best.pt", cfg) == winner["eval_fid"]
    other_n = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, n=64))
    assert best_fid(fmnist_run / "checkpoints" / "best.pt", other_n) == math.inf
    inception = apply_overrides(cfg, ["model.image_channels=3"])  # other features
    assert best_fid(fmnist_run / "checkpoints" / "best.pt", inception) == math.inf
    assert best_fid(fmnist_run / "checkpoints" / "missing.pt", cfg) == math.inf


def test_evaluating_does_not_change_the_training_run(fmnist_run, tmp_path):
    """Evaluations draw from their own generator, so the run is the same with them off."""
    cfg = apply_overrides(load_preset("tiny"), TINY_FMNIST + ["train.ema_decay=0.9"])
    run_training(cfg, tmp_path, progress=False)
    a, b = (read(d / "checkpoints" / "latest.pt") for d in (fmnist_run, tmp_path))
    assert a["n_images"] == b["n_images"] == 384
    for key in ("model", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)


def test_an_evaluation_scores_eval_n_samples_of_the_training_sampler():
    """eval_n = 20 at batch 16: the first 20 chains of two whole batches from the evaluation's
    seed, drawn exactly as training draws its negatives (a compiled run's evaluation goes
    through the compiled energy, whose whole batches meet no new shape)."""
    _skip_without_fashion_mnist()
    cfg = apply_overrides(load_preset("tiny"), TINY_FMNIST + ["eval.every=128",
                                                              "eval.n=20"])
    state = new_state(cfg)
    state.n_images = 160  # mid-fade: Algorithm 1's smooth initialisation and β = 0.5
    evaluator = TrainingEval(cfg, state.device)
    row, _ = evaluator(state)
    generator = torch.Generator().manual_seed(cfg.train.seed + EVAL_SEED_OFFSET)
    with frozen(state.net):
        batches = [sample_negatives(state.net, state.growth, 16, cfg.sampler,
                                    generator=generator) for _ in range(2)]
    samples = torch.cat(batches)[:20]
    assert row["eval_n"] == 20 and row["eval_beta"] == 0.5
    assert row["eval_fid"] == pytest.approx(evaluator.score([samples], 16).fid, rel=1e-6)


def test_resumed_run_keeps_comparing_with_the_stored_best(tmp_path):
    _skip_without_fashion_mnist()
    cfg = apply_overrides(load_preset("tiny"), TINY_FMNIST + [
        "eval.every=128", "eval.n=16"])
    run_training(cfg, tmp_path, stop_at=256, progress=False)
    best = read(tmp_path / "checkpoints" / "best.pt")["eval"]
    assert best["n_images"] == 256
    # Pretend the stored best is unbeatable: the resumed run must not overwrite it.
    ckpt = read(tmp_path / "checkpoints" / "best.pt")
    ckpt["eval"]["eval_fid"] = -1.0
    torch.save(ckpt, tmp_path / "checkpoints" / "best.pt")
    run_training(cfg, tmp_path, resume=True, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["n_images"], r["eval_best"]) for r in rows if "eval_fid" in r]
    assert evals == [(128, False), (256, True), (384, False)]
    assert read(tmp_path / "checkpoints" / "best.pt")["eval"]["eval_fid"] == -1.0


@pytest.mark.parametrize("overrides, message", [
    (["eval.every=-1"], "eval.every must be >= 0"),
    (["eval.every=100", "data.validation=0"], "needs data.validation > 0"),
    (["eval.fid_watch=1.25"], "needs eval.every > 0"),
])
def test_eval_config_is_validated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(load_preset("tiny"), overrides)
    # Off by default, so other datasets need no change.
    assert apply_overrides(load_preset("tiny"), ['data.dataset="cifar10"']).eval.every == 0


@pytest.mark.parametrize("overrides, features", [
    (['data.dataset="fashion_mnist"'], "fmnist"),
    (['data.dataset="fashion_mnist"', "model.image_channels=3"], "inception"),
    (['data.dataset="cifar10"', "model.image_channels=3"], "inception"),
    (['data.dataset="fake"'], "inception"),
])
def test_in_training_evaluation_scores_fmnist_features_only_on_grayscale_fashion_mnist(
        overrides, features):
    assert features_for(apply_overrides(load_preset("tiny"), overrides)) == features


def test_stats_without_features_give_fid_but_no_kid(ref_16, tmp_path):
    ref = load_reference(ref_16)
    plain = tmp_path / "plain.npz"
    FeatureStats(metadata=ref.metadata).merge(ref.stats).save_npz(plain)
    loaded = load_reference(plain)
    assert loaded.features is None
    extractor = at_resolution(FMNISTFeatures(), 16)
    result, _ = evaluate_samples([to_float(torch.zeros(4, 1, 16, 16, dtype=torch.uint8))],
                                 loaded, extractor)
    assert math.isfinite(result.fid) and result.kid is None and result.precision is None


# ------------------------------------------------------------------------------------------------
# Validation decides, test reports


def test_in_training_evaluation_scores_against_the_validation_split():
    """The reference of in-training evaluation is the held-out validation images (the last
    5,000 training files), feature for feature, and not the test split."""
    _skip_without_fashion_mnist()
    cfg = apply_overrides(load_preset("tiny"), TINY_FMNIST + ["eval.every=128"])
    evaluator = TrainingEval(cfg, torch.device("cpu"))
    ref, extractor = evaluator.reference(16), at_resolution(evaluator.extractor, 16)

    def mean_features(split: str) -> torch.Tensor:
        images = load_images(cfg.data, split=split, resolution=16, image_channels=1)
        with torch.no_grad():
            return torch.cat([extractor(x) for x in image_batches(images, 500)]).double().mean(0)

    assert ref.metadata["split"] == "validation" and ref.stats.count == 5000
    held_out = mean_features("validation")
    assert torch.allclose(torch.as_tensor(ref.stats.mean).double(), held_out, atol=1e-4)
    assert not torch.allclose(held_out, mean_features("test"), atol=1e-3)


def test_a_run_that_evaluates_and_rolls_back_never_reads_the_test_split(tmp_path, monkeypatch):
    """Every file a run with in-training evaluation, the FID watch and a best checkpoint reads
    is a training file: the test split stays for reports."""
    _skip_without_fashion_mnist()
    from cfebm.data import readers

    read, real = [], readers.fashion_mnist

    def recording(root, download, split, *args, **kwargs):
        read.append(split)
        return real(root, download, split, *args, **kwargs)

    monkeypatch.setattr(readers, "fashion_mnist", recording)
    cfg = apply_overrides(load_preset("tiny"), TINY_FMNIST + [
        "eval.every=64", "eval.n=16", "eval.fid_watch=1.01"])
    run_training(cfg, tmp_path, stop_at=320, progress=False)
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
    assert read and set(read) == {"train"}


def test_require_validation_refuses_a_test_split_reference():
    from cfebm.metrics.reference import EvalError, reference_of
    from cfebm.train.evaluation import require_validation

    batches = [torch.rand(8, 1, 16, 16) * 2 - 1]
    extractor = at_resolution(FMNISTFeatures(), 16)
    require_validation(reference_of(batches, extractor, split="validation"))
    with pytest.raises(EvalError, match="test split is for reports only"):
        require_validation(reference_of(batches, extractor, split="test"))


def test_evaluating_needs_a_validation_split():
    with pytest.raises(ConfigError, match="needs data.validation > 0"):
        apply_overrides(load_preset("tiny"), TINY_FMNIST + ["eval.every=64",
                                                            "data.validation=0"])


def test_eval_reports_on_test_and_chooses_on_validation(fmnist_run, tmp_path):
    ckpt = fmnist_run / "checkpoints" / "latest.pt"
    for split, count in (("test", 256), ("validation", 5000)):
        out = tmp_path / f"{split}.json"
        args = [str(ckpt), "--n", "32", "--features", "fmnist", "--nn-samples", "0",
                "--json", str(out), "--no-progress"]
        main(["eval", *args, *(["--split", split] if split != "test" else [])])
        reference = json.loads(out.read_text())["reference"]
        assert (reference["split"], reference["count"]) == (split, str(count))
        assert reference["validation"] == "5000"
