"""The device follows the tensors: training, sampling and checkpoints on a CUDA device.

Marked ``gpu`` and skipped without CUDA (conftest). On the CPU-only machines of CI these do not
run; they are the tests that kill mutants such as ``device=None`` in ``smooth_init`` or
``map_location=None`` in checkpoint loading, which are equivalent on a CPU (see
benchmarks/RESULTS.md, mutation testing).
"""

import pytest
import torch
from conftest import tiny as base_tiny

from cfebm.chains import sample_negatives
from cfebm.config import SamplerConfig, apply_overrides, load_preset
from cfebm.growth import Growth
from cfebm.model import EnergyNet, frozen
from cfebm.runtime import CompiledEnergy
from cfebm.train.checkpoint import load_state, save_state
from cfebm.train.step import new_state, train_step
from cfebm.trained import load

pytestmark = pytest.mark.gpu


def tiny(*overrides):
    return base_tiny("train.device=cuda", *overrides)


def test_smooth_and_cascade_negatives_stay_on_the_gpu():
    """Every sampler.init, mid-fade, returns (n, C, 16, 16) on the generator's device."""
    net = EnergyNet(load_preset("tiny").model).cuda()
    growth = Growth(1, 16, 0.5, 32, 4, 1e-3, n_steps=2, n_steps_coarse=3,
                    cascade=((8, 3), (16, 2)))
    for init in ("noise", "cascade"):
        with frozen(net):
            x = sample_negatives(net, growth, 3, SamplerConfig(init=init),
                                 generator=torch.Generator(device="cuda").manual_seed(0),
                                 device="cuda")
        assert x.shape == (3, 1, 16, 16) and x.device.type == "cuda"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_step_on_the_gpu_and_checkpoint_back_to_the_cpu(tmp_path, precision):
    """A CUDA run's checkpoint resumes on the GPU (load_state) and loads for sampling on the CPU
    (cfebm.load), with the same weights."""
    state = new_state(tiny("train.ema_decay=0.5", f"train.precision={precision}"))
    assert state.device.type == "cuda"
    x = torch.rand(16, 1, 8, 8, device="cuda") * 2 - 1
    with state.autocast():  # bf16 autocast (CUDA's own default would be fp16)
        h = state.net.from_rgb["8x8"](x)
    assert h.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    metrics = train_step(state, x)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    save_state(state, tmp_path / "s.pt")
    resumed = load_state(tmp_path / "s.pt")  # the config's device, cuda
    model = load(tmp_path / "s.pt", device="cpu")
    for key, value in state.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[key]), key
    for key, value in state.ema.state_dict().items():
        assert torch.equal(value.cpu(), model.net.state_dict()[key]), key
    assert resumed.device.type == "cuda" and next(model.net.parameters()).device.type == "cpu"
    assert resumed.n_images == 16 and model.n_images == 16


def test_load_state_puts_the_state_on_the_requested_device(tmp_path):
    """With train.device = "auto" a GPU machine would pick cuda; ``device="cpu"`` must win."""
    cfg = apply_overrides(load_preset("tiny"), ["train.device=auto"])
    save_state(new_state(cfg, torch.device("cpu")), tmp_path / "s.pt")
    assert load_state(tmp_path / "s.pt", device="cpu").device.type == "cpu"


def test_cuda_graphs_replay_the_eager_energies_and_gradients():
    """torch.compile with CUDA graphs ("reduce-overhead"), over several chains and a fade: each
    replay's energies and input gradients are the eager network's. ``model.frozen`` computes the
    spectral-norm weights before a chain, so no graph output is overwritten by a later replay."""
    torch.manual_seed(0)
    net = EnergyNet(load_preset("tiny").model).cuda()
    compiled = CompiledEnergy(net, mode="reduce-overhead")
    x = torch.rand(8, 1, 16, 16, device="cuda") * 2 - 1
    for beta in (0.5, 0.7, 1.0, 1.0):
        with frozen(net):
            for _ in range(3):
                got = [t.detach().clone() for t in energy_and_grad(compiled, x, beta)]
                want = energy_and_grad(net, x, beta)
                for a, b in zip(got, want):
                    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)  # TF32 convolutions
                x = (x - 0.01 * got[1]).clamp(-1, 1)


def energy_and_grad(net, x, beta):
    x = x.clone().requires_grad_(True)
    e = net(x, beta)
    (g,) = torch.autograd.grad(e.sum(), x)
    return e, g
