"""Train the Fashion-MNIST classifier behind ``cfebm.metrics.features.FMNISTFeatures``.

Trains ``cfebm.metrics.classifier.FMNISTClassifier`` on the 60k training split (zero-padded to
32×32, in [−1, 1]) with a fixed seed, reports accuracy on the 10k test split and writes
``cfebm/weights/fmnist_classifier.safetensors`` with the recipe in its metadata. CPU only.

    python scripts/train_fmnist_classifier.py [--root /usr/share/datasets/fashion-mnist]
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cfebm.metrics.classifier import (
    FMNIST_DEFAULT_ROOT,
    FMNISTClassifier,
    load_fashion_mnist,
    save_classifier,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "cfebm" / "weights" / "fmnist_classifier.safetensors"


@torch.no_grad()
def accuracy(net: FMNISTClassifier, x: torch.Tensor, y: torch.Tensor, batch_size=1000) -> float:
    net.eval()
    correct = sum(
        (net(xb).argmax(1) == yb).sum().item()
        for xb, yb in zip(x.split(batch_size), y.split(batch_size))
    )
    return correct / len(y)


def train(x, y, *, epochs, batch_size, lr, weight_decay, seed, log_every=100):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = FMNISTClassifier()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = len(x) // batch_size   # drop the last partial batch
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2
    )
    step = 0
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(x), generator=generator)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            xb, yb = x[idx], y[idx]
            # Augmentation: horizontal flip of half the batch (clothing is left-right symmetric).
            flip = torch.rand(len(xb), generator=generator) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % log_every == 0:
                print(f"epoch {epoch}  step {step}  loss {loss.item():.4f}", flush=True)
    return net


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--root", default=FMNIST_DEFAULT_ROOT, help="folder with the IDX .gz files")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .safetensors file")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    x_train, y_train = load_fashion_mnist("train", args.root)
    x_test, y_test = load_fashion_mnist("test", args.root)

    recipe = {
        "optimizer": "AdamW",
        "schedule": "OneCycleLR(pct_start=0.2)",
        "augmentation": "random horizontal flip p=0.5",
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "data": "Fashion-MNIST train 60k, zero-padded 28->32, [-1,1]",
    }
    t0 = time.perf_counter()
    net = train(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                weight_decay=args.weight_decay, seed=args.seed)
    train_s = time.perf_counter() - t0
    test_acc = accuracy(net, x_test, y_test)
    print(f"test accuracy {test_acc:.4f}  training time {train_s:.0f} s", flush=True)

    info = {
        "recipe": recipe,
        "seed": args.seed,
        "test_accuracy": round(test_acc, 4),
        "torch_version": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_classifier(net, args.out, info)
    sha256 = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    print(f"sha256 {sha256}")


if __name__ == "__main__":
    main()
