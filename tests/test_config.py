import dataclasses
import json

import pytest

from cfebm.config import (
    MOVED,
    REMOVED,
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


def test_an_old_config_loads_in_todays_layout_and_says_what_it_dropped(caplog):
    """A config saved before issue 37: moved keys land under their new names; removed keys go,
    with one warning line naming those that held a value other than today's behaviour."""
    old = to_dict(Config())
    for section in ("run", "eval"):
        del old[section]
    old["train"].update(eval_every=1600, eval_n=500, fid_watch=1.25, log_every=640,
                        lookahead=5, lookahead_alpha=0.5, grad_clip=0.0, adam_betas=[0.5, 0.999])
    old["sampler"].update(coarse_steps="full", clamp=True)
    old["growth"]["lr_decay"] = "linear_every_stage"
    with caplog.at_level("WARNING", logger="cfebm.config"):
        cfg = from_dict(old)
    assert (cfg.eval.every, cfg.eval.n, cfg.eval.fid_watch, cfg.run.log_every) == (1600, 500,
                                                                                  1.25, 640)
    assert cfg.growth.lr_decay == "none"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    for dropped in ("train.lookahead=5", "sampler.coarse_steps=full",
                    "growth.lr_decay=linear_every_stage"):
        assert dropped in warnings[0]
    for kept_quiet in ("grad_clip", "adam_betas", "lookahead_alpha", "sampler.clamp"):
        assert kept_quiet not in warnings[0]  # they held today's behaviour


def test_the_config_stays_small():
    """Issue 37 cut the keys from 68 to 55 (rejected options deleted, [train] split by
    concern); a new key has to be worth one of these. 56: ``run.minutes`` (issue 41), so that a
    preset can carry a time budget (the quick start's, which fits 6 minutes on any machine)."""
    keys = [f"{s.name}.{k.name}" for s in dataclasses.fields(Config)
            for k in dataclasses.fields(s.default_factory)]
    assert len(keys) == len(set(keys)) <= 56
    assert not set(keys) & (set(MOVED) | set(REMOVED))  # no old name comes back
