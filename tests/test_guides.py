"""Steered sampling (issue 39): guides add energies, and the chains sample the sum.

On Gaussian energies everything is closed form. A quadratic E(x) = ½(x − m)ᵀP(x − m) plus a
guide ½(x − g)ᵀQ(x − g) is the quadratic of precision P + Q and mean (P + Q)⁻¹(Pm + Qg): a
product guide adds Q = λP_B, a negation Q = −λP_B (proper while P − λP_B stays positive
definite), a reference Q = λI. The chains are unadjusted Langevin, x ← x − h∇E + √(2h)ε, whose
stationary law on a quadratic is known exactly too: mean m, covariance
V·diag(1 / (p_i(1 − h·p_i/2)))·Vᵀ for the eigenpairs (p_i, V) of the precision (solve
Σ = (I − hP)Σ(I − hP) + 2hI). So the only error left is Monte Carlo, and the tolerances are
multiples of the standard errors.
"""

import hashlib
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import gaussian_energy
from PIL import Image

from cfebm import guides
from cfebm.cli import main
from cfebm.data import to_uint8
from cfebm.data.readers import CLASS_NAMES
from cfebm.sampling import downsample, langevin, steered, upsample
from cfebm.trained import load

SIDE = 2  # 2×2 one-channel images: a 4-dimensional Gaussian


def quadratic(precision: torch.Tensor, mean: torch.Tensor):
    """E(x) = ½(x − m)ᵀP(x − m) on (N, 1, 2, 2) images, as a model-like object for guides."""
    def energy(x):
        d = x.flatten(1) - mean
        return 0.5 * ((d @ precision) * d).sum(1)
    return SimpleNamespace(energy=energy, resolution=SIDE, channels=1, source="")


def random_precision(g: torch.Generator, low: float, high: float) -> torch.Tensor:
    """A symmetric 4×4 precision with eigenvalues drawn from [low, high] and random axes."""
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    eig = low + (high - low) * torch.rand(4, generator=g, dtype=torch.float64)
    return (q * eig) @ q.T


def ula_covariance(precision: torch.Tensor, h: float) -> torch.Tensor:
    p, v = torch.linalg.eigh(precision)
    return (v / (p * (1 - h * p / 2))) @ v.T


G = torch.Generator().manual_seed(0)
P_A, P_B = random_precision(G, 2.0, 6.0), random_precision(G, 0.5, 1.5)
M_A = torch.randn(4, generator=G, dtype=torch.float64) * 0.3
M_B = M_A + torch.tensor([0.8, -0.8, 0.8, -0.8], dtype=torch.float64)  # B's mean well away
REF = M_A - torch.tensor([0.5, 0.5, -0.5, -0.5], dtype=torch.float64)


def expected(kind: str, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The guide's (Q, g) in closed form: the quadratic it adds to E_A."""
    if kind == "product":
        return weight * P_B, M_B
    if kind == "negation":
        return -weight * P_B, M_B
    return weight * torch.eye(4, dtype=torch.float64), REF


def make_guide(kind: str, weight: float) -> guides.Guide:
    b = quadratic(P_B.float(), M_B.float())
    if kind == "product":
        return guides.product(b, weight)
    if kind == "negation":
        return guides.negation(b, weight)
    return guides.reference(REF.float().reshape(1, SIDE, SIDE), weight)


@pytest.mark.parametrize("kind, weight", [("product", 1.0), ("product", 2.5),
                                          ("negation", 1.0), ("reference", 4.0)])
def test_a_guided_gaussian_chain_samples_the_closed_form_sum(kind, weight):
    q, g = expected(kind, weight)
    precision = P_A + q
    # proper: P_A's eigenvalues lie in [2, 6] and P_B's in [0.5, 1.5], so P_A − P_B ≥ 0.5
    assert torch.linalg.eigvalsh(precision).min() >= 0.5
    mean = torch.linalg.solve(precision, P_A @ M_A + q @ g)
    # the start's pull on the mean decays as (1 − h·p_min)^T ≤ 0.99^700 < 1e-3, about 0.1 of a
    # standard error below; n chains make the Monte Carlo error the only one
    h, n, steps = 0.02, 4_000, 700
    cov = ula_covariance(precision, h)
    energy = steered(quadratic(P_A.float(), M_A.float()).energy,
                     guides.summed(make_guide(kind, weight)))
    x0 = torch.rand(n, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(1)) * 2 - 1
    x = langevin(energy, x0, steps, h, math.sqrt(2 * h), clamp=None,
                 generator=torch.Generator().manual_seed(2)).flatten(1).double()
    # Monte Carlo standard errors of the mean and of the covariance entries over n chains
    se_mean = (cov.diagonal() / n).sqrt()
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None] + cov**2) / n).sqrt()
    assert ((x.mean(0) - mean).abs() < 4.5 * se_mean).all(), (x.mean(0), mean)
    assert ((x.T.cov() - cov).abs() < 4.5 * se_cov).all(), (x.T.cov(), cov)
    # and it is not E_A's own law: the guide moved the mean by many standard errors
    assert ((mean - M_A).abs() / se_mean).max() > 15


