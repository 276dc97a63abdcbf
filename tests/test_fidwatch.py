"""The FID watch (``eval.fid_watch``): a failed evaluation rolls the run back, with fresh data.

What is checked, from outside the watch's own bookkeeping:

- ``judge`` against its closed form: fail exactly when the pooled FID exceeds margin × the last
  FID at the coarse resolution (NaN fails too); stage 0, β = 0 and a missing reference are not
  judged;
- a rollback returns the network, EMA and Adam moments exactly to their values at the kept
  evaluation (the entry of the next iteration from that image count, recorded before), and
  leaves the lr as it was;
- the run reads the data stream in order and never twice, through every rollback: the batches
  it trains on, concatenated, are the stream's first images;
- a watch that never fires changes nothing (bitwise the same run with the watch off), and a run
  killed right after a rollback resumes bitwise as if it had not stopped.

Runs: the tiny preset on 256 Fashion-MNIST images, an evaluation of 16 samples every 32
images (stage 0 is 8² for 128 images, stage 1 16² for 256 whose first 64 fade in).
"""

import json
import math

import pytest
import torch
from conftest import require_fashion_mnist

from cfebm.config import ConfigError, apply_overrides, load_preset
from cfebm.data import BatchStream, downsample, load_images, to_float
from cfebm.train import evaluation, loop
from cfebm.train.evaluation import judge


def tiny_watched(*overrides):
    return apply_overrides(load_preset("tiny"), [
        'data.dataset="fashion_mnist"', "data.limit=256", "eval.every=32",
        "eval.n=16", "train.ema_decay=0.9", "run.log_every=16", *overrides])


def row(pooled, beta=0.5, coarse=8):
    out = {"eval_resolution": 16, "eval_beta": beta, "eval_fid": 90.0, "eval_fid_coarse": pooled}
    return out if coarse is None else {**out, "eval_coarse_resolution": coarse}


def test_judge_fails_exactly_above_margin_times_the_median_coarse_reference():
    reference = {8: [40.0, 16.0, 10.0], 16: [50.0]}  # median at 8²: 16
    assert judge(row(20.0), reference, 1.25) is None          # 20 = 1.25 x 16
    assert "20.1 is above 1.25 x 16.0" in judge(row(20.1), reference, 1.25)
    assert judge(row(math.nan), reference, 1.25) is not None  # a NaN FID is no pass
    assert judge(row(1e3, beta=0.0), reference, 1.25) is None  # β = 0: the coarse net itself
    assert judge(row(1e3, coarse=None), reference, 1.25) is None  # stage 0: nothing coarser
    assert judge(row(1e3), {16: [50.0]}, 1.25) is None        # no evaluation at 8² to compare


def test_fid_watch_needs_in_training_evaluations():
    with pytest.raises(ConfigError, match="fid_watch needs eval.every"):
        apply_overrides(load_preset("tiny"), ["eval.fid_watch=1.25"])
    with pytest.raises(ConfigError, match="fid_watch must be >= 0"):
        apply_overrides(load_preset("tiny"), ["eval.fid_watch=-1"])


def record_iterations(monkeypatch):
    """Wrap ``loop.data_batch`` and ``loop.train_step``: each iteration's starting image count,
    the uint8-exact data batch it trained on, and its network, EMA and Adam state at entry."""
    seen = []
    real_batch, real_step = loop.data_batch, loop.train_step

    def data_batch(state, stream):
        x = real_batch(state, stream)
        seen.append({"n": state.n_images, "x": x.clone(),
                     "net": {k: v.clone() for k, v in state.net.state_dict().items()},
                     "ema": {k: v.clone() for k, v in state.ema.state_dict().items()},
                     "adam": [s["exp_avg"].clone()
                              for s in state.optimizer.state_dict()["state"].values()]})
        return x

    monkeypatch.setattr(loop, "data_batch", data_batch)
    monkeypatch.setattr(loop, "train_step", real_step)
    return seen


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(v, b[k]) for k, v in a.items())


