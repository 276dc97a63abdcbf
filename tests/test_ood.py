"""cfebm.apps.ood and `cfebm ood`: metrics against hand-computed values, set builders, and a
model trained here that ranks uniform noise as out-of-distribution."""

import numpy as np
import pytest
import torch
from PIL import Image

from cfebm.apps.ood import build_set, evaluate_ood, ood_metrics, score
from cfebm.apps.ood_scores import (
    SCORES,
    Detector,
    Gaussian,
    own_set,
    pick_upright_weight,
    upright_weight_aurocs,
)
from cfebm.cli import main
from cfebm.trained import load


@pytest.fixture(scope="module", params=[1, 3], ids=["gray", "rgb"])
def tiny_model(request, tmp_path_factory):
    """The tiny preset's synthetic 16² blobs, gray or CIFAR-shaped RGB, trained for 1,152 images
    with lr 3e-3 and the equalised lr: enough to learn that its images are smooth."""
    run_dir = tmp_path_factory.mktemp("run")
    sets = [f"model.image_channels={request.param}", "growth.lr=[3e-3,3e-3]",
            "growth.stage_images=[384,768]", "model.equalized_lr=true"]
    assert main(["train", "--preset", "tiny", "--run-dir", str(run_dir), "--no-progress",
                 *(a for v in sets for a in ("--set", v))]) == 0
    return load(run_dir / "checkpoints" / "latest.pt")


def test_metrics_match_hand_computed_values():
    # in = [3, 1], out = [2, 0]: 3 of the 4 (in, out) pairs are ordered right -> AUROC 0.75.
    # Ranked 3(in) 2(out) 1(in) 0(out): precision 1 at recall 1/2, 2/3 at recall 1 -> AP 5/6.
    # 95% TPR needs the threshold at 1, above which lies one of the two OOD scores -> FPR 0.5.
    m = ood_metrics(torch.tensor([3.0, 1.0]), torch.tensor([2.0, 0.0]))
    assert m["auroc"] == pytest.approx(0.75)
    assert m["aupr_in"] == pytest.approx(5 / 6) and m["aupr_out"] == pytest.approx(5 / 6)
    assert m["fpr95"] == pytest.approx(0.5)


def test_metrics_with_ties_match_hand_computed_values():
    # in = [4, 2, 2, 1], out = [3, 2, 0]. AUROC counts the 12 (in, out) pairs ranked right, a tie
    # as ½: 4 beats all 3; each 2 loses to 3, ties 2, beats 0 (1.5 each); 1 beats only 0 -> 7/12.
    # AUPR-in, thresholds 4, 3, 2, 1, 0: (TP, FP) = (1,0) (1,1) (3,2) (4,2) (4,3); recall steps
    # ¼ at precision 1, ½ at 3/5, ¼ at 4/6 -> ¼ + 3/10 + 1/6 = 43/60.
    # AUPR-out ranks by −score, out positive: thresholds 0, −1, −2, −3, −4 give (TP, FP) = (1,0)
    # (1,1) (2,3) (3,3) (3,4); recall steps ⅓ at 1, ⅓ at 2/5, ⅓ at ½ -> 19/30.
    # FPR95: keeping ≥ 95% of the in scores needs the threshold at 1, with out 3 and 2 above -> ⅔.
    m = ood_metrics(torch.tensor([4.0, 2.0, 2.0, 1.0]), torch.tensor([3.0, 2.0, 0.0]))
    assert m["auroc"] == pytest.approx(7 / 12)
    assert m["aupr_in"] == pytest.approx(43 / 60)
    assert m["aupr_out"] == pytest.approx(19 / 30)
    assert m["fpr95"] == pytest.approx(2 / 3)


def test_auroc_is_the_fraction_of_pairs_ranked_right():
    """Against a direct count over every (in, out) pair, on rounded scores so that ties occur."""
    g = torch.Generator().manual_seed(0)
    s_in = torch.round(torch.randn(60, generator=g) * 2 + 1)
    s_out = torch.round(torch.randn(40, generator=g) * 2)
    diff = s_in[:, None] - s_out[None, :]
    pairs = ((diff > 0).double() + 0.5 * (diff == 0).double()).mean().item()
    assert (diff == 0).any()
    assert ood_metrics(s_in, s_out)["auroc"] == pytest.approx(pairs)


