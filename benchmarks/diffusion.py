"""A denoising diffusion baseline for issue 41: the same data, budget and evaluation as
``cfebm train --preset fmnist32 --minutes M``, with a small standard diffusion model.

The model is diffusers' ``UNet2DModel`` at 32×32, 1 channel, 1.11 M parameters (channels
32/64/64, one ResNet block per level, self-attention at 8×8 and in the middle block, GroupNorm
of 8 groups). It is trained as DDPM (Ho et al., "Denoising Diffusion Probabilistic Models",
NeurIPS 2020): ε-prediction with the MSE loss, T = 1000, linear β from 1e-4 to 0.02 (or
Nichol & Dhariwal's cosine schedule, ``--betas cosine``), Adam with a linear warm-up, gradients
clipped to norm 1, and an EMA of the weights with diffusers' warm-up (decay
1 − (1 + k)^−3/4 after k updates, at most 0.9999; their ``train_unconditional`` example). It is
sampled with DDIM (Song et al., "Denoising Diffusion Implicit Models", ICLR 2021), 50 steps,
η = 0, from the EMA weights.

Data: the training split of the ``fmnist32`` preset's data config (Fashion-MNIST zero-padded to
32×32 in [−1, 1], the last 5,000 training images held out as validation), in the batches of
``cfebm.data.BatchStream``. Training stops by the clock after ``--minutes`` of iterations, as
``cfebm train --minutes`` does (the check comes before each iteration, so the last one may run
past the budget), and then saves a checkpoint. The samples are scored as ``cfebm eval --features
fmnist`` scores a model's: FMNIST-FID, KID, precision/recall and class coverage against the
10,000 test images, by ``cfebm.metrics.evaluate``. The first ``--n`` samples are the ones drawn
for the smaller score when ``--n-large`` asks for more. Sampling seconds are the wall-clock time
from the first batch's noise to the last batch's images, model loaded, without the evaluation.

    python benchmarks/diffusion.py --minutes 30 --out runs/diffusion-s0 --n 2000 --n-large 10000
    python benchmarks/diffusion.py --checkpoint runs/diffusion-s0/checkpoint.pt \\
        --out runs/diffusion-s0-again --n 2000          # sample and score a trained model again

``benchmarks/side_by_side.sh`` runs it after ``cfebm train --preset fmnist32`` with the same
minutes and prints both in one table (docs/notebook/diffusion-baseline.md).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.unets.unet_2d import UNet2DModel
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from record import cpu_facts
from torch import Tensor

from cfebm import __version__
from cfebm.config import DataConfig, load_preset
from cfebm.data import BatchStream, load_images, to_float, to_uint8
from cfebm.files import atomic_save
from cfebm.metrics.evaluate import at_resolution, class_predictor, evaluate_samples, make_extractor
from cfebm.metrics.reference import compute_reference
from cfebm.runtime import autocast, derived_seed, native_bf16, resolve_device, resolved_precision
from cfebm.train.step import update_ema
from cfebm.viz import save_grid

PRESET = "fmnist32"   # the cfebm preset whose data, resolution and budget the baseline shares

# The network: 32 -> 16 -> 8 px, attention at 8x8 and in the middle block; 1,112,801 parameters.
# GroupNorm of 8 groups keeps 4-8 channels a group (DDPM's 32 groups of 128+ channels had 4+).
UNET = {
    "sample_size": 32,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
}
BETAS = {"linear": "linear", "cosine": "squaredcos_cap_v2"}   # DDPM's; Nichol & Dhariwal's
TIMESTEPS = 1000            # T, DDPM
EMA_POWER = 0.75            # diffusers' train_unconditional: --ema_power 3/4, inv_gamma 1
EMA_MAX_DECAY = 0.9999      # ... and --ema_max_decay (DDPM's decay)


# ------------------------------------------------------------------------------------------------
# Model, noise schedule, EMA


def make_unet(**overrides) -> UNet2DModel:
    """diffusers' UNet2DModel with ``UNET``'s settings, any of them overridden."""
    return UNet2DModel(**{**UNET, **overrides})


def schedule_config(betas: str) -> dict:
    """The forward process both schedulers share: T steps, ε-prediction, predicted x0 clipped
    to [−1, 1]; ``betas`` is "linear" (1e-4 to 0.02) or "cosine" (ᾱ(t) = cos²((t/T + s)/(1 + s)
    · π/2) normalised, s = 0.008, β capped at 0.999)."""
    if betas not in BETAS:
        raise ValueError(f"betas must be one of {', '.join(BETAS)}, got {betas!r}")
    return {"num_train_timesteps": TIMESTEPS, "beta_start": 1e-4, "beta_end": 0.02,
            "beta_schedule": BETAS[betas], "prediction_type": "epsilon", "clip_sample": True}


def ema_decay(updates: int) -> float:
    """The EMA's decay for the update after ``updates`` earlier ones: 0 for the first (the EMA
    starts as the weights), then 1 − (1 + k)^−¾, capped at 0.9999."""
    return min(EMA_MAX_DECAY, 1.0 - (1.0 + updates) ** -EMA_POWER)


def diffusion_loss(unet: Callable, scheduler: DDPMScheduler, x0: Tensor, noise: Tensor,
                   t: Tensor) -> Tensor:
    """DDPM's simple loss (Ho et al., Eq. 14): ‖ε − ε_θ(√ᾱ_t·x0 + √(1−ᾱ_t)·ε, t)‖², averaged.

    Args:
        unet: the network (or a compiled wrapper), ε_θ(x_t, t).
        x0: images (N, C, H, W) in [−1, 1]; noise: ε (N, C, H, W); t: timesteps (N,) in [0, T).
    """
    xt = scheduler.add_noise(x0, noise, t)
    return F.mse_loss(unet(xt, t).sample.float(), noise)


# ------------------------------------------------------------------------------------------------
# Training by the clock


@dataclass
class Run:
    """A training run's state: network, EMA, optimiser, forward process and progress."""

    unet: UNet2DModel
    ema: UNet2DModel
    optimizer: torch.optim.Adam
    scheduler: DDPMScheduler
    lr: float
    forward: Callable | None = None   # the network as trained (compiled), default ``unet``
    steps: int = 0
    images: int = 0
    train_seconds: float = 0.0


