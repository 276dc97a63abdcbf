"""Configuration: frozen dataclasses, TOML presets and dotted ``--set key=value`` overrides.

Defaults are the paper's CIFAR-10 settings (Appendix A.2) unless a comment says otherwise.
Per-stage settings are tuples aligned with ``GrowthConfig.resolutions``. Presets in
``cfebm/presets/*.toml`` hold only the values they change.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

log = logging.getLogger(__name__)


ACTIVATION_NAMES = ("swish", "swish_proebm", "celu", "celu_proebm", "gelu", "leaky_relu", "relu")


@dataclass(frozen=True)
class ModelConfig:
    channels: int = 32              # channel multiplier c (Table 6)
    image_channels: int = 3         # 1 = grayscale, 3 = RGB
    max_resolution: int = 32        # side of the finest stage
    activation: str = "swish"       # one of ACTIVATION_NAMES (model.ACTIVATIONS; A.6.1)
    spectral_norm: bool = True      # on the main-path convolutions (Table 9(b))
    residual: bool = True           # 1x1 conv + pool branch in each Primal block (Table 9(c))
    head: str = "linear"            # "linear" (Table 6) or "mlp" (the authors' --projection head)
    # The authors' EqualConv/EqualLinear on FromRGB, the residual skips and the head: N(0, 1)
    # weights scaled by √(2/fan_in) at run time, zero bias (REFERENCE §2.2). The paper is silent.
    equalized_lr: bool = False

    def __post_init__(self):
        _require(self.channels >= 1, "model.channels must be >= 1")
        _require(self.activation in ACTIVATION_NAMES,
                 f"model.activation must be one of {', '.join(ACTIVATION_NAMES)}, "
                 f"got {self.activation!r}")
        _require(self.image_channels in (1, 3), "model.image_channels must be 1 or 3")
        _require(_is_pow2(self.max_resolution) and self.max_resolution >= 8,
                 "model.max_resolution must be a power of two >= 8")
        _require(self.head in ("linear", "mlp"), "model.head must be 'linear' or 'mlp'")


@dataclass(frozen=True)
class GrowthConfig:
    """The stage schedule of Algorithm 1, one entry per resolution."""

    resolutions: tuple[int, ...] = (8, 16, 32)
    batch_size: tuple[int, ...] = (256, 128, 64)         # the authors' train_v1 table
    lr: tuple[float, ...] = (1e-3, 1e-3, 1e-3)           # A.2 learning-rate schedule
    n_steps: tuple[int, ...] = (15, 30, 50)              # A.2 Langevin steps T(s)
    fade_images: tuple[int, ...] = (0, 75_000, 100_000)  # A.2 data feeding N: β goes 0 -> 1
    stage_images: tuple[int, ...] = (100_000, 150_000, 200_000)  # fade, then as long at β = 1
    # "linear": once the last stage's fade ends, its lr falls linearly to 0 at the end of the
    # schedule (budgeted training); "none": constant per stage, as the paper (A.2) and the
    # authors' scripts train.
    lr_decay: str = "none"

    def __post_init__(self):
        res = self.resolutions
        _require(len(res) >= 1 and res[0] >= 8 and all(_is_pow2(r) for r in res),
                 "growth.resolutions must be powers of two >= 8")
        _require(all(b == 2 * a for a, b in itertools.pairwise(res)),
                 f"growth.resolutions must double at each stage, got {list(res)}")
        for name in ("batch_size", "lr", "n_steps", "fade_images", "stage_images"):
            _require(len(getattr(self, name)) == len(res),
                     f"growth.{name} needs one value per resolution ({len(res)})")
        _require(all(b >= 1 for b in self.batch_size), "growth.batch_size must be >= 1")
        _require(all(t >= 0 for t in self.n_steps), "growth.n_steps must be >= 0")
        _require(all(n >= 1 for n in self.stage_images), "growth.stage_images must be >= 1")
        _require(all(0 <= f <= n for f, n in zip(self.fade_images, self.stage_images)),
                 "growth.fade_images must lie in [0, stage_images]")
        _require(self.lr_decay in LR_DECAYS,
                 f"growth.lr_decay must be one of {', '.join(LR_DECAYS)}, got {self.lr_decay!r}")


LR_DECAYS = ("none", "linear")
NOISE_SCHEDULES = ("std_linear", "variance_linear", "a2", "constant")


@dataclass(frozen=True)
class SamplerConfig:
    """Short-run Langevin dynamics, Eq. (3): x <- x - step_size·∇E(x) + noise_std_t·ε."""

    step_size: float = 1.0          # A.2: "the Langevin step size as 1.0"
    # r₀ > 0: the step at resolution r is step_size·(r/r₀)², proportional to the pixel count.
    # Through a grown net's 2× average pooling each fine pixel gets a quarter of the coarse
    # energy's gradient, so with this scaling the coarse energy moves the pooled image at a new
    # resolution exactly as far per step as it did at the one before. 0: step_size at every
    # resolution (the paper and the authors' code).
    step_base_resolution: int = 0
    # η0, the start of the noise schedule: a noise *std* for "std_linear" and "constant", a noise
    # *variance* for "variance_linear" and "a2" (A.2 writes η_t as a variance). 0.015 is the
    # std of the authors' final scripts (Fig. 18); A.2 uses the variance 0.02.
    eta0: float = 0.015
    # "std_linear": the std falls linearly from η0 to 0 (the authors' final scripts);
    # "variance_linear": the variance falls linearly from η0 to 0 (Sec. 3.1's words);
    # "a2": the variance η_t = η0 − η0/(T−t+1) of Appendix A.2; "constant": std η0 throughout.
    noise_schedule: str = "std_linear"
    # Chains stay in [-1, 1]. True: clamped after every Langevin step (ours); False: only at the
    # end of each scale's chain and after upsampling (the authors' scripts). The paper is silent.
    clamp_every_step: bool = True
    smooth: bool = True             # smooth MCMC sampling during a fade (Alg. 1, Sec. 3.2(ii)b)
    mix: str = "sqrt"               # "sqrt": √(1−β²)·up + β·U (Alg. 1); "linear": (1−β)·up + β·U
    # The noise chains start from. "uniform": U(−1, 1) at the chain's resolution (Alg. 1 and 2).
    # "nested": noise whose 2× average pooling is the noise of the resolution below, down to
    # U(−1, 1) at the first resolution (sampling.init_noise): a grown net's coarse part then
    # sees the start it trained from.
    start_noise: str = "uniform"
    # Where chains start. "noise": U(−1, 1) at the current resolution (Alg. 1 and 2 of the paper).
    # "cascade": U(−1, 1) at the first resolution, then each stage's T(s) steps at every
    # resolution up to the current one, all by the same expanding net (authors' v0
    # --from_beginning). "frozen": the same cascade, each coarse scale sampled by a frozen copy
    # of the model as its stage ended (A.8, Table 9(e); the authors' final train_v1).
    init: str = "noise"

    def __post_init__(self):
        _require(self.step_size > 0, "sampler.step_size must be > 0")
        _require(self.step_base_resolution >= 0, "sampler.step_base_resolution must be >= 0")
        _require(self.eta0 >= 0, "sampler.eta0 must be >= 0")
        _require(self.noise_schedule in NOISE_SCHEDULES,
                 f"sampler.noise_schedule must be one of {', '.join(NOISE_SCHEDULES)}")
        _require(self.mix in ("sqrt", "linear"), "sampler.mix must be 'sqrt' or 'linear'")
        _require(self.start_noise in ("uniform", "nested"),
                 "sampler.start_noise must be 'uniform' or 'nested'")
        _require(self.init in ("noise", "cascade", "frozen"),
                 "sampler.init must be 'noise', 'cascade' or 'frozen'")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "fashion_mnist"  # see data.DATASETS
    root: str = ""                  # a folder of images, or where dataset files live
    download: bool = True           # let torchvision download when the files are missing
    limit: int = 0                  # use only the first `limit` images (0 = all)
    # The validation split: the last `validation` images of the training files (at most a tenth
    # of them), never trained on. In-training evaluation, the best checkpoint, the FID watch
    # and tuned defaults read it; the test split only reports. 0: train on every training file
    # (runs saved before the split existed read as 0).
    validation: int = 5_000
    center_crop: int = 0            # centre-crop to this many pixels before resizing (0 = off)
    subset: str = ""                # dataset-specific choice: an LSUN category, or the classes
    #                                 to keep of a labelled dataset ("0,2,4,6"; "" = all)
    hflip: bool = False             # random horizontal flips
    num_workers: int = 0            # decoding threads for datasets read from disk
    cache: str = ""                 # a folder written by `cfebm prepare`: read images from it

    def __post_init__(self):
        _require(self.limit >= 0, "data.limit must be >= 0")
        _require(self.validation >= 0, "data.validation must be >= 0")
        _require(self.num_workers >= 0, "data.num_workers must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation (Adam with A.2's betas, ``ADAM_BETAS``) and the hardware it runs on."""

    seed: int = 0
    data_sigma: float = 0.0          # Gaussian perturbation of the data (0: Sec. 3.4)
    ema_decay: float = 0.0           # EMA of parameters for sampling, 0 = off
    device: str = "auto"             # "auto", "cpu", "cuda", "cuda:1", ...
    precision: str = "fp32"          # "fp32", "bf16" (autocast; energies and loss stay fp32) or
    #                                  "auto": bf16 on a CPU that runs it natively, else fp32
    #                                  (CUDA too: measured faster there; runtime.py)
    channels_last: bool = False      # memory format for convolutions
    compile: bool = False            # torch.compile the Langevin energy and its gradient
    cuda_graphs: bool = False        # ... and replay it as CUDA graphs on a GPU (needs compile;
    #                                  no effect on a CPU)

    def __post_init__(self):
        _require(self.precision in ("fp32", "bf16", "auto"),
                 "train.precision must be 'fp32', 'bf16' or 'auto'")
        _require(self.compile or not self.cuda_graphs,
                 "train.cuda_graphs replays the compiled energy: it needs train.compile = true")
        _require(0.0 <= self.ema_decay < 1.0, "train.ema_decay must lie in [0, 1)")
        _require(self.data_sigma >= 0, "train.data_sigma must be >= 0")


