"""Train the noise-robust Fashion-MNIST classifier that steers sampling (``cfebm.guides``).

A Langevin chain passes through noisy images on its way from U(−1, 1) to a garment, and a
classifier trained on clean images only has useless gradients there. So this one
(``cfebm.guides.GuideClassifier``, a different network from the FMNIST-FID feature net, which
guidance must not game) trains on images noised like the chains' states: each training image,
with probability 1/2 each,

- Gaussian: x + σ·ε with σ ~ U(0, ``--sigma-max``), or
- a mixture with uniform noise, the chains' start: (1 − t)·x + t·u with t ~ U(0, 1),
  u ~ U(−1, 1),

clamped to [−1, 1]. Data: the training split without its validation images (``data.validation
= 5000``: the first 55,000 training images), 32×32 in [−1, 1], random horizontal flips. It
reports accuracy on the validation split, clean and at fixed noise levels (never the test
split), and writes ``cfebm/weights/guide_classifier.safetensors`` with the recipe in its
metadata. CPU, one thread:

    OMP_NUM_THREADS=1 python scripts/train_guide_classifier.py
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from cfebm.config import DataConfig
from cfebm.data import load_images, to_float
from cfebm.data.readers import DEBIAN_FASHION_MNIST
from cfebm.guides import GUIDE_WEIGHTS, GuideClassifier, save_classifier

# The fixed noise levels the validation accuracy is reported at.
EVAL_SIGMAS = (0.1, 0.3, 0.5)
EVAL_MIXES = (0.25, 0.5, 0.75)


def split(root: str, name: str) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST ``name`` ("train" or "validation") as (x (N, 1, 32, 32) in [−1, 1], y)."""
    cfg = DataConfig(dataset="fashion_mnist", root=root, download=False, validation=5000)
    images = load_images(cfg, split=name, resolution=32, image_channels=1)
    return to_float(images.get_batch(torch.arange(len(images)))), images.labels


def noised(x: Tensor, sigma_max: float, generator: torch.Generator) -> Tensor:
    """Each image Gaussian-noised (σ ~ U(0, sigma_max)) or mixed with U(−1, 1) noise (weight
    t ~ U(0, 1)), half and half, clamped to [−1, 1]."""
    n = len(x)
    t = torch.rand(n, 1, 1, 1, generator=generator)
    gaussian = torch.rand(n, 1, 1, 1, generator=generator) < 0.5
    eps = torch.randn(x.shape, generator=generator)
    u = torch.rand(x.shape, generator=generator) * 2 - 1
    return torch.where(gaussian, x + sigma_max * t * eps, (1 - t) * x + t * u).clamp(-1, 1)


@torch.no_grad()
def accuracy(net: GuideClassifier, x: Tensor, y: Tensor) -> float:
    return sum((net(xb).argmax(1) == yb).sum().item()
               for xb, yb in zip(x.split(1000), y.split(1000))) / len(y)


def validation_report(net: GuideClassifier, x: Tensor, y: Tensor, seed: int) -> dict:
    """Accuracy on the validation split: clean, Gaussian σ and uniform-mixture t (fixed noise)."""
    g = torch.Generator().manual_seed(seed + 1)
    report = {"clean": accuracy(net, x, y)}
    for s in EVAL_SIGMAS:
        report[f"gaussian {s}"] = accuracy(net, (x + s * torch.randn(x.shape, generator=g))
                                           .clamp(-1, 1), y)
    for t in EVAL_MIXES:
        u = torch.rand(x.shape, generator=g) * 2 - 1
        report[f"uniform mix {t}"] = accuracy(net, (1 - t) * x + t * u, y)
    return {k: round(v, 4) for k, v in report.items()}


def train(x: Tensor, y: Tensor, *, epochs: int, batch_size: int, lr: float,
          weight_decay: float, sigma_max: float, seed: int) -> GuideClassifier:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = GuideClassifier()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps = len(x) // batch_size   # the last partial batch is dropped
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps,
                                                pct_start=0.2)
    for epoch in range(epochs):
        net.train()
        perm, tic = torch.randperm(len(x), generator=g), time.time()
        for i in range(steps):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            xb = x[idx]
            flip = torch.rand(len(xb), generator=g) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(net(noised(xb, sigma_max, g)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch}  loss {loss.item():.4f}  {time.time() - tic:.0f} s", flush=True)
    return net.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(DEBIAN_FASHION_MNIST), help="the IDX .gz files' folder")
    p.add_argument("--out", type=Path, default=GUIDE_WEIGHTS, help="output .safetensors file")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--sigma-max", type=float, default=0.6, help="largest Gaussian noise σ")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.set_num_threads(1)
    x, y = split(args.root, "train")
    x_val, y_val = split(args.root, "validation")
    tic = time.time()
    net = train(x, y, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                weight_decay=args.weight_decay, sigma_max=args.sigma_max, seed=args.seed)
    seconds = time.time() - tic
    report = validation_report(net, x_val, y_val, args.seed)
    print(f"validation accuracy {report}  training time {seconds:.0f} s", flush=True)
    info = {"recipe": {"optimizer": "AdamW", "schedule": "OneCycleLR(pct_start=0.2)",
                       "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                       "weight_decay": args.weight_decay, "sigma_max": args.sigma_max,
                       "noise": "half Gaussian sigma~U(0,sigma_max), half (1-t)x+tU(-1,1), "
                                "t~U(0,1); clamped", "augmentation": "horizontal flip p=0.5",
                       "data": "Fashion-MNIST train minus the last 5000 (55k), 32x32, [-1,1]"},
            "seed": args.seed, "validation_accuracy": report,
            "train_seconds": round(seconds), "torch_version": torch.__version__}
    save_classifier(net, args.out, info)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes), sha256 "
          f"{hashlib.sha256(args.out.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
