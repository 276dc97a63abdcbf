import pytest
import torch
import torch.nn.functional as F

from cfebm.config import ACTIVATION_NAMES, ModelConfig
from cfebm.model import (
    ACTIVATIONS,
    EnergyNet,
    EqualConv2d,
    EqualLinear,
    channels_at,
    count_parameters,
    frozen,
    make_activation,
)


@pytest.mark.parametrize("resolution", [8, 16, 32])
def test_energy_shape_at_every_stage(tiny_model_cfg, resolution):
    net = EnergyNet(tiny_model_cfg)
    x = torch.rand(3, 1, resolution, resolution) * 2 - 1
    assert net(x).shape == (3,)
    if resolution > 8:
        assert net(x, beta=0.3).shape == (3,)


def test_table6_widths():
    c = 32
    assert [channels_at(r, c) for r in (512, 256, 128, 64, 32, 16, 8, 4)] == [
        8, 16, 32, 64, 128, 128, 128, 128]


@pytest.mark.parametrize("resolution", [16, 32])
@pytest.mark.parametrize("residual,sn", [(True, True), (False, False)])
def test_beta_zero_equals_coarse_net_on_pooled_input(resolution, residual, sn):
    cfg = ModelConfig(channels=4, image_channels=3, max_resolution=32, residual=residual,
                      spectral_norm=sn)
    net = EnergyNet(cfg).eval()
    x = torch.rand(5, 3, resolution, resolution) * 2 - 1
    grown = net(x, beta=0.0)
    coarse = net(F.avg_pool2d(x, 2))
    torch.testing.assert_close(grown, coarse, rtol=0, atol=1e-6)


def test_beta_blends_primal_and_fade_paths(tiny_model_cfg):
    # Expand(x) = β·Primal + (1−β)·Fade is linear in β before the next block, so with
    # everything else fixed, E is a function of the blended features: β=1 ignores the fade.
    net = EnergyNet(tiny_model_cfg).eval()
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    torch.testing.assert_close(net(x, beta=1.0), net(x))
    assert not torch.allclose(net(x, beta=0.5), net(x))


