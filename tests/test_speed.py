"""torch.compile of the Langevin energy (speed.py): the same energies and gradients as the eager
network, and a number of compilations that does not grow as β moves through a fade."""

import os

import pytest
import torch
from torch._dynamo.utils import counters

from cfebm import runtime
from cfebm.config import ModelConfig, apply_overrides, load_preset
from cfebm.model import EnergyNet, frozen
from cfebm.runtime import CompiledEnergy
from cfebm.train import speed
from cfebm.train.checkpoint import rolled_back, save_state
from cfebm.train.speed import busy_cpu_warning, describe
from cfebm.train.step import new_state, train_step


def energy_and_grad(net, x, beta):
    x = x.clone().requires_grad_(True)
    e = net(x, beta)
    (g,) = torch.autograd.grad(e.sum(), x)
    return e.detach(), g


@pytest.fixture
def net():
    torch.manual_seed(0)
    return EnergyNet(ModelConfig(channels=4, image_channels=1, max_resolution=16))


def chain(compiled, net, x, beta, steps=2):
    """What one training iteration does: a fresh ``frozen`` context (its spectral-norm weights
    cached afresh), then several calls; each checked against the eager network."""
    with frozen(net):
        for _ in range(steps):
            e, g = energy_and_grad(compiled, x, beta)
            e_ref, g_ref = energy_and_grad(net, x, beta)
            torch.testing.assert_close(e, e_ref, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)


def test_compile_count_stays_fixed_across_fade_steps(net):
    """Graphs: fading and grown, with the spectral-norm weights cached before a chain starts;
    none more however many β values follow."""
    torch._dynamo.reset()
    counters.clear()
    compiled = CompiledEnergy(net, backend="aot_eager")  # the graphs, without a C++ build
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    chain(compiled, net, x, 0.05)
    chain(compiled, net, x, 1.0)
    graphs = counters["stats"]["unique_graphs"]
    for beta in (0.1, 0.37, 0.5, 0.93, 1.0, 0.999):
        chain(compiled, net, x, beta)
    assert counters["stats"]["unique_graphs"] == graphs <= 2


def test_every_resolution_of_a_run_is_compiled_not_sent_back_to_eager():
    """8² → … → 128² with fades, as the celebahq128 preset: its nine graphs exceed dynamo's
    default limit of 8 per function, after which new shapes would silently run eager."""
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    net = EnergyNet(ModelConfig(channels=4, image_channels=1, max_resolution=128))
    compiled = CompiledEnergy(net, backend="aot_eager")
    for r in (8, 16, 32, 64, 128):
        x = torch.rand(2, 1, r, r) * 2 - 1
        for beta in ((1.0,) if r == 8 else (0.3, 1.0)):
            before = counters["stats"]["unique_graphs"]
            chain(compiled, net, x, beta)
            assert counters["stats"]["unique_graphs"] > before, f"{r}² at β = {beta} ran eager"


def test_beta_as_a_float_would_recompile(net):
    """The control: compiling the network itself, a new float β costs another graph."""
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(net, backend="aot_eager", dynamic=False)
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    chain(compiled, net, x, 0.05)
    graphs = counters["stats"]["unique_graphs"]
    chain(compiled, net, x, 0.1)
    assert counters["stats"]["unique_graphs"] > graphs


