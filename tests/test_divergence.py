"""Telling a diverging run from a healthy one (``cfebm.train.recovery``), and rolling it back.

The unit tests feed ``LossWatch`` loss sequences whose window and history medians are known
by construction. The run test drives the real trainer on the tiny preset and makes the
loss jump for five iterations by scaling five data batches (a real spike of the real loss,
far below ``recovery.MAX_ABS_LOSS``): the watch must roll the run back, and without the watch the
same run must go on as if nothing happened.
"""

import json
import math

import pytest

from cfebm.config import apply_overrides, load_preset
from cfebm.train import loop, recovery
from cfebm.train.recovery import HISTORY, WINDOW, LossWatch


@pytest.mark.parametrize("loss, expected", [
    (0.0, False), (-1e4, False), (1e4, False),   # |loss| = MAX_ABS_LOSS is still fine
    (10_000.1, True), (-10_000.1, True), (math.inf, True), (-math.inf, True), (math.nan, True),
])
def test_divergence_is_a_magnitude_above_the_limit_or_not_finite(loss, expected):
    assert recovery.MAX_ABS_LOSS == 1e4
    assert (recovery.divergence(loss) is not None) is expected


def feed(watch: LossWatch, history: float, recent: list[float]) -> list[str | None]:
    """HISTORY losses of ±``history`` (median |loss| = history), then ``recent``."""
    verdicts = [watch.update(history * (-1) ** k) for k in range(HISTORY)]
    return verdicts + [watch.update(loss) for loss in recent]


