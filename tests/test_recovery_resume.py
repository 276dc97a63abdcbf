"""Divergence recovery, exact resume and stopping on a signal, checked from the outside.

Each test drives the real ``loop.run_training`` and only intervenes at a known iteration:
it poisons one data batch with NaN (a real divergence: the loss is NaN and Adam writes NaN
weights), or it delivers SIGINT to the process. What it checks is independent of the recovery
code's own logging:

- after the rollback, the network, EMA and Adam state are those in ``latest.pt``, the chain
  noise is reseeded, and each param group's lr is the schedule's lr × ``lr_scale``;
- a run interrupted mid-fade after a recovery and resumed equals the uninterrupted run bit for
  bit, for each ``sampler.init`` (the frozen coarse copy, ``lr_scale`` and ``recoveries``
  must all cross the resume);
- SIGINT in the middle of a stage, far from any checkpoint, still leaves a checkpoint of the
  last finished iteration, and resuming from it equals never stopping.

The tiny preset: stage 0 is 8² for 128 images, stage 1 16² for 256 images whose first 64
fade in (β = images in stage / 64); batches of 16, so call k of ``train_step`` ends at 16·k.
"""

import json
import logging
import os
import signal

import pytest
import torch
from conftest import tiny

from cfebm.files import read
from cfebm.train import loop


def poison_batch(monkeypatch, call: int) -> None:
    """Make the ``call``-th data batch (1-based) all NaN, after drawing it as usual."""
    real, calls = loop.data_batch, [0]

    def data_batch(state, stream):
        calls[0] += 1
        x = real(state, stream)
        return x * float("nan") if calls[0] == call else x

    monkeypatch.setattr(loop, "data_batch", data_batch)


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key, value in a.items():
        if isinstance(value, dict):
            assert_same_tensors(value, b[key], f"{what}.{key}")
        elif isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), f"{what}.{key}"
        else:
            assert value == b[key], f"{what}.{key}"


def assert_same_run(a, b) -> None:
    assert a.n_images == b.n_images and a.record.recoveries == b.record.recoveries
    assert a.lr_scale == b.lr_scale
    assert_same_tensors(a.net.state_dict(), b.net.state_dict(), "net")
    assert_same_tensors(a.ema.state_dict(), b.ema.state_dict(), "ema")
    assert_same_tensors(a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"],
                        "adam")
    assert torch.equal(a.generator.get_state(), b.generator.get_state())
    assert len(a.coarse) == len(b.coarse)
    for k, (x, y) in enumerate(zip(a.coarse, b.coarse)):
        assert_same_tensors(x.state_dict(), y.state_dict(), f"coarse[{k}]")


@pytest.mark.slow
def test_rollback_restores_latest_checkpoint_reseeds_and_halves_lr(tmp_path, monkeypatch):
    """Iteration 10 (144 -> 160 images, mid-fade) diverges; the last checkpoint is the end of
    stage 0 (128 images). The next iteration must start from exactly that checkpoint's weights
    and Adam moments, with new chain noise, and step with lr = schedule lr × 0.5."""
    cfg = tiny("train.ema_decay=0.9")
    poison_batch(monkeypatch, call=10)
    real_step, seen = loop.train_step, {}

    def train_step(state, x_data):
        seen["calls"] = seen.get("calls", 0) + 1
        if seen["calls"] == 10:  # the iteration that diverges
            seen["checkpoint"] = read(tmp_path / "checkpoints" / "latest.pt")
        if seen["calls"] == 11:  # the first iteration after the rollback
            seen["entry"] = {
                "n_images": state.n_images, "lr_scale": state.lr_scale,
                "recoveries": state.record.recoveries, "generator": state.generator.get_state(),
                "model": {k: v.clone() for k, v in state.net.state_dict().items()},
                "ema": {k: v.clone() for k, v in state.ema.state_dict().items()},
                "adam": {i: {k: v.clone() for k, v in s.items()}
                         for i, s in state.optimizer.state_dict()["state"].items()},
                "latest": read(tmp_path / "checkpoints" / "latest.pt"),
                "growth": state.growth,
            }
        metrics = real_step(state, x_data)
        if seen["calls"] == 11:
            seen["lrs"] = [g["lr"] for g in state.optimizer.param_groups]
        return metrics

    monkeypatch.setattr(loop, "train_step", train_step)
    final = loop.run_training(cfg, tmp_path, progress=False)

    entry, checkpoint = seen["entry"], seen["checkpoint"]
    assert checkpoint["n_images"] == 128 and entry["n_images"] == 128
    assert (entry["recoveries"], entry["lr_scale"]) == (1, 0.5)
    assert_same_tensors(entry["model"], checkpoint["model"], "model")
    assert_same_tensors(entry["ema"], checkpoint["ema"], "ema")
    assert_same_tensors(entry["adam"], checkpoint["optimizer"]["state"], "adam")
    assert all(torch.isfinite(v).all() for v in entry["model"].values())
    # Replaying the checkpoint's chain noise would repeat the draw that diverged.
    assert not torch.equal(entry["generator"], checkpoint["generator"])
    # latest.pt now holds the rolled-back state itself, so a crash here loses nothing.
    latest = entry["latest"]
    assert (latest["n_images"], latest["recoveries"], latest["lr_scale"]) == (128, 1, 0.5)
    assert torch.equal(entry["generator"], latest["generator"])
    assert_same_tensors(entry["model"], latest["model"], "model")
    assert seen["lrs"] == [cfg.growth.lr[entry["growth"].stage] * 0.5] * len(seen["lrs"])
    # The run then finishes at the schedule's end with the halved rate.
    assert final.n_images == 384 and (final.record.recoveries, final.lr_scale) == (1, 0.5)
    assert all(torch.isfinite(p).all() for p in final.net.parameters())


