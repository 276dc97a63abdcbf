"""``cfebm sample`` draws Algorithm 2 from the checkpoint's weights, and its flags do what they say.

The reference is rebuilt here without the CLI's loading and scheduling code: the checkpoint is
read with ``torch.load(weights_only=True)``, the EMA (or raw) weights go into a fresh
``EnergyNet``, and Algorithm 2 is U(−1, 1) from a generator seeded with ``--seed`` followed by
T steps of ``langevin`` (itself checked against closed forms in test_sampling.py and
test_sampler_truth.py) with the config's step size and noise schedule started at η0. The CLI's
per-image PNGs must equal that reference's pixels exactly.
"""

import numpy as np
import pytest
import torch
from conftest import gaussian_energy
from PIL import Image

from cfebm.cli import main
from cfebm.config import SamplerConfig, from_dict
from cfebm.data import to_uint8
from cfebm.model import EnergyNet
from cfebm.sampling import Streams, init_uniform, langevin, langevin_cfg, noise_schedule

N = 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A stage-0 (8²) checkpoint after 4 iterations, with an EMA that differs from the net."""
    run_dir = tmp_path_factory.mktemp("run")
    assert main(["train", "--preset", "tiny", "--run-dir", str(run_dir), "--no-progress",
                 "--stop-at", "64", "--set", "train.ema_decay=0.5"]) == 0
    return run_dir / "checkpoints" / "latest.pt"


def reference(path, *, ema=True, seed=0, steps=None, noise=None):
    """Algorithm 2 at the checkpoint's stage, as uint8 pixels (N, 1, 8, 8), and its start."""
    ckpt = torch.load(path, weights_only=True)
    cfg = from_dict(ckpt["config"])
    assert ckpt["n_images"] == 64  # stage 0: 8², β = 1, T = growth.n_steps[0]
    net = EnergyNet(cfg.model)
    net.load_state_dict(ckpt["ema"] if ema else ckpt["model"])
    net.eval().requires_grad_(False)
    n_steps = cfg.growth.n_steps[0] if steps is None else steps
    eta0 = cfg.sampler.eta0 if noise is None else noise
    g = Streams.for_chains(seed, 0, N)  # the CLI's seeded streams, one per 50 chains
    x0 = init_uniform(N, 1, 8, generator=g)
    x = langevin(net, x0, n_steps, cfg.sampler.step_size,
                 noise_schedule(cfg.sampler.noise_schedule, n_steps, eta0), generator=g)
    return to_uint8(x), to_uint8(x0)


def cli_samples(path, out, *flags):
    assert main(["sample", str(path), "--n", str(N), "--out", str(out / "grid.png"),
                 "--each", str(out / "each"), "--device", "cpu", *flags]) == 0
    files = sorted((out / "each").glob("*.png"))
    assert len(files) == N
    return torch.from_numpy(np.stack([np.array(Image.open(f)) for f in files]))[:, None]


@pytest.mark.slow
def test_cli_samples_are_algorithm_2_with_the_checkpoints_weights(checkpoint, tmp_path):
    """Defaults, --seed, --no-ema, --steps and --noise each give exactly the reference with
    that change, and each change changes the pixels."""
    default, start = reference(checkpoint, seed=3)
    assert (default != start).any()  # the chains move: 0 steps would be visible
    assert torch.equal(cli_samples(checkpoint, tmp_path / "a", "--seed", "3"), default)

    other_seed, _ = reference(checkpoint, seed=4)
    assert not torch.equal(other_seed, default)
    assert torch.equal(cli_samples(checkpoint, tmp_path / "b", "--seed", "4"), other_seed)

    raw, _ = reference(checkpoint, seed=3, ema=False)
    assert not torch.equal(raw, default)  # the EMA really differs from the trained weights
    assert torch.equal(cli_samples(checkpoint, tmp_path / "c", "--seed", "3", "--no-ema"), raw)

    short, _ = reference(checkpoint, seed=3, steps=2)
    noisy, _ = reference(checkpoint, seed=3, steps=2, noise=0.3)
    assert not torch.equal(short, default) and not torch.equal(noisy, short)
    assert torch.equal(cli_samples(checkpoint, tmp_path / "d", "--seed", "3", "--steps", "2"),
                       short)
    assert torch.equal(cli_samples(checkpoint, tmp_path / "e", "--seed", "3", "--steps", "2",
                                   "--noise", "0.3"), noisy)


@pytest.mark.parametrize("schedule", ["std_linear", "variance_linear", "a2", "constant"])
def test_langevin_cfg_noise_overrides_the_configs_eta0(schedule):
    """``langevin_cfg(..., eta0=η)`` is ``langevin`` with the config's step size and its
    schedule started at η instead of the config's η0 (the test-time noise of Fig. 16); η = 0
    is plain gradient descent."""
    cfg = SamplerConfig(eta0=0.015, noise_schedule=schedule, step_size=0.1)
    x0 = torch.rand(4, 1, 3, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for eta in (None, 0.0, 0.4):
        got = langevin_cfg(gaussian_energy, x0, 7, cfg, eta0=eta,
                           generator=torch.Generator().manual_seed(1))
        want = langevin(gaussian_energy, x0, 7, 0.1,
                        noise_schedule(schedule, 7, 0.015 if eta is None else eta),
                        generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    descent = langevin_cfg(gaussian_energy, x0, 7, cfg, eta0=0.0)
    torch.testing.assert_close(descent, x0 * 0.9**7)  # x ← x − 0.1·x, seven times


@pytest.mark.slow
def test_load_defaults_to_the_ema_on_cpu_and_carries_the_frozen_copies(checkpoint, tmp_path):
    """``cfebm.load(path, device="cpu")`` with no other options: the EMA weights, on the CPU, in eval mode, with the
    checkpoint's progress; ``ema=False`` gives the trained weights. A frozen-init checkpoint past
    stage 0 brings its frozen 8² copy along, with the weights stored for it."""
    from cfebm.train.loop import run_training
    from cfebm.trained import load

    ckpt = torch.load(checkpoint, weights_only=True)
    model = load(checkpoint, device="cpu")
    assert model.n_images == 64 and model.growth.stage == 0 and not model.net.training
    assert next(model.net.parameters()).device == torch.device("cpu")
    for key, value in model.net.state_dict().items():
        assert torch.equal(value, ckpt["ema"][key]), key
    raw = load(checkpoint, ema=False, device="cpu").net.state_dict()
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in raw.items())

    cfg = from_dict({**ckpt["config"], "sampler": {**ckpt["config"]["sampler"], "init": "frozen"}})
    run_training(cfg, tmp_path / "frozen", stop_at=144, progress=False)
    path = tmp_path / "frozen" / "checkpoints" / "latest.pt"
    stored = torch.load(path, weights_only=True)["coarse"]
    model = load(path, device="cpu")
    assert model.growth.stage == 1 and len(stored) == len(model.coarse) == 1
    for key, value in model.coarse[0].state_dict().items():
        assert torch.equal(value, stored[0][key]), key
