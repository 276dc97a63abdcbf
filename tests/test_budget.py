"""Tests for cfebm.train.budget: a schedule fitted to a time budget from per-iteration costs."""

import json
from dataclasses import replace
from itertools import count

import pytest
import torch

from cfebm.cli import main
from cfebm.config import Config, EvalConfig, GrowthConfig, load_preset
from cfebm.files import read
from cfebm.growth import growth_at, total_images
from cfebm.train import budget
from cfebm.train.budget import SLACK, StageCost, fit, predicted_seconds, scaled

GROWTH = GrowthConfig(resolutions=(8, 16, 32), batch_size=(64, 64, 64), lr=(3e-3, 3e-3, 1e-3),
                      n_steps=(15, 25, 20), fade_images=(0, 12_800, 12_800),
                      stage_images=(19_200, 44_800, 83_200), lr_decay="linear")
# seconds per training iteration (fading, grown) and per batch of an evaluation's chains
COSTS = [StageCost(0.1, 0.1, 0.05, 0.05), StageCost(2.6, 2.3, 1.8, 1.5),
         StageCost(7.5, 6.7, 5.5, 4.5)]


def test_predicted_seconds_counts_each_phase_at_its_cost():
    # 8²: 300 iterations × 0.1; 16²: 200 fading × 2.6 + 500 × 2.3; 32²: 200 × 7.5 + 1,100 × 6.7
    expected = 300 * 0.1 + 200 * 2.6 + 500 * 2.3 + 200 * 7.5 + 1_100 * 6.7
    assert predicted_seconds(GROWTH, COSTS) == pytest.approx(expected)


def test_a_schedule_that_fits_is_left_as_it_is():
    """Within the budget, even without the slack for grids: a preset trains as measured."""
    seconds = predicted_seconds(GROWTH, COSTS)
    for budget_seconds in (seconds / SLACK, seconds + 1):
        assert fit(GROWTH, COSTS, budget_seconds) == (GROWTH, 1.0)
    fitted, f = fit(GROWTH, COSTS, seconds - 1)   # over it: shortened to fill SLACK of it
    assert f < 1 and predicted_seconds(fitted, COSTS) <= SLACK * (seconds - 1)


def test_a_schedule_too_long_is_scaled_to_fill_the_budget():
    seconds = 1_800.0
    fitted, f = fit(GROWTH, COSTS, seconds)
    assert 0 < f < 1
    assert predicted_seconds(fitted, COSTS) <= SLACK * seconds
    assert predicted_seconds(scaled(GROWTH, f + 0.01), COSTS) > SLACK * seconds  # the largest f
    for stage, fade, batch, was_stage, was_fade in zip(
            fitted.stage_images, fitted.fade_images, fitted.batch_size, GROWTH.stage_images,
            GROWTH.fade_images):
        assert stage % batch == 0 and fade % batch == 0 and 0 <= fade <= stage
        assert stage == pytest.approx(f * was_stage, abs=batch)   # one factor for every stage
        assert fade == pytest.approx(f * was_fade, abs=batch)
    assert fitted.resolutions == GROWTH.resolutions and fitted.lr == GROWTH.lr  # only lengths
    assert growth_at(total_images(fitted), fitted).resolution == 32  # it still grows to the top


def test_a_tiny_budget_keeps_one_batch_per_stage_and_every_fade():
    fitted, _ = fit(GROWTH, COSTS, budget=1.0)
    assert fitted.stage_images == (64, 64, 64)
    assert fitted.fade_images == (0, 64, 64)


def test_measure_times_every_stage_grown_and_mid_fade():
    ticks = count()
    costs = budget.measure(load_preset("tiny"), clock=lambda: float(next(ticks)))
    # one tick between the two reads of each timed iteration; 8² has no fade, 16² both phases
    assert costs == [StageCost(1.0, 1.0, 0.0, 0.0), StageCost(1.0, 1.0, 0.0, 0.0)]
    # with in-training evaluations their chains are timed too, in each phase
    tiny = load_preset("tiny")
    evaluating = replace(tiny, eval=replace(tiny.eval, every=16))
    costs = budget.measure(evaluating, clock=lambda: float(next(ticks)))
    assert costs == [StageCost(1.0, 1.0, 1.0, 1.0), StageCost(1.0, 1.0, 1.0, 1.0)]


def test_evaluations_are_costed_at_their_stage_and_phase():
    """Around the fades only (3 evaluations' lead, every 1,600 images, counted by hand): 8²
    at 14,400-19,200; 16² fading at 20,800-30,400, grown at 32,000 and 59,200-64,000; 32²
    fading at 65,600-75,200, grown at 76,800 and at the end. 2,000 samples are 32 batches."""
    train = EvalConfig(every=1_600, n=2_000, fades_only=True)
    expected = 32 * (4 * 0.05 + 7 * 1.8 + 5 * 1.5 + 7 * 5.5 + 2 * 4.5)
    assert budget.evaluation_seconds(GROWTH, COSTS, train) == pytest.approx(expected)
    assert predicted_seconds(GROWTH, COSTS, train) == pytest.approx(
        predicted_seconds(GROWTH, COSTS) + expected)
    assert budget.evaluation_seconds(GROWTH, COSTS, EvalConfig(every=0)) == 0.0


