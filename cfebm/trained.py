"""A trained model as one object: its energy, and Langevin chains from any start, as trained.

``load(path_or_name)`` reads a training checkpoint (``.pt``), an inference export
(``.safetensors``, written by ``TrainedModel.export`` or ``cfebm export``), an export folder as
a model hub takes it (``model.safetensors``, ``config.json`` and a ``README.md`` model card), a
Hugging Face Hub repo id of such a folder, or a packaged pretrained model by name, and returns a
``TrainedModel``. Every command and application goes through it, so "sample this model as it
was trained" is decided in one place (``chains.as_trained``: Algorithm 1's chains from noise,
or a translation run's from its sources) and the model's resolution, fading factor β, precision
and frozen coarse copies travel with it.

A checkpoint written at a stage boundary (``stage0-8x8.pt``) holds a net whose new block has not
trained yet (β = 0 there, which equals the finished coarse stage on pooled input exactly), so it
is sampled as that finished stage: at its resolution with β = 1.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import Tensor
from tqdm.auto import tqdm

from cfebm import __version__, runtime
from cfebm.chains import as_trained, sampling_schedule
from cfebm.config import (
    Config,
    ConfigError,
    saved_config,
    to_dict,
)
from cfebm.files import (
    CheckpointError,
    atomic_write,
    canonical_safetensors,
    coarse_copies,
    config_of,
    read,
)
from cfebm.growth import Growth, growth_at
from cfebm.guides import CHOOSE_AT, Guide, GuideError, best_of, listed, summed
from cfebm.model import EnergyNet, frozen, frozen_copy
from cfebm.runtime import resolve_device
from cfebm.sampling import (
    AveragePooled,
    Energy,
    Generator,
    LangevinStep,
    Streams,
    downsample,
    init_noise,
    langevin_cfg,
    steered,
)
from cfebm.share import (
    CARD_FILE,
    CONFIG_FILE,
    EXPORT_FILE,
    MODEL_SUFFIXES,
    PRETRAINED,
    REPO_ID,
    export_card,
    hub_folder,
    not_packaged,
    packaged_file,
)

EXPORT_FORMAT = "cfebm-export-v1"


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
        record = {"version": __version__, "train_seconds": state.record.train_seconds,
                  "recoveries": state.record.recoveries}
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
        emulate bf16, and CUDA; ``runtime.resolved_precision``): faster there, and the energies
        differ only by bf16's rounding."""
        trained = self.cfg.train.precision
        return runtime.autocast("fp32" if trained == "fp32" else "auto", self.device)

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

    def energy_and_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """E(x) as ``energy`` gives it, (N,) float32, and the features the network's top block
        reads, flattened: (N, 4c·4·4) float32. One forward pass, no gradients."""
        self.check_images(x)
        with torch.no_grad(), frozen(self.net), self.autocast():
            h = self.net.trunk(x, self.beta)
            return self.net.energy_from(h), h.flatten(1).float()

    def coarse_energy(self, x: Tensor, resolution: int) -> Tensor:
        """E_r(pool(x)): the energy the network gives ``x`` (N, C, R, R) average-pooled to a
        coarser ``resolution`` r it was trained at (β = 1 there), (N,) float32, no gradients."""
        self.check_images(x)
        if resolution >= self.resolution or resolution not in self.net.resolutions:
            raise ValueError(f"resolution must be one of the coarser scales "
                             f"{[r for r in self.net.resolutions if r < self.resolution]}, "
                             f"got {resolution}")
        with torch.no_grad(), frozen(self.net), self.autocast():
            return self.net(downsample(x, resolution))

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
        noise: float | None = None, mask: Tensor | None = None,
        pooled: Tensor | None = None, seed: int = 0,
        generator: torch.Generator | None = None, cascade: bool = False,
        translation: bool = False, callback: Callable[[LangevinStep], None] | None = None,
        guide: Guide | Sequence[Guide] | None = None, candidates: int = 1,
        choose_at: int | None = None, batch_size: int = 250, progress: bool = False,
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
            pooled: with ``start``, low-resolution images y (N, C, r, r), r a power-of-two
                fraction of R, that every sample average-pools to exactly (super-resolution:
                ``sampling.AveragePooled`` projects the chain after every step).
            seed: seeds one stream per 50 chains, so the samples do not depend on
                ``batch_size`` (up to the float round-off of convolutions of another size).
                ``generator`` instead runs everything as one batch from it.
            cascade: from noise, through every coarse stage in turn (A.8).
            translation: with ``start``, the chain of a translation run (Sec. 3.3) as trained:
                for a model stopped mid-fade, first the coarse chain from the pooled start,
                upsampled and blended with the start by β (``chains.translation_chain``);
                for a fully grown model the same as without. Takes no ``mask``.
            callback: sees every Langevin step of every batch (with ``translation`` mid-fade,
                the coarse chain's steps at R/2 first).
            guide: a ``cfebm.guides.Guide`` or several, added to the energy of every chain
                (steered sampling: a class, another model AND / NOT, a reference image); at a
                coarse scale each sees the state resized to its own resolution
                (``cfebm.guides``). Weight 0 gives the unguided chains bit for bit.
            candidates: with ``n`` and a ``guide``, k > 1 candidate chains for each sample, of
                which the one with the lowest guide term after ``choose_at`` steps goes on
                (``cfebm.guides.best_of``: k·s + T − s steps a sample). Algorithm 2's chains
                only (a grown model, no cascade).
            choose_at: s, the step of that choice (default: two thirds of the chain,
                ``guides.CHOOSE_AT``).
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
            if translation and (mask is not None or pooled is not None):
                raise ValueError("translation chains take no mask or pooled images")
            if pooled is not None:
                _check_pooled(pooled, start)
            total = len(start)
        else:
            if mask is not None or pooled is not None:
                raise ValueError("a mask or pooled images need start images")
            total = n
        if total < 1:
            raise ValueError(f"need at least one chain, got {total}")
        for g in listed(guide):
            g.check(self.channels, self.resolution)
        extra = summed(guide)
        if candidates != 1:
            self._check_candidates(candidates, start is None and extra is not None, cascade)
        chunks = [(0, total, generator)] if generator is not None else list(
            self._stream_batches(total, seed, batch_size))
        with tqdm(total=total, unit="img", desc="sampling", disable=not progress,
                  dynamic_ncols=True) as bar:
            for begin, size, gen in chunks:
                if start is not None and not translation:
                    rows = mask if mask is None or len(mask) == 1 else mask[begin:begin + size]
                    low = None if pooled is None else AveragePooled(pooled[begin:begin + size])
                    x = self._chain(start[begin:begin + size], steps, noise, rows, gen, callback,
                                    low, extra)
                elif candidates > 1:   # chain j's candidates draw as chains k·j … k·j + k − 1
                    streams = generator if generator is not None else Streams.for_chains(
                        seed, candidates * begin, candidates * size, self.device)
                    x = self._best_of(size, candidates, choose_at, steps, noise, extra, streams)
                else:
                    source = None if start is None else start[begin:begin + size]
                    x = self._as_trained(size, source, steps, noise, gen, cascade, callback,
                                         extra)
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
               generator: Generator, callback, constraint: AveragePooled | None = None,
               guide: Energy | None = None) -> Tensor:
        start = start.to(self.device)
        with frozen(self.net):  # the spectral-norm weights are computed once for the chain
            return langevin_cfg(steered(self.energy, guide), start,
                                self.growth.n_steps if steps is None else steps,
                                self.cfg.sampler, eta0=noise, generator=generator,
                                mask=None if mask is None else mask.to(self.device),
                                constraint=constraint, callback=callback)

    def _as_trained(self, n: int, source: Tensor | None, steps: int | None, noise: float | None,
                    generator: Generator, cascade: bool, callback,
                    guide: Energy | None = None) -> Tensor:
        """``n`` chains from noise, or translation chains from ``source`` (``chains.as_trained``)."""
        source = None if source is None else source.to(self.device)
        with frozen(self.net):
            return as_trained(self.net, self.growth, n, self.cfg.sampler, source=source,
                              coarse=self.coarse, generator=generator, device=self.device,
                              autocast=self.autocast, steps=steps, eta0=noise,
                              cascade_all=cascade, callback=callback, guide=guide)

    def _check_candidates(self, k: int, guided_from_noise: bool, cascade: bool) -> None:
        if not isinstance(k, int) or k < 1:
            raise GuideError(f"candidates must be a whole number >= 1, got {k!r}")
        if not guided_from_noise:
            raise GuideError("candidates need chains from noise (n) and a guide to choose by")
        if cascade or len(self.schedule()) > 1 or self.growth.fading and self.cfg.sampler.smooth:
            raise GuideError("candidates choose among Algorithm 2's chains: a grown model "
                             "sampled at its own resolution, without the cascade")

    def _best_of(self, n: int, k: int, choose_at: int | None, steps: int | None,
                 noise: float | None, guide: Energy, generator: Generator) -> Tensor:
        """``n`` chains from noise that each keep the best of ``k`` candidates
        (``guides.best_of``), started as Algorithm 2 starts them."""
        total = self.growth.n_steps if steps is None else steps
        at = round(CHOOSE_AT * total) if choose_at is None else choose_at
        x = init_noise(n * k, self.channels, self.resolution, self.cfg.sampler.start_noise,
                       first=self.growth.cascade[0][0], generator=generator, device=self.device)
        with frozen(self.net):
            return best_of(self.energy, guide, x, k, total, at, self.cfg.sampler, eta0=noise,
                           generator=generator)

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


def _check_pooled(pooled: Tensor, start: Tensor) -> None:
    """One low-resolution image per start image, of the same channels, at a power-of-two
    fraction of the start's side."""
    r, side = pooled.shape[-1], start.shape[-1]
    if (pooled.dim() != 4 or len(pooled) != len(start) or pooled.shape[1] != start.shape[1]
            or pooled.shape[-2] != r or side % r or (side // r) & (side // r - 1)):
        raise ValueError(f"pooled images must be (N, C, r, r) with N, C of start "
                         f"{tuple(start.shape)} and {side} / r a power of two, got "
                         f"{tuple(pooled.shape)}")


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
        raise CheckpointError(not_packaged(name))
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