ADAM_BETAS = (0.5, 0.999)  # A.2; β₁ = 0 and β₂ = 0.99 were measured and smoothed no fade


@dataclass(frozen=True)
class RunConfig:
    """The run on disk: how often it logs, draws grids and saves, and how it recovers from a
    divergence (a non-finite or huge loss, or a spike: train/recovery.py)."""

    log_every: int = 2_000           # images between metric lines
    sample_every: int = 20_000       # images between sample grids (and at every stage change)
    checkpoint_every: int = 20_000   # images between checkpoints
    n_grid: int = 64                 # images in a sample grid
    max_recoveries: int = 3          # roll back to the last checkpoint this many times at most
    spike_factor: float = 30.0       # recent median |loss| above this x the one before; 0 = off
    minutes: float = 0.0             # time budget of training iterations, 0 = none: a new run
    #                                  fits its schedule to it (train/budget.py; as --minutes)

    def __post_init__(self):
        for name in ("log_every", "sample_every", "checkpoint_every", "n_grid"):
            _require(getattr(self, name) >= 1, f"run.{name} must be >= 1")
        _require(self.max_recoveries >= 0, "run.max_recoveries must be >= 0")
        _require(self.spike_factor >= 0, "run.spike_factor must be >= 0 (0 = off)")
        _require(self.minutes >= 0, "run.minutes must be >= 0 (0 = no time budget)")


