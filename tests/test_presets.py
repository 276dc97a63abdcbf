"""Every preset loads, holds only overrides of the defaults, and builds a network whose size is
the one its comment states."""

import re
import tomllib
from importlib import resources

import pytest

from cfebm.config import ADAM_BETAS, Config, load_preset, preset_names, to_dict
from cfebm.model import EnergyNet, count_parameters

PAPER = ("cifar10", "celeba64", "celeba64-crop140", "celebahq128", "celebahq256", "celebahq512",
         "imagenet32", "lsun-church128")
SIZE = re.compile(r"# Size: ([\d,]+) parameters \(([\d,]+) used at (\d+)²\)")


def text(name: str) -> str:
    return (resources.files("cfebm.presets") / f"{name}.toml").read_text()


def test_the_paper_presets_exist():
    assert set(PAPER) <= set(preset_names())


@pytest.mark.parametrize("name", preset_names())
def test_preset_loads_and_states_its_parameter_count(name):
    cfg = load_preset(name)
    stated = SIZE.search(text(name))
    if name in PAPER:
        assert stated, f"{name}.toml does not state its size"
    if stated:
        total, used, resolution = (int(g.replace(",", "")) for g in stated.groups())
        net = EnergyNet(cfg.model)
        assert resolution == cfg.model.max_resolution
        assert count_parameters(net) == total
        assert count_parameters(net, resolution) == used


def test_a_preset_with_a_base_is_its_base_plus_its_own_keys():
    long, base = to_dict(load_preset("fmnist32-2h")), to_dict(load_preset("fmnist32"))
    assert long["growth"]["stage_images"] == [19_200, 44_800, 240_000]
    assert long["growth"]["n_steps"] == [15, 25, 30] != base["growth"]["n_steps"]
    assert long["train"]["compile"] is False and base["train"]["compile"] is True
    assert (long["sampler"]["start_noise"], long["sampler"]["step_base_resolution"]) == ("uniform", 0)
    assert (base["sampler"]["start_noise"], base["sampler"]["step_base_resolution"]) == ("nested", 8)
    assert (long["eval"]["fid_watch"], long["eval"]["every"]) == (0.0, 0)
    assert (base["eval"]["fid_watch"], base["eval"]["every"]) == (1.25, 1_600)
    assert long["growth"]["fade_images"][2] == 12_800 != base["growth"]["fade_images"][2]
    for key in ("stage_images", "n_steps", "fade_images"):
        long["growth"][key] = base["growth"][key]
    long["train"]["compile"] = base["train"]["compile"]
    long["eval"]["fid_watch"], long["eval"]["every"] = base["eval"]["fid_watch"], base["eval"]["every"]
    long["sampler"] = base["sampler"]
    assert long == base


@pytest.mark.parametrize("name", [p for p in PAPER if p != "cifar10"])  # (older ones restate)
def test_preset_holds_overrides_only(name):
    defaults = to_dict(Config())
    for section, values in tomllib.loads(text(name)).items():
        for key, value in values.items():
            value = list(value) if isinstance(value, list) else value
            assert defaults[section][key] != value, f"{name}: {section}.{key} is the default"


# ------------------------------------------------------------------------------------------------
# The `paper-*` presets: Algorithms 1 and 2 with A.2's settings, at our presets' sizes. The paper's
# values are written out here from the paper (Zhao, Xie & Li, ICLR 2021), not read from the
# library's defaults, so a changed default cannot carry a paper preset with it.

