"""The diffusion baseline of issue 41 (benchmarks/diffusion.py) does what its docstring says.

Checked against independent truth: the noise schedules' ᾱ_t against DDPM's product of (1 − β)
and the cosine schedule's closed form; the EMA's warm-up against its formula; a training step
descends on a fixed batch; DDIM returns images in [−1, 1] without a clamp, reproducibly; the
clock stops training after the budget, the way ``cfebm train --minutes`` does; the network is
the 1.1 M-parameter one the docs name; the machine's kind read from /proc/cpuinfo flags.
"""

import importlib.util
import itertools
import math
import sys
from pathlib import Path

import pytest
import torch

from cfebm.data import BatchStream, TensorImages, fake_images

pytest.importorskip("diffusers")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "diffusion.py"
sys.path.append(str(SCRIPT.parent))   # its sibling record.py, as when the script runs
spec = importlib.util.spec_from_file_location("diffusion_baseline", SCRIPT)
diffusion = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = diffusion   # dataclasses look their module up there
spec.loader.exec_module(diffusion)

# A UNet of the same block types, small enough for 8x8 images in milliseconds.
TINY = {"sample_size": 8, "block_out_channels": (8, 16),
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D"), "norm_num_groups": 4}


def test_linear_betas_give_ddpm_alpha_bar():
    scheduler = diffusion.DDPMScheduler(**diffusion.schedule_config("linear"))
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), alpha_bar, rtol=1e-4, atol=0)
    # DDPM (Sec. 4): at t = T the signal is almost gone, √ᾱ_T ≈ 0.0064
    assert math.sqrt(alpha_bar[-1]) == pytest.approx(0.00635, rel=0.01)


def test_cosine_betas_give_the_closed_form():
    scheduler = diffusion.DDPMScheduler(**diffusion.schedule_config("cosine"))
    s, T = 0.008, 1000

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    # ᾱ after step t is f(t + 1) / f(0) wherever β is below its cap of 0.999 (all but the end)
    closed = torch.tensor([f(t + 1) / f(0) for t in range(T)], dtype=torch.float64)
    uncapped = scheduler.betas < 0.999
    assert uncapped[:-1].all()
    torch.testing.assert_close(scheduler.alphas_cumprod.double()[uncapped], closed[uncapped],
                               rtol=1e-4, atol=1e-7)


def test_unknown_betas_are_refused():
    with pytest.raises(ValueError, match="betas"):
        diffusion.schedule_config("quadratic")


def test_ema_decay_warms_up_to_its_cap():
    assert diffusion.ema_decay(0) == 0.0   # the EMA starts as the weights
    assert diffusion.ema_decay(1) == pytest.approx(1 - 2 ** -0.75)
    assert diffusion.ema_decay(999) == pytest.approx(1 - 1000 ** -0.75)
    assert diffusion.ema_decay(10**9) == 0.9999
    decays = [diffusion.ema_decay(k) for k in range(0, 5000, 50)]
    assert decays == sorted(decays)


def test_the_network_is_the_documented_size():
    unet = diffusion.make_unet()
    assert sum(p.numel() for p in unet.parameters()) == 1_112_801


def test_training_steps_descend_on_a_fixed_batch():
    run = diffusion.new_run(lr=2e-3, seed=0, **TINY)
    x0 = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    # the same generator state each step: the same t and ε, so the loss is one function
    losses = [diffusion.train_step(run, x0, torch.Generator().manual_seed(2))
              for _ in range(15)]
    assert losses[-1] < 0.5 * losses[0]
    assert run.steps == 15 and run.images == 15 * 8
    # the EMA moved away from the first step's weights toward the current ones, not past them
    w, w_ema = next(run.unet.parameters()), next(run.ema.parameters())
    assert not torch.equal(w, w_ema)


def test_the_first_update_sets_the_ema_to_the_weights():
    run = diffusion.new_run(lr=1e-2, seed=0, **TINY)
    x0 = torch.zeros(4, 1, 8, 8)
    diffusion.train_step(run, x0, torch.Generator().manual_seed(0))
    for p, p_ema in zip(run.unet.parameters(), run.ema.parameters()):
        assert torch.equal(p, p_ema)


def test_warmup_ramps_the_learning_rate():
    run = diffusion.new_run(lr=1e-3, seed=0, **TINY)
    lrs = []
    for _ in range(5):
        diffusion.train_step(run, torch.zeros(2, 1, 8, 8), torch.Generator().manual_seed(0),
                             warmup=4)
        lrs.append(run.optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])


def test_ddim_samples_lie_in_the_data_range_and_repeat_with_the_seed():
    unet = diffusion.make_unet(**TINY).eval()
    config = diffusion.schedule_config("linear")
    x, seconds = diffusion.sample(unet, config, 5, shape=(1, 8, 8), steps=10, batch_size=3,
                                  seed=3)
    assert x.shape == (5, 1, 8, 8) and len(seconds) == 2
    assert x.min() >= -1 and x.max() <= 1      # clipped x0 at ᾱ = 1: no clamp needed
    assert x.abs().max() > 0.5                 # and not collapsed to zero
    again, _ = diffusion.sample(unet, config, 5, shape=(1, 8, 8), steps=10, batch_size=3,
                                seed=3)
    assert torch.equal(x, again)


def test_training_stops_by_the_clock():
    run = diffusion.new_run(lr=1e-3, seed=0, **TINY)
    images = TensorImages(fake_images("train", 8, 1, 16), name="fake")
    clock = itertools.count(100.0).__next__   # one second per look at the clock
    diffusion.train(run, BatchStream(images, 0), seconds=5, batch_size=4, clock=clock)
    # started at 100; looked at 101..104 (< 5 s: a step each), then 105: stop
    assert run.steps == 4 and run.images == 16 and run.train_seconds == 5


def test_checkpoint_round_trip(tmp_path):
    run = diffusion.new_run(lr=1e-3, seed=0)
    run.steps, run.images, run.train_seconds = 3, 192, 12.5
    path = tmp_path / "checkpoint.pt"
    diffusion.save_checkpoint(run, path, betas="cosine", args={"minutes": 1.0})
    ema, info = diffusion.load_ema(path, torch.device("cpu"))
    for a, b in zip(ema.parameters(), run.ema.parameters()):
        assert torch.equal(a, b)
    assert (info["betas"], info["images"], info["train_seconds"]) == ("cosine", 192, 12.5)


@pytest.mark.parametrize("flags, kind", [
    ("fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16", "AMX (Intel Xeon kind)"),
    ("fpu avx2 avx512f avx512_bf16", "AVX-512 with bf16 (EPYC-512 kind)"),
    ("fpu avx2 fma", "AVX2 only (EPYC-AVX2 kind)"),
])
def test_machine_kind_from_cpuinfo(flags, kind):
    facts = diffusion.machine_facts(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n"
                                    f"processor\t: 1\nflags\t\t: {flags}\n")
    assert facts["kind"] == kind and facts["cpu"] == "Some CPU"
    assert set(facts["flags"]) <= set(flags.split())
