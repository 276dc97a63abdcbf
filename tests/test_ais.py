"""cfebm.metrics.ais against closed forms: Gaussian and Gaussian-mixture energies whose log Z
is known exactly (box-truncated ones through the normal CDF), the unbiasedness of the AIS
weights, the invariance of the Metropolis kernels, and the units of the log-likelihood.

Tolerances come from 8 seeds of each configuration (the largest |log Ẑ − log Z| seen, about
doubled; the numbers are in each test). Every run is seeded, so the tests are deterministic.
"""

import math

import pytest
import torch

from cfebm.metrics.ais import (
    ais,
    bits_per_dim,
    likelihood_bounds,
    rescale_log_likelihood,
    schedule,
    tune_step_sizes,
)
from cfebm.metrics.mcmc import Base, hmc_step, mala_step

F64 = torch.float64


class Gaussian:
    """exp(−Σ_d (x_d − μ_d)² / 2σ_d²), on ℝᴰ or restricted to [−1, 1]ᴰ (``box``)."""

    def __init__(self, mu, sd, box: bool):
        self.mu, self.sd, self.box = torch.as_tensor(mu, dtype=F64), torch.as_tensor(
            sd, dtype=F64), box
        self.a, self.b = (-1 - self.mu) / self.sd, (1 - self.mu) / self.sd
        self.mass = (torch.special.ndtr(self.b) - torch.special.ndtr(self.a) if box
                     else torch.ones_like(self.mu))

    def energy(self, x):
        return ((x - self.mu) / self.sd).square().sum(1) / 2

    @property
    def log_z(self) -> float:
        return float((self.sd * math.sqrt(2 * math.pi) * self.mass).log().sum())

    def sample(self, n, g):
        """Exact samples, by the inverse CDF of the (truncated) normal."""
        lo = torch.special.ndtr(self.a) if self.box else torch.zeros_like(self.mu)
        u = lo + self.mass * torch.rand(n, len(self.mu), generator=g, dtype=F64)
        return self.mu + self.sd * torch.special.ndtri(u)

    def moments(self):
        """Mean and variance per dimension (of the truncated normal when ``box``)."""
        def phi(t):
            return torch.exp(-t * t / 2) / math.sqrt(2 * math.pi)

        a, b, z = self.a, self.b, self.mass
        r = (phi(a) - phi(b)) / z
        return self.mu + self.sd * r, self.sd ** 2 * (1 + (a * phi(a) - b * phi(b)) / z - r ** 2)


class Mixture:
    """exp(−E) = Σ_k w_k · exp(−Σ_d (x − μ_k)² / 2σ_k²) on [−1, 1]ᴰ: Z = Σ_k w_k Z_k."""

    def __init__(self, weights, parts: list[Gaussian]):
        self.log_w, self.parts = torch.tensor(weights, dtype=F64).log(), parts

    def energy(self, x):
        return -torch.logsumexp(torch.stack([lw - p.energy(x) for lw, p in
                                             zip(self.log_w, self.parts)]), 0)

    @property
    def log_z(self) -> float:
        return float(torch.logsumexp(self.log_w + torch.tensor([p.log_z for p in self.parts]), 0))

    def sample(self, n, g):
        probs = (self.log_w + torch.tensor([p.log_z for p in self.parts]) - self.log_z).exp()
        k = torch.multinomial(probs, n, replacement=True, generator=g)
        return torch.stack([p.sample(n, g) for p in self.parts])[k, torch.arange(n)]


def _diag100() -> Gaussian:
    g = torch.Generator().manual_seed(1)
    mu = 0.3 * torch.rand(100, generator=g, dtype=F64) - 0.15
    return Gaussian(mu, 0.2 + 0.3 * torch.rand(100, generator=g, dtype=F64), box=True)


