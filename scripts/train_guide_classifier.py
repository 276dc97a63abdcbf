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
= 5000``: the first 55,000 training images), 32×32 in [−1, 1], random horizontal flips.

Then ``--robust-epochs`` of adversarial training (Madry et al. 2018): each noised batch is
moved by ``--pgd-steps`` of projected gradient ascent on the loss, within an L2 ball of radius
``--robust-eps``, and the net learns from the moved batch. A chain steered by a plain
classifier climbs its gradient to images no garment looks like (bright, boxy "ankle boots"
that another classifier calls bags: docs/notebook/steering.md); a robust classifier's input
gradients look like the data (Santurkar et al. 2019), which is what guidance follows.

It reports accuracy on the validation split, clean and at fixed noise levels (never the test
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
# The adversarial stage (docs/notebook/steering.md): peak lr of its own one-cycle schedule.
ROBUST_EPOCHS, ROBUST_EPS, ROBUST_LR = 1.0, 1.0, 1e-3


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


def pgd(net: GuideClassifier, x: Tensor, y: Tensor, eps: float, steps: int) -> Tensor:
    """``x`` (N, 1, 32, 32) moved by ``steps`` of L2 projected gradient ascent on the loss
    (step 2.5·eps/steps, Madry et al.'s rule), each image within ‖δ‖₂ ≤ eps of where it was."""
    delta = torch.zeros_like(x, requires_grad=True)
    for _ in range(steps):
        (grad,) = torch.autograd.grad(F.cross_entropy(net(x + delta), y), delta)
        delta = delta.detach() + 2.5 * eps / steps * grad / _norms(grad)
        delta = (delta * (eps / _norms(delta)).clamp(max=1.0)).requires_grad_(True)
    return (x + delta).detach()


def _norms(t: Tensor) -> Tensor:
    """Per-image L2 norms (N, 1, 1, 1) of ``t`` (N, C, H, W), floored away from zero."""
    return t.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]


def fit(net: GuideClassifier, x: Tensor, y: Tensor, g: torch.Generator, *, epochs: float,
        batch_size: int, lr: float, weight_decay: float, sigma_max: float, eps: float = 0.0,
        pgd_steps: int = 0) -> None:
    """``epochs`` (may be fractional) of AdamW under one-cycle on noised batches, each moved
    adversarially first when ``eps`` > 0."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    per_epoch = len(x) // batch_size   # the last partial batch is dropped
    total = round(epochs * per_epoch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total,
                                                pct_start=0.2)
    tic = time.time()
    for i in range(total):
        if i % per_epoch == 0:
            perm = torch.randperm(len(x), generator=g)
        idx = perm[i % per_epoch * batch_size:(i % per_epoch + 1) * batch_size]
        xb = x[idx]
        flip = torch.rand(len(xb), generator=g) < 0.5
        xb = noised(torch.where(flip[:, None, None, None], xb.flip(-1), xb), sigma_max, g)
        if eps > 0:
            net.eval()
            xb = pgd(net, xb, y[idx], eps, pgd_steps)
        net.train()
        loss = F.cross_entropy(net(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (i + 1) % per_epoch == 0 or i + 1 == total:
            print(f"{'robust ' if eps > 0 else ''}step {i + 1}/{total}  loss {loss.item():.4f}  "
                  f"{time.time() - tic:.0f} s", flush=True)
    net.eval()


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
    p.add_argument("--robust-epochs", type=float, default=ROBUST_EPOCHS,
                   help="epochs of adversarial training after the noise epochs (0: none)")
    p.add_argument("--robust-eps", type=float, default=ROBUST_EPS,
                   help="L2 radius of the adversarial moves, in [-1, 1] pixel units")
    p.add_argument("--pgd-steps", type=int, default=3, help="gradient steps per move")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.set_num_threads(1)
    x, y = split(args.root, "train")
    x_val, y_val = split(args.root, "validation")
    tic = time.time()
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    net = GuideClassifier()
    common = {"batch_size": args.batch_size, "weight_decay": args.weight_decay,
              "sigma_max": args.sigma_max}
    fit(net, x, y, g, epochs=args.epochs, lr=args.lr, **common)
    if args.robust_epochs > 0:
        fit(net, x, y, g, epochs=args.robust_epochs, lr=ROBUST_LR, eps=args.robust_eps,
            pgd_steps=args.pgd_steps, **common)
    seconds = time.time() - tic
    report = validation_report(net, x_val, y_val, args.seed)
    print(f"validation accuracy {report}  training time {seconds:.0f} s", flush=True)
    info = {"recipe": {"optimizer": "AdamW", "schedule": "OneCycleLR(pct_start=0.2)",
                       "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                       "weight_decay": args.weight_decay, "sigma_max": args.sigma_max,
                       "noise": "half Gaussian sigma~U(0,sigma_max), half (1-t)x+tU(-1,1), "
                                "t~U(0,1); clamped", "augmentation": "horizontal flip p=0.5",
                       "data": "Fashion-MNIST train minus the last 5000 (55k), 32x32, [-1,1]",
                       "robust": {"epochs": args.robust_epochs, "l2_eps": args.robust_eps,
                                  "pgd_steps": args.pgd_steps, "lr": ROBUST_LR,
                                  "attack": "L2 PGD on the noised batch, step 2.5 eps/steps, "
                                            "net in eval mode"}},
            "seed": args.seed, "validation_accuracy": report,
            "train_seconds": round(seconds), "torch_version": torch.__version__}
    save_classifier(net, args.out, info)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes), sha256 "
          f"{hashlib.sha256(args.out.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
