"""Annealed importance sampling (Neal 2001): an estimate of log Z for an energy.

For any energy callable ``E(x) -> (N,)`` over ``x`` of shape (N, ...), forward AIS gives a
stochastic lower bound on log Z and reverse AIS an upper bound from exact samples (what the
log-likelihood bounds of ``cfebm.metrics.ais.bounds`` are built from).

**Path.** A tractable, normalised base π₀ = exp(−E₀) and the geometric path of tempered
energies E_β(x) = (1 − β)·E₀(x) + β·E(x), β on a schedule 0 = β₀ < … < β_K = 1 (the bases and
kernels live in ``cfebm.metrics.mcmc``)
(``schedule``: linear, sigmoid or geometric). Bases (``Base``):

- ``"uniform"``: U([−1, 1]ᴰ), E₀ = D·log 2 on the box. Its support is the box, so every
  intermediate distribution and **the target is exp(−E) restricted to [−1, 1]ᴰ**:
  Z = ∫_[−1,1]ᴰ exp(−E(x)) dx, the normaliser of the model on the image domain it was trained
  and sampled on. Proposals are reflected at the walls (HMC's leapfrog with reflection, Neal
  2011 Sec. 5.1; MALA once, its proposal density summed over the mirror images) and whatever
  still lies outside is rejected by the Metropolis test (density 0 there). Nothing is clamped,
  so each transition leaves its π_β exactly invariant; plain rejection without reflection also
  would, but its chains stall against the walls in high dimensions (measured: 40 nats off on a
  100-d Gaussian at K = 300).
- ``"gaussian"``: N(0, σ²I) on ℝᴰ, no box; Z is then ∫_ℝᴰ exp(−E). For an image EBM the energy
  outside the box was never trained and Z may not even be finite: use the uniform base there.

**Transitions.** MALA (``x' = x − h∇E_β(x) + √(2h)·ε``, the house Langevin step with noise
√(2·step)) or HMC (``leapfrog`` steps of size h, unit mass), each with its Metropolis–Hastings
test; ``steps_per_temperature`` of them at each intermediate β. With ``adapt`` (default) a
step size per temperature is tuned first on a pilot run in the same direction, with a random
stream of its own (``tune_step_sizes``: the step is multiplied by exp(rate − target) from each
temperature's acceptance rate, toward ``TARGET_ACCEPTANCE``); the AIS chains then run on that
fixed schedule. Adapting inside the run, from the chains' own acceptances, would make each
kernel depend on the states it moves and void the guarantees below. Reverse chains get their
own pilot, from start states of their own (``pilot_start``; other held-out images): chains
started at data can sit where forward chains never go and need other steps (measured on
the first packaged ``fmnist32``: with the forward pilot's steps the reverse estimate was 144
nats lower at K = 30).

**Estimators** (log-weights in float64, pooled with logsumexp over the M chains). Below,
*stochastic* bound means a bound in expectation over the chains' randomness. A single run can
overshoot, but rarely by much. Ẑ_fwd is unbiased and positive, so by Markov's inequality
P(log Ẑ_fwd > log Z + t) ≤ e^{−t} (Grosse et al. 2015). From exact samples,
P(log Ẑ_rev < log Z − t) ≤ e^{−t} in the same way.

- forward AIS, chains from π₀: E[Ẑ_fwd] = Z for every K and M, given kernels that leave each
  π_β invariant. By Jensen, E[log Ẑ_fwd] ≤ log Z: a *stochastic lower bound on log Z*. Nothing
  else is assumed.
- reverse AIS, chains started at states of law q and annealed back to π₀. The forward path
  density is Z·w_rev times the reverse one, so E[w_rev] = E_g[q/p] / Z, where p = exp(−E)/Z
  and g is the law of the forward chains' end states.
  - Exact samples (q = p): E[w_rev] = 1/Z, and log Ẑ_rev = −log mean(w_rev) is a *stochastic
    upper bound on log Z* (bidirectional Monte Carlo, Grosse et al. 2015, 2016).
  - Any other q: it bounds nothing and can land on either side of log Z. ``tests/test_ais.py``
    measures it below log Z, in closed form at K = 1 and by Monte Carlo with HMC.
  - ``bounds.likelihood_bounds`` starts one reverse chain at each test image, because a
    trained EBM has no exact samples. The result is a heuristic estimate. Its weights are
    unbiased for 1/Z, as from exact samples, when the data are distributed as the model
    (q = p) or when the forward chains reach it (g = p).
  - Du & Mordatch's (2019) code does something else (``openai/ebm_code_release``, ``ais.py``
    at 5c24f8e). It starts the reverse pass at the forward chains' end states (q = g). Those
    are not exact samples either: E_g[g/p] = 1 + χ²(g‖p) ≥ 1. It also prints the mean of the
    per-chain log-weights, not the log of the mean weight.
- standard error of log Ẑ over the chains, by the delta method: se = std(w) / (√M · mean(w)),
  from weights normalised by their maximum. With it comes the effective sample size
  (Σw)² / Σw². Both mean something only when the weights are not heavy-tailed (ESS well
  above 1).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from cfebm.metrics.mcmc import Base, hmc_step, mala_step
from cfebm.sampling import Energy

SCHEDULES = ("linear", "sigmoid", "geometric")
TRANSITIONS = ("mala", "hmc")
TARGET_ACCEPTANCE = {"mala": 0.57, "hmc": 0.65}   # Roberts & Rosenthal; Neal's HMC review


# ------------------------------------------------------------------------------------------------
# Schedules and bases


def schedule(n_temperatures: int, kind: str = "sigmoid", *, sharpness: float = 4.0,
             beta_min: float = 1e-4) -> Tensor:
    """Inverse temperatures β₀ = 0 < β₁ < … < β_K = 1, shape (K + 1,) float64.

    - "linear": evenly spaced.
    - "sigmoid": σ(δ(2k/K − 1)) rescaled to [0, 1], δ = ``sharpness`` (Grosse et al. 2015):
      dense at both ends.
    - "geometric": β₁ … β_K log-spaced from ``beta_min`` to 1 (dense near β = 0, where the
      geometric path changes fastest for a broad base and a peaked target).
    """
    k = n_temperatures
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"the number of temperatures K must be an integer >= 1, got {k!r}")
    if kind == "linear":
        return torch.linspace(0.0, 1.0, k + 1, dtype=torch.float64)
    if kind == "sigmoid":
        s = torch.sigmoid(sharpness * (2 * torch.arange(k + 1, dtype=torch.float64) / k - 1))
        return (s - s[0]) / (s[-1] - s[0])
    if kind == "geometric":
        if not 0 < beta_min < 1:
            raise ValueError(f"beta_min must be in (0, 1), got {beta_min}")
        betas = torch.logspace(math.log10(beta_min), 0.0, k, dtype=torch.float64)
        return torch.cat([torch.zeros(1, dtype=torch.float64), betas])
    raise ValueError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")


# ------------------------------------------------------------------------------------------------
# AIS


@dataclass
class AISResult:
    """One AIS run. ``log_weights`` (M,) float64 are log w (forward) or log w_rev (reverse)."""

    direction: str                 # "forward" or "reverse" (what each bounds: module docstring)
    log_weights: Tensor
    betas: Tensor                  # (K + 1,) float64
    acceptance: Tensor             # (K − 1,) mean acceptance of the transitions at β₁…β_{K−1}
    step_sizes: Tensor             # (K − 1,) the step size used at each of them
    seconds: float
    transition: str = "hmc"
    extra: dict = field(default_factory=dict)

    @property
    def log_z(self) -> float:
        """log Ẑ: logmeanexp(log w) forward, −logmeanexp(log w_rev) reverse."""
        lme = float(torch.logsumexp(self.log_weights, 0) - math.log(len(self.log_weights)))
        return lme if self.direction == "forward" else -lme

    @property
    def log_z_se(self) -> float:
        """Delta-method standard error of log Ẑ: std(w) / (√M · mean(w))."""
        w = (self.log_weights - self.log_weights.max()).exp()
        if len(w) < 2:
            return math.nan
        return float(w.std() / (math.sqrt(len(w)) * w.mean()))

    @property
    def ess(self) -> float:
        """Effective sample size (Σw)² / Σw² of the M chains."""
        w = (self.log_weights - self.log_weights.max()).exp()
        return float(w.sum() ** 2 / w.square().sum())

    def bands(self, n: int = 5) -> list[tuple[float, float, float]]:
        """Mean acceptance over ``n`` consecutive groups of temperatures:
        (β first, β last, rate) each, for tuning the step size."""
        out, k = [], len(self.acceptance)
        for idx in torch.arange(k).tensor_split(min(n, k)):
            if len(idx):
                b = self.betas[1:-1][idx]
                out.append((float(b[0]), float(b[-1]), float(self.acceptance[idx].mean())))
        return out


def ais(energy: Energy, *, betas: Tensor, shape: tuple[int, ...] | None = None,
        n_chains: int = 100, start: Tensor | None = None, base: Base | None = None,
        transition: str = "hmc", step_size: float | Tensor = 0.01, leapfrog: int = 5,
        steps_per_temperature: int = 1, adapt: bool = True, pilot_chains: int = 10,
        pilot_start: Tensor | None = None, batch_size: int = 100, seed: int = 0, device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32, progress: bool = False) -> AISResult:
    """Forward AIS from ``base`` to exp(−energy), or reverse AIS from ``start`` back to it.

    Args:
        energy: E(x), x (N, ...) -> (N,); gradients must flow to x.
        betas: (K + 1,) from 0 to 1 (``schedule``).
        shape: one chain's state shape (D,) or (C, H, W), for forward AIS.
        n_chains: M forward chains.
        start: instead of ``n_chains``, (M, ...) states of the target (samples of it, or
            held-out data) to anneal back to the base: reverse AIS.
        base: π₀ (default: uniform on [−1, 1]ᴰ).
        transition: "mala" or "hmc"; leapfrog: HMC's steps per transition.
        step_size: h, the initial value of the tuning (``adapt``), or a (K − 1,) schedule for
            β₁ … β_{K−1} used as it is (``tune_step_sizes`` makes one).
        steps_per_temperature: transitions at each intermediate β.
        adapt: tune a step size per temperature on ``pilot_chains`` pilot chains first
            (module docstring); ignored when ``step_size`` is a schedule.
        pilot_start: reverse AIS: the pilot's start states (default: the first
            ``pilot_chains`` of ``start``, which then tune the kernels they are moved by).
        batch_size: chains run together; seed: one torch.Generator for the whole run, so the
            result depends on (seed, batch_size, device).
        dtype: of the chain states (float64 in the tests, the model's float32 otherwise).

    Returns an ``AISResult``; ``.log_z`` is the estimate of log Z (module docstring).
    """
    base = base or Base()
    k = len(betas) - 1
    _check(betas, transition, step_size, leapfrog, steps_per_temperature, batch_size)
    reverse = start is not None
    if reverse:
        if not bool(base.inside(start).all()):
            raise ValueError("reverse AIS must start inside the base's support ([-1, 1] for the "
                             "uniform base)")
        n_chains, shape = len(start), tuple(start.shape[1:])
    elif shape is None or n_chains < 1:
        raise ValueError("forward AIS needs a state shape and n_chains >= 1")
    kernel = {"transition": transition, "leapfrog": leapfrog, "n_steps": steps_per_temperature}
    if isinstance(step_size, Tensor):
        steps = step_size.double().cpu()
    elif adapt:
        if reverse and pilot_start is None:
            pilot_start = start[:pilot_chains]
        steps = tune_step_sizes(energy, betas, shape, start=pilot_start if reverse else None,
                                base=base, step_size=step_size, n_chains=pilot_chains,
                                seed=seed, device=device, dtype=dtype, progress=progress,
                                **kernel)
    else:
        steps = torch.full((max(k - 1, 0),), float(step_size), dtype=torch.float64)
    generator = torch.Generator(device=device).manual_seed(seed)
    log_w, acc = [], torch.zeros(max(k - 1, 0), dtype=torch.float64)
    began = time.perf_counter()
    with tqdm(total=n_chains * k, unit="chain·β", disable=not progress, dynamic_ncols=True,
              desc=f"AIS ({'reverse' if reverse else 'forward'})") as bar:
        for b in range(0, n_chains, batch_size):
            size = min(batch_size, n_chains - b)
            x = (start[b:b + size].to(device, dtype) if reverse
                 else base.sample((size, *shape), generator, device, dtype))
            lw, a, _ = _anneal(energy, x, betas, base, reverse, steps, None, generator, bar,
                               **kernel)
            log_w.append(lw.cpu())
            acc += a * size / n_chains
    return AISResult("reverse" if reverse else "forward", torch.cat(log_w), betas, acc, steps,
                     time.perf_counter() - began, transition)


def tune_step_sizes(energy: Energy, betas: Tensor, shape: tuple[int, ...] | None = None, *,
                    start: Tensor | None = None, base: Base | None = None,
                    transition: str = "hmc", step_size: float = 0.01, leapfrog: int = 5,
                    n_steps: int = 1, n_chains: int = 10, seed: int = 0,
                    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                    progress: bool = False) -> Tensor:
    """Step sizes for β₁ … β_{K−1}, (K − 1,) float64, from a pilot run (a random stream of its
    own, discarded): ``n_chains`` forward chains of ``shape``, or reverse chains from
    ``start``. Starting at ``step_size``, the step of each temperature is the one used there
    times exp(acceptance − target)."""
    base = base or Base()
    generator = torch.Generator(device=device).manual_seed(hash((seed, -1)) & (2**62 - 1))
    x = (base.sample((n_chains, *shape), generator, device, dtype) if start is None
         else start.to(device, dtype))
    with tqdm(total=len(x) * (len(betas) - 1), unit="chain·β", disable=not progress,
              dynamic_ncols=True, desc="AIS (tuning step sizes)") as bar:
        return _anneal(energy, x, betas, base, start is not None, None, float(step_size),
                       generator, bar, transition=transition, leapfrog=leapfrog,
                       n_steps=n_steps)[2]


def _check(betas, transition, step_size, leapfrog, steps_per_temperature, batch_size) -> None:
    if betas.ndim != 1 or len(betas) < 2 or betas[0] != 0 or betas[-1] != 1 or bool(
            (betas.diff() < 0).any()):
        raise ValueError("betas must rise from 0 to 1 (use schedule())")
    if transition not in TRANSITIONS:
        raise ValueError(f"unknown transition {transition!r}; choose one of "
                         f"{', '.join(TRANSITIONS)}")
    steps = torch.as_tensor(step_size, dtype=torch.float64)
    if steps.ndim == 1 and len(steps) != len(betas) - 2:
        raise ValueError(f"a step-size schedule needs K − 1 = {len(betas) - 2} values, got "
                         f"{len(steps)}")
    if not bool((steps > 0).all()) or leapfrog < 1 or steps_per_temperature < 1 or (
            batch_size < 1):
        raise ValueError("step sizes must be > 0 and leapfrog, steps_per_temperature and "
                         "batch_size >= 1")


def _anneal(energy, x, betas, base, reverse, steps, tune_from, generator, bar, *, transition,
            leapfrog, n_steps) -> tuple[Tensor, Tensor, Tensor]:
    """One batch through the path: log-weights (B,), per-temperature acceptance, and the step
    sizes: ``steps`` (K − 1,) as given, or tuned on the way from ``tune_from``."""
    k = len(betas) - 1

    def tempered(beta: float) -> Energy:
        return lambda y: (1 - beta) * base.energy(y) + beta * energy(y).double()

    # Forward: weight at β_{i-1} -> β_i, then move at β_i (i = 1..K-1). Reverse runs the same
    # path backwards: weight at β_i -> β_{i-1}, then move at β_{i-1} (Neal 2001, Sec. 6).
    order = range(k, 0, -1) if reverse else range(1, k + 1)
    log_w = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    acc = torch.zeros(max(k - 1, 0), dtype=torch.float64)
    tuned = torch.zeros_like(acc)
    target, current = TARGET_ACCEPTANCE[transition], tune_from
    for i in order:
        with torch.no_grad():
            e, e0 = energy(x).double(), base.energy(x)
        d_beta = float(betas[i] - betas[i - 1])
        log_w += (d_beta if reverse else -d_beta) * (e - e0)
        move = i - 1 if reverse else i        # the temperature the next transition targets
        if 1 <= move <= k - 1:
            h = current if steps is None else float(steps[move - 1])
            rate = 0.0
            for _ in range(n_steps):
                if transition == "mala":
                    x, a = mala_step(tempered(float(betas[move])), x, h, base=base,
                                     generator=generator)
                else:
                    x, a = hmc_step(tempered(float(betas[move])), x, h, leapfrog=leapfrog,
                                    base=base, generator=generator)
                rate += float(a.double().mean()) / n_steps
            acc[move - 1] = rate
            if steps is None:
                current = tuned[move - 1] = h * math.exp(rate - target)
        bar.update(len(x))
    return log_w, acc, tuned if steps is None else steps

