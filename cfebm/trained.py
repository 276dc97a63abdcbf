"""A trained model as one object: its energy, and Langevin chains from any start, as trained.

``load(path_or_name)`` reads a training checkpoint (``.pt``), an inference export
(``.safetensors``, written by ``TrainedModel.export`` or ``cfebm export``), an export folder as
a model hub takes it (``model.safetensors``, ``config.json`` and a ``README.md`` model card), a
Hugging Face Hub repo id of such a folder, or a packaged pretrained model by name, and returns a
``TrainedModel``. Every command and application goes
through it, so "sample this model as it was trained" is decided in one place
(``training.sample_negatives``) and the model's resolution, fading factor β, precision and
frozen coarse copies travel with it.

A checkpoint written at a stage boundary (``stage0-8x8.pt``) holds a net whose new block has not
trained yet (β = 0 there, which equals the finished coarse stage on pooled input exactly), so it
is sampled as that finished stage: at its resolution with β = 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import tomllib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import Tensor
from tqdm.auto import tqdm

from cfebm import __version__, speed
from cfebm.checkpoint import (
    CheckpointError,
    atomic_write,
    canonical_safetensors,
    coarse_copies,
    config_of,
    read,
)
from cfebm.config import (
    Config,
    ConfigError,
    DataConfig,
    load_preset,
    preset_names,
    saved_config,
    to_dict,
)
from cfebm.data.images import FAKE_IMAGES, held_out
from cfebm.growth import Growth, growth_at, total_images
from cfebm.model import EnergyNet, count_parameters, frozen, frozen_copy
from cfebm.sampling import Generator, LangevinStep, Streams, langevin_cfg, step_size_at
from cfebm.training import resolve_device, sample_negatives, sampling_schedule
from cfebm.translation import translation_chain

EXPORT_FORMAT = "cfebm-export-v1"
# Packaged models, each named after the preset that trained it (a name is never a preset's
# alias): name -> export in cfebm/weights/, beside its model card <name>.md.
PRETRAINED = {"fmnist32-2h": "fmnist32-2h.safetensors"}
# An export as a folder (``export(DIR)``), laid out as a model hub takes it: the export file,
# the resolved config and the model card. A Hub repo id (``load("owner/name")``) fetches these.
FOLDER_FILES = ("model.safetensors", "config.json", "README.md")
EXPORT_FILE, CONFIG_FILE, CARD_FILE = FOLDER_FILES
MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")  # files, never folder names
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def trained_growth(n_images: int, cfg: Config) -> Growth:
    """The stage a model that has seen ``n_images`` images was trained as.

    At the first image of a stage nothing of the new block has trained yet, so that is the
    previous stage's model (see the module docstring).
    """
    growth = growth_at(n_images, cfg.growth)
    if growth.stage > 0 and growth.images_in_stage == 0:
        return growth_at(n_images - 1, cfg.growth)
    return growth


class TrainedModel:
    """An energy-based model for inference.

    Attributes:
        net: the energy network (eval mode, no parameter gradients).
        coarse: frozen copies of finished stages (``sampler.init="frozen"``), else [].
        cfg: the configuration it was trained with.
        n_images: training images it has seen.
        weights: "ema" or "trained".
        growth: the stage it is sampled as (``trained_growth``).
        record: what a training checkpoint or state knew of its run beyond weights and config
            (``version`` that trained it, ``train_seconds``, ``recoveries``, a best
            checkpoint's ``eval``); empty for an export. The model card reads it.
    """

    def __init__(self, net: EnergyNet, cfg: Config, n_images: int, *,
                 coarse: list[EnergyNet] | None = None, weights: str = "trained",
                 source: str = "", record: dict | None = None):
        self.net = net.eval().requires_grad_(False)
        self.coarse = [c.eval().requires_grad_(False) for c in coarse or []]
        self.cfg, self.n_images, self.weights, self.source = cfg, n_images, weights, source
        self.record = dict(record or {})
        self.growth = trained_growth(n_images, cfg)

    @classmethod
    def from_state(cls, state, *, ema: bool | None = None) -> TrainedModel:
        """Copies of a ``training.TrainState``'s networks as a model (EMA as in ``load``)."""
        use_ema = state.ema is not None and ema is not False
        net = frozen_copy(state.ema if use_ema else state.net)
        record = {"version": __version__, "train_seconds": state.train_seconds,
                  "recoveries": state.recoveries}
        return cls(net, state.cfg, state.n_images, coarse=[frozen_copy(c) for c in state.coarse],
                   weights="ema" if use_ema else "trained", source="training state",
                   record=record)

    @property
    def resolution(self) -> int:
        return self.growth.resolution

    @property
    def channels(self) -> int:
        return self.cfg.model.image_channels

    @property
    def beta(self) -> float:
        return self.growth.beta

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: str | torch.device) -> TrainedModel:
        """Move the model (and its coarse copies) to ``device``; returns self."""
        device = resolve_device(str(device))
        self.net.to(device)
        for net in self.coarse:
            net.to(device)
        return self

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision the model was trained in (bf16 autocast or none). A model trained in
        bf16 runs in fp32 where ``train.precision = "auto"`` is fp32 (a CPU that could only
        emulate bf16, and CUDA; ``speed.resolved_precision``): faster there, and the energies
        differ only by bf16's rounding."""
        trained = self.cfg.train.precision
        return speed.autocast("fp32" if trained == "fp32" else "auto", self.device)

    def check_images(self, x: Tensor, what: str = "images") -> None:
        shape = (self.channels, self.resolution, self.resolution)
        if x.ndim != 4 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"{what} must have shape (N, {', '.join(map(str, shape))}) for this "
                             f"model, got {tuple(x.shape)}")

    def energy(self, x: Tensor) -> Tensor:
        """E(x) as trained (its β and precision), (N,) float32; lower is more likely.

        ``x``: (N, C, R, R) in [−1, 1] at the model's resolution. Gradients flow to ``x`` when it
        requires them; the parameters never take any.
        """
        self.check_images(x)
        with frozen(self.net), self.autocast():
            return self.net(x, self.beta)

    def schedule(self, *, steps: int | None = None,
                 cascade: bool = False) -> list[tuple[int, int]]:
        """(resolution, steps) of the chains ``sample`` runs from noise."""
        return sampling_schedule(self.growth, self.cfg.sampler, steps=steps, cascade=cascade)

    def sample(self, n: int | None = None, **options) -> Tensor:
        """Langevin chains of the model, (N, C, R, R) in [−1, 1]: ``sample_batches``
        concatenated (see it for ``n`` and the options)."""
        return torch.cat(list(self.sample_batches(n, **options)))

    def sample_batches(
        self, n: int | None = None, *, start: Tensor | None = None, steps: int | None = None,
        noise: float | None = None, mask: Tensor | None = None, seed: int = 0,
        generator: torch.Generator | None = None, cascade: bool = False,
        translation: bool = False, callback: Callable[[LangevinStep], None] | None = None,
        batch_size: int = 250, progress: bool = False,
    ) -> Iterator[Tensor]:
        """Langevin chains of the model, batch by batch: (B, C, R, R) in [−1, 1] each.

        Args:
            n: chains from noise, sampled as trained: Algorithm 2, the smooth initialisation of
                a mid-fade model, or the cascade for ``sampler.init`` cascade/frozen.
            start: instead of ``n``, chains that start exactly at these images (N, C, R, R) in
                [−1, 1] and run ``steps`` Langevin steps of ``energy`` (restoration etc.).
            steps: Langevin steps per chain (default: the model's T).
            noise: the test-time η0 of the model's noise schedule (default: training's;
                Fig. 16).
            mask: with ``start``, 1 where a pixel is known and kept exactly, broadcastable.
            seed: seeds one stream per 50 chains, so the samples do not depend on
                ``batch_size`` (up to the float round-off of convolutions of another size).
                ``generator`` instead runs everything as one batch from it.
            cascade: from noise, through every coarse stage in turn (A.8).
            translation: with ``start``, the chain of a translation run (Sec. 3.3) as trained:
                for a model stopped mid-fade, first the coarse chain from the pooled start,
                upsampled and blended with the start by β (``translation.translation_chain``);
                for a fully grown model the same as without. Takes no ``mask``.
            callback: sees every Langevin step of every batch (with ``translation`` mid-fade,
                the coarse chain's steps at R/2 first).
            batch_size: chains per batch (rounded up to a multiple of 50).
            progress: show a progress bar.
        """
        if (n is None) == (start is None):
            raise ValueError("give either n (chains from noise) or start (chains from images)")
        if steps is not None and steps < 0 or noise is not None and noise < 0:
            raise ValueError("steps and noise must be >= 0")
        if start is not None:
            self.check_images(start, "start")
            if mask is not None:
                _check_mask(mask, start)
                if translation:
                    raise ValueError("translation chains take no mask")
            total = len(start)
        else:
            if mask is not None:
                raise ValueError("a mask needs start images")
            total = n
        if total < 1:
            raise ValueError(f"need at least one chain, got {total}")
        chunks = [(0, total, generator)] if generator is not None else list(
            self._stream_batches(total, seed, batch_size))
        with tqdm(total=total, unit="img", desc="sampling", disable=not progress,
                  dynamic_ncols=True) as bar:
            for begin, size, gen in chunks:
                if start is not None:
                    rows = mask if mask is None or len(mask) == 1 else mask[begin:begin + size]
                    x = self._chain(start[begin:begin + size], steps, noise, rows, gen, callback,
                                    translation)
                else:
                    x = self._from_noise(size, steps, noise, gen, cascade, callback)
                bar.update(size)
                yield x

    def _stream_batches(self, total: int, seed: int,
                        batch_size: int) -> Iterator[tuple[int, int, Generator]]:
        k = Streams.CHAINS_PER_STREAM
        batch = max(k, -(-batch_size // k) * k)
        for begin in range(0, total, batch):
            size = min(batch, total - begin)
            yield begin, size, Streams.for_chains(seed, begin, size, self.device)

    def _chain(self, start: Tensor, steps: int | None, noise: float | None, mask: Tensor | None,
               generator: Generator, callback, translation: bool = False) -> Tensor:
        start = start.to(self.device)
        with frozen(self.net):  # the spectral-norm weights are computed once for the chain
            if translation:
                return translation_chain(self.net, self.growth, start, self.cfg.sampler,
                                         generator=generator, autocast=self.autocast,
                                         steps=steps, eta0=noise, callback=callback)
            return langevin_cfg(self.energy, start,
                                self.growth.n_steps if steps is None else steps,
                                self.cfg.sampler, eta0=noise, generator=generator,
                                mask=None if mask is None else mask.to(self.device),
                                callback=callback)

    def _from_noise(self, n: int, steps: int | None, noise: float | None,
                    generator: Generator, cascade: bool, callback) -> Tensor:
        with frozen(self.net):
            return sample_negatives(self.net, self.growth, n, self.cfg.sampler,
                                    coarse=self.coarse, generator=generator, device=self.device,
                                    autocast=self.autocast, steps=steps, eta0=noise,
                                    cascade_all=cascade, callback=callback)

    def export(self, path: str | Path) -> Path:
        """Write the inference weights (these weights, the frozen coarse copies, the config) for
        ``load``; no optimiser, no code. Returns ``path``.

        ``path`` ending in ``.safetensors``: that one file. Any other path is a folder that a
        model hub takes as it is (created if missing; other files in it are left alone):
        ``model.safetensors`` (the same file, byte for byte), ``config.json`` (the resolved
        config) and ``README.md``, a model card (``export_card``).
        """
        path = Path(path)
        blob = self._export_bytes()
        if path.suffix == ".safetensors":
            atomic_write(path, lambda f: f.write(blob))
            return path
        if path.suffix in MODEL_SUFFIXES or path.is_file():
            raise CheckpointError(f"an export is a .safetensors file or a folder, got "
                                  f"{str(path)!r}")
        files = {EXPORT_FILE: blob,
                 CONFIG_FILE: (json.dumps(to_dict(self.cfg), indent=2) + "\n").encode(),
                 CARD_FILE: export_card(self, blob).encode()}
        for name, data in files.items():
            atomic_write(path / name, lambda f, data=data: f.write(data))
        return path

    def _export_bytes(self) -> bytes:
        """The export file: the tensors as float32 and the metadata ``load`` reads, with its
        header's keys sorted (``canonical_safetensors``: same weights, same bytes)."""
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        for i, net in enumerate(self.coarse):
            tensors.update({f"coarse.{i}.{k}": v for k, v in net.state_dict().items()})
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
        metadata = {"format": EXPORT_FORMAT, "config": json.dumps(to_dict(self.cfg)),
                    "n_images": str(self.n_images), "weights": self.weights,
                    "coarse": str(len(self.coarse)), "cfebm_version": __version__}
        # bytes, not safetensors' save_file, which would leave the file readable by its owner only
        return canonical_safetensors(save(tensors, metadata=metadata))

    def __repr__(self) -> str:
        return (f"TrainedModel({self.source or 'in memory'}: {self.resolution}x{self.resolution}"
                f", {self.channels} channel(s), beta {self.beta:.2f}, {self.weights} weights, "
                f"{self.n_images:,} images)")


def _check_mask(mask: Tensor, start: Tensor) -> None:
    try:
        torch.broadcast_shapes(mask.shape, start.shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit images of shape "
                         f"{tuple(start.shape)}") from None
    if mask.ndim != 4 or not torch.all((mask == 0) | (mask == 1)):
        raise ValueError("a mask must be (N or 1, C or 1, R, R) of zeros and ones")


def load(path_or_name: str | Path, *, ema: bool | None = None,
         device: str | torch.device = "auto") -> TrainedModel:
    """A ``TrainedModel`` from a checkpoint (.pt), an export (.safetensors), a folder, a
    Hugging Face Hub repo id or a packaged model's name.

    A folder is an export folder (its ``model.safetensors``, what ``export(DIR)`` writes) or a
    run folder (its ``checkpoints/latest.pt``, what ``cfebm train --run-dir`` leaves). A string
    ``"owner/name"`` that names no local file or folder is a Hub repo id: its export folder is
    fetched by ``huggingface_hub.snapshot_download`` (``pip install cfebm[hub]``; offline,
    ``HF_HUB_OFFLINE=1``, from the Hub's cache). A local path always wins over a repo id.

    ``ema``: None takes the EMA weights when the run kept them (every preset's best); False the
    trained weights; True insists on the EMA. Loading never executes code from the file.
    """
    path = _resolve(path_or_name)
    device = resolve_device(str(device))
    model = _load_export(path, ema) if path.suffix == ".safetensors" else _load_checkpoint(path, ema)
    return model.to(device)


def packaged_file(name: str) -> Path:
    """The export of the packaged model ``name`` (a key of ``PRETRAINED``)."""
    if name not in PRETRAINED:
        raise CheckpointError(_not_packaged(name))
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


def _not_packaged(name: str) -> str:
    what = (f"{name!r} is a preset to train (cfebm train --preset {name}), not a packaged model"
            if name in preset_names() else f"no file or packaged model named {name!r}")
    return f"{what}; the packaged models are {', '.join(sorted(PRETRAINED))}"


def _resolve(path_or_name: str | Path) -> Path:
    """The file ``load`` reads: a packaged model's export, a folder's (``_in_folder``), a Hub
    repo's or the path itself. A bare word that is neither a file nor a packaged name (a
    preset's name, say) is refused here rather than reported as a missing file."""
    name = str(path_or_name)
    if name in PRETRAINED:
        return packaged_file(name)
    path = Path(path_or_name)
    if path.is_dir():
        return _in_folder(path)
    if not path.exists() and not path.suffix and len(path.parts) == 1:
        raise CheckpointError(_not_packaged(name))
    if (not path.exists() and isinstance(path_or_name, str) and REPO_ID.fullmatch(name)
            and path.suffix not in MODEL_SUFFIXES):
        return hub_folder(name) / EXPORT_FILE
    return path


def _in_folder(folder: Path) -> Path:
    """An export folder's ``model.safetensors``, else a run folder's ``checkpoints/latest.pt``."""
    export, latest = folder / EXPORT_FILE, folder / "checkpoints" / "latest.pt"
    if export.is_file() or latest.is_file():
        return export if export.is_file() else latest
    raise CheckpointError(f"{str(folder)!r} holds no model: neither an export folder's "
                          f"{EXPORT_FILE} nor a run folder's checkpoints/latest.pt")


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


def _load_checkpoint(path: Path, ema: bool | None) -> TrainedModel:
    ckpt = read(path)
    cfg = config_of(ckpt)
    if ema and ckpt["ema"] is None:
        raise CheckpointError(f"{str(path)!r} has no EMA weights (train.ema_decay was 0)")
    use_ema = ckpt["ema"] is not None and ema is not False
    net = EnergyNet(cfg.model)
    net.load_state_dict(ckpt["ema"] if use_ema else ckpt["model"])
    coarse = coarse_copies(net, ckpt.get("coarse", []))
    record = {k: ckpt[k] for k in ("version", "train_seconds", "recoveries", "eval") if k in ckpt}
    return TrainedModel(net, cfg, int(ckpt["n_images"]), coarse=coarse,
                        weights="ema" if use_ema else "trained", source=str(path), record=record)


def _load_export(path: Path, ema: bool | None) -> TrainedModel:
    if not path.is_file():
        raise CheckpointError(f"export {str(path)!r} does not exist")
    try:
        tensors = load_file(path)
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {str(path)!r} as a cfebm export ({e})") from e
    if meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a cfebm export")
    try:
        cfg = saved_config(json.loads(meta["config"]))
    except (ConfigError, ValueError, KeyError) as e:
        raise CheckpointError(f"the export's config is invalid: {e}") from e
    if path.name == EXPORT_FILE:
        _check_folder_config(path.parent / CONFIG_FILE, cfg)
    if ema is not None and ema != (meta["weights"] == "ema"):
        raise CheckpointError(f"{str(path)!r} holds the {meta['weights']} weights only")
    net = EnergyNet(cfg.model)
    net.load_state_dict(_prefixed(tensors, "net."))
    coarse = coarse_copies(net, [_prefixed(tensors, f"coarse.{i}.")
                                 for i in range(int(meta.get("coarse", "0")))])
    return TrainedModel(net, cfg, int(meta["n_images"]), coarse=coarse, weights=meta["weights"],
                        source=str(path))


def _check_folder_config(path: Path, cfg: Config) -> None:
    """An export folder's ``config.json`` must say what its export says: the weights were
    trained with the config inside ``model.safetensors`` (``cfg``), which ``load`` uses."""
    if not path.is_file():
        return
    try:
        same = saved_config(json.loads(path.read_text())) == cfg
    except (ConfigError, ValueError, OSError) as e:
        raise CheckpointError(f"cannot read {str(path)!r} as a cfebm config ({e})") from e
    if not same:
        raise CheckpointError(f"{str(path)!r} differs from the config inside {EXPORT_FILE}, "
                              "which the weights were trained with; export the model again")


def _prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


# ------------------------------------------------------------------------------------------------
# The model card of an export folder (its README.md)

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


def _packaged_folder_card(card: str, header: dict[str, str]) -> str:
    """A packaged model's card as its export folder's README.md: the Hub's keys and the folder's
    file in its header, and its links to files of cfebm's source (which stay behind) written
    out as their paths there."""
    block = re.match(r"---\n(.*?)\n---\n", card, re.DOTALL)
    own = dict(line.split(": ", 1) for line in block.group(1).splitlines())

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
                else "Inception features")  # as cfebm.training_eval.features_for
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