PAPER_TWINS = {"paper-quickstart": "quickstart", "paper-fmnist32": "fmnist32"}
A2_LR = {8: 1e-3, 16: 1e-3, 32: 1e-3}         # A.2: "learning rate schedule α = {8×8: 0.001, ...}"
A2_T = {8: 15, 16: 30, 32: 50}                 # A.2: "number of Langevin steps T = {8×8: 15, ...}"
A2_N = {8: 50_000, 16: 75_000, 32: 100_000}    # A.2: "data feeding schedule N = {8×8: 50k, ...}"
PAPER_VALUES = {
    # Algorithms 1 and 2: chains start from U(−1, 1) at the current resolution ...
    ("sampler", "start_noise"): "uniform",
    ("sampler", "init"): "noise",
    # ... with Algorithm 1's smooth sampling during a fade: ⌊T(s−1)(1−β)⌋ coarse steps, then
    # √(1−β²)·Upsample(x) + β·U
    ("sampler", "smooth"): True,
    ("sampler", "mix"): "sqrt",
    # A.2: "the Langevin step size as 1.0" at every resolution (Sec. 3.1: "we keep the step size
    # constant") and "the variance of the Langevin noise term as η_t = 2e-2 − 2e-2/(T − t + 1)"
    ("sampler", "step_size"): 1.0,
    ("sampler", "step_base_resolution"): 0,
    ("sampler", "noise_schedule"): "a2",
    ("sampler", "eta0"): 0.02,
    # A.2: one lr per resolution (no decay); Adam's β1 = 0.5, β2 = 0.999 are ADAM_BETAS
    ("growth", "lr_decay"): "none",
    # Sec. 3.4: no perturbation of the data; the paper has no EMA, no lr equalisation, no
    # in-training evaluation to watch
    ("train", "data_sigma"): 0.0,
    ("train", "ema_decay"): 0.0,
    ("model", "equalized_lr"): False,
    ("eval", "every"): 0,
    ("eval", "fid_watch"): 0.0,
    # Table 6 and Sec. 3.2(i): Swish, spectral norm, residual Primal blocks, a linear head
    ("model", "activation"): "swish",
    ("model", "spectral_norm"): True,
    ("model", "residual"): True,
    ("model", "head"): "linear",
}


@pytest.mark.parametrize("name", PAPER_TWINS)
def test_a_paper_preset_is_the_papers_method(name):
    cfg = load_preset(name)
    for (section, key), value in PAPER_VALUES.items():
        assert getattr(getattr(cfg, section), key) == value, f"{name}: {section}.{key}"
    assert ADAM_BETAS == (0.5, 0.999)  # A.2, for every run
    g = cfg.growth
    assert g.lr == tuple(A2_LR[r] for r in g.resolutions)
    assert g.n_steps == tuple(A2_T[r] for r in g.resolutions)


@pytest.mark.parametrize("name", PAPER_TWINS)
def test_a_paper_preset_feeds_data_in_a2s_proportions(name):
    """A.2's N per resolution, all scaled by one factor: each stage after the first fades over N
    and trains N more at β = 1, the first trains 2N (Algorithm 1 with β = min(1, 2m/N'), N' = 2N;
    REFERENCE §4.3)."""
    g = load_preset(name).growth
    n = [A2_N[r] for r in g.resolutions]
    scale = g.stage_images[0] / (2 * n[0])
    assert g.fade_images[0] == 0
    for s in range(1, len(n)):
        assert g.fade_images[s] == pytest.approx(scale * n[s])
        assert g.stage_images[s] == 2 * g.fade_images[s]


@pytest.mark.parametrize("name, twin", PAPER_TWINS.items())
def test_a_paper_preset_has_its_twins_size_and_engineering(name, twin):
    """Same data, resolutions, network size and batches as the preset it is run beside, and the
    same speed settings (precision, memory format, compile), so only the method differs."""
    paper, ours = to_dict(load_preset(name)), to_dict(load_preset(twin))
    assert paper["data"] == ours["data"]
    for key in ("channels", "image_channels", "max_resolution"):
        assert paper["model"][key] == ours["model"][key], key
    for key in ("resolutions", "batch_size"):
        assert paper["growth"][key] == ours["growth"][key], key
    for key in ("precision", "channels_last", "compile", "seed"):
        assert paper["train"][key] == ours["train"][key], key


@pytest.mark.slow
def test_the_paper_preset_trains_end_to_end_on_fake_images(tmp_path):
    """`paper-fmnist32`, shrunk (c = 4, batch 8, fake images, no compile, small grids), through
    both fades to 32²: the run ends fully grown and its checkpoint keeps the paper's sampler."""
    from cfebm.cli import main
    from cfebm.trained import load

    run_dir = tmp_path / "run"
    shrink = ["data.dataset=fake", "data.limit=256", "model.channels=4", "train.compile=false",
              "run.n_grid=4", "growth.batch_size=[8,8,8]", "growth.stage_images=[16,32,32]",
              "growth.fade_images=[0,16,16]"]
    argv = ["train", "--preset", "paper-fmnist32", "--run-dir", str(run_dir), "--no-progress"]
    assert main([*argv, *(a for s in shrink for a in ("--set", s))]) == 0
    model = load(run_dir, device="cpu")
    assert (model.n_images, model.resolution, model.beta) == (80, 32, 1.0)
    assert model.cfg.sampler == load_preset("paper-fmnist32").sampler
    assert model.schedule() == [(32, 50)]  # Algorithm 2: U(−1, 1) at 32², then T = 50 steps
