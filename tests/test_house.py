"""Behaviour stays across reorganisations: tiny runs trained by today's code give the weights
and samples that the code before issue 37's move gave (tests/data/house_reference.safetensors,
written at commit effc7f8 by the same recipe). Tolerances allow another CPU's float rounding,
not a changed seed, step or schedule (any of which moves every tensor by far more)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cfebm
from cfebm.config import apply_overrides, load_preset
from cfebm.train.loop import run_training

REFERENCE = Path(__file__).parent / "data" / "house_reference.safetensors"
VARIANTS = {"noise": ["train.ema_decay=0.9", "data.hflip=true", "train.data_sigma=0.01"],
            "frozen": ["sampler.init=frozen", "sampler.start_noise=nested",
                       "sampler.step_base_resolution=8", "growth.lr_decay=linear"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_a_tiny_run_trains_and_samples_as_before_the_move(tmp_path, name):
    reference = load_file(REFERENCE)
    cfg = apply_overrides(load_preset("tiny"), VARIANTS[name])
    run_training(cfg, tmp_path / "run", progress=False)
    model = cfebm.load(tmp_path / "run" / "checkpoints" / "latest.pt")
    weights = model.net.state_dict()
    expected = {k.split("/net/", 1)[1]: v for k, v in reference.items()
                if k.startswith(f"{name}/net/")}
    assert set(weights) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(weights[key], value, rtol=1e-4, atol=1e-5, msg=key)
    torch.testing.assert_close(model.sample(8, seed=3), reference[f"{name}/samples"],
                               rtol=1e-3, atol=1e-4)
