"""Sharing models: the packaged models and their cards, export folders laid out as a model hub
takes them (``model.safetensors``, ``config.json`` and a ``README.md`` model card), Hugging Face
Hub repo ids, and the card written for an export of any model (``export_card``).

``TrainedModel.export`` and ``load`` (``cfebm.trained``) use this module; it reads a model's
attributes and never imports ``cfebm.trained`` at run time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import tomllib
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from cfebm import __version__
from cfebm.config import Config, DataConfig, load_preset, preset_names, to_dict
from cfebm.data.images import FAKE_IMAGES, held_out
from cfebm.files import CheckpointError
from cfebm.growth import total_images
from cfebm.model import count_parameters
from cfebm.sampling import step_size_at

if TYPE_CHECKING:  # annotations only: trained.py imports this module
    from cfebm.trained import TrainedModel


# Packaged models, each named after the preset that trained it (a name is never a preset's
# alias): name -> export in cfebm/weights/, beside its model card <name>.md.
PRETRAINED = {"fmnist32-2h": "fmnist32-2h.safetensors"}


# An export as a folder (``export(DIR)``), laid out as a model hub takes it: the export file,
# the resolved config and the model card. A Hub repo id (``load("owner/name")``) fetches these.
FOLDER_FILES = ("model.safetensors", "config.json", "README.md")
EXPORT_FILE, CONFIG_FILE, CARD_FILE = FOLDER_FILES
MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")  # files, never folder names
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def packaged_file(name: str) -> Path:
    """The export of the packaged model ``name`` (a key of ``PRETRAINED``)."""
    if name not in PRETRAINED:
        raise CheckpointError(not_packaged(name))
    path = Path(str(resources.files("cfebm") / "weights" / PRETRAINED[name]))
    if not path.is_file():
        raise CheckpointError(f"the pretrained model {name!r} is not installed")
    return path


def model_card(name: str) -> str:
    """The model card of the packaged model ``name``: cfebm/weights/<name>.md (its preset,
    config, data, hardware, commands, test-split numbers and limits)."""
    card = packaged_file(name).with_suffix(".md")
    if not card.is_file():
        raise CheckpointError(f"the packaged model {name!r} has no model card ({card.name})")
    return card.read_text()


def not_packaged(name: str) -> str:
    what = (f"{name!r} is a preset to train (cfebm train --preset {name}), not a packaged model"
            if name in preset_names() else f"no file or packaged model named {name!r}")
    return f"{what}; the packaged models are {', '.join(sorted(PRETRAINED))}"


def hub_folder(repo_id: str) -> Path:
    """The export folder of the Hugging Face Hub repo ``repo_id`` ("owner/name") on this
    machine: ``huggingface_hub.snapshot_download`` of its ``FOLDER_FILES``, which downloads
    them when online and, offline (``HF_HUB_OFFLINE=1``), returns the Hub cache's copy
    (``HF_HUB_CACHE``, ``HF_HOME``)."""
    try:  # an optional dependency, imported only when a repo id is asked for
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{repo_id!r} is no local file or folder, and loading it from the "
                              "Hugging Face Hub needs huggingface_hub: pip install "
                              "'cfebm[hub]'") from None
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=list(FOLDER_FILES),
                                        library_name="cfebm", library_version=__version__))
    except (OSError, ValueError) as e:  # not found, offline without a cached copy, bad id
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{repo_id!r} is no local file or folder, and the Hugging Face "
                              f"Hub did not give it: {reason}") from e
    if not (folder / EXPORT_FILE).is_file():
        raise CheckpointError(f"the Hugging Face Hub repo {repo_id!r} holds no {EXPORT_FILE}: "
                              "not a cfebm export folder (cfebm export MODEL --out DIR)")
    return folder


HUB_TAGS = "[cfebm, energy-based-model, coarse-to-fine, langevin-dynamics, pytorch, safetensors]"


# The dataset's own training and test files (cfebm.data's readers), for a card's split sizes;
# folders, CelebA and LSUN have as many as their files on disk, which a card cannot know.
DATASET_FILES = {"fashion_mnist": (60_000, 10_000), "digits": (1_500, 297),
                 "cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000),
                 "svhn": (73_257, 26_032)}


def export_card(model: TrainedModel, blob: bytes) -> str:
    """The model card an export folder carries as README.md, for ``model`` whose export file is
    ``blob``: a header the Hugging Face Hub reads (``---`` fenced ``key: value`` lines), then
    the recipe, data and splits, the run, scores, limits and the config. A packaged model
    brings its own card (``model_card``); any other gets one written from what its file
    records, which says what it does not know."""
    header = {"library_name": "cfebm", "tags": HUB_TAGS,
              "pipeline_tag": ("image-to-image" if model.cfg.task.kind == "translate"
                               else "unconditional-image-generation"),
              "file": EXPORT_FILE, "bytes": str(len(blob)),
              "sha256": hashlib.sha256(blob).hexdigest()}
    name = _packaged_name(model)
    if name is not None:
        return _packaged_folder_card(model_card(name), header)
    cfg = model.cfg
    preset, overrides = closest_preset(cfg)
    header.update(preset=preset, dataset=_dataset(cfg), resolution=str(model.resolution),
                  images=str(model.n_images), seed=str(cfg.train.seed), weights=model.weights,
                  cfebm_version=__version__)
    train = shlex.join(["cfebm", "train", "--preset", preset, "--run-dir", "runs/again",
                        *(x for item in overrides for x in ("--set", item))])
    sections = [_card_intro(model), _card_recipe(model, preset, overrides, train),
                _card_data(cfg), _card_run(model), _card_scores(model), _card_limits(model),
                _card_config(cfg)]
    lines = "".join(f"{k}: {v}\n" for k, v in header.items())
    return f"---\n{lines}---\n\n" + "\n".join(sections)


def _card_config(cfg: Config) -> str:
    return ("## Config\n\nThe resolved config, embedded in the export and in config.json:\n\n"
            f"```json\n{json.dumps(to_dict(cfg), indent=2)}\n```\n")


def closest_preset(cfg: Config) -> tuple[str, list[str]]:
    """The preset whose config differs from ``cfg`` in the fewest keys, and the ``--set``
    overrides (``section.key=value``, values as TOML) that turn it into ``cfg``."""
    mine = _flat(to_dict(cfg))
    best = None
    for name in preset_names():
        theirs = _flat(to_dict(load_preset(name)))
        sets = [f"{k}={_toml(v)}" for k, v in mine.items() if theirs.get(k) != v]
        if best is None or len(sets) < len(best[1]):
            best = (name, sets)
    return best


def _flat(d: dict) -> dict:
    return {f"{section}.{key}": value for section, keys in d.items() for key, value in keys.items()}


def _toml(value) -> str:
    """``value`` as ``apply_overrides`` reads it back: TOML, or a plain string as it is where
    it is no TOML value (``auto``, ``/data/x``; ``"1"`` stays quoted)."""
    if isinstance(value, str) and value and not re.search(r"[\s'\"]", value):
        try:
            tomllib.loads(f"v = {value}")
        except tomllib.TOMLDecodeError:
            return value
    return json.dumps(value, separators=(",", ":"))


def _packaged_name(model: TrainedModel) -> str | None:
    for name in PRETRAINED:
        with contextlib.suppress(CheckpointError):
            if Path(model.source) == packaged_file(name):
                return name
    return None


def card_header(card: str) -> tuple[dict[str, str], re.Match]:
    """A model card's header (the ``key: value`` lines between its ``---`` fences) and the
    match that spans it."""
    block = re.match(r"---\n(.*?)\n---\n", card, re.DOTALL)
    if block is None:
        raise ValueError("a model card opens with a --- header")
    return dict(line.split(": ", 1) for line in block.group(1).splitlines()), block


def _packaged_folder_card(card: str, header: dict[str, str]) -> str:
    """A packaged model's card as its export folder's README.md: the Hub's keys and the folder's
    file in its header, and its links to files of cfebm's source (which stay behind) written
    out as their paths there."""
    own, block = card_header(card)

    def source_path(m: re.Match) -> str:
        text, where = m.group(1), os.path.normpath(f"cfebm/weights/{m.group(2)}")
        return (f"`{where}`" if text == Path(where).name else f"{text} (`{where}`") + \
            " in cfebm's source" + ("" if text == Path(where).name else ")")

    body = re.sub(r"!?\[([^\]]*)\]\((?![a-z]+:|#)([^)\s]+)\)", source_path, card[block.end():])
    if header["sha256"] != own.get("sha256"):  # the title, then a word on the bytes
        title, _, rest = body.partition("\n\n" if body.startswith("\n#") else "\n")
        body = (f"{title}\n\n*This folder's {EXPORT_FILE} is `cfebm export` of the packaged "
                f"`{own.get('file')}` ({own.get('bytes')} bytes, sha256 {own.get('sha256')}) "
                "that this card describes: the same weights and config, written by cfebm "
                f"{__version__}, whose bytes and sha256 are the ones above.*\n\n{rest}")
    header = {**header, **{k: v for k, v in own.items() if k not in header}}
    return "---\n" + "".join(f"{k}: {v}\n" for k, v in header.items()) + "---\n" + body


def _dataset(cfg: Config) -> str:
    return f"translate-{cfg.task.pair}" if cfg.task.kind == "translate" else cfg.data.dataset


def _card_intro(model: TrainedModel) -> str:
    cfg = model.cfg
    what = (f"that translates the images of `{cfg.task.pair}` ({cfg.task.direction})"
            if cfg.task.kind == "translate" else f"of `{cfg.data.dataset}` images")
    grown = " → ".join(f"{r}²" for r in cfg.growth.resolutions)
    return (f"# {_dataset(cfg)} at {model.resolution}×{model.resolution}: a cfebm energy-based "
            f"model\n\nAn energy-based model {what}, {model.channels} channel(s), grown "
            f"{grown} coarse to fine and sampled by Langevin chains as it was trained "
            "(*Learning Energy-Based Generative Models via Coarse-to-Fine Expanding and "
            "Sampling*, Zhao, Xie & Li, ICLR 2021). An inference export: these weights, the "
            "frozen coarse models its sampler needs and the config; no optimiser, no code. "
            "`cfebm export` wrote this card from what the model's file records; what that does "
            "not hold is marked *unknown*.\n\n"
            "    pip install 'cfebm[hub]'\n"
            "    cfebm sample OWNER/NAME --n 64 --out samples.png    # or this folder's path\n\n"
            "```python\nimport cfebm\n\nmodel = cfebm.load(\"OWNER/NAME\")   # a Hub repo id, "
            "or this folder's path\nx = model.sample(16, seed=0)         # (16, "
            f"{model.channels}, {model.resolution}, {model.resolution}) in [-1, 1]\n```\n")


def _card_recipe(model: TrainedModel, preset: str, overrides: list[str], train: str) -> str:
    cfg, m, g, s = model.cfg, model.cfg.model, model.cfg.growth, model.cfg.sampler
    what = (f"the `{preset}` preset as it is" if not overrides else
            f"the `{preset}` preset with {len(overrides)} change(s), the `--set`s below")
    steps = ", ".join(f"{r}²: {n:,} images (fade {f:,}), batch {b}, lr {lr:g}, T = {t}, "
                      f"step {step_size_at(r, s):g}" for r, n, f, b, lr, t in zip(
                          g.resolutions, g.stage_images, g.fade_images, g.batch_size, g.lr,
                          g.n_steps))
    ema = f"EMA weights (decay {cfg.train.ema_decay:g})" if model.weights == "ema" else \
        "the trained weights (no EMA)" if not cfg.train.ema_decay else \
        f"the trained weights (the run also kept an EMA, decay {cfg.train.ema_decay:g})"
    return (f"## Recipe\n\nThe config is {what}:\n\n    {train}\n\n"
            "(`cfebm train` with this command resolves to this model's config; the weights "
            "themselves differ with the machine's float round-off.)\n\n"
            f"- **Network**: c = {m.channels}, {m.activation}, spectral norm "
            f"{'on' if m.spectral_norm else 'off'}, residual {'on' if m.residual else 'off'}, "
            f"{m.head} head, equalised lr {'on' if m.equalized_lr else 'off'}; "
            f"{count_parameters(model.net):,} parameters.\n"
            f"- **Schedule**: {steps}; lr decay {g.lr_decay}.\n"
            f"- **Chains**: init {s.init}, {s.start_noise} start noise, noise η0 {s.eta0:g} "
            f"({s.noise_schedule}), smooth {'on' if s.smooth else 'off'} (mix {s.mix}); sampled "
            f"as {' then '.join(f'{r}² × {t} steps' for r, t in model.schedule())}.\n"
            f"- **Weights**: {ema}; precision {cfg.train.precision}; seed {cfg.train.seed}.\n")


def _card_data(cfg: Config) -> str:
    d = cfg.data
    if cfg.task.kind == "translate":
        return (f"## Data and splits\n\n- **Domains**: the pair `{cfg.task.pair}`, direction "
                f"{cfg.task.direction}; the sizes of its splits are *unknown* to this card.\n")
    sizes = split_sizes(d)
    source = f"`{d.dataset}`" + (f" at `{d.root}`" if d.root else "") + \
        (f", subset {d.subset}" if d.subset else "") + (", read through a `cfebm prepare` "
                                                         "cache" if d.cache else "")
    if sizes is None:
        rule = ("the training files less the last min(data.validation, a tenth) of them "
                f"(data.validation = {d.validation:,}), the first {d.limit:,} at most"
                if d.limit else
                f"the training files less the last min({d.validation:,}, a tenth) of them")
        splits = (f"- **Training**: {rule}; how many files there were is *unknown* to this "
                  "card.\n- **Validation**: " + ("none held out" if not d.validation else
                                                 "those held out") +
                  ".\n- **Test**: the dataset's own test files (number *unknown*).\n")
    elif d.dataset == "fake":
        splits = ("- **Training**, **validation**, **test**: {:,}, {:,} and {:,} synthetic "
                  "images, each split drawn on its own.\n".format(*sizes))
    else:
        train, validation, test = sizes
        splits = (f"- **Training**: {train:,} images.\n- **Validation**: " +
                  (f"{validation:,} images held out of the training files, never trained on "
                   "(in-training evaluation and any choice made by it read them)."
                   if validation else "none held out (data.validation = 0).") +
                  f"\n- **Test**: {test:,} images, the dataset's own test files.\n")
    flips = "random horizontal flips" if d.hflip else "no flips"
    noise = f"Gaussian noise σ = {cfg.train.data_sigma:g} on the data" if cfg.train.data_sigma \
        else "no data noise"
    return (f"## Data and splits\n\n{source}, {cfg.model.image_channels} channel(s) at "
            f"{cfg.model.max_resolution}² (the coarse stages see average pools); {flips}, "
            f"{noise}.\n\n{splits}")


def split_sizes(data: DataConfig) -> tuple[int, int, int] | None:
    """(training, validation, test) images of ``data`` by cfebm.data's rules, where the
    dataset's file counts are known (``DATASET_FILES``, the fake set), else None."""
    if data.dataset == "fake":
        n = data.limit or FAKE_IMAGES
        return n, min(n, data.validation), n
    if data.dataset not in DATASET_FILES:
        return None
    n_train, n_test = DATASET_FILES[data.dataset]
    validation = held_out(n_train, data.validation)
    train = n_train - validation
    return min(data.limit or train, train), validation, min(data.limit or n_test, n_test)