@pytest.mark.slow
def test_a_second_divergence_from_the_same_checkpoint_rolls_back_one_further(tmp_path,
                                                                            monkeypatch):
    """Checkpoints every 64 images. Iteration 10 (144 -> 160) diverges: back to latest.pt (128).
    Iteration 12 (144 -> 160 again) diverges before any new checkpoint: latest.pt is suspect,
    so the run goes back to previous.pt (64), with a quarter of the lr."""
    cfg = tiny("run.checkpoint_every=64")
    real_data_batch, calls, seen = loop.data_batch, [0], {}

    def data_batch(state, stream):
        calls[0] += 1
        if calls[0] == 11:  # the first iteration after the first rollback
            seen["previous"] = read(tmp_path / "checkpoints" / "previous.pt")
        if calls[0] == 13:  # the first iteration after the second
            seen["entry"] = (state.n_images, state.record.recoveries, state.lr_scale,
                             {k: v.clone() for k, v in state.net.state_dict().items()},
                             read(tmp_path / "checkpoints" / "latest.pt")["n_images"])
        x = real_data_batch(state, stream)
        return x * float("nan") if calls[0] in (10, 12) else x

    monkeypatch.setattr(loop, "data_batch", data_batch)
    final = loop.run_training(cfg, tmp_path, progress=False)

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    events = [(r["n_images"], r["rolled_back_to"], r["checkpoint"]) for r in rows
              if r.get("event") == "recovery"]
    assert events == [(160, 128, "latest.pt"), (160, 64, "previous.pt")]
    n_images, recoveries, lr_scale, model, latest_images = seen["entry"]
    assert seen["previous"]["n_images"] == 64
    assert (n_images, recoveries, lr_scale, latest_images) == (64, 2, 0.25, 64)
    assert_same_tensors(model, seen["previous"]["model"], "model")
    assert final.n_images == 384 and (final.record.recoveries, final.lr_scale) == (2, 0.25)
    ckpts = tmp_path / "checkpoints"
    assert (read(ckpts / "latest.pt")["n_images"], read(ckpts / "previous.pt")["n_images"]) == (
        384, 320)


class Crash(Exception):
    """A process dying between two checkpoints (a kill -9 or a power cut): nothing is saved."""


@pytest.mark.slow
def test_a_run_killed_right_after_a_rollback_resumes_as_if_it_had_not_stopped(tmp_path,
                                                                               monkeypatch):
    """The previous test's two divergences, but the process dies in the first iteration after
    the first rollback, before any new checkpoint. Resumed, the second divergence must still
    be recognised as one from the checkpoint just rolled back to (so: previous.pt, lr × ¼),
    and the run must end bitwise where the uninterrupted one does."""
    cfg = tiny("run.checkpoint_every=64", "train.ema_decay=0.9")
    real_data_batch = loop.data_batch

    def poisoned(nan_calls, crash_call=None):
        calls = [0]

        def data_batch(state, stream):
            calls[0] += 1
            if calls[0] == crash_call:
                raise Crash
            x = real_data_batch(state, stream)
            return x * float("nan") if calls[0] in nan_calls else x
        return data_batch

    monkeypatch.setattr(loop, "data_batch", poisoned({10, 12}))
    straight = loop.run_training(cfg, tmp_path / "a", progress=False)

    monkeypatch.setattr(loop, "data_batch", poisoned({10}, crash_call=11))
    with pytest.raises(Crash):
        loop.run_training(cfg, tmp_path / "b", progress=False)
    # resumed at 128 images: its 2nd iteration is 144 -> 160 again, and diverges again
    monkeypatch.setattr(loop, "data_batch", poisoned({2}))
    resumed = loop.run_training(cfg, tmp_path / "b", resume=True, progress=False)

    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text()
            .splitlines()]
    events = [(r["n_images"], r["rolled_back_to"], r["checkpoint"], r["lr_scale"]) for r in rows
              if r.get("event") == "recovery"]
    assert events == [(160, 128, "latest.pt", 0.5), (160, 64, "previous.pt", 0.25)]
    assert (straight.record.recoveries, straight.lr_scale) == (2, 0.25)
    assert_same_run(straight, resumed)