def _bounds(target, k: int, base: Base, seed: int = 0, m: int = 100):
    """(forward log Ẑ, reverse log Ẑ from exact samples), HMC on the sigmoid schedule."""
    opts = {"betas": schedule(k), "base": base, "step_size": 0.05, "dtype": F64, "batch_size": m}
    d = len(target.parts[0].mu) if isinstance(target, Mixture) else len(target.mu)
    fwd = ais(target.energy, shape=(d,), n_chains=m, seed=seed, **opts)
    start = target.sample(m, torch.Generator().manual_seed(100 + seed))
    rev = ais(target.energy, start=start, seed=seed + 1, **opts)
    return fwd.log_z, rev.log_z


# Largest |error| over 8 seeds (forward, reverse) -> tolerance:
#   iso 2-d, box:                0.05, 0.06 -> 0.12
#   diag 2-d, Gaussian base:     0.10, 0.11 -> 0.2
#   iso 100-d, Gaussian base:    0.52, 0.24 -> 0.8
#   diag 100-d, box (K = 200):   0.30, 0.38 -> 1.0   (log Z = −18.8 after 69.3 nats from 2¹⁰⁰)
#   mixture 2-d, box:            0.11, 0.13 -> 0.25
CASES = {
    "iso-2d-box": (lambda: Gaussian([0.2, -0.1], [0.5, 0.5], box=True), Base(), 100, 0.12),
    "diag-2d-gaussian-base": (lambda: Gaussian([0.3, -0.2], [0.3, 0.6], box=False),
                              Base("gaussian", 1.0), 100, 0.2),
    "iso-100d-gaussian-base": (lambda: Gaussian(torch.zeros(100), torch.full((100,), 0.6),
                                                box=False), Base("gaussian", 0.8), 200, 0.8),
    "diag-100d-box": (_diag100, Base(), 200, 1.0),
    "mixture-2d-box": (lambda: Mixture([0.3, 0.7], [Gaussian([-0.5, -0.5], [0.15, 0.15], True),
                                                    Gaussian([0.5, 0.4], [0.25, 0.25], True)]),
                       Base(), 100, 0.25),
}


@pytest.mark.parametrize("case", list(CASES))
def test_log_z_of_known_energies_is_recovered_from_both_directions(case):
    make, base, k, tol = CASES[case]
    target = make()
    fwd, rev = _bounds(target, k, base)
    assert abs(fwd - target.log_z) < tol, (fwd, target.log_z)
    assert abs(rev - target.log_z) < tol, (rev, target.log_z)


def test_the_bounds_bracket_log_z_and_the_gap_shrinks_as_k_grows():
    """100-d diagonal Gaussian in the box. Over 8 seeds the K = 10 errors were −8.9…−2.3
    (forward) and +3.3…+9.1 (reverse), the mean gaps about 12, 3 and 0.1 at K = 10, 30, 200."""
    target = _diag100()
    gaps = []
    for k in (10, 30, 200):
        fwd, rev = _bounds(target, k, Base())
        if k == 10:
            assert fwd < target.log_z < rev
        gaps.append(rev - fwd)
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[0] > 5 and abs(gaps[2]) < 1.0


def _kl(mean_a, sd_a, mean_b, sd_b) -> float:
    """KL(N(a, sa²) ‖ N(b, sb²)) per dimension."""
    return math.log(sd_b / sd_a) + (sd_a ** 2 + (mean_a - mean_b) ** 2) / (2 * sd_b ** 2) - 0.5


