"""Telling a diverging run from a healthy one, early enough to roll it back.

Short-run EBM training fails in one characteristic way: the energy of the samples runs away
from the energy of the data, and the contrastive loss mean E(data) − mean E(samples) grows by
orders of magnitude over a few hundred iterations. An absolute limit on |loss|
(``MAX_ABS_LOSS``) catches it only once it is far gone, after checkpoints may have been
written from the blown-up model. ``LossWatch`` compares the loss with its own recent past
instead: the median |loss| of the last ``WINDOW`` iterations against the median of the
``HISTORY`` before them. A median needs most of the window high, so one wild iteration (a loss
of 23 among losses of 0.1 happens in healthy runs) is not a divergence; a blow-up, which grows
for hundreds of iterations, is. The ratio is scale-free (the loss's typical size grows several
times over from stage to stage, most of it through each fade, where healthy runs reach ratios
of about 10), and ``SPIKE_FLOOR`` keeps tiny losses, whose ratios are noisy, from counting.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

WINDOW = 25     # iterations in the recent median |loss|
HISTORY = 200   # iterations before them in the reference median |loss|
SPIKE_FLOOR = 1.0   # a recent median |loss| at or below this is never a spike
MAX_ABS_LOSS = 1e4  # |loss| above this (or NaN) is a divergence, whatever came before


class LossWatch:
    """Flags a recent median |loss| above ``factor`` × the median |loss| before it (and above
    ``SPIKE_FLOOR``). It judges only once it has seen ``WINDOW + HISTORY`` iterations, so the
    first 225 iterations of a run rely on ``MAX_ABS_LOSS`` alone. ``factor`` 0 turns it off
    (``run.spike_factor``).

    ``peak`` is the largest ratio seen since the last ``pop_peak()``: the logged margin.
    """

    def __init__(self, factor: float, history: list[float] | None = None):
        self.factor = factor
        self.losses: deque[float] = deque(history or (), maxlen=WINDOW + HISTORY)
        self.peak = 0.0

    def update(self, loss: float) -> str | None:
        """Record one iteration's loss; a sentence saying why it is a spike, or None."""
        self.losses.append(abs(loss))
        if self.factor <= 0 or len(self.losses) < WINDOW + HISTORY:
            return None
        values = list(self.losses)
        reference = statistics.median(values[:HISTORY])
        recent = statistics.median(values[HISTORY:])
        ratio = recent / reference if reference > 0 else math.inf
        self.peak = max(self.peak, ratio)
        if recent > SPIKE_FLOOR and ratio > self.factor:
            return (f"median |loss| of the last {WINDOW} iterations {recent:.3g} is {ratio:.3g}x "
                    f"the median {reference:.3g} of the {HISTORY} before")
        return None

    def pop_peak(self) -> float:
        peak, self.peak = self.peak, 0.0
        return peak

    def state(self) -> list[float]:
        """The recorded |loss| values, for a checkpoint (a resumed run judges as before)."""
        return list(self.losses)


def divergence(loss: float, watch: LossWatch | None = None) -> str | None:
    """Why ``loss`` means the run diverged: not finite, |loss| above ``MAX_ABS_LOSS``, or a
    spike against its recent past (``watch``, which records it); None when it looks healthy."""
    if not abs(loss) <= MAX_ABS_LOSS:
        return f"|loss| {abs(loss):.3g} is not finite or above {MAX_ABS_LOSS:.3g}"
    return None if watch is None else watch.update(loss)
