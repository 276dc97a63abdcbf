import json

import pytest

from cfebm.config import (
    Config,
    ConfigError,
    apply_overrides,
    from_dict,
    load_preset,
    preset_names,
    to_dict,
)


def test_every_preset_loads_and_round_trips():
    assert {"tiny", "quickstart", "fmnist32", "cifar10"} <= set(preset_names())
    for name in preset_names():
        cfg = load_preset(name)
        assert from_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_overrides_are_typed():
    cfg = apply_overrides(Config(), ["growth.lr=[2e-4, 2e-4, 1e-4]", "train.seed=7",
                                     "model.activation=gelu", "train.ema_decay=0",
                                     "sampler.clamp_every_step=false"])
    assert cfg.growth.lr == (2e-4, 2e-4, 1e-4) and cfg.train.seed == 7
    assert cfg.model.activation == "gelu" and cfg.train.ema_decay == 0.0
    assert cfg.sampler.clamp_every_step is False


@pytest.mark.parametrize("override, message", [
    ("train.seed=abc", "must be of type int"),
    ("train.nope=1", "unknown config key"),
    ("seed=1", "section.key=value"),
    ("growth.lr=[1e-3]", "one value per resolution"),
    ("growth.resolutions=[8, 32, 64]", "double"),
    ("model.max_resolution=64", "max_resolution"),
    ("sampler.noise_schedule=cosine", "noise_schedule"),
    ("sampler.init=persistent", "sampler.init"),
    ("train.precision=fp16", "precision"),
    ("train.ema_decay=1", "train.ema_decay must lie in"),
    ("train.eval_every=100", "'train.eval_every' is now 'eval.every'"),
    ("train.lookahead=5", "'train.lookahead' was removed"),
    ("model.spectral_norm=1", "must be of type bool"),
])
def test_bad_overrides_raise_one_clear_error(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), [override])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset"):
        load_preset("imagenet-9000")


def test_configs_of_version_0_1_read_under_todays_names():
    """Checkpoints written before the noise fields were renamed still load, unchanged."""
    old = to_dict(Config())
    old["sampler"].pop("eta0")
    old["sampler"].update(noise_std=0.02, noise_schedule="linear")
    cfg = from_dict(old)
    assert cfg.sampler.eta0 == 0.02 and cfg.sampler.noise_schedule == "std_linear"


def test_a_run_saved_before_the_validation_split_read_as_holding_none_out():
    """A saved config without data.validation trained on every training file; a preset without
    it gets today's held-out split."""
    from cfebm.config import saved_config

    old = to_dict(Config())
    old["data"].pop("validation")
    assert saved_config(old).data.validation == 0
    assert saved_config(to_dict(Config())).data.validation == Config().data.validation == 5000
    assert load_preset("fmnist32").data.validation == 5000