def test_at_a_coarse_scale_the_guide_sees_the_state_resized_to_its_own_resolution():
    """A 4×4 reference seen by a 2×2 chain is λ/2‖up(x) − r‖², whose gradient is 4λ(x −
    pool(r)) (each coarse pixel is four fine ones); a 2×2 one seen by a 4×4 chain is
    λ/2‖pool(x) − r‖², whose gradient is λ/4·up(pool(x) − r)."""
    g = torch.Generator().manual_seed(3)
    ref, weight = torch.rand(1, 4, 4, generator=g) * 2 - 1, 1.5
    coarse = (torch.rand(5, 1, 2, 2, generator=g) * 2 - 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(guides.reference(ref, weight)(coarse).sum(), coarse)
    torch.testing.assert_close(grad, 4 * weight * (coarse - downsample(ref[None], 2)))
    small = ref[:, :2, :2]
    fine = (torch.rand(5, 1, 4, 4, generator=g) * 2 - 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(guides.reference(small, weight)(fine).sum(), fine)
    torch.testing.assert_close(grad, weight / 4 * upsample(downsample(fine, 2) - small[None]))


def test_a_guide_of_weight_zero_gives_the_unguided_chains_bit_for_bit(tiny_checkpoint):
    model = load(tiny_checkpoint)
    net, _ = guides.load_classifier()
    zero = [guides.classifier(net, 7, 0.0), guides.product(model, 0.0),
            guides.reference(torch.zeros(1, 16, 16), 0.0)]
    for options in ({}, {"cascade": True}, {"start": torch.zeros(3, 1, 16, 16), "steps": 3}):
        n = None if "start" in options else 6
        plain = model.sample(n, seed=4, **options)
        assert torch.equal(model.sample(n, seed=4, guide=zero, **options), plain)
        assert not torch.equal(model.sample(n, seed=4, guide=guides.product(model, 5.0),
                                            **options), plain)  # a weight that does steer


def test_the_classifier_guide_raises_the_asked_class_probability(tiny_checkpoint):
    """The tiny model's chains (16², synthetic data) steered toward each of two classes: the
    guide classifier's p(class | x) of the samples rises far above the unguided chains'."""
    model = load(tiny_checkpoint)
    net, _ = guides.load_classifier()

    def p(x, k):
        with torch.no_grad():
            return net(upsample(x, 2)).softmax(1)[:, k].mean().item()

    plain = model.sample(10, seed=5, steps=12)
    for k in (1, 7):   # trouser, sneaker
        steered_x = model.sample(10, seed=5, steps=12, guide=guides.classifier(net, k, 3.0))
        assert p(steered_x, k) > max(0.5, 2 * p(plain, k)), (p(steered_x, k), p(plain, k))


@pytest.mark.parametrize("name, index", [("sneaker", 7), ("Ankle boot", 9), ("ankle-boot", 9),
                                         ("t-shirt", 0), ("T-shirt/top", 0), ("top", 0),
                                         ("BAG", 8), ("3", 3)])
def test_class_names_come_from_the_datasets_class_list(name, index):
    assert guides.class_index(name) == index
    assert guides.class_index(CLASS_NAMES[index]) == index


def test_an_unknown_class_is_one_line_listing_the_names(tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(guides.GuideError, match="unknown class 'sneakr'; choose one of "
                       "t-shirt-top, trouser, .*, ankle-boot$"):
        guides.class_index("sneakr")
    for name in ("10", "", "sneakers"):
        with pytest.raises(guides.GuideError):
            guides.class_index(name)
    assert main(["sample", tiny_checkpoint, "--class", "sneakr", "--n", "2",
                 "--out", str(tmp_path / "a.png"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown class 'sneakr'" in err and "sneaker" in err
    assert not (tmp_path / "a.png").exists()


def test_models_of_another_resolution_or_channels_are_refused_in_one_line(tiny_checkpoint,
                                                                          tmp_path, capsys):
    model = load(tiny_checkpoint)
    other = SimpleNamespace(energy=gaussian_energy, resolution=32, channels=1, source="b.pt")
    with pytest.raises(guides.GuideError, match="models combine at one resolution"):
        model.sample(2, guide=guides.product(other))
    rgb = SimpleNamespace(energy=gaussian_energy, resolution=16, channels=3, source="c.pt")
    with pytest.raises(guides.GuideError, match="3-channel images, the model has 1"):
        model.sample(2, guide=guides.negation(rgb))
    assert main(["sample", tiny_checkpoint, "--and", "fmnist32-2h", "--n", "2",
                 "--out", str(tmp_path / "a.png"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "models combine at one resolution" in err


def test_the_cli_steers_like_the_library(tiny_checkpoint, tmp_path, capsys):
    """--class / --guidance, --and and --not write what the library's guides give (8-bit PNGs of
    the same chains: equal to the rounding of the library's samples)."""
    model, net = load(tiny_checkpoint), guides.load_classifier()[0]
    cases = {"class": (["--class", "trouser", "--guidance", "2", "--candidates", "1"],
                       guides.classifier(net, 1, 2.0)),
             "and": (["--and", tiny_checkpoint], guides.product(model)),
             "not": (["--not", tiny_checkpoint, "--not-weight", "0.3"],
                     guides.exclusion(model, model, 0.3))}
    for name, (flags, guide) in cases.items():
        each = tmp_path / name
        assert main(["sample", tiny_checkpoint, "--n", "3", "--steps", "4", "--seed", "6",
                     "--out", str(tmp_path / f"{name}.png"), "--each", str(each),
                     "--no-progress", *flags]) == 0
        assert guide.name in capsys.readouterr().out
        x = model.sample(3, steps=4, seed=6, guide=guide)
        written = np.stack([np.array(Image.open(f)) for f in sorted(each.glob("*.png"))])
        assert torch.equal(torch.from_numpy(written), to_uint8(x)[:, 0])


def test_the_guide_classifiers_card_states_its_file():
    """The card's size, sha256 and clean validation accuracy are the committed file's, and the
    file records that it never trained on the validation split."""
    path = guides.GUIDE_WEIGHTS
    card = path.with_suffix(".md").read_text()
    blob = path.read_bytes()
    assert hashlib.sha256(blob).hexdigest() in card
    assert f"{len(blob):,} bytes" in card and len(blob) < 1_000_000
    _, info = guides.load_classifier()
    assert f"**{100 * info['validation_accuracy']['clean']:.1f}%**" in card
    assert "minus the last 5000" in info["recipe"]["data"]


def gaussian_1d(mean: float, sd: float, shift: float = 0.0):
    """E(x) = (x − m)²/(2s²) + log(s√(2π)) + shift on (N, 1, 1, 1) one-pixel images: the
    normalised N(m, s²) energy (log Z = −shift), with an exact sampler standing in for chains."""
    def energy(x):
        log_z = math.log(sd * math.sqrt(2 * math.pi))
        return (x.flatten(1)[:, 0] - mean) ** 2 / (2 * sd**2) + log_z + shift

    def sample(n, seed=0):
        return mean + sd * torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(seed))

    return SimpleNamespace(energy=energy, sample=sample, resolution=1, channels=1, source="")


def test_the_exclusion_samples_p_a_times_p_of_a_to_the_lambda_and_the_negation_runs_away():
    """A = N(0, 1), B = N(1, 0.5²), both normalised (c = 0): the chains of E_A +
    3·softplus(E_A − E_B) sample p_A(x)·P(A | x)³, whose mean and variance come from quadrature
    on a fine grid. The plain negation E_A − 3·E_B is concave (1 − 3·4 < 0): its chains run off."""
    a, b = gaussian_1d(0.0, 1.0), gaussian_1d(1.0, 0.5)
    grid = torch.linspace(-10, 10, 200_001, dtype=torch.float64).reshape(-1, 1, 1, 1)
    log_p = -a.energy(grid) - 3 * torch.nn.functional.softplus(a.energy(grid) - b.energy(grid))
    w = torch.softmax(log_p, 0)
    x_grid = grid.flatten()
    mean = (w * x_grid).sum()
    var = (w * (x_grid - mean) ** 2).sum()
    h, n, steps = 0.01, 4_000, 1_500
    x0 = torch.zeros(n, 1, 1, 1)
    x = langevin(steered(a.energy, guides.summed(guides.exclusion(a, b, 3.0, offset=0.0))), x0,
                 steps, h, math.sqrt(2 * h), clamp=None,
                 generator=torch.Generator().manual_seed(4)).flatten().double()
    se = (var / n).sqrt()
    assert abs(x.mean() - mean) < 4.5 * se + 0.01, (x.mean(), mean)
    assert abs(x.var() - var) < 4.5 * var * math.sqrt(2 / n) + 0.02 * var, (x.var(), var)
    assert mean < -0.2                            # pushed away from B's side of A
    away = langevin(steered(a.energy, guides.summed(guides.negation(b, 3.0))), x0, 200, h,
                    math.sqrt(2 * h), clamp=None, generator=torch.Generator().manual_seed(4))
    assert not torch.isfinite(away).all() or away.abs().median() > 100


def test_the_energy_offset_recovers_the_gap_of_the_normalisers():
    """Two N(·, 1) energies shifted by 5 and −2 (log Z = −5, 2): log Z_B − log Z_A = 7, and the
    median energies of each model's own samples differ by exactly that."""
    a, b = gaussian_1d(0.0, 1.0, shift=5.0), gaussian_1d(3.0, 1.0, shift=-2.0)
    assert guides.energy_offset(a, b, chains=501, seed=3) == pytest.approx(7.0, abs=1e-4)
    guide = guides.exclusion(a, b, 2.0)
    x = torch.tensor([-1.0, 0.5, 4.0]).reshape(3, 1, 1, 1)
    expected = 2.0 * torch.nn.functional.softplus(a.energy(x) - b.energy(x) - 7.0)
    torch.testing.assert_close(guide(x), expected.float(), atol=1e-4, rtol=1e-4)