def new_run(*, lr: float, betas: str = "linear", seed: int = 0,
            device: str | torch.device = "cpu", channels_last: bool = False,
            compile: bool = False, **unet_overrides) -> Run:
    """A fresh run: the network initialised from ``seed``, its EMA a copy, Adam (β 0.9, 0.999)."""
    torch.manual_seed(seed)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    unet = make_unet(**unet_overrides).to(device, memory_format=memory)
    ema = copy.deepcopy(unet).requires_grad_(False)
    return Run(unet, ema, torch.optim.Adam(unet.parameters(), lr=lr),
               DDPMScheduler(**schedule_config(betas)), lr,
               torch.compile(unet) if compile else None)


def train_step(run: Run, x0: Tensor, generator: torch.Generator, *, precision: str = "fp32",
               warmup: int = 0, clip: float = 1.0) -> float:
    """One DDPM step on images ``x0`` (N, C, H, W) in [−1, 1]: t uniform on [0, T), ε from
    ``generator``, the lr warmed up linearly over ``warmup`` steps, gradients clipped to norm
    ``clip``, then the EMA. Returns the loss."""
    t = torch.randint(0, TIMESTEPS, (len(x0),), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device)
    for group in run.optimizer.param_groups:
        group["lr"] = run.lr * min(1.0, (run.steps + 1) / warmup) if warmup else run.lr
    with autocast(precision, x0.device):
        loss = diffusion_loss(run.forward or run.unet, run.scheduler, x0, noise, t)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.unet.parameters(), clip)
    run.optimizer.step()
    update_ema(run.ema, run.unet, ema_decay(run.steps))
    run.steps += 1
    run.images += len(x0)
    return loss.item()


def train(run: Run, stream: BatchStream, *, seconds: float, batch_size: int, seed: int = 0,
          precision: str = "fp32", warmup: int = 0, channels_last: bool = False,
          log_every: int = 0, clock: Callable[[], float] = time.perf_counter) -> None:
    """Train until ``seconds`` of wall clock have passed, checked before every iteration (so the
    last one may end past it, as ``cfebm train --minutes``); ``run.train_seconds`` is the time
    spent. Batch k is ``stream``'s images [k·B, (k+1)·B); every ``log_every`` steps a line."""
    device = next(run.unet.parameters()).device
    generator = torch.Generator(device).manual_seed(derived_seed("diffusion-noise", seed))
    memory = torch.channels_last if channels_last else torch.contiguous_format
    start, smoothed = clock() - run.train_seconds, None
    while (elapsed := clock() - start) < seconds:
        x0 = to_float(stream.batch(run.images, batch_size)).to(device, memory_format=memory)
        loss = train_step(run, x0, generator, precision=precision, warmup=warmup)
        smoothed = loss if smoothed is None else 0.98 * smoothed + 0.02 * loss
        if log_every and run.steps % log_every == 0:
            print(f"step {run.steps:6d}  images {run.images:8,d}  {elapsed:7.0f} s  "
                  f"loss {smoothed:.4f}", flush=True)
    run.train_seconds = elapsed


