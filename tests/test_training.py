import json

import pytest
import torch
from conftest import tiny

from cfebm.files import read
from cfebm.model import EnergyNet
from cfebm.train import recovery
from cfebm.train.checkpoint import load_state
from cfebm.train.loop import RunError, run_training
from cfebm.train.step import cd_loss, new_state, train_step, update_ema


def test_cd_loss_gradient_is_eq2():
    # For E_θ(x) = θ·x the gradient of the loss is mean(x_data) − mean(x_sample) (Eq. 2).
    theta = torch.tensor(0.7, requires_grad=True)
    x_data, x_sample = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0, 5.0])
    cd_loss(theta * x_data, theta * x_sample).backward()
    assert theta.grad.item() == pytest.approx(2.0 - 1.0)


def test_update_ema_lerps_parameters_and_copies_buffers():
    cfg = tiny().model
    net, ema = EnergyNet(cfg), EnergyNet(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    old = [p.clone() for p in ema.parameters()]
    update_ema(ema, net, 0.9)
    for p_old, p_ema, p in zip(old, ema.parameters(), net.parameters()):
        torch.testing.assert_close(p_ema, 0.9 * p_old + 0.1 * p)
    assert all(torch.equal(a, b) for a, b in zip(ema.buffers(), net.buffers()))


def test_train_step_updates_the_model_and_counts_images():
    state = new_state(tiny())
    before = {k: p.clone() for k, p in state.net.named_parameters()}
    metrics = train_step(state, torch.rand(16, 1, 8, 8) * 2 - 1)
    assert state.n_images == 16 and set(metrics) == {"loss", "e_data", "e_sample", "grad_norm"}
    after = dict(state.net.named_parameters())
    assert not torch.equal(before["from_rgb.8x8.weight"], after["from_rgb.8x8.weight"])
    assert not torch.equal(before["head.weight"], after["head.weight"])
    # Parameters that the 8x8 stage does not use stay untouched (no gradient, no Adam step).
    assert torch.equal(before["from_rgb.16x16.weight"], after["from_rgb.16x16.weight"])
    assert torch.equal(before["blocks.16x16.skip.weight"], after["blocks.16x16.skip.weight"])


@pytest.mark.slow
@pytest.mark.parametrize("init", ["noise", "cascade", "frozen"])
def test_resume_equals_uninterrupted_run(tmp_path, init):
    cfg = tiny("train.ema_decay=0.9", "data.hflip=true", "train.data_sigma=0.01",
               f"sampler.init={init}")
    straight = run_training(cfg, tmp_path / "a", progress=False)
    # 160 images: 32 into stage 1 (16²), β = 32/64 = 0.5, with a frozen 8² copy for "frozen".
    run_training(cfg, tmp_path / "b", stop_at=160, progress=False)
    interrupted = read(tmp_path / "b" / "checkpoints" / "latest.pt")
    assert interrupted["n_images"] == 160
    resumed = run_training(cfg, tmp_path / "b", resume=True, progress=False)
    assert resumed.n_images == straight.n_images == 384
    for key, value in straight.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[key]), key
    for key, value in straight.ema.state_dict().items():
        assert torch.equal(value, resumed.ema.state_dict()[key]), key
    assert torch.equal(straight.generator.get_state(), resumed.generator.get_state())
    assert len(straight.coarse) == len(resumed.coarse) == (init == "frozen")
    for a, b in zip(straight.coarse, resumed.coarse):
        for key, value in a.state_dict().items():
            assert torch.equal(value, b.state_dict()[key]), key


def test_frozen_coarse_copy_is_the_model_as_its_stage_ended(tmp_path):
    # A.8 / Table 9(e): the 8² sampler of stage 2 is the stage-1 model, untouched by stage 2.
    cfg = tiny("train.ema_decay=0.9", "sampler.init=frozen")
    state = run_training(cfg, tmp_path, progress=False)
    ended = read(tmp_path / "checkpoints" / "stage0-8x8.pt")
    assert len(state.coarse) == 1 and not any(p.requires_grad for p in state.coarse[0].parameters())
    for key, value in state.coarse[0].state_dict().items():
        assert torch.equal(value, ended["model"][key]), key
    assert not torch.equal(state.net.state_dict()["head.weight"], ended["model"]["head.weight"])