class QuadraticEnergy:
    """E(x) = a/2·‖x‖², whose gradient a·x has norm a·‖x‖: a stand-in for a trained model with
    what ``score`` uses (``check_images``, ``device``, ``energy``)."""

    device = torch.device("cpu")

    def __init__(self, a: float):
        self.a = a

    def check_images(self, x):
        pass

    def energy(self, x):
        return 0.5 * self.a * x.flatten(1).pow(2).sum(dim=1)


def test_scores_on_a_quadratic_energy_match_its_closed_form():
    """Both scores are higher = more in-distribution; the gradient one is +‖∇E‖ (REFERENCE §5.6),
    so on this bowl the steeper, higher-energy images far from 0 score higher by it."""
    # Constant 2×2 gray images of value c: ‖x‖ = 2|c|, E = 1.5·4c² = 6c², ‖∇E‖ = 3·2|c| = 6|c|.
    c = torch.tensor([0.1, -0.5, 1.0])
    x = c[:, None, None, None].expand(3, 1, 2, 2).clone()
    bowl = QuadraticEnergy(3.0)
    torch.testing.assert_close(score(bowl, x, "energy"), torch.tensor([-0.06, -1.5, -6.0]))
    torch.testing.assert_close(score(bowl, x, "grad_norm", batch_size=2),
                               torch.tensor([0.6, 3.0, 6.0]))
    near, far = x[:1], x[1:]
    steep_in = ood_metrics(score(bowl, far, "grad_norm"), score(bowl, near, "grad_norm"))
    assert steep_in["auroc"] == 1.0
    low_in = ood_metrics(score(bowl, near, "energy"), score(bowl, far, "energy"))
    assert low_in["auroc"] == 1.0


def test_identical_scores_give_chance_and_separated_scores_give_one():
    s = torch.randn(200, generator=torch.Generator().manual_seed(0))
    assert ood_metrics(s, s.clone())["auroc"] == pytest.approx(0.5)
    m = ood_metrics(s + 100, s)
    assert m["auroc"] == 1.0 and m["aupr_in"] == 1.0 and m["aupr_out"] == 1.0
    assert m["fpr95"] == 0.0
    assert ood_metrics(s, s + 100)["auroc"] == 0.0


def test_set_builders_give_the_models_shape_and_range(tiny_model):
    c, r = tiny_model.channels, tiny_model.resolution
    for name in ("uniform", "constant", "interp", "digits"):
        s = build_set(name, tiny_model, 20, seed=1)
        assert s.images.shape == (20, c, r, r), name
        assert s.images.min() >= -1 and s.images.max() <= 1, name
        assert torch.equal(s.images, build_set(name, tiny_model, 20, seed=1).images), name
    const = build_set("constant", tiny_model, 20).images
    assert torch.equal(const, const[..., :1, :1].expand_as(const))
    assert len(const.flatten(1).unique(dim=0)) == 20