# ------------------------------------------------------------------------------------------------
# DDIM sampling


@torch.no_grad()
def sample(unet: Callable, config: dict, n: int, *, shape: tuple[int, int, int], steps: int = 50,
           batch_size: int = 250, seed: int = 0, precision: str = "fp32",
           device: str | torch.device = "cpu",
           clock: Callable[[], float] = time.perf_counter) -> tuple[Tensor, list[float]]:
    """``n`` DDIM samples (η = 0, ``steps`` steps, "leading" spacing: t = 980, 960, ..., 0 for
    50), in batches of ``batch_size`` from one generator seeded ``seed``.

    With ``config``'s clipped x0 and ᾱ = 1 after the last step, the last update returns the
    clipped x0 itself, so every sample lies in [−1, 1] without a clamp.

    Returns:
        (samples (n, *shape) on the CPU, seconds of each batch).
    """
    device = torch.device(device)
    ddim = DDIMScheduler(**config, set_alpha_to_one=True)
    ddim.set_timesteps(steps)
    generator = torch.Generator(device).manual_seed(seed)
    batches, seconds = [], []
    for start in range(0, n, batch_size):
        begin = clock()
        x = torch.randn((min(batch_size, n - start), *shape), generator=generator, device=device)
        for t in ddim.timesteps:
            with autocast(precision, device):
                eps = unet(x, t).sample
            x = ddim.step(eps.float(), t, x, eta=0.0).prev_sample
        batches.append(x.cpu())
        seconds.append(clock() - begin)
    return torch.cat(batches), seconds


# ------------------------------------------------------------------------------------------------
# Evaluation, machine, checkpoint


def evaluate(x: Tensor, data: DataConfig, sizes: list[int], *, seed: int = 0) -> dict:
    """``cfebm eval --features fmnist``'s scores of the first n of ``x`` for each n of ``sizes``,
    against the test split of ``data`` at 32² (one reference for all)."""
    extractor = at_resolution(make_extractor("fmnist", dataset=data.dataset, channels=1), 32)
    ref = compute_reference(data, "test", extractor, resolution=32, image_channels=1)
    classifier = class_predictor(data.dataset, 1, extractor, 32)
    scores = {}
    for n in sizes:
        result, _ = evaluate_samples(x[:n].split(250), ref, extractor, classifier=classifier,
                                     seed=seed)
        scores[str(n)] = dataclasses.asdict(result)
    return {"features": extractor.name, "reference": ref.metadata, "scores": scores}


def machine_facts(cpuinfo: str | None = None) -> dict:
    """What decides speed here: the CPU model and its vector flags (from /proc/cpuinfo), its
    kind in RESULTS.md's words, the cores this process may use, torch and its threads, the
    load average (a shared machine shows it)."""
    load = Path("/proc/loadavg")
    return {
        **cpu_facts(cpuinfo),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else
        os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "native_bf16": native_bf16(torch.device("cpu")),
        "loadavg": load.read_text().split()[:3] if load.is_file() else None,
        "python": platform.python_version(),
        "diffusers": diffusers.__version__,
        "cfebm": __version__,
    }


def save_checkpoint(run: Run, path: Path, *, betas: str, args: dict) -> None:
    """Weights, EMA, Adam, progress and the settings, as tensors and plain values (loads with
    ``weights_only=True``)."""
    atomic_save({"unet": run.unet.state_dict(), "ema": run.ema.state_dict(),
                 "optimizer": run.optimizer.state_dict(), "unet_config": dict(UNET),
                 "betas": betas, "steps": run.steps, "images": run.images,
                 "train_seconds": run.train_seconds, "args": args,
                 "diffusers": diffusers.__version__}, path)