def test_a_recent_median_above_factor_times_the_median_before_is_a_spike():
    # History median 0.2; the last WINDOW (odd) |losses| have median exactly 2.5 = 12.5x.
    assert WINDOW % 2 == 1
    recent = [2.0, -3.0] * (WINDOW // 2) + [2.5]
    verdicts = feed(LossWatch(10.0), 0.2, recent)
    assert all(v is None for v in verdicts[:-1])
    assert verdicts[-1] is not None and "12.5x" in verdicts[-1] and "median 0.2" in verdicts[-1]


@pytest.mark.parametrize("history, recent, factor", [
    (0.2, 1.9, 10.0),   # 9.5x the median: under the factor
    (0.05, 0.9, 10.0),  # 18x, but under SPIKE_FLOOR = 1: tiny losses have noisy ratios
    (0.2, 2.5, 0.0),    # factor 0 turns the watch off
])
def test_no_spike_under_the_factor_under_the_floor_or_switched_off(history, recent, factor):
    assert recovery.SPIKE_FLOOR == 1.0
    assert all(v is None for v in feed(LossWatch(factor), history, [recent] * WINDOW))


def test_one_wild_iteration_is_not_a_spike_but_most_of_a_window_is():
    """A healthy 8² run had one |loss| of 23.5 among losses of median 0.13; a blow-up keeps the
    loss high. Half the window high is not enough, one more iteration is."""
    one = feed(LossWatch(10.0), 0.13, [23.5] + [0.13] * (WINDOW - 1))
    assert all(v is None for v in one)
    half = WINDOW // 2
    assert feed(LossWatch(10.0), 0.13, [0.13] * (WINDOW - half) + [23.5] * half)[-1] is None
    most = feed(LossWatch(10.0), 0.13, [0.13] * (WINDOW - half - 1) + [23.5] * (half + 1))
    assert most[-1] is not None


def test_the_watch_judges_only_after_window_plus_history_iterations():
    watch = LossWatch(10.0)
    early = [watch.update(0.01) for _ in range(HISTORY)]
    early += [watch.update(1e3) for _ in range(WINDOW - 1)]  # 224 values: no verdict yet
    assert all(v is None for v in early) and watch.peak == 0.0
    assert watch.update(1e3) is not None                     # the 225th: judged
    assert watch.pop_peak() > 1e4 and watch.peak == 0.0


def test_a_watch_rebuilt_from_its_state_judges_as_the_original():
    """What a checkpoint keeps (``state()``) is all a resumed run needs to judge alike."""
    a = LossWatch(10.0)
    feed(a, 0.3, [0.4] * 10)
    b = LossWatch(10.0, a.state())
    tail = [0.5, 3.0, 5.0, 8.0] + [9.0] * 20
    verdicts = [a.update(x) for x in tail]
    assert verdicts == [b.update(x) for x in tail]
    assert any(v is not None for v in verdicts)  # the tail does reach a spike


def spiked_run(tmp_path, monkeypatch, *overrides):
    """The tiny preset (batches of 16; the only checkpoint before the end is stage 0's, at 128
    images) with data batches 14-18 (images 208-288) scaled by 30, and a watch of 3
    iterations against the 8 before."""
    monkeypatch.setattr(recovery, "WINDOW", 3)
    monkeypatch.setattr(recovery, "HISTORY", 8)
    cfg = apply_overrides(load_preset("tiny"), ["run.checkpoint_every=1000", *overrides])
    real, calls = loop.data_batch, [0]

    def data_batch(state, stream):
        calls[0] += 1
        x = real(state, stream)
        return x * 30.0 if 14 <= calls[0] <= 18 else x

    monkeypatch.setattr(loop, "data_batch", data_batch)
    final = loop.run_training(cfg, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return final, rows


@pytest.mark.slow
def test_a_loss_spike_far_below_max_abs_loss_is_rolled_back(tmp_path, monkeypatch):
    final, rows = spiked_run(tmp_path / "on", monkeypatch)
    events = [r for r in rows if r.get("event") == "recovery"]
    assert len(events) == 1
    event = events[0]
    assert abs(event["loss"]) < 1e4  # max_abs_loss alone would not have stopped it
    assert event["rolled_back_to"] == 128 and event["checkpoint"] == "latest.pt"
    assert 240 <= event["n_images"] <= 288 and "median" in event["reason"]
    assert (final.n_images, final.record.recoveries, final.lr_scale) == (384, 1, 0.5)

    _, rows_off = spiked_run(tmp_path / "off", monkeypatch, "run.spike_factor=0")
    assert not [r for r in rows_off if r.get("event") == "recovery"]


@pytest.mark.slow
def test_the_first_metrics_row_after_a_rollback_averages_only_iterations_after_it(
        tmp_path, monkeypatch):
    """With one metrics row per stage, the spike's iterations are still unlogged when the run
    rolls back; the final row must average the iterations of the kept trajectory alone."""
    losses, real_step = [], loop.train_step

    def train_step(state, x_data, *start):
        metrics = real_step(state, x_data, *start)
        losses.append((state.n_images, float(metrics["loss"])))
        return metrics

    monkeypatch.setattr(loop, "train_step", train_step)
    _, rows = spiked_run(tmp_path, monkeypatch, "run.log_every=1000")
    event = next(r for r in rows if r.get("event") == "recovery")
    detected = next(k for k, (n, _) in enumerate(losses) if n == event["n_images"])
    kept = [loss for _, loss in losses[detected + 1:]]
    last = [r for r in rows if "e_data" in r][-1]
    assert last["n_images"] == 384 and len(kept) == (384 - 128) // 16
    assert last["loss"] == pytest.approx(sum(kept) / len(kept), rel=1e-6)


def test_a_spike_is_still_caught_after_a_history_with_wild_outliers():
    """The baseline is a median: a tenth of the history at |loss| 50 (a mean would put the
    baseline near 5 and call 2.5 calm) leaves it at 0.2, so a window at 2.5 (12.5×) is a spike."""
    watch = LossWatch(10.0)
    history = [50.0 if k % 10 == 0 else 0.2 * (-1) ** k for k in range(HISTORY)]
    assert all(watch.update(loss) is None for loss in history)
    verdicts = [watch.update(2.5) for _ in range(WINDOW)]
    assert all(v is None for v in verdicts[:-1])
    assert verdicts[-1] is not None and "median 0.2" in verdicts[-1]