@pytest.mark.slow
@pytest.mark.parametrize("init", ["noise", "cascade", "frozen"])
def test_resume_mid_fade_after_a_recovery_equals_the_uninterrupted_run(tmp_path, monkeypatch,
                                                                       init):
    """Divergence at iteration 10 (rolled back to 128 images), stop at 176 images (stage 1,
    β = 0.75, a frozen 8² copy in use), resume to 384: bitwise the straight run's result."""
    cfg = tiny("train.ema_decay=0.9", "data.hflip=true", "train.data_sigma=0.01",
               f"sampler.init={init}")
    real_data_batch = loop.data_batch
    poison_batch(monkeypatch, call=10)
    straight = loop.run_training(cfg, tmp_path / "a", progress=False)

    poison_batch(monkeypatch, call=10)
    loop.run_training(cfg, tmp_path / "b", stop_at=176, progress=False)
    stopped = read(tmp_path / "b" / "checkpoints" / "latest.pt")
    assert stopped["n_images"] == 176 and (stopped["recoveries"], stopped["lr_scale"]) == (1, 0.5)
    assert len(stopped["coarse"]) == (init == "frozen")
    monkeypatch.setattr(loop, "data_batch", real_data_batch)  # nothing diverges now
    resumed = loop.run_training(cfg, tmp_path / "b", resume=True, progress=False)

    assert straight.n_images == 384 and (straight.record.recoveries, straight.lr_scale) == (1, 0.5)
    assert_same_run(straight, resumed)


@pytest.mark.slow
def test_sigint_mid_stage_saves_the_last_iteration_and_resumes_exactly(tmp_path, monkeypatch):
    """SIGINT arrives during iteration 3 (32 -> 48 images), with no stage end, log line, grid or
    periodic checkpoint anywhere near: the run stops after that iteration, and the only thing
    that can have written latest.pt at 48 images is the signal handling."""
    far = 1_000_000
    cfg = tiny(f"run.checkpoint_every={far}", f"run.log_every={far}",
               f"run.sample_every={far}")
    real_step, calls = loop.train_step, [0]

    def train_step(state, x_data):
        calls[0] += 1
        metrics = real_step(state, x_data)
        if calls[0] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return metrics

    monkeypatch.setattr(loop, "train_step", train_step)
    handler = signal.getsignal(signal.SIGINT)
    stopped = loop.run_training(cfg, tmp_path / "b", progress=False)
    assert stopped.n_images == 48 and calls[0] == 3
    saved = read(tmp_path / "b" / "checkpoints" / "latest.pt")
    assert saved["n_images"] == 48
    assert_same_tensors(saved["model"], stopped.net.state_dict(), "model")

    monkeypatch.setattr(loop, "train_step", real_step)
    assert signal.getsignal(signal.SIGINT) is handler  # the run put the old handler back
    resumed = loop.run_training(cfg, tmp_path / "b", resume=True, stop_at=80, progress=False)
    straight = loop.run_training(cfg, tmp_path / "a", stop_at=80, progress=False)
    assert resumed.n_images == straight.n_images == 80
    assert_same_tensors(resumed.net.state_dict(), straight.net.state_dict(), "model")
    assert_same_tensors(resumed.optimizer.state_dict()["state"],
                        straight.optimizer.state_dict()["state"], "adam")


def test_an_ema_switched_on_at_resume_starts_at_the_weights_it_resumes_from(tmp_path, caplog):
    """Resuming with ``train.ema_decay`` newly set starts the EMA at the checkpoint's weights:
    one iteration later it is decay·w(32) + (1 − decay)·w(48), parameter by parameter; set to
    0 on a later resume, the EMA is dropped and the trained weights sample. Each resume says
    what it did to the EMA."""
    caplog.set_level(logging.INFO, logger="cfebm.train.step")
    loop.run_training(tiny("train.ema_decay=0"), tmp_path, stop_at=32, progress=False)
    before = read(tmp_path / "checkpoints" / "latest.pt")
    assert before["ema"] is None
    decay = 0.9
    state = loop.run_training(tiny(f"train.ema_decay={decay}"), tmp_path, resume=True,
                              stop_at=48, progress=False)
    assert "train.ema_decay 0.9: starting the EMA at the current weights" in caplog.messages
    assert state.ema is not None and state.n_images == 48
    after = dict(state.net.named_parameters())
    for name, p_ema in state.ema.named_parameters():
        expected = decay * before["model"][name] + (1 - decay) * after[name].detach()
        torch.testing.assert_close(p_ema, expected, msg=name)
    assert read(tmp_path / "checkpoints" / "latest.pt")["ema"] is not None

    state = loop.run_training(tiny("train.ema_decay=0"), tmp_path, resume=True, stop_at=64,
                              progress=False)
    assert state.ema is None and state.sampling_net() is state.net
    assert ("train.ema_decay 0: dropping the run's EMA; the trained weights sample"
            in caplog.messages)


def test_compile_switched_off_at_resume_leaves_no_compiled_energy(tmp_path):
    """The checkpoint does not decide ``train.compile``: a resume that switches it off trains
    and samples with the plain network."""
    loop.run_training(tiny("train.compile=true"), tmp_path, stop_at=32, progress=False)
    state = loop.run_training(tiny("train.compile=false"), tmp_path, resume=True, stop_at=48,
                              progress=False)
    assert state.compiled is None and state.sampling_energy() is state.net