def test_existing_run_needs_resume_and_same_model(tmp_path):
    cfg = tiny()
    run_training(cfg, tmp_path, stop_at=32, progress=False)
    with pytest.raises(RunError, match="--resume"):
        run_training(cfg, tmp_path, progress=False)
    with pytest.raises(RunError, match="model"):
        run_training(tiny("model.channels=8"), tmp_path, resume=True, progress=False)


def test_divergence_rolls_back_then_gives_up(tmp_path, monkeypatch):
    monkeypatch.setattr(recovery, "MAX_ABS_LOSS", 1e-12)  # every loss is a divergence
    cfg = tiny("run.max_recoveries=2")
    with pytest.raises(RunError, match="diverged"):
        run_training(cfg, tmp_path, progress=False)
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    recoveries = [e for e in events if e.get("event") == "recovery"]
    assert [e["lr_scale"] for e in recoveries] == [0.5, 0.25]
    assert all(e["rolled_back_to"] == 0 for e in recoveries)


def test_checkpoint_round_trip(tmp_path):
    cfg = tiny("train.ema_decay=0.5")
    state = run_training(cfg, tmp_path, stop_at=48, progress=False)
    loaded = load_state(tmp_path / "checkpoints" / "latest.pt")
    assert loaded.n_images == state.n_images and loaded.cfg == cfg
    for a, b in zip(state.net.state_dict().values(), loaded.net.state_dict().values()):
        assert torch.equal(a, b)
    assert loaded.optimizer.state_dict()["state"].keys() == state.optimizer.state_dict()["state"].keys()


def test_short_run_on_real_fashion_mnist(tmp_path, fashion_mnist_available):
    cfg = tiny("data.dataset=\"fashion_mnist\"", "data.limit=2000")
    state = run_training(cfg, tmp_path, stop_at=160, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert state.n_images == 160 and rows
    assert all(abs(r["loss"]) < 1e3 for r in rows)
    assert (tmp_path / "samples" / "final.png").exists()


def test_time_budget_stops_the_run_and_is_recorded(tmp_path, caplog):
    assert run_training(tiny(), tmp_path / "none", time_budget=0.0, progress=False).n_images == 0
    state = run_training(tiny(), tmp_path, time_budget=1e-9, progress=False)
    assert state.n_images == 16  # one iteration, then the budget is spent
    assert any("ran out at 16 of 384 images" in r.getMessage() for r in caplog.records)
    assert read(tmp_path / "checkpoints" / "latest.pt")["train_seconds"] > 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["n_images"] == 16 and rows[-1]["train_seconds"] > 0


def test_single_resolution_training_is_one_stage(tmp_path):
    # Table 9(d): no coarse-to-fine; the same code with one stage at the final resolution.
    cfg = tiny("growth.resolutions=[16]", "growth.batch_size=[8]", "growth.lr=[1e-3]",
               "growth.n_steps=[3]", "growth.fade_images=[0]", "growth.stage_images=[32]")
    state = run_training(cfg, tmp_path, progress=False)
    assert state.n_images == 32 and state.growth.resolution == 16 and state.growth.beta == 1.0
    # The 8x8 input layer exists (the 16x16 net is built on the 8x8 block) but is never trained.
    untrained = new_state(cfg).net.from_rgb["8x8"].weight
    assert torch.equal(state.net.from_rgb["8x8"].weight, untrained)


def test_bf16_training_runs_and_keeps_fp32_energies(tmp_path):
    state = new_state(tiny("train.precision=bf16", "train.channels_last=true"))
    metrics = train_step(state, torch.rand(16, 1, 8, 8) * 2 - 1)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    with state.autocast():
        assert state.net(torch.rand(2, 1, 8, 8)).dtype == torch.float32