def load_ema(path: str | Path, device: torch.device) -> tuple[UNet2DModel, dict]:
    """The EMA network of a checkpoint and the checkpoint's other entries (weights dropped)."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    unet = UNet2DModel(**ckpt["unet_config"]).to(device)
    unet.load_state_dict(ckpt["ema"])
    return unet.requires_grad_(False), {k: v for k, v in ckpt.items()
                                        if k not in ("unet", "ema", "optimizer")}


# ------------------------------------------------------------------------------------------------
# The benchmark


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    precision = resolved_precision(args.precision, device)
    facts = machine_facts()
    print(f"{facts['cpu']} ({facts['kind']}), {facts['torch_threads']} threads, {precision}, "
          f"load {facts['loadavg']}", flush=True)
    data = load_preset(PRESET).data
    memory = torch.channels_last if args.channels_last else torch.contiguous_format

    if args.checkpoint:
        ema, trained = load_ema(args.checkpoint, device)
        ema = ema.to(memory_format=memory)
    else:
        images = load_images(data, split="train", resolution=32, image_channels=1)
        run = new_run(lr=args.lr, betas=args.betas, seed=args.seed, device=device,
                      channels_last=args.channels_last, compile=args.compile)
        print(f"UNet2DModel, {sum(p.numel() for p in run.unet.parameters()):,} parameters; "
              f"{len(images):,} training images; {args.minutes:g} minutes", flush=True)
        train(run, BatchStream(images, args.seed), seconds=60 * args.minutes,
              batch_size=args.batch_size, seed=args.seed, precision=precision,
              warmup=args.warmup, channels_last=args.channels_last, log_every=args.log_every)
        save_checkpoint(run, out / "checkpoint.pt", betas=args.betas, args=vars(args))
        ema, trained = run.ema, {"betas": args.betas, "steps": run.steps, "images": run.images,
                                 "train_seconds": run.train_seconds}
        print(f"trained {run.steps:,} steps, {run.images:,} images in {run.train_seconds:.0f} s; "
              f"wrote {out / 'checkpoint.pt'}", flush=True)

    n = max(args.n, args.n_large)
    network = torch.compile(ema) if args.compile else ema
    x, seconds = sample(network, schedule_config(trained["betas"]), n, shape=(1, 32, 32),
                        steps=args.ddim_steps, batch_size=args.sample_batch, seed=args.sample_seed,
                        precision=precision, device=device)
    print(f"sampled {n:,} images in {sum(seconds):.1f} s ({sum(seconds) / n:.4f} s/image)",
          flush=True)
    save_grid(x[:100], out / "samples.png", nrow=10, scale=2)
    np.savez_compressed(out / "samples.npz", samples=to_uint8(x).numpy())
    evaluation = evaluate(x, data, sorted({args.n, args.n_large} - {0}), seed=args.sample_seed)
    parameters = sum(p.numel() for p in ema.parameters())
    report = {
        "model": f"diffusion (UNet2DModel, {parameters:,} parameters, DDIM {args.ddim_steps})",
        "machine": facts, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "args": vars(args), "trained_with": trained.get("args", vars(args)),
        "precision": precision, "parameters": parameters,
        "unet_config": dict(UNET), "schedule": schedule_config(trained["betas"]),
        "steps": trained["steps"], "images_seen": trained["images"],
        "train_seconds": trained["train_seconds"], "sample_n": n,
        "sample_seconds": sum(seconds), "sample_seconds_per_image": sum(seconds) / n,
        "sample_batch_seconds": seconds, "loadavg_end": machine_facts()["loadavg"],
        **evaluation,
    }
    (out / "result.json").write_text(json.dumps(report, indent=2) + "\n")
    for size, s in evaluation["scores"].items():
        print(f"n {size}: FMNIST-FID {s['fid']:.2f}  KID {s['kid']:.4f} ± {s['kid_std']:.4f}  "
              f"classes {s['coverage']['n_covered']}/10", flush=True)
    print(f"wrote {out / 'result.json'}", flush=True)
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch-size", type=int, default=64, help="training batch (fmnist32's)")
    p.add_argument("--betas", choices=tuple(BETAS), default="linear", help="the β schedule")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--checkpoint", help="skip training: sample and score this checkpoint's EMA")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--ddim-steps", type=int, default=50, help="DDIM sampling steps")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--log-every", type=int, default=200, help="steps between log lines")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate after warm-up")
    p.add_argument("--minutes", type=float, default=30.0, help="training budget, wall clock")
    p.add_argument("--n", type=int, default=2000, help="samples scored (FMNIST-FID, KID)")
    p.add_argument("--n-large", type=int, default=0, help="also score this many (0: no)")
    p.add_argument("--out", required=True, help="folder for checkpoint, samples and result.json")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 autocast where the CPU runs it natively (cfebm's rule)")
    p.add_argument("--sample-batch", type=int, default=250, help="chains per sampling batch "
                   "(cfebm sample's default)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the sampling noise")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, batches and noise")
    p.add_argument("--threads", type=int, default=0, help="torch's intra-op threads (0: its "
                   "default, one per core; on a busy machine 1 may be faster)")
    p.add_argument("--warmup", type=int, default=200, help="steps of linear lr warm-up")
    args = p.parse_args(argv)
    if args.n < 2 or args.n_large < 0 or not math.isfinite(args.minutes) or args.minutes <= 0:
        p.error("--n must be >= 2, --n-large >= 0 and --minutes > 0")
    return args


if __name__ == "__main__":
    main()
