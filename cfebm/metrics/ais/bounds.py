"""Bounds on the test log-likelihood of an EBM from AIS's log-Z estimates (``anneal``), with
standard errors over the test images, in nats on several pixel scales and in bits per dimension.

**Log-likelihood.** log p(x) = −E(x) − log Z, so the log-Z bounds (``anneal``) turn around. The
test-image mean LL_N = mean(−E(x_i)) − log Z of the N images scored gets two numbers
(``likelihood_bounds``):

- upper = mean(−E(x_i)) − log Ẑ_fwd: a stochastic **upper bound** on LL_N. Nothing is
  assumed about the images.
- lower = mean(−E(x_i)) − log Ẑ_rev, with the reverse chains started at those same images.
  It is a stochastic **lower bound** on LL_N only if the images are exact, independent samples
  of the model. For real test data it is the reverse *estimate*, not a bound.
- gap = upper − lower = log Ẑ_rev − log Ẑ_fwd. With exact samples of the model,
  E[lower] ≤ E[LL_N] ≤ E[upper], so the gap bounds how far either number is from LL_N on
  average. With data it certifies nothing: a small gap says that the two directions agree.

**Standard errors over the test images** (``LikelihoodBounds``). Each image comes with its
own reverse chain, so (x_i, chain i) is one sample. The standard error is then the spread of
each image's contribution, linearised (the delta method), divided by √N:

- upper: −E(x_i), combined in quadrature with the forward chains' se;
- lower: −E(x_i) + w_i/mean(w);
- gap: the paired difference of the two, in which −E(x_i) cancels. Only w_i/mean(w) is left,
  plus the forward se, so the gap's se is far smaller than either bound's. The bounds' se is
  how well N images pin down the mean over the whole test distribution. The gap's se is how
  well they pin down the distance between the two AIS directions.

The Markov and Jensen statements (``anneal``) concern the chains, for these N images. The
standard errors concern the images.

**Scaling convention.** Densities are of images in [−1, 1] (the library's convention). The
same images in [0, 1] have log-likelihood higher by D·log 2, in [0, 255] lower by D·log 127.5,
in [0, 256) (uniform dequantisation, x = (u8 + u)/128 − 1, u ~ U(0, 1)) lower by D·log 128.
Bits per dimension are reported on the 256-level scale: bpd = −(LL − D·log 128) / (D·log 2),
the discrete-data convention of density models (``bits_per_dim``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from cfebm.metrics.ais.anneal import AISResult, ais
from cfebm.sampling import Energy

SCALES = {"[-1,1]": 1.0, "[0,1]": 0.5, "[0,255]": 127.5, "[0,256)": 128.0}


def rescale_log_likelihood(ll: float, dims: int, to: str = "[0,1]") -> float:
    """The log-likelihood of images in [−1, 1] re-expressed for the same images on another
    scale (``SCALES``): a density on x/s·… changes by −D·log(s), so ll + D·log(1/s·…)."""
    if to not in SCALES:
        raise ValueError(f"unknown scale {to!r}; choose one of {', '.join(SCALES)}")
    return ll - dims * math.log(SCALES[to])


def bits_per_dim(ll: float, dims: int) -> float:
    """Bits per dimension on the 256-level scale [0, 256) of uniformly dequantised 8-bit data,
    from a log-likelihood (nats) of images in [−1, 1]."""
    return -rescale_log_likelihood(ll, dims, "[0,256)") / (dims * math.log(2))


# What each number of ``LikelihoodBounds.summary`` is, in the report itself (module docstring).
CLAIMS = {
    "upper": "mean(-E(x_i)) - log Z_fwd: a stochastic upper bound on the mean log-likelihood of "
             "the N images (expectation over the forward chains; no assumption on the images)",
    "lower": "mean(-E(x_i)) - log Z_rev, reverse chains started at the N images: a stochastic "
             "lower bound only if the images were exact samples of the model; for real test "
             "data an estimate, not a bound",
    "gap": "upper - lower = log Z_rev - log Z_fwd; se of the per-image paired difference (the "
           "-E(x_i) term, shared by both, cancels) and of the forward chains",
}


@dataclass
class LikelihoodBounds:
    """The forward upper bound and the reverse estimate of the mean log-likelihood of N test
    images (nats per image, images in [−1, 1]), with standard errors over the images (module
    docstring: what each bounds, and when)."""

    neg_energy: Tensor           # (N,) float64: −E(x_i) of each test image
    forward: AISResult
    reverse: AISResult | None    # one chain per image, started at x_i, in the same order
    dims: int

    @property
    def mean_neg_energy(self) -> float:
        return float(self.neg_energy.mean())

    @property
    def mean_neg_energy_se(self) -> float:
        """Standard error of mean(−E(x_i)) over the N images."""
        return _se(self.neg_energy)

    @property
    def upper(self) -> float:
        """mean(−E) − log Ẑ_fwd: a stochastic upper bound on the N images' mean log-likelihood
        (forward AIS under-estimates log Z in expectation), whatever the images."""
        return self.mean_neg_energy - self.forward.log_z

    @property
    def upper_se(self) -> float:
        """Over the images (−E(x_i)) and the forward chains (delta method), in quadrature."""
        return math.hypot(self.mean_neg_energy_se, self.forward.log_z_se)

    @property
    def lower(self) -> float:
        """mean(−E) − log Ẑ_rev, the reverse chains started at the images: a stochastic lower
        bound only if the images were exact samples of the model, otherwise an estimate."""
        return math.nan if self.reverse is None else self.mean_neg_energy - self.reverse.log_z

    @property
    def lower_se(self) -> float:
        """Delta method over the N (image, reverse chain) pairs: the spread of −E(x_i) + w_i/w̄,
        the linearisation of mean(−E) + log mean(w) in image i."""
        if self.reverse is None:
            return math.nan
        return _se(self.neg_energy + self._relative_reverse_weights())

    @property
    def gap(self) -> float:
        """upper − lower = log Ẑ_rev − log Ẑ_fwd (−E(x_i) cancels)."""
        return self.upper - self.lower

    @property
    def gap_se(self) -> float:
        """Paired image by image: upper_i − lower_i leaves only −w_i/w̄, whose spread over the
        images is the reverse log Ẑ's delta-method se; plus the forward chains' se."""
        if self.reverse is None:
            return math.nan
        return math.hypot(self.reverse.log_z_se, self.forward.log_z_se)

    def _relative_reverse_weights(self) -> Tensor:
        """w_i / mean(w) of the reverse chains, (N,) float64."""
        lw = self.reverse.log_weights
        w = (lw - lw.max()).exp()
        return w / w.mean()

    def summary(self) -> dict:
        """Both numbers in nats (on three scales) and bits/dim, each with its standard error
        over the images and what it bounds (``CLAIMS``); the gap and its paired standard error;
        the log-Z estimates."""
        out = {"dims": self.dims, "n_images": len(self.neg_energy),
               "mean_neg_energy": self.mean_neg_energy,
               "mean_neg_energy_se": self.mean_neg_energy_se}
        for name, run in (("forward", self.forward), ("reverse", self.reverse)):
            if run is not None:
                out[name] = {"log_z": run.log_z, "log_z_se": run.log_z_se, "ess": run.ess,
                             "chains": len(run.log_weights), "seconds": run.seconds,
                             "acceptance_bands": run.bands(),
                             "step_size_range": [float(run.step_sizes.min()),
                                                 float(run.step_sizes.max())]
                             if len(run.step_sizes) else None}
        for name, ll, se in (("upper", self.upper, self.upper_se),
                             ("lower", self.lower, self.lower_se)):
            if math.isnan(ll):
                continue
            # The scales differ by constants: one se (nats) serves all three.
            out[name] = {"nats_[-1,1]": ll, "se_nats": se,
                         "nats_[0,1]": rescale_log_likelihood(ll, self.dims, "[0,1]"),
                         "nats_[0,256)": rescale_log_likelihood(ll, self.dims, "[0,256)"),
                         "bits_per_dim": bits_per_dim(ll, self.dims),
                         "se_bits_per_dim": se / (self.dims * math.log(2)),
                         "what": CLAIMS[name]}
        if self.reverse is not None:
            out["gap"] = {"nats": self.gap, "se_nats": self.gap_se, "what": CLAIMS["gap"]}
        return out


def _se(values: Tensor) -> float:
    """Standard error of the mean of (N,) values; nan for N < 2."""
    return float(values.std() / math.sqrt(len(values))) if len(values) > 1 else math.nan


def likelihood_bounds(energy: Energy, x_test: Tensor, *, n_chains: int = 100,
                      reverse: bool = True, batch_size: int = 100, x_pilot: Tensor | None = None,
                      **options) -> LikelihoodBounds:
    """Forward AIS (M = ``n_chains`` chains from the base) and reverse AIS from ``x_test``
    (N, ...) in [−1, 1], one chain per image: the stochastic upper bound on the images' mean
    log-likelihood and the reverse estimate (a lower bound only for exact model samples; see
    the module docstring). ``x_pilot``: other held-out images for the reverse pilot run (see
    ``ais``'s ``pilot_start``). ``options`` go to ``ais`` (betas, transition, step_size, seed,
    adapt, pilot_chains, ...)."""
    device = options.get("device", "cpu")
    with torch.no_grad():
        neg_e = torch.cat([-energy(x.to(device)).double().cpu()
                           for x in x_test.split(batch_size)])
    fwd = ais(energy, shape=tuple(x_test.shape[1:]), n_chains=n_chains, batch_size=batch_size,
              **options)
    rev = ais(energy, start=x_test, batch_size=batch_size, pilot_start=x_pilot,
              **options) if reverse else None
    return LikelihoodBounds(neg_e, fwd, rev, x_test[0].numel())