@pytest.mark.slow
def test_a_rollback_restores_the_kept_state_and_reads_fresh_data(tmp_path, monkeypatch):
    require_fashion_mnist()
    monkeypatch.setattr(evaluation, "RETRIES", 2)
    cfg = tiny_watched("eval.fid_watch=1e-6")  # every judged evaluation fails
    seen = record_iterations(monkeypatch)
    final = loop.run_training(cfg, tmp_path, progress=False)

    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rollbacks = [(e["n_images"], e["rolled_back_to"]) for e in events
                 if e.get("event") == "fid_watch"]
    # judged: the evaluations at 160, 192, ..., 384 (stage 1, β > 0); each fails twice, is
    # rolled back to the evaluation 32 images before it, and is kept the third time
    assert rollbacks == [(n, n - 32) for n in range(160, 385, 32) for _ in range(2)]
    assert final.n_images == 384 and final.data_skip == 32 * len(rollbacks)
    assert final.record.recoveries == 0  # a watch's rollback keeps the run's recovery count
    assert final.lr_scale == 1.0  # rollbacks keep the lr
    assert {g["lr"] for g in final.optimizer.param_groups} == {cfg.growth.lr[1] * final.lr_scale}
    assert [e["lr"] for e in events if "lr" in e][-1] == cfg.growth.lr[1] * final.lr_scale

    latest, previous, rewinds = {}, None, 0
    for it in seen:
        if previous is not None and it["n"] != previous["n"] + 16:  # the first after a rollback
            kept, rewinds = latest[it["n"]], rewinds + 1
            assert same(it["net"], kept["net"]) and same(it["ema"], kept["ema"])
            assert all(torch.equal(a, b) for a, b in zip(it["adam"], kept["adam"]))
            assert not torch.equal(it["x"], kept["x"])  # but other images
        latest[it["n"]], previous = it, it
    assert rewinds == len(rollbacks)

    # every batch is the stream's next one: positions 0, 16, 32, ... in order, none read twice
    stream = BatchStream(load_images(cfg.data, split="train", resolution=16, image_channels=1),
                         cfg.train.seed)
    for k, it in enumerate(seen):
        expected = downsample(to_float(stream.batch(16 * k, 16)), it["x"].shape[-1])
        assert torch.equal(it["x"], expected), f"iteration {k} at {it['n']} images"


@pytest.mark.slow
def test_a_watch_that_never_fires_changes_nothing(tmp_path):
    require_fashion_mnist()
    off = loop.run_training(tiny_watched(), tmp_path / "off", progress=False)
    on = loop.run_training(tiny_watched("eval.fid_watch=1e6"), tmp_path / "on", progress=False)
    assert (tmp_path / "on" / "checkpoints" / "watch.pt").is_file()
    assert on.data_skip == 0 and on.record.watch_reference.keys() == {8, 16}
    # the last three kept evaluations at each resolution: 32, 64 and 96 at 8² (the one at 128
    # is stage 1's, at 16² and β = 0); 320, 352 and 384 of the nine at 16²
    rows = [json.loads(line) for line in (tmp_path / "on" / "metrics.jsonl").read_text()
            .splitlines() if "eval_fid" in line]
    fid = {(r["n_images"], r["eval_resolution"]): r["eval_fid"] for r in rows}
    assert on.record.watch_reference[8] == [fid[32, 8], fid[64, 8], fid[96, 8]]
    assert on.record.watch_reference[16] == [fid[320, 16], fid[352, 16], fid[384, 16]]
    assert same(off.net.state_dict(), on.net.state_dict())
    assert same(off.ema.state_dict(), on.ema.state_dict())


class Crash(Exception):
    pass


@pytest.mark.slow
def test_a_run_killed_right_after_a_rollback_resumes_as_if_it_had_not_stopped(tmp_path,
                                                                               monkeypatch):
    require_fashion_mnist()
    monkeypatch.setattr(evaluation, "RETRIES", 1)
    cfg = tiny_watched("eval.fid_watch=1e-6")
    straight = loop.run_training(cfg, tmp_path / "a", progress=False)

    real_batch, calls = loop.data_batch, [0]

    def crash_after_first_rollback(state, stream):
        calls[0] += 1
        if calls[0] == 12:  # iterations 1-10 reach 160 images; 11 redoes 128 -> 144 after it
            raise Crash
        return real_batch(state, stream)

    monkeypatch.setattr(loop, "data_batch", crash_after_first_rollback)
    with pytest.raises(Crash):
        loop.run_training(cfg, tmp_path / "b", progress=False)
    monkeypatch.setattr(loop, "data_batch", real_batch)
    resumed = loop.run_training(cfg, tmp_path / "b", resume=True, progress=False)

    assert (resumed.n_images, resumed.data_skip) == (straight.n_images, straight.data_skip)
    assert resumed.record.watch_reference == straight.record.watch_reference
    assert same(straight.net.state_dict(), resumed.net.state_dict())
    assert same(straight.ema.state_dict(), resumed.ema.state_dict())
    assert torch.equal(straight.generator.get_state(), resumed.generator.get_state())


@pytest.mark.slow
def test_evaluations_only_around_fades(tmp_path):
    """``eval.fades_only``: the fade into 16² spans 128-192 images, so evaluations (every
    32) come from three before it (32, 64, 96) to its end, then only the final one."""
    require_fashion_mnist()
    loop.run_training(tiny_watched("eval.fades_only=true", "eval.fid_watch=1e6"), tmp_path,
                      progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["n_images"] for r in rows if "eval_fid" in r] == [32, 64, 96, 128, 160, 192, 384]