def test_a_backend_that_cannot_compile_falls_back_to_the_eager_net(net, caplog):
    """What a CPU without a C++ compiler does to inductor: the energies stay the eager net's."""
    def broken(graph, example_inputs):
        raise RuntimeError("no C++ compiler found")

    torch._dynamo.reset()
    compiled = CompiledEnergy(net, backend=broken)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    with frozen(net):
        for beta in (0.3, 1.0):
            e, g = energy_and_grad(compiled, x, beta)
            e_ref, g_ref = energy_and_grad(net, x, beta)
            torch.testing.assert_close(e, e_ref)
            torch.testing.assert_close(g, g_ref)
    warnings = [r for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "no C++ compiler found" in warnings[0].getMessage()
    with pytest.raises(ValueError, match="expected images"):  # the net's own errors surface
        compiled(torch.rand(2, 3, 16, 16), 1.0)


def test_training_step_with_compile_matches_eager(monkeypatch):
    monkeypatch.setattr("cfebm.runtime.torch.compile",
                        lambda net, **kw: torch._dynamo.optimize("aot_eager")(net))
    torch._dynamo.reset()
    cfg = apply_overrides(load_preset("tiny"), ["train.device=\"cpu\""])
    states = [new_state(apply_overrides(cfg, [f"train.compile={c}"])) for c in ("false", "true")]
    assert states[0].compiled is None and states[1].compiled is not None
    x = torch.rand(16, 1, 8, 8) * 2 - 1
    metrics = [train_step(s, x) for s in states]
    assert metrics[0]["loss"] == pytest.approx(metrics[1]["loss"], rel=1e-5, abs=1e-6)
    for a, b in zip(states[0].net.parameters(), states[1].net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert "compile True" in describe(states[1].cfg, torch.device("cpu"))


def test_rollbacks_leave_the_rolled_back_network_its_compiled_graphs(monkeypatch, tmp_path):
    """Each rollback builds a new network; the discarded ones' graphs must not fill dynamo's
    per-function limit (12 graphs for two resolutions), or the energy silently runs eagerly
    from then on: every rolled-back network still compiles the graphs it meets."""
    monkeypatch.setattr("cfebm.runtime.torch.compile",
                        lambda net, **kw: torch._dynamo.optimize("aot_eager")(net))
    torch._dynamo.reset()
    counters.clear()
    state = new_state(apply_overrides(load_preset("tiny"), ["train.compile=true"]))
    state.n_images = 160  # 16², mid-fade: two graphs (β as a tensor, and β = 1 for the coarse
    save_state(state, tmp_path / "snapshot.pt")  # chain's 8²) per network
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    for _ in range(8):  # 16 graphs in all, beyond the limit
        state = rolled_back(tmp_path / "snapshot.pt", state)
        before = counters["stats"]["unique_graphs"]
        with frozen(state.net):
            energy_and_grad(state.compiled, x, 0.5)
            energy_and_grad(state.compiled, x[:, :, ::2, ::2], 1.0)
        assert counters["stats"]["unique_graphs"] == before + 2, "ran eagerly"


def test_a_busy_cpu_is_reported_only_when_threads_would_contend(monkeypatch):
    """The machine's runnable-task count is the input: others' tasks plus our threads beyond the
    cores warn."""
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(torch, "get_num_threads", lambda: cores)
    monkeypatch.setattr(speed, "_runnable_tasks", lambda: 1 + 1)   # us and one other job
    assert "OMP_NUM_THREADS=1" in busy_cpu_warning(torch.device("cpu"), samples=1)
    assert busy_cpu_warning(torch.device("cuda"), samples=1) is None
    monkeypatch.setattr(speed, "_runnable_tasks", lambda: 1)       # us alone
    assert busy_cpu_warning(torch.device("cpu"), samples=1) is None
    monkeypatch.setattr(speed, "_runnable_tasks", lambda: 1 + 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert busy_cpu_warning(torch.device("cpu"), samples=1) is None


def test_the_runnable_task_count_includes_this_process():
    assert speed._runnable_tasks() >= 1


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_on_a_cpu_that_runs_it_natively(monkeypatch, native):
    """"auto": bf16 on a CPU with native bf16, fp32 on one that would emulate it, and fp32 on
    CUDA whatever it supports (bf16 measured slower there); a precision asked for by name stays."""
    monkeypatch.setattr(runtime, "native_bf16", lambda device: native)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert runtime.resolved_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert runtime.resolved_precision("auto", cuda) == "fp32"
    for device in (cpu, cuda):
        assert runtime.resolved_precision("bf16", device) == "bf16"
        assert runtime.resolved_precision("fp32", device) == "fp32"
    assert (speed.precision_warning("bf16", cpu) is None) == native


def test_cuda_graphs_only_with_compile_and_only_on_a_gpu(net):
    """train.cuda_graphs compiles with "reduce-overhead" on CUDA; a CPU run of the same config
    compiles plainly, and the line printed at the start says which."""
    cfg = apply_overrides(load_preset("tiny"), ["train.compile=true", "train.cuda_graphs=true"])
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert runtime.compiled_energy(net, cfg, cuda).mode == "reduce-overhead"
    assert runtime.compiled_energy(net, cfg, cpu).mode is None
    assert "CUDA graphs" in describe(cfg, cuda) and "CUDA graphs" not in describe(cfg, cpu)
    plain = apply_overrides(load_preset("tiny"), ["train.compile=true"])
    assert runtime.compiled_energy(net, plain, cuda).mode is None
    assert runtime.compiled_energy(net, load_preset("tiny"), cuda) is None
    with pytest.raises(ValueError, match="needs train.compile"):
        apply_overrides(load_preset("tiny"), ["train.cuda_graphs=true"])