@dataclass(frozen=True)
class EvalConfig:
    """In-training evaluation on the validation split (FID and KID in the features of
    ``train.evaluation.features_for``: the Fashion-MNIST classifier's for Fashion-MNIST, else
    Inception's), and the FID watch that reads it (train/evaluation.py)."""

    every: int = 0                   # images between in-training evaluations, 0 = off
    n: int = 1_000                   # samples per in-training evaluation (FID, KID)
    fades_only: bool = False         # ... only during fades and the 3 evaluations before each
    fid_watch: float = 0.0           # roll back an evaluation whose FID, pooled to the stage
    #                                  before's resolution, is above this x that stage's last;
    #                                  at most 3 times in a row (needs every), 0 = off

    def __post_init__(self):
        _require(self.every >= 0, "eval.every must be >= 0 (0 = off)")
        _require(self.n >= 2, "eval.n must be >= 2")
        _require(self.fid_watch >= 0, "eval.fid_watch must be >= 0 (0 = off)")


@dataclass(frozen=True)
class TaskConfig:
    """What the model learns. "generate": the images of [data], chains from noise (Algorithm 1).
    "translate" (Sec. 3.3, Eq. 4): the energy of a target domain whose chains start at
    source-domain images; ``pair`` names domains A and B (``data.domains.PAIRS``; "cyclegan"
    reads ``data.root``), ``direction`` "ab" translates A into B, "ba" B into A. A translation
    run reads ``data.root``, ``limit`` (per domain), ``hflip`` (target images), ``center_crop``
    and ``num_workers`` from [data], never ``data.dataset``: the pair decides the images."""

    kind: str = "generate"
    pair: str = ""
    direction: str = "ab"

    def __post_init__(self):
        _require(self.kind in ("generate", "translate"),
                 "task.kind must be 'generate' or 'translate'")
        _require(self.direction in ("ab", "ba"), "task.direction must be 'ab' or 'ba'")
        _require(self.kind == "generate" or bool(self.pair),
                 "task.kind = 'translate' needs task.pair (see cfebm.data.domains.PAIRS)")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    growth: GrowthConfig = field(default_factory=GrowthConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    task: TaskConfig = field(default_factory=TaskConfig)

    def __post_init__(self):
        _require(self.growth.resolutions[-1] == self.model.max_resolution,
                 f"growth.resolutions ends at {self.growth.resolutions[-1]} but "
                 f"model.max_resolution is {self.model.max_resolution}")
        e = self.eval
        _require(e.every == 0 or self.data.validation > 0,
                 "eval.every scores the validation split: it needs data.validation > 0 "
                 "(the test split is for reports only)")
        _require(e.fid_watch == 0 or e.every > 0,
                 "eval.fid_watch needs eval.every > 0: it judges the in-training evaluations")
        if self.task.kind == "translate":  # chains start at source images: no noise cascade
            _require(self.sampler.init == "noise" and e.every == 0,
                     "task.kind = 'translate' needs sampler.init = 'noise' and eval.every = 0")


class ConfigError(ValueError):
    """A configuration value is missing, mistyped or out of range."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _is_pow2(n: int) -> bool:
    return isinstance(n, int) and n > 0 and n & (n - 1) == 0


# ------------------------------------------------------------------------------------------------
# Dicts, presets and overrides


def to_dict(cfg: Config) -> dict[str, Any]:
    """A plain, JSON-serialisable dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(d: dict[str, Any]) -> Config:
    """Inverse of ``to_dict``; unknown sections or keys raise ``ConfigError``.

    Configs written by earlier cfebm versions are read in today's layout (``_migrate``).
    """
    d = _migrate(d)
    sections = {}
    for f in dataclasses.fields(Config):
        values = dict(d.get(f.name, {}))
        cls = f.default_factory
        hints = typing.get_type_hints(cls)
        unknown = set(values) - set(hints)
        _require(not unknown, f"unknown key(s) in [{f.name}]: {sorted(unknown)}")
        sections[f.name] = cls(**{k: _coerce(v, hints[k], f"{f.name}.{k}")
                                  for k, v in values.items()})
    _require(not set(d) - set(sections), f"unknown section(s): {sorted(set(d) - set(sections))}")
    return Config(**sections)


def saved_config(d: dict[str, Any]) -> Config:
    """The config a run saved (``config.json``, a checkpoint, an export): ``from_dict`` of a
    complete dict. A run saved before the validation split existed trained on every training
    file, so its missing ``data.validation`` reads as 0, not today's default."""
    data = d.get("data", {})
    if "validation" not in data:
        d = {**d, "data": {**data, "validation": 0}}
    return from_dict(d)


# Keys that moved: old "section.key" -> new "section.key".
MOVED = {
    "sampler.noise_std": "sampler.eta0",
    **{f"train.{k}": f"run.{k}" for k in ("log_every", "sample_every", "checkpoint_every",
                                          "n_grid", "max_recoveries", "spike_factor")},
    "train.eval_every": "eval.every", "train.eval_n": "eval.n",
    "train.eval_fades_only": "eval.fades_only", "train.fid_watch": "eval.fid_watch",
}
# Keys deleted because measurements rejected them or nothing set them (docs/notebook/house.md),
# with the value that meant today's behaviour. Old configs carrying them still load.
REMOVED = {
    "train.energy_reg": 0.0, "train.grad_penalty": 0.0, "train.grad_clip": 0.0,
    "train.lookahead": 0, "train.lookahead_alpha": 0.5, "train.adam_betas": list(ADAM_BETAS),
    "train.fid_watch_lr": 1.0, "train.fid_watch_retries": 3, "train.spike_floor": 1.0,
    "train.max_abs_loss": 1e4, "train.eval_features": None, "sampler.coarse_steps": "scaled",
    "sampler.clamp": True,
}


def _migrate(d: dict[str, Any]) -> dict[str, Any]:
    """A config dict of any earlier cfebm in today's layout: moved keys under their new names,
    removed keys dropped (one warning line for any that held a value other than today's
    behaviour), the removed ``growth.lr_decay = "linear_every_stage"`` read as "none"."""
    d = {section: dict(values) if isinstance(values, dict) else values
         for section, values in d.items()}
    for old, new in MOVED.items():
        (s, k), (t, n) = old.split("."), new.split(".")
        if isinstance(d.get(s), dict) and k in d[s]:
            d.setdefault(t, {})[n] = d[s].pop(k)
    dropped = []
    for old, today in REMOVED.items():
        s, k = old.split(".")
        if isinstance(d.get(s), dict) and k in d[s]:
            value = d[s].pop(k)
            if today is not None and value != today:
                dropped.append(f"{old}={value}")
    growth = d.get("growth")
    if isinstance(growth, dict) and growth.get("lr_decay") == "linear_every_stage":
        growth["lr_decay"] = "none"
        dropped.append("growth.lr_decay=linear_every_stage")
    if isinstance(d.get("sampler"), dict) and d["sampler"].get("noise_schedule") == "linear":
        d["sampler"]["noise_schedule"] = "std_linear"
    if dropped:
        log.warning("dropped settings that cfebm no longer has (rejected by measurement or "
                    "unused): %s; the run continues without them", ", ".join(dropped))
    return d


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("cfebm.presets").iterdir()
                  if p.name.endswith(".toml"))