def test_a_folder_at_another_size_is_converted_and_a_bad_name_refused(tiny_model, tmp_path,
                                                                       capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
            folder / f"{i}.png")
    s = build_set(str(folder), tiny_model, 4)
    assert s.images.shape == (4, tiny_model.channels, 16, 16) and "resized to 16x16" in s.how
    assert main(["ood", tiny_model.source, "--ood", "no_such_set", "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown OOD set 'no_such_set'" in err and err.count("\n") == 1


def test_the_trained_model_ranks_uniform_noise_as_out_of_distribution(tiny_model):
    """By energy (the paper's score). The gradient norm (+‖∇ₓE‖, the authors') is no reliable
    detector here: uniform AUROC 0.68 on the gray model and 0.12–0.13 on the RGB one in our runs
    (2026-12-06), so it is not asserted."""
    report = evaluate_ood(tiny_model, ["uniform"], n=200, kinds=["energy"])
    assert report.metrics["energy"]["uniform"]["auroc"] > 0.95


def test_scores_are_oriented_and_the_gradient_score_is_the_gradient_norm(tiny_model):
    """On a trained network, in batches of 2: −E and the per-image norm of E's input gradient."""
    x = torch.rand(5, tiny_model.channels, 16, 16) * 2 - 1
    torch.testing.assert_close(score(tiny_model, x, "energy"), -tiny_model.energy(x))
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(tiny_model.energy(xg).sum(), xg)
    torch.testing.assert_close(score(tiny_model, x, "grad_norm", batch_size=2),
                               grad.flatten(1).norm(dim=1))


def test_cli_writes_the_table_csv_and_histograms(tiny_model, tmp_path, capsys):
    out = tmp_path / "new" / "ood"          # a folder whose parent does not exist yet
    assert main(["ood", tiny_model.source, "--ood", "uniform", "constant", "interp", "vflip",
                 "invert", "--n", "50", "--out", str(out), "--no-progress", "--score",
                 "all"]) == 0
    printed = capsys.readouterr().out
    assert "| energy |" in printed and "| ratio+features |" in printed and "Average" in printed
    assert "fitted on" in printed and "validation images of fake: held out" in printed
    rows = (out / "ood.csv").read_text().splitlines()
    assert len(rows) == 1 + len(SCORES) * 5 and rows[0].startswith("score,set,auroc")
    for kind in SCORES:
        Image.open(out / f"ood_hist_{kind}.png").verify()


def test_the_default_score_is_the_fitted_ratio_features_and_upright(tiny_model, tmp_path,
                                                                     capsys):
    assert main(["ood", tiny_model.source, "--ood", "uniform", "--n", "20", "--out",
                 str(tmp_path / "o"), "--no-progress"]) == 0
    choice, results = capsys.readouterr().out.split("| score (auroc)")
    assert "upright weight b = " in choice and "| default, b = 1.5 |" in choice
    assert "| ratio+features+upright |" in results and "| energy |" not in results


# ------------------------------------------------------------------------------------------------
# The multi-scale scores (issue 38)


def test_the_gaussian_distance_is_the_mahalanobis_distance_of_its_fit():
    """With many samples Ledoit–Wolf barely shrinks, so the fitted distance of a point is the
    closed-form √((f − μ)ᵀ Σ⁻¹ (f − μ)) of the generating Gaussian, to sampling error."""
    g = torch.Generator().manual_seed(0)
    cov = torch.tensor([[4.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    mean = torch.tensor([1.0, -2.0], dtype=torch.float64)
    chol = torch.linalg.cholesky(cov)
    samples = mean + torch.randn(200_000, 2, generator=g, dtype=torch.float64) @ chol.T
    fit = Gaussian.fit(samples)
    points = torch.tensor([[1.0, -2.0], [3.0, -2.0], [1.0, 0.0], [-1.0, -5.0]],
                          dtype=torch.float64)
    d = points - mean
    exact = torch.einsum("nd,de,ne->n", d, torch.linalg.inv(cov), d).sqrt()
    torch.testing.assert_close(fit.distance(points), exact, atol=0.02, rtol=0.01)


def test_the_ratio_is_the_energy_minus_the_coarse_energy_of_the_pooled_image(tiny_model):
    """−E_16(x) + E_8(avgpool₂ x), with E_8 the same network at 8² (β = 1), per image; the
    features' distance is zero only at the fitted mean and grows away from it."""
    x = torch.rand(6, tiny_model.channels, 16, 16) * 2 - 1
    detector = Detector.fit(tiny_model)
    with torch.no_grad():
        coarse = tiny_model.net(torch.nn.functional.avg_pool2d(x, 2), 1.0)
    torch.testing.assert_close(detector.score(x, "ratio", batch_size=4),
                               -tiny_model.energy(x) + coarse)
    _, features = tiny_model.energy_and_features(x)
    assert features.shape == (6, 4 * tiny_model.cfg.model.channels * 16)
    at_mean = detector.gaussian.distance(detector.gaussian.mean[None])
    assert at_mean.item() == 0.0
    assert (detector.gaussian.distance(features) > 0).all()


def test_standardised_scores_have_unit_spread_on_the_images_that_set_it(tiny_model):
    images = build_set("interp", tiny_model, 40, seed=3).images
    detector = Detector.fit(tiny_model, images)
    held = images[20:]
    z = {}
    for kind in ("ratio", "features", "upright"):
        z[kind] = detector.standard(kind, detector.score(held, kind).double())
        assert abs(z[kind].mean().item()) < 1e-6 and abs(z[kind].std().item() - 1) < 1e-6
    both = z["ratio"] + detector.weight * z["features"]
    torch.testing.assert_close(detector.score(held, "ratio+features"), both.float())
    torch.testing.assert_close(detector.score(held, "ratio+features+upright"),
                               (both + detector.upright_weight * z["upright"]).float())


def test_fitted_scores_refuse_an_unfitted_detector_and_a_model_without_coarser_scale(
        tiny_model):
    x = torch.zeros(2, tiny_model.channels, 16, 16)
    with pytest.raises(ValueError, match="needs a fitted detector"):
        Detector(tiny_model).score(x, "features")
    with pytest.raises(ValueError, match="coarser scales"):
        Detector(tiny_model, coarse=16).score(x, "ratio")


class TopHeavyEnergy(QuadraticEnergy):
    """E(x) = a·(mean of the bottom half − mean of the top half): bright tops are likely."""

    def energy(self, x):
        h = x.shape[-2] // 2
        return self.a * (x[..., h:, :].mean(dim=(1, 2, 3)) - x[..., :h, :].mean(dim=(1, 2, 3)))


def test_the_upright_score_is_the_probability_of_the_image_against_its_flip():
    """2×1 images: top t, bottom b give E = a(b − t), and E(flip) = a(t − b). With a = ln 3 / 4,
    an image (1, −1) has E − E(flip) = −4a = −ln 3, so log p(x)/(p(x) + p(flip x)) =
    −ln(1 + 1/3) = −ln(4/3); its flip scores −ln(1 + 3) = −ln 4; a flat image −ln 2."""
    x = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [0.3, 0.3]]).reshape(3, 1, 2, 1)
    detector = Detector(TopHeavyEnergy(np.log(3) / 4))
    torch.testing.assert_close(detector.score(x, "upright", batch_size=2),
                               torch.tensor([-np.log(4 / 3), -np.log(4), -np.log(2)]).float())
    upright_images = torch.rand(50, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    upright_images[:, :, :2] += 1     # every top brighter than its bottom
    m = ood_metrics(detector.score(upright_images, "upright"),
                    detector.score(upright_images.flip(-2), "upright"))
    assert m["auroc"] == 1.0


def test_zero_weights_leave_the_default_score_ranking_as_the_ratio(tiny_model, tmp_path, capsys):
    """With --weights 0 0 the default is z(ratio), an increasing affine map of the ratio, so
    every AUROC equals the ratio's; a negative weight is refused by argparse's error line."""
    tables = {}
    for kind, extra in (("ratio", []), ("ratio+features+upright", ["--weights", "0", "0"])):
        out = tmp_path / kind
        assert main(["ood", tiny_model.source, "--ood", "interp", "vflip", "--n", "30",
                     "--out", str(out), "--no-progress", "--score", kind, *extra]) == 0
        rows = (out / "ood.csv").read_text().splitlines()[1:]
        tables[kind] = [row.split(",")[1:] for row in rows]
    assert tables["ratio"] == tables["ratio+features+upright"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(["ood", tiny_model.source, "--weights", "-1", "0"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert (err.strip().splitlines()[-1]
            == "cfebm ood: error: argument --weights: must be >= 0, got -1")


class ToyLadder(QuadraticEnergy):
    """A two-scale energy on 2×2 images: the coarse energy a·m² of the image's mean m (the
    background, fond of mid-grey), and the fine energy E_2(x) = a·m² + ‖x − m‖² (the coarse
    energy plus the detail's)."""

    resolution = 2

    def coarse_energy(self, x, resolution):
        assert resolution == 1
        return self.a * x.mean(dim=(1, 2, 3)) ** 2

    def energy(self, x):
        m = x.mean(dim=(1, 2, 3))
        return self.a * m**2 + (x - m[:, None, None, None]).pow(2).sum(dim=(1, 2, 3))

    def energy_and_features(self, x):
        return self.energy(x), x.flatten(1)


def test_the_ratio_discounts_the_coarse_background_with_a_hand_computed_auroc():
    """In: mean 0.5 with columns ±0.1 and ±0.4 (detail 0.04, 0.64). Out: mean 0 with columns
    ±0.3 (detail 0.36), and flat grey 0 (detail 0). With a = 4 the energies are
    in 1.04, 1.64 and out 0.36, 0: −E ranks both "simple" out images above both in images
    (AUROC 0). The ratio −E_2(x) + E_1(pool x) = −detail: in −0.04, −0.64 against out −0.36,
    0, so 1 of the 4 (in, out) pairs is ranked right: AUROC 1/4."""
    def columns(mean, d):
        return torch.tensor([[mean + d, mean - d], [mean + d, mean - d]]).reshape(1, 1, 2, 2)

    x_in = torch.cat([columns(0.5, 0.1), columns(0.5, 0.4)])
    x_out = torch.cat([columns(0.0, 0.3), columns(0.0, 0.0)])
    detector = Detector(ToyLadder(4.0))
    torch.testing.assert_close(detector.score(x_in, "ratio"), torch.tensor([-0.04, -0.64]))
    torch.testing.assert_close(detector.score(x_out, "ratio"), torch.tensor([-0.36, 0.0]))
    assert ood_metrics(detector.score(x_in, "energy"),
                       detector.score(x_out, "energy"))["auroc"] == 0.0
    assert ood_metrics(detector.score(x_in, "ratio"),
                       detector.score(x_out, "ratio"))["auroc"] == pytest.approx(0.25)


# ------------------------------------------------------------------------------------------------
# The upright weight b, chosen per model on validation images (issue 38)


def test_the_upright_weight_aurocs_match_hand_counted_pairs():
    """In: base 1, 2 (upright 0). Upside down: base 1.5, 3 with upright −1, −4, so at b = 0 one
    of the four (in, out) pairs is ranked right (2 > 1.5): 1/4; at b = 1 the out scores are
    0.5, −1 and all four are: 1. Interp: base 0, 1.5 at both b: 3 of 4."""
    inside = {"base": torch.tensor([1.0, 2.0]), "upright": torch.zeros(2),
              "energy": torch.zeros(2)}
    outside = {"vflip": {"base": torch.tensor([1.5, 3.0]), "upright": torch.tensor([-1.0, -4.0]),
                         "energy": torch.zeros(2)},
               "interp": {"base": torch.tensor([0.0, 1.5]), "upright": torch.zeros(2),
                          "energy": torch.zeros(2)}}
    table = upright_weight_aurocs(inside, outside, weights=(0.0, 1.0))
    assert table == {"energy": {"vflip": 0.5, "interp": 0.5},
                     "0.0": {"vflip": 0.25, "interp": 0.75}, "1.0": {"vflip": 1.0, "interp": 0.75}}
    assert pick_upright_weight(table) == 1.0
    # An energy that ranks Interp perfectly (in 0 against out −1): no b keeps up with it, so
    # the b with the best Interp wins, the smaller on the tie.
    for o in outside.values():
        o["energy"] = -torch.ones(2)
    assert pick_upright_weight(upright_weight_aurocs(inside, outside, (0.0, 1.0))) == 0.0


def test_the_pick_trades_no_interp_for_the_easy_sets_and_prefers_the_smaller_b_on_ties():
    table = {"energy": {"vflip": 0.6, "invert": 1.0, "interp": 0.80},
             "0.0": {"vflip": 0.80, "invert": 1.0, "interp": 0.82},
             "0.5": {"vflip": 0.90, "invert": 1.0, "interp": 0.81},
             "1.0": {"vflip": 0.90, "invert": 1.0, "interp": 0.805},
             "1.5": {"vflip": 0.99, "invert": 1.0, "interp": 0.79}}
    assert pick_upright_weight(table) == 0.5      # 1.5 is best on vflip but loses Interp


def test_own_sets_are_the_named_transforms_of_the_images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 2, 4, 4, generator=g) * 2 - 1
    assert torch.equal(own_set("vflip", x, g), x.flip(-2))
    assert torch.equal(own_set("invert", x, g), -x)
    mids = own_set("interp", x, g, n=7)
    pairs = 0.5 * (x[:, None] + x[None])               # (5, 5, C, H, W): every midpoint
    assert mids.shape == (7, 2, 4, 4)
    assert all((pairs == m).flatten(2).all(-1).any() for m in mids)
    constant = own_set("constant", x, g)
    assert (constant == constant[..., :1, :1]).all() and constant.abs().max() <= 1
    with pytest.raises(ValueError, match="unknown set 'hflip'"):
        own_set("hflip", x, g)


class UprightLadder(QuadraticEnergy):
    """4×4 images: E(x) = ½‖x‖² + a·(bottom half's mean − top half's), the coarse energy the
    top-heavy term alone (pooling keeps both halves' means) and sorted pixels as features, so
    the ratio −½‖x‖² and the features cannot tell an image from its flip; only upright can."""

    resolution = 4

    def top_heavy(self, x):
        return self.a * (x[..., 2:, :].mean(dim=(1, 2, 3)) - x[..., :2, :].mean(dim=(1, 2, 3)))

    def coarse_energy(self, x, resolution):
        assert resolution == 2
        return self.top_heavy(x)

    def energy(self, x):
        return 0.5 * x.flatten(1).pow(2).sum(dim=1) + self.top_heavy(x)

    def energy_and_features(self, x):
        return self.energy(x), x.flatten(1).sort(dim=1).values


def test_fit_chooses_an_upright_weight_where_only_the_flip_tells_the_images_apart():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(200, 1, 4, 4, generator=g) - 1
    images[:, :, :2] += 1                              # every top brighter than its bottom
    detector = Detector.fit(UprightLadder(8.0), images)
    assert detector.choice["0.0"]["vflip"] == pytest.approx(0.5, abs=1e-3)   # blind to flips
    assert detector.upright_weight > 0
    assert detector.choice[str(detector.upright_weight)]["vflip"] == 1.0
    assert pick_upright_weight(detector.choice) == detector.upright_weight
    given = Detector.fit(UprightLadder(8.0), images, upright_weight=0.0)
    assert given.upright_weight == 0.0 and given.choice == {}


def test_the_choice_table_is_what_the_detectors_own_scores_give(tiny_model):
    """Each AUROC the fit chose b by is the AUROC of the detector's public default score, at
    that b, of its held-out images against the same set made from them; the report's table
    defaults to AUROC."""
    images = build_set("interp", tiny_model, 60, seed=5).images
    detector = Detector.fit(tiny_model, images)
    held = images[30:]
    g = torch.Generator().manual_seed(0)
    sets = {name: own_set(name, held, g) for name in detector.choice["energy"]}
    for b in ("0.0", "1.5"):
        detector.upright_weight = float(b)
        inside = detector.score(held)
        for name, x in sets.items():
            auroc = ood_metrics(inside, detector.score(x))["auroc"]
            # the score is float32, the choice's parts float64: a rounding tie or two of 900
            assert auroc == pytest.approx(detector.choice[b][name], abs=0.005), (b, name)
    report = evaluate_ood(tiny_model, ["uniform"], n=10, kinds=("energy",))
    assert report.table() == report.table("auroc")


def test_the_histograms_show_every_set_beside_the_in_distribution_as_densities(tiny_model):
    """One panel per set in one row, each holding two histograms of unit area (densities, so
    sets of different sizes compare), labelled by the in-distribution set and the OOD set."""
    import matplotlib.pyplot as plt

    report = evaluate_ood(tiny_model, ["uniform", "vflip", "constant"], n=12, kinds=("energy",))
    fig = report.histogram_figure("energy")
    panels = fig.axes
    assert len(panels) == 3
    assert len({round(ax.get_position().y0, 6) for ax in panels}) == 1     # one row
    for ax, s in zip(panels, report.sets):
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == [report.in_set.name, s.name]
        for container in ax.containers:
            area = sum(bar.get_height() * bar.get_width() for bar in container)
            assert area == pytest.approx(1.0, rel=1e-6)
    plt.close(fig)