def _card_run(model: TrainedModel) -> str:
    cfg, g, record = model.cfg, model.growth, model.record
    seconds = record.get("train_seconds")
    time = ("*unknown* (an export does not record it)" if seconds is None else
            f"{_duration(seconds)} of training iterations")
    times = [r["time"] for r in _run_log(model) if "time" in r]
    when = ("*unknown* (" + ("the run's metrics.jsonl did not come with the file"
                             if seconds is not None else "an export does not record it") + ")"
            if not times else " to ".join(dict.fromkeys(
                datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")
                for t in (min(times), max(times)))))
    recoveries = record.get("recoveries")
    return ("## Training run\n\n"
            f"- **Images trained**: {model.n_images:,} of the schedule's "
            f"{total_images(cfg.growth):,}; sampled as stage {g.stage + 1} of "
            f"{len(cfg.growth.resolutions)} ({g.resolution}², β = {g.beta:.3f}).\n"
            f"- **Training time**: {time}.\n"
            f"- **When**: {when}.\n"
            f"- **Hardware**: *unknown* (not recorded; the config asked for device "
            f"`{cfg.train.device}`, precision {cfg.train.precision}"
            f"{', torch.compile' if cfg.train.compile else ''}).\n"
            "- **Divergence recoveries**: " +
            ("*unknown*" if recoveries is None else f"{recoveries}") + ".\n"
            f"- **Trained by**: cfebm {record.get('version', '*unknown*')}; exported by cfebm "
            f"{__version__} from `{Path(model.source).name or model.source}`.\n")


