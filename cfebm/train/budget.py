"""A preset's schedule fitted to a time budget on this machine (``cfebm train --minutes``).

A preset's stage lengths are sized for a reference machine: ``fmnist32`` fills 30 minutes on
two AVX-512 cores with native bf16. On a slower machine the same schedule would stop wherever the
budget ran out, often inside a coarse stage, with no model at the resolution the preset is for
(two AVX2 cores without bf16 run a 32² iteration about 5× slower; docs/notebook/budgets.md).

``fit_schedule`` predicts the schedule's time from one timed training iteration per stage and
phase (mid-fade and grown), with the in-training evaluations the run will make
(``eval.every``, which the FID watch reads) costed from the same timings: a budget is
wall-clock time, so the evaluations' share of it shortens the schedule like any other cost.
When the prediction exceeds the budget so far that the schedule would have to shrink below
half (f < ½), it first keeps the recipe's iterations and halves every stage's batch (and so
its images), down to ``MIN_BATCH``, predicting each halving's cost as half and timing only
the batch it settles on; then, or at once when the overshoot is smaller, it scales every
stage's and every fade's images by one factor f < 1. The run then ends on its finished, fully
grown last stage, with the recipe's proportions and its learning-rate decay to 0 intact. A
schedule that fits is left as it is, so on the reference machine a preset trains exactly as
measured.

Both choices were measured on two AVX2 cores, 30 minutes of ``fmnist32``
(docs/notebook/budgets.md, "Smaller batches for a short budget" and "Where a short budget's
images go"). Smaller batches with more iterations for the same time: FMNIST-FID 130.3 and
101.8 at batch 16 (seeds 0 and 1) and 137.5 at 32 against 170.4 and 157.5 at the recipe's 64.
One factor for all stages against an equal share of the time for each stage (which keeps the
cheap coarse stages whole and cuts the last one most): 170.4 against 186.2 (one seed), so the
last stage's iterations are worth more than whole coarse stages.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass, replace

import torch

from cfebm.chains import sample_negatives
from cfebm.config import Config, EvalConfig, GrowthConfig
from cfebm.growth import stage_starts
from cfebm.model import frozen
from cfebm.sampling import init_uniform
from cfebm.train.evaluation import evaluates
from cfebm.train.step import new_state, train_step

SLACK = 0.9  # share of the budget a shortened schedule's iterations fill: grids, checkpoints, logs
MIN_BATCH = 16  # the smallest batch a fitted schedule halves a stage's batch to
HALVE_BELOW = 0.5  # halve the batches only for a schedule that would shrink below this (f)


@dataclass(frozen=True)
class StageCost:
    """Seconds of one training iteration of a stage while its block fades in and once grown,
    and of one batch of its chains drawn as an in-training evaluation draws them (no parameter
    gradients), in each phase."""

    fading: float
    grown: float
    sampling_fading: float
    sampling_grown: float

    def halved(self) -> StageCost:
        """The prediction for half the batch: half of every time (on a CPU, at our sizes, an
        iteration's time is about proportional to its batch)."""
        return StageCost(*(seconds / 2 for seconds in astuple(self)))


def predicted_seconds(growth: GrowthConfig, costs: list[StageCost],
                      ev: EvalConfig | None = None) -> float:
    """Seconds the iterations of ``growth``'s whole schedule take at ``costs`` per iteration,
    plus, with ``ev``, its in-training evaluations (``evaluation_seconds``)."""
    total = 0.0
    for batch, fade, images, cost in zip(growth.batch_size, growth.fade_images,
                                         growth.stage_images, costs):
        total += fade / batch * cost.fading + (images - fade) / batch * cost.grown
    return total + (evaluation_seconds(growth, costs, ev) if ev is not None else 0.0)


def evaluation_seconds(growth: GrowthConfig, costs: list[StageCost], ev: EvalConfig) -> float:
    """Seconds of the schedule's in-training evaluations (``eval.every``; the FID watch
    reads them): each draws ``eval.n`` samples with the stage's sampler, costed as
    eval_n / batch batches of its stage's and phase's chains, rounded up (the features and FID
    of a small feature net cost a few percent of that: see ``measure``)."""
    total, starts = 0.0, stage_starts(growth)
    for s, (batch, fade, cost) in enumerate(zip(growth.batch_size, growth.fade_images, costs)):
        for before in range(starts[s], starts[s + 1], batch):
            after = min(before + batch, starts[s + 1])
            if evaluates(before, after, growth, ev, final=after == starts[-1]):
                fading = s and after - starts[s] < fade
                chains = cost.sampling_fading if fading else cost.sampling_grown
                total += math.ceil(ev.n / batch) * chains
    return total


def scaled(growth: GrowthConfig, f: float) -> GrowthConfig:
    """``growth`` with every stage's and fade's images times ``f``, in whole batches (at least
    one batch per stage; a fade keeps at least one batch if it had any)."""
    def whole(n: int, batch: int, least: int) -> int:
        return max(least, round(n * f / batch) * batch)
    stages = [whole(n, b, b) for n, b in zip(growth.stage_images, growth.batch_size)]
    fades = [min(whole(n, b, b if n else 0), s)
             for n, b, s in zip(growth.fade_images, growth.batch_size, stages)]
    return replace(growth, stage_images=tuple(stages), fade_images=tuple(fades))


def fit(growth: GrowthConfig, costs: list[StageCost], budget: float,
        ev: EvalConfig | None = None) -> tuple[GrowthConfig, float]:
    """The schedule to train in ``budget`` seconds, and its factor f ≤ 1: ``growth`` itself if
    its predicted time (with ``ev``'s evaluations) is within the budget, else the largest f
    (to 0.1%) whose schedule fits ``SLACK × budget`` (the rest for grids, checkpoints and
    logs)."""
    if predicted_seconds(growth, costs, ev) <= budget:
        return growth, 1.0
    low, high = 0.0, 1.0
    while high - low > 1e-3:
        mid = (low + high) / 2
        fits = predicted_seconds(scaled(growth, mid), costs, ev) <= SLACK * budget
        low, high = (mid, high) if fits else (low, mid)
    return scaled(growth, low), low


def measure(cfg: Config, device: torch.device | None = None,
            clock: Callable[[], float] = time.perf_counter) -> list[StageCost]:
    """Time one training iteration and one evaluation batch of chains for every stage, mid-fade
    and grown, on a throwaway copy of the run, with its precision and compile settings: the
    fastest of two, after one untimed iteration (which allocates, and compiles: inductor's
    on-disk cache then serves the run's own compile). Only schedules with
    ``eval.every`` time the chains (0 s otherwise: no evaluation to cost)."""
    state = new_state(cfg, device)
    starts, costs = stage_starts(cfg.growth), []
    evaluating = cfg.eval.every > 0
    try:
        for s, fade in enumerate(cfg.growth.fade_images):
            grown = _seconds(state, min(starts[s] + fade, starts[s + 1] - 1), evaluating, clock)
            fading = (_seconds(state, starts[s] + fade // 2, evaluating, clock) if s and fade
                      else grown)
            costs.append(StageCost(fading[0], grown[0], fading[1], grown[1]))
    finally:
        if cfg.train.compile:
            # dynamo's recompile limit counts graphs per code object, the throwaway net's too:
            # without a reset the run's own net would reach it and run eagerly
            torch._dynamo.reset()
    return costs


def _seconds(state, n_images: int, evaluating: bool, clock: Callable[[], float],
             repeats: int = 2) -> tuple[float, float]:
    """Seconds of a training iteration and (if ``evaluating``, else 0) of one batch of an
    evaluation's chains at ``n_images``: the fastest of ``repeats`` timed calls each (the
    fastest: another process's burst only ever slows one down)."""
    state.n_images = n_images
    g, channels = state.growth, state.cfg.model.image_channels
    x = init_uniform(g.batch_size, channels, g.resolution, device=state.device)
    train_step(state, x)

    def iteration() -> None:
        state.n_images = n_images
        train_step(state, x)

    def chains() -> None:
        with frozen(state.sampling_net()):
            sample_negatives(state.sampling_energy(), g, g.batch_size, state.cfg.sampler,
                             coarse=state.coarse, device=state.device, autocast=state.autocast)

    def fastest(call: Callable[[], None]) -> float:
        seconds = []
        for _ in range(repeats):
            begin = clock()
            call()
            seconds.append(clock() - begin)
        return min(seconds)

    return fastest(iteration), fastest(chains) if evaluating else 0.0


def halved(growth: GrowthConfig) -> GrowthConfig | None:
    """``growth`` with every stage's batch, images and fade halved: the recipe's iterations on
    half the images. None if a batch would fall below ``MIN_BATCH``."""
    if min(growth.batch_size) < 2 * MIN_BATCH:
        return None
    return scaled(replace(growth, batch_size=tuple(b // 2 for b in growth.batch_size)), 0.5)


def fit_schedule(cfg: Config, minutes: float, device: torch.device | None = None
                 ) -> tuple[Config, float, list[StageCost]]:
    """``cfg`` with its schedule fitted to ``minutes`` of training here; also f and the costs
    (per iteration of the fitted schedule's batches).

    A schedule that would have to shrink below ``HALVE_BELOW`` of itself first keeps its
    iterations and halves its batches, to ``MIN_BATCH`` at the least (each halving's cost
    predicted as half, ``StageCost.halved``, and the batch it settles on timed: one timing
    instead of one per halving, and halved again if that timing says so); then ``fit``
    shortens every stage by one factor. Below ½ halving costs nothing: it keeps
    every update where the factor would drop more than half of them, on at least as many
    images (an iteration on half the batch takes about half the time), and with a budget
    that short updates are worth more than images per update (the module's docstring has
    the measurement). Above ½ the factor keeps more images and the batch the recipe was
    tuned at (an ``fmnist32`` run whose 2,000-sample evaluations took its prediction past 30
    minutes on the machine its schedule fills was otherwise halved to batch 32)."""
    budget = 60.0 * minutes
    costs = measure(cfg, device)
    growth, f = fit(cfg.growth, costs, budget, cfg.eval)
    while f < HALVE_BELOW and (smaller := halved(cfg.growth)):
        cfg, costs = replace(cfg, growth=smaller), [c.halved() for c in costs]
        growth, f = fit(cfg.growth, costs, budget, cfg.eval)
        if f >= HALVE_BELOW or not halved(cfg.growth):   # settled: time the batch it chose
            costs = measure(cfg, device)
            growth, f = fit(cfg.growth, costs, budget, cfg.eval)
    return replace(cfg, growth=growth), f, costs