def load_preset(name: str) -> Config:
    """The defaults with ``cfebm/presets/<name>.toml`` applied."""
    return from_dict(preset_overrides(name))


def preset_overrides(name: str, within: tuple[str, ...] = ()) -> dict[str, Any]:
    """The sections a preset sets. A preset with ``base = "other"`` on top sets what ``other``
    sets, then its own keys over them (e.g. a longer schedule of the same recipe)."""
    path = resources.files("cfebm.presets") / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; choose one of {preset_names()}")
    own = tomllib.loads(path.read_text())
    base = own.pop("base", None)
    if base is None:
        return own
    _require(isinstance(base, str) and base not in (*within, name),
             f"preset {name!r}: base must name another preset, without a cycle")
    merged = preset_overrides(base, (*within, name))
    for section, values in own.items():
        merged[section] = {**merged.get(section, {}), **values}
    return merged


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` strings; values are parsed as TOML, else taken as strings (and
    always as strings for a text key: ``data.subset=7`` is the class "7", not the number)."""
    d = to_dict(cfg)
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        _require(bool(sep and dot), f"override {item!r} is not of the form section.key=value")
        _require(key.strip() not in MOVED,
                 f"config key {key.strip()!r} is now {MOVED.get(key.strip())!r}")
        _require(key.strip() not in REMOVED, f"config key {key.strip()!r} was removed: "
                 "measurements rejected it or nothing used it (docs/notebook/house.md)")
        _require(section in d and name in d[section], f"unknown config key {key.strip()!r}")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        if isinstance(d[section][name], str) and not isinstance(value, str):
            value = raw.strip()
        d[section][name] = value
    return from_dict(d)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a field's type hint; ints are accepted where floats are due."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        _require(isinstance(value, (list, tuple)), f"{key} must be a list, got {value!r}")
        args = typing.get_args(hint)
        elem = args[0]
        _require(args[-1] is Ellipsis or len(value) == len(args), f"{key} needs {len(args)} values")
        return tuple(_coerce(v, elem, key) for v in value)
    if hint is float:
        _require(isinstance(value, (int, float)) and not isinstance(value, bool),
                 f"{key} must be a number, got {value!r}")
        return float(value)
    _require(isinstance(value, hint) and (hint is bool or not isinstance(value, bool)),
             f"{key} must be of type {hint.__name__}, got {value!r}")
    return value