def test_at_one_temperature_each_direction_misses_log_z_by_a_kl_divergence():
    """K = 1 (no transitions): log w = log f(x) − log π₀(x) exactly, so per chain
    E[log w_fwd] = log Z − KL(π₀‖p) (below log Z), reverse from exact samples
    E[−log w_rev] = log Z + KL(p‖π₀) (above), and reverse from any q
    E[−log w_rev] = log Z + KL(q‖π₀) − KL(q‖p), which is *below* log Z when q is nearer the base
    than the model: chains from points that are not model samples bound nothing. Here p is
    N(0, 0.3²) in 5 dimensions, π₀ = N(0, 1), q = p shifted by 2σ per dimension: closed forms
    19.3 nats below log Z, 3.7 above and 5.4 below. Tolerance: 4 standard errors of the chain
    mean."""
    d, sd, shift, n = 5, 0.3, 0.6, 20_000
    target = Gaussian(torch.zeros(d), torch.full((d,), sd), box=False)
    opts = {"betas": schedule(1), "base": Base("gaussian", 1.0), "dtype": F64, "batch_size": n}
    g = torch.Generator().manual_seed(0)
    fwd = ais(target.energy, shape=(d,), n_chains=n, seed=0, **opts).log_weights
    exact = -ais(target.energy, start=target.sample(n, g), **opts).log_weights
    shifted = -ais(target.energy, start=target.sample(n, g) + shift, **opts).log_weights
    expected = {"forward": (fwd, target.log_z - d * _kl(0, 1, 0, sd)),
                "reverse, exact samples": (exact, target.log_z + d * _kl(0, sd, 0, 1)),
                "reverse, shifted": (shifted, target.log_z + d * (_kl(shift, sd, 0, 1)
                                                                  - _kl(shift, sd, 0, sd)))}
    for name, (values, closed_form) in expected.items():
        se = float(values.std()) / math.sqrt(n)
        assert abs(float(values.mean()) - closed_form) < 4 * se, (name, values.mean(), closed_form)
    assert expected["forward"][1] < target.log_z < expected["reverse, exact samples"][1]
    assert expected["reverse, shifted"][1] < target.log_z - 5


def test_reverse_chains_bound_log_z_from_above_only_from_exact_samples():
    """The library's estimators (logmeanexp over M = 20 chains) with real HMC moves at K = 5,
    100 independent estimates each: their mean is a stochastic bound on log Z, forward below,
    reverse from exact samples above; reverse from samples shifted by 3σ per dimension (data
    that are not the model's) is far *below*, so it is no bound. Tolerance: 4 standard errors
    of the mean of the 100 estimates (3 seeds measured, in nats from log Z: forward −2.2 to
    −2.9, s.e. 0.24; reverse +1.3 to +1.7, s.e. 0.1; shifted −3.6 to −3.8, s.e. 0.13)."""
    d, sd, m, reps = 10, 0.3, 20, 100
    target = Gaussian(torch.zeros(d), torch.full((d,), sd), box=False)
    opts = {"betas": schedule(5), "base": Base("gaussian", 1.0), "step_size": 0.05,
            "dtype": F64, "batch_size": m * reps}
    g = torch.Generator().manual_seed(1)

    def estimates(run) -> torch.Tensor:
        """(reps,) log Ẑ, one from each group of m chains, as ``AISResult.log_z`` pools them."""
        lme = torch.logsumexp(run.log_weights.view(reps, m), 1) - math.log(m)
        return lme if run.direction == "forward" else -lme

    runs = {"forward": ais(target.energy, shape=(d,), n_chains=m * reps, seed=2, **opts),
            "exact": ais(target.energy, start=target.sample(m * reps, g), seed=3, **opts),
            "shifted": ais(target.energy, start=target.sample(m * reps, g) + 3 * sd, seed=4,
                           **opts)}
    error = {}
    for name, run in runs.items():
        e = estimates(run) - target.log_z
        error[name] = (float(e.mean()), float(e.std()) / math.sqrt(reps))
    (fwd, fwd_se), (exact, exact_se), (shifted, shifted_se) = error.values()
    assert fwd + 4 * fwd_se < 0, error
    assert exact - 4 * exact_se > 0, error
    assert shifted + 4 * shifted_se < 0, error