def test_a_budget_leaves_room_for_the_evaluations():
    train = EvalConfig(every=1_600, n=2_000, fades_only=True)
    seconds = predicted_seconds(GROWTH, COSTS) + 1   # the iterations alone would fit
    fitted, f = fit(GROWTH, COSTS, seconds, train)
    assert f < 1 and predicted_seconds(fitted, COSTS, train) <= SLACK * seconds


def test_halving_keeps_every_stage_s_iterations_on_half_the_images():
    authors = replace(GROWTH, batch_size=(256, 128, 64))
    half = budget.halved(authors)
    assert half.batch_size == (128, 64, 32)
    assert half.stage_images == (9_600, 22_400, 41_600) and half.fade_images == (0, 6_400, 6_400)
    iterations = [n // b for n, b in zip(authors.stage_images, authors.batch_size)]
    assert [n // b for n, b in zip(half.stage_images, half.batch_size)] == iterations
    assert min(budget.halved(half).batch_size) == budget.MIN_BATCH
    assert budget.halved(budget.halved(half)) is None   # (32, 16, 8): below MIN_BATCH


def _timed_at_batch(timed):
    """A machine whose iterations cost 0.1 s + 0.01 s per image, whatever the stage."""
    def measure(cfg, device=None):
        timed.append(cfg.growth.batch_size)
        return [StageCost(0.1 + 0.01 * b, 0.1 + 0.01 * b, 0.0, 0.0) for b in cfg.growth.batch_size]
    return measure


@pytest.mark.parametrize("minutes, batches, shortened", [
    (100.0, [(64, 64, 64)], False),                           # the recipe fits: as it is
    (25.0, [(64, 64, 64)], True),                             # f = 0.79 at batch 64: scaled
    (15.0, [(64, 64, 64), (32, 32, 32)], True),               # f = 0.48 at 64: batch 32, f = 0.84
    (5.0, [(64, 64, 64), (16, 16, 16)], True),                # batch 16, then one factor
    (8.5, [(64, 64, 64), (32, 32, 32), (16, 16, 16)], True),   # 32 predicted, timed: 16
])
def test_a_slow_machine_halves_the_batches_before_it_loses_half_the_schedule(
        monkeypatch, minutes, batches, shortened):
    """2,300 iterations: 1,702 s at batch 64, 966 s at 32 and 598 s at 16. A batch is halved
    only while the factor at it would be below ½ (halving then keeps more updates on as many
    images); a smaller overshoot shortens the stages at the recipe's batch. A halving's cost is
    predicted as half (851 s at 32, 426 s at 16: this machine's fixed 0.1 s makes it
    optimistic), and only the batch the prediction settles on is timed: in 8.5 minutes batch 32
    is predicted at f = 0.54, timed at 0.48, so it is halved again."""
    timed = []
    monkeypatch.setattr(budget, "measure", _timed_at_batch(timed))
    cfg, f, costs = budget.fit_schedule(Config(growth=GROWTH), minutes)
    assert timed == batches                              # each halving timed anew
    growth = cfg.growth
    assert growth.batch_size == batches[-1] and costs == budget.measure(cfg)
    assert (f < 1) == shortened
    assert predicted_seconds(growth, costs) <= 60 * minutes
    iterations = [n // b for n, b in zip(growth.stage_images, growth.batch_size)]
    recipe = [n // b for n, b in zip(GROWTH.stage_images, GROWTH.batch_size)]
    if shortened:
        assert iterations == [pytest.approx(f * i, abs=1) for i in recipe]
    else:
        assert iterations == recipe


@pytest.fixture
def slow_machine(monkeypatch):
    """Per-iteration costs of a machine on which the tiny preset takes 240 s."""
    monkeypatch.setattr(budget, "measure", lambda cfg, device=None: [StageCost(10.0, 10.0, 0.0, 0.0)] * 2)


def test_train_minutes_fits_the_schedule_and_the_run_ends_fully_grown(slow_machine, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--minutes", "1", "--run-dir", str(run),
                 "--no-progress"]) == 0
    growth = json.loads((run / "config.json").read_text())["growth"]
    # 54 s of the 60 fit 5 iterations of 10 s: f ≈ 5/24 of the preset's 24 iterations
    assert growth["stage_images"] == [32, 48] and growth["fade_images"] == [0, 16]
    ckpt = read(run / "checkpoints" / "latest.pt")
    assert ckpt["n_images"] == 80 and ckpt["config"]["growth"]["stage_images"] == [32, 48]


def test_no_fit_and_resume_keep_the_schedule(slow_machine, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--minutes", "1", "--no-fit", "--stop-at", "32",
                 "--run-dir", str(run), "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["growth"]["stage_images"] == [128, 256]
    assert main(["train", "--resume", "--minutes", "1", "--stop-at", "64", "--run-dir", str(run),
                 "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["growth"]["stage_images"] == [128, 256]


def test_a_budget_in_the_config_fits_a_new_run_as_minutes_does(slow_machine, tmp_path):
    """``run.minutes`` (the quickstart preset's 4) is ``--minutes`` written in the config: the
    same fitted schedule, and the run records its budget so that a resumed run keeps it."""
    by_flag, by_config = tmp_path / "flag", tmp_path / "config"
    assert main(["train", "--preset", "tiny", "--minutes", "1", "--run-dir", str(by_flag),
                 "--no-progress"]) == 0
    assert main(["train", "--preset", "tiny", "--set", "run.minutes=1", "--run-dir",
                 str(by_config), "--no-progress"]) == 0
    flag, config = (json.loads((r / "config.json").read_text()) for r in (by_flag, by_config))
    assert config["growth"] == flag["growth"] and config["growth"]["stage_images"] == [32, 48]
    assert config["run"]["minutes"] == flag["run"]["minutes"] == 1.0
    assert read(by_config / "checkpoints" / "latest.pt")["config"]["run"]["minutes"] == 1.0


def test_a_resumed_run_keeps_its_budget_and_minutes_0_lifts_it(tmp_path):
    run = tmp_path / "run"
    argv = ["--run-dir", str(run), "--no-progress"]
    assert main(["train", "--preset", "tiny", "--set", "run.minutes=1e-9", "--no-fit", *argv]) == 0
    spent = read(run / "checkpoints" / "latest.pt")["n_images"]   # one iteration, then over
    assert main(["train", "--resume", "--stop-at", "64", *argv]) == 0
    assert read(run / "checkpoints" / "latest.pt")["n_images"] == spent
    assert main(["train", "--resume", "--minutes", "0", "--stop-at", "64", *argv]) == 0
    assert read(run / "checkpoints" / "latest.pt")["n_images"] == 64


def test_minutes_0_trains_the_recipe_as_it_is(monkeypatch, tmp_path):
    run, timed = tmp_path / "run", []
    monkeypatch.setattr(budget, "measure", lambda cfg, device=None: timed.append(1) or [])
    assert main(["train", "--preset", "tiny", "--set", "run.minutes=1", "--minutes", "0",
                 "--stop-at", "16", "--run-dir", str(run), "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert timed == [] and config["run"]["minutes"] == 0.0
    assert config["growth"]["stage_images"] == list(load_preset("tiny").growth.stage_images)
    with pytest.raises(SystemExit, match="2"):
        main(["train", "--preset", "tiny", "--minutes", "-1", "--dry-run"])


def test_the_quick_start_has_a_budget_and_its_paper_twin_none():
    assert load_preset("quickstart").run.minutes == 4.0
    assert load_preset("paper-quickstart").run.minutes == 0.0


def test_an_existing_run_is_refused_before_any_timing(monkeypatch, tmp_path):
    run, timed = tmp_path / "run", []
    assert main(["train", "--preset", "tiny", "--stop-at", "16", "--run-dir", str(run),
                 "--no-progress"]) == 0
    monkeypatch.setattr(budget, "measure", lambda cfg, device=None: timed.append(1) or [])
    assert main(["train", "--preset", "tiny", "--minutes", "1", "--run-dir", str(run),
                 "--no-progress"]) == 2
    assert timed == []


def test_timing_a_compiled_run_leaves_the_run_its_own_graphs(monkeypatch):
    """The throwaway net's graphs count towards dynamo's per-function limit: after timing, the
    run's net must still compile every resolution instead of running eagerly."""
    from torch._dynamo.utils import counters

    from cfebm import runtime
    from cfebm.config import apply_overrides
    from cfebm.runtime import CompiledEnergy
    from cfebm.train import step

    monkeypatch.setattr(runtime, "CompiledEnergy",  # no C++ compiler needed, same graph counts
                        lambda net, mode=None: CompiledEnergy(net, backend="aot_eager"))
    cfg = apply_overrides(load_preset("tiny"), ["train.compile=true",
                                                "model.max_resolution=32",
                                                "growth.resolutions=[8,16,32]",
                                                "growth.batch_size=[4,4,4]",
                                                "growth.lr=[1e-3,1e-3,1e-3]",
                                                "growth.n_steps=[2,2,2]",
                                                "growth.fade_images=[0,8,8]",
                                                "growth.stage_images=[8,16,16]"])
    budget.measure(cfg)
    counters.clear()
    run = step.new_state(cfg)
    for n_images in (0, 12, 16, 28, 32):   # 8², 16² fading and grown, 32² fading and grown
        run.n_images = n_images
        g = run.growth
        before = counters["stats"]["unique_graphs"]
        step.train_step(run, torch.rand(4, 1, g.resolution, g.resolution) * 2 - 1)
        assert counters["stats"]["unique_graphs"] > before, f"{g.resolution}² ran eagerly"