def _card_scores(model: TrainedModel) -> str:
    cfg = model.cfg
    features = ("the Fashion-MNIST classifier's features (FMNIST-FID)"
                if cfg.data.dataset == "fashion_mnist" and cfg.model.image_channels == 1
                else "Inception features")  # as cfebm.train.evaluation.features_for
    rows = _evaluations(model)
    mine = [r for r in rows if r["n_images"] == model.n_images]
    if mine:
        r = mine[-1]
        best = min(rows, key=lambda r: r["eval_fid"])
        validation = (f"FID **{r['eval_fid']:.2f}**, KID {r['eval_kid']:.3g} ± "
                      f"{r['eval_kid_std']:.2g} at these {model.n_images:,} images, "
                      f"{r['eval_n']:,} samples at {r['eval_resolution']}² in {features}; "
                      f"the best of the run's {len(rows)} evaluation(s): FID "
                      f"{best['eval_fid']:.2f} at {best['n_images']:,} images")
    else:
        validation = ("none recorded for these weights (the run evaluated nothing, "
                      "eval.every = 0, or its metrics.jsonl did not come with the file)"
                      if cfg.eval.every or rows else
                      "none (the run evaluated nothing during training, eval.every = 0)")
    return ("## Scores\n\n"
            f"- **Validation split, during training**: {validation}.\n"
            "- **Test split**: *unknown*, not measured when this card was written; "
            "`cfebm eval MODEL --n 10000` measures FID, KID, precision/recall and class "
            "coverage against the test split.\n")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h ({seconds:,.0f} s)"