def test_standard_errors_over_the_images_match_the_spread_of_independent_test_sets():
    """60 independent test sets of N = 50 images (p = N(0, 0.5²) in 10 dimensions, images from
    it shifted by σ/2) with their own chains: the standard deviation of each reported number
    over the test sets is its true standard error. The reported ones must match it within
    the sampling error of a standard deviation from 60 values (about 9%; allowed 0.7–1.4×;
    200 test sets measured 1.07, 1.07 and 0.99). Paired image by image, the gap's is less
    than half of what two independent numbers with the bounds' errors would give, as −E(x_i),
    the same in both, cancels (measured: 0.16 against 0.50)."""
    d, sd, n, reps = 10, 0.5, 50, 60
    target = Gaussian(torch.zeros(d), torch.full((d,), sd), box=False)
    rows = []
    for r in range(reps):
        x = target.sample(n, torch.Generator().manual_seed(r)) + sd / 2
        b = likelihood_bounds(target.energy, x, n_chains=n, betas=schedule(5, "linear"),
                              base=Base("gaussian", 0.6), transition="mala", step_size=0.3,
                              adapt=False, dtype=F64, seed=1000 + r)
        rows.append([b.upper, b.lower, b.gap, b.upper_se, b.lower_se, b.gap_se])
    rows = torch.tensor(rows, dtype=F64)
    spread, reported = rows[:, :3].std(0), rows[:, 3:].mean(0)
    assert torch.all((0.7 < spread / reported) & (spread / reported < 1.4)), (spread, reported)
    assert reported[2] < reported[:2].square().sum().sqrt() / 2


@pytest.mark.parametrize("transition", ["hmc", "mala"])
@pytest.mark.parametrize("base", ["uniform", "gaussian"])
def test_the_weights_are_unbiased_with_only_four_temperatures(transition, base):
    """E[w] = Z and E[w_rev] = 1/Z for any K, so a 1-d problem at K = 4 with 20,000 chains
    must land within 4 standard errors (8 seeds: at most 2.2). A weight taken at the wrong
    temperature, or a kernel not leaving its β invariant, shows up here and not at large K."""
    target = Gaussian([0.4], [0.5], box=base == "uniform")
    opts = {"betas": schedule(4, "linear"), "base": Base(base, 1.0), "transition": transition,
            "step_size": 0.3, "adapt": False, "dtype": F64, "batch_size": 20_000}
    fwd = ais(target.energy, shape=(1,), n_chains=20_000, seed=0, **opts)
    start = target.sample(20_000, torch.Generator().manual_seed(5))
    rev = ais(target.energy, start=start, seed=1, **opts)
    assert abs(fwd.log_z - target.log_z) < 4 * fwd.log_z_se
    assert abs(rev.log_z - target.log_z) < 4 * rev.log_z_se
    assert fwd.log_z_se < 0.01 and rev.log_z_se < 0.02


@pytest.mark.parametrize("transition", ["hmc", "mala"])
def test_the_metropolis_kernels_leave_a_truncated_gaussian_invariant(transition):
    """From exact samples of a normal truncated to the box (one dimension close to a wall, so
    reflections happen), ten steps keep the exact mean and variance. At step 0.2 on σ = 0.3 an
    unadjusted Langevin chain diverges (its variance σ²/(1 − h/2σ²) has no fixed point)."""
    target = Gaussian([0.8, -0.3], [0.5, 0.3], box=True)
    g = torch.Generator().manual_seed(0)
    x = target.sample(20_000, g)
    for _ in range(10):
        if transition == "mala":
            x, accepted = mala_step(target.energy, x, 0.2, base=Base(), generator=g)
        else:
            x, accepted = hmc_step(target.energy, x, 0.3, leapfrog=5, base=Base(), generator=g)
    mean, var = target.moments()
    assert 0.3 < accepted.double().mean() < 0.95
    assert (x.abs() <= 1).all()
    assert torch.all((x.mean(0) - mean).abs() < 4 * (var / len(x)).sqrt())
    assert torch.all((x.var(0) / var - 1).abs() < 0.05)


