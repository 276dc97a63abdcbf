"""Annealed importance sampling (Neal 2001): log Z of an energy and bounds on log-likelihood.

Paper Appendix A.7 / Table 10 reports stochastic lower and upper bounds on the test
log-likelihood of an EBM p(x) = exp(−E(x)) / Z, obtained with Du & Mordatch's (2019) AIS code.
This package does the same for any energy callable ``E(x) -> (N,)`` over ``x`` of shape
(N, ...), one module per concern:

- ``anneal``: the estimator. The path of tempered energies from a base to the model, its
  schedules, the MALA/HMC transitions (kernels in ``cfebm.metrics.mcmc``) and their step sizes,
  forward and reverse AIS (``ais``), and what each log-Z estimate bounds;
- ``bounds``: the test log-likelihood from those estimates (``likelihood_bounds``,
  ``LikelihoodBounds``), what each number bounds and when, standard errors over the test images,
  and the units (nats on several pixel scales, bits per dimension).

The names below come from those two modules.
"""

from cfebm.metrics.ais.anneal import (
    SCHEDULES,
    TARGET_ACCEPTANCE,
    TRANSITIONS,
    AISResult,
    ais,
    schedule,
    tune_step_sizes,
)
from cfebm.metrics.ais.bounds import (
    CLAIMS,
    SCALES,
    LikelihoodBounds,
    bits_per_dim,
    likelihood_bounds,
    rescale_log_likelihood,
)

__all__ = ["CLAIMS", "SCALES", "SCHEDULES", "TARGET_ACCEPTANCE", "TRANSITIONS", "AISResult",
           "LikelihoodBounds", "ais", "bits_per_dim", "likelihood_bounds", "rescale_log_likelihood",
           "schedule", "tune_step_sizes"]
