"""Every preset loads, holds only overrides of the defaults, and builds a network whose size is
the one its comment states."""

import re
import tomllib
from importlib import resources

import pytest

from cfebm.config import Config, load_preset, preset_names, to_dict
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
    assert (long["train"]["fid_watch"], long["train"]["eval_every"]) == (0.0, 0)
    assert (base["train"]["fid_watch"], base["train"]["eval_every"]) == (1.25, 1_600)
    assert long["growth"]["fade_images"][2] == 12_800 != base["growth"]["fade_images"][2]
    for key in ("stage_images", "n_steps", "fade_images"):
        long["growth"][key] = base["growth"][key]
    for key in ("compile", "fid_watch", "eval_every"):
        long["train"][key] = base["train"][key]
    long["sampler"] = base["sampler"]
    assert long == base


@pytest.mark.parametrize("name", [p for p in PAPER if p != "cifar10"])  # (older ones restate)
def test_preset_holds_overrides_only(name):
    defaults = to_dict(Config())
    for section, values in tomllib.loads(text(name)).items():
        for key, value in values.items():
            value = list(value) if isinstance(value, list) else value
            assert defaults[section][key] != value, f"{name}: {section}.{key} is the default"