def test_a_constant_energy_gives_the_uniform_density_exactly():
    """E ≡ 0 on the box: Z = 2ᴰ, every weight is 2ᴰ, and the likelihood of any image in
    [−1, 1]ᴰ is −D·log 2 nats, 0 on [0, 1] and exactly 8 bits per dimension."""
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bounds = likelihood_bounds(lambda y: 0 * y.flatten(1).sum(1), x, n_chains=8,
                               betas=schedule(5), step_size=0.1)
    d = 16
    assert torch.allclose(bounds.forward.log_weights, torch.tensor(d * math.log(2), dtype=F64))
    assert bounds.reverse.log_z == pytest.approx(d * math.log(2))
    assert bounds.upper == pytest.approx(-d * math.log(2)) and bounds.lower == bounds.upper
    s = bounds.summary()
    assert s["upper"]["nats_[0,1]"] == pytest.approx(0.0, abs=1e-9)
    assert s["lower"]["bits_per_dim"] == pytest.approx(8.0)
    # Every image has the same energy and every chain the same weight: no error anywhere.
    assert s["gap"]["nats"] == 0 and s["gap"]["se_nats"] == 0
    assert s["upper"]["se_nats"] == 0 and s["lower"]["se_nats"] == 0


def test_scale_conventions():
    # A density on y = (x + 1)·s is p(x)/sᴰ: [0, 1] is s = 1/2, [0, 255] s = 127.5.
    assert rescale_log_likelihood(-10.0, 3, "[0,1]") == pytest.approx(-10 + 3 * math.log(2))
    assert rescale_log_likelihood(-10.0, 3, "[0,255]") == pytest.approx(-10 - 3 * math.log(127.5))
    assert bits_per_dim(0.0, 5) == pytest.approx(7.0)        # log₂ 128: a unit density on [−1, 1]
    with pytest.raises(ValueError, match="unknown scale"):
        rescale_log_likelihood(0.0, 3, "[0,2]")


def test_schedules_rise_from_zero_to_one_and_bad_inputs_raise():
    for kind in ("linear", "sigmoid", "geometric"):
        b = schedule(50, kind)
        assert len(b) == 51 and b[0] == 0 and b[-1] == 1 and bool((b.diff() > 0).all())
    assert schedule(50, "geometric")[1] == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule(10, "cosine")
    with pytest.raises(ValueError, match="K must be"):
        schedule(0)
    with pytest.raises(ValueError, match="inside the base's support"):
        ais(lambda y: y.sum(1), betas=schedule(3), start=torch.full((2, 3), 1.5))
    with pytest.raises(ValueError, match="unknown transition"):
        ais(lambda y: y.sum(1), betas=schedule(3), shape=(3,), transition="gibbs")


@pytest.mark.parametrize("transition", ["hmc", "mala"])
def test_the_pilot_run_tunes_the_acceptance_rate_and_the_schedule_is_reused(transition):
    """From a step 100 times too small, the pilot brings the AIS chains' acceptance near the
    target (8 seeds: mean acceptance 0.69–0.76 HMC, 0.57–0.63 MALA); a given schedule is used
    as it is."""
    target = _diag100()
    betas = schedule(50)
    run = ais(target.energy, betas=betas, shape=(100,), n_chains=50, transition=transition,
              step_size=1e-4, dtype=F64)
    goal = {"hmc": 0.65, "mala": 0.57}[transition]
    assert abs(float(run.acceptance[10:].mean()) - goal) < 0.15
    assert run.step_sizes[10:].min() > 1e-3    # tenfold the start at least
    again = ais(target.energy, betas=betas, shape=(100,), n_chains=50, transition=transition,
                step_size=run.step_sizes, dtype=F64)
    assert torch.equal(again.step_sizes, run.step_sizes)
    assert torch.equal(again.log_weights, run.log_weights)


def test_reverse_chains_are_tuned_on_their_own_pilot_start():
    target = Gaussian([0.2, -0.1], [0.5, 0.5], box=True)
    g = torch.Generator().manual_seed(3)
    start, other = target.sample(20, g), target.sample(10, g)
    betas = schedule(20)
    run = ais(target.energy, betas=betas, start=start, pilot_start=other, dtype=F64)
    tuned = tune_step_sizes(target.energy, betas, start=other, step_size=0.01, dtype=F64)
    assert torch.equal(run.step_sizes, tuned)
    default = ais(target.energy, betas=betas, start=start, dtype=F64)
    assert torch.equal(default.step_sizes, tune_step_sizes(target.energy, betas,
                                                           start=start[:10], dtype=F64))