def test_gradients_reach_the_input(tiny_model_cfg):
    net = EnergyNet(tiny_model_cfg)
    x = (torch.rand(2, 1, 32, 32) * 2 - 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(net(x, beta=0.5).sum(), x)
    assert grad.shape == x.shape and grad.abs().sum() > 0


def test_bad_inputs_raise(tiny_model_cfg):
    net = EnergyNet(tiny_model_cfg)
    with pytest.raises(ValueError, match="resolution 64"):
        net(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="expected images"):
        net(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="coarser stage"):
        net(torch.zeros(1, 1, 8, 8), beta=0.5)
    with pytest.raises(ValueError, match="beta"):
        net(torch.zeros(1, 1, 16, 16), beta=1.5)
    with pytest.raises(ValueError, match="model.activation must be one of"):
        ModelConfig(activation="tanhh")
    with pytest.raises(ValueError, match="unknown activation"):
        make_activation("tanhh")


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_builds_and_runs(name):
    net = EnergyNet(ModelConfig(channels=2, image_channels=1, max_resolution=8, activation=name))
    assert torch.isfinite(net(torch.rand(2, 1, 8, 8))).all()


def test_proebm_activation_variants():
    x = torch.linspace(-3, 3, 61)
    torch.testing.assert_close(ACTIVATIONS["swish_proebm"]()(x), x * torch.sigmoid(x) / 1.1)
    torch.testing.assert_close(ACTIVATIONS["swish"]()(x), x * torch.sigmoid(x))
    neg = x[x < 0]
    torch.testing.assert_close(ACTIVATIONS["celu_proebm"]()(neg), 1.1 * torch.expm1(neg / 1.1))


def test_parameter_count_closed_form():
    # c=4, grayscale, up to 16x16, no SN/residual distinction in counts: count by hand.
    cfg = ModelConfig(channels=4, image_channels=1, max_resolution=16, residual=True)
    net = EnergyNet(cfg)
    w = 16  # 4c everywhere at <= 32

    def conv(cin, cout, k):
        return cin * cout * k * k + cout

    from_rgb = 2 * conv(1, w, 1)
    block = conv(w, w, 3) * 2 + conv(w, w, 1)
    top = conv(w, w, 3) + conv(w, w, 4)
    head = w + 1
    assert count_parameters(net) == from_rgb + 2 * block + top + head
    assert count_parameters(net, 8) == conv(1, w, 1) + block + top + head


def test_frozen_restores_flags_and_blocks_parameter_grads(tiny_model_cfg):
    net = EnergyNet(tiny_model_cfg).train()
    x = (torch.rand(2, 1, 16, 16) * 2 - 1).requires_grad_(True)
    with frozen(net):
        assert not net.training
        torch.autograd.grad(net(x).sum(), x)
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert all(p.grad is None for p in net.parameters())


def test_spectral_norm_power_iteration_frozen_in_eval(tiny_model_cfg):
    net = EnergyNet(tiny_model_cfg)
    before = {k: v.clone() for k, v in net.state_dict().items() if k.endswith("_u")}
    with frozen(net):
        net(torch.rand(2, 1, 16, 16))
    after = net.state_dict()
    assert before and all(torch.equal(v, after[k]) for k, v in before.items())
    net.train()(torch.rand(2, 1, 16, 16))
    assert any(not torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_equalized_layers_scale_unit_normal_weights_at_run_time():
    """EqualConv2d/EqualLinear (REFERENCE §2.2): stored N(0, 1) weights, zero bias, and a forward
    pass equal to the plain layer with weight·√(2/fan_in)."""
    torch.manual_seed(0)
    conv, lin = EqualConv2d(8, 64, 3, padding=1), EqualLinear(256, 512)
    for layer in (conv, lin):
        assert abs(layer.weight.std().item() - 1.0) < 0.05 and not layer.bias.any()
        layer.bias.data.normal_()
    x = torch.randn(2, 8, 5, 5)
    expected = F.conv2d(x, conv.weight * (2 / (8 * 9)) ** 0.5, conv.bias, padding=1)
    torch.testing.assert_close(conv(x), expected)
    h = torch.randn(3, 256)
    torch.testing.assert_close(lin(h), h @ (lin.weight * (2 / 256) ** 0.5).T + lin.bias)


def test_equalized_lr_replaces_exactly_fromrgb_skips_and_head():
    net = EnergyNet(ModelConfig(channels=4, image_channels=1, max_resolution=16,
                                equalized_lr=True, head="mlp")).eval()
    equal = {n for n, m in net.named_modules() if isinstance(m, (EqualConv2d, EqualLinear))}
    assert equal == {"from_rgb.8x8", "from_rgb.16x16", "blocks.8x8.skip", "blocks.16x16.skip",
                     "head.0", "head.2"}
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    torch.testing.assert_close(net(x, beta=0.0), net(F.avg_pool2d(x, 2)), rtol=0, atol=1e-6)


def test_head_runs_in_fp32_under_bf16_autocast(tiny_model_cfg):
    """The head sets the energy scale, so only the features may be rounded to bf16."""
    net = EnergyNet(tiny_model_cfg).eval()
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        energy = net(x)
        h = net.blocks["8x8"](net.blocks["16x16"](net.from_rgb["16x16"](x)))
        features = net.top(h)
    assert features.dtype == torch.bfloat16 and energy.dtype == torch.float32
    expected = features.float() @ net.head.weight.T + net.head.bias
    torch.testing.assert_close(energy, expected.squeeze(1), rtol=0, atol=0)


def test_mlp_head_is_4c_to_16c_to_1():
    """The authors' projection head: Linear(4c, 16c), activation, Linear(16c, 1)."""
    linear = EnergyNet(ModelConfig(channels=4, image_channels=1, max_resolution=8))
    mlp = EnergyNet(ModelConfig(channels=4, image_channels=1, max_resolution=8, head="mlp"))
    w = 16
    assert count_parameters(mlp) - count_parameters(linear) == (w * 4 * w + 4 * w) + (4 * w + 1) - (
        w + 1)
    assert mlp(torch.rand(3, 1, 8, 8)).shape == (3,)


@pytest.mark.parametrize("scale", [1.0, 1.1, 2.0])
def test_swish_divides_by_its_scale(scale):
    from cfebm.model import Swish

    x = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(Swish(scale)(x), x * torch.sigmoid(x) / scale)


@pytest.mark.parametrize("sn", [True, False])
def test_spectral_norm_is_on_exactly_the_main_path_convs_when_asked(sn):
    """Table 9(b): spectral norm on every 3×3 and 4×4 main-path conv, whose weight then has
    largest singular value 1 (after power iterations in train mode); none without it."""
    from torch.nn.utils import parametrize

    torch.manual_seed(0)
    net = EnergyNet(ModelConfig(channels=4, image_channels=1, max_resolution=16,
                                spectral_norm=sn)).train()
    main = [net.blocks["8x8"].conv1, net.blocks["8x8"].conv2, net.blocks["16x16"].conv1,
            net.blocks["16x16"].conv2, net.top.conv1, net.top.conv2]
    assert [parametrize.is_parametrized(c, "weight") for c in main] == [sn] * 6
    assert not parametrize.is_parametrized(net.blocks["8x8"].skip, "weight")
    if sn:
        for _ in range(100):
            net(torch.rand(2, 1, 16, 16))
        for conv in main:
            sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
            assert sigma.item() == pytest.approx(1.0, abs=0.01)


def test_the_config_offers_exactly_the_activations_the_model_builds():
    assert set(ACTIVATION_NAMES) == set(ACTIVATIONS)