def _run_log(model: TrainedModel) -> list[dict]:
    """The rows of the model's run log (metrics.jsonl) up to its images, when the model is a
    checkpoint still in its run folder; else none."""
    path = Path(model.source)
    log = path.parent.parent / "metrics.jsonl"
    if path.suffix != ".pt" or path.parent.name != "checkpoints" or not log.is_file():
        return []
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("n_images", 0) <= model.n_images]


def _evaluations(model: TrainedModel) -> list[dict]:
    """The in-training evaluations up to this model's images: its run log's, and a best
    checkpoint's own."""
    rows = [r for r in _run_log(model) if "eval_fid" in r]
    best = model.record.get("eval") or {}
    return rows + ([best] if "eval_fid" in best and best not in rows else [])


def _card_limits(model: TrainedModel) -> str:
    cfg = model.cfg
    chosen = ("" if cfg.data.validation else " With no validation split, nothing chosen for "
              "it (recipe, checkpoint) could have been chosen on held-out images.")
    return ("## Known limits\n\n"
            "- **Unknown to this card**: the hardware, any test-split score" +
            ("" if _run_log(model) else ", when it trained") +
            ("" if "train_seconds" in model.record else ", the training time") +
            "; add what you know before sharing.\n"
            "- **Scores**: an FID depends on the number of samples, the reference and the "
            "features; compare only like with like." +
            (" FMNIST-FID is not the paper's (Inception) FID." if "fashion_mnist" in
             (cfg.data.dataset, cfg.task.pair) else "") + f"{chosen}\n"
            f"- **Sampling**: chains as trained (T = {model.growth.n_steps} at "
            f"{model.resolution}²); many more steps than trained tend to over-saturate "
            "samples (the paper's Sec. 3.2).\n"
            "- **Reproducing the weights** needs the same kind of processor and torch version: "
            "float round-off differs between them.\n")
