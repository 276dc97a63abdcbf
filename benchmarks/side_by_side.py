"""Issue 41's side-by-side (``benchmarks/side_by_side.sh``): cfebm's sampling time, and the table.

``time`` draws N samples from a trained cfebm model as ``cfebm sample`` and ``cfebm eval`` draw
them (``TrainedModel.sample_batches``, batches of 250, seed 0) and records the wall-clock
seconds from the first batch to the last, model loaded: the same span
``benchmarks/diffusion.py`` times for its DDIM samples. ``table`` reads what the shell script
left in its folder and prints one Markdown table.

    python benchmarks/side_by_side.py time runs/sbs/cfebm --n 2000 --json runs/sbs/cfebm-sampling.json
    python benchmarks/side_by_side.py table runs/sbs
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusion import machine_facts  # benchmarks/diffusion.py, beside this script

from cfebm.files import read
from cfebm.trained import TrainedModel, load


def time_sampling(model: TrainedModel, n: int, *, batch_size: int = 250, seed: int = 0,
                  clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Seconds of each batch of ``n`` samples drawn as ``cfebm sample`` draws them."""
    seconds, begin = [], clock()
    for _ in model.sample_batches(n, seed=seed, batch_size=batch_size):
        seconds.append(clock() - begin)
        begin = clock()
    return seconds


def cfebm_row(out: Path, n: int, n_large: int, label: str) -> dict:
    """cfebm's row: the checkpoint's images and seconds, ``cfebm eval``'s scores, the timing."""
    ckpt = read(out / "cfebm" / "checkpoints" / "latest.pt")
    timing = json.loads((out / "cfebm-sampling.json").read_text())
    row = {"model": label, "images": ckpt["n_images"],
           "train_seconds": ckpt["train_seconds"],
           "sample_seconds_per_image": timing["sample_seconds_per_image"]}
    for size in (n, n_large):
        path = out / f"cfebm-eval-{size}.json"
        if size and path.is_file():
            row[size] = json.loads(path.read_text())
    return row


def diffusion_row(out: Path) -> dict:
    """The diffusion baseline's row, from its result.json."""
    result = json.loads((out / "diffusion" / "result.json").read_text())
    row = {"model": result["model"], "images": result["images_seen"],
           "train_seconds": result["train_seconds"],
           "sample_seconds_per_image": result["sample_seconds_per_image"],
           "machine": result["machine"]}
    row.update({int(size): score for size, score in result["scores"].items()})
    return row


def markdown(rows: list[dict], n: int, n_large: int) -> str:
    """One line per model: images seen, training seconds, FMNIST-FID and KID at ``n`` samples
    (and FID at ``n_large``), classes covered, sampling seconds per image."""
    head = ["model", "images seen", "train s", f"FMNIST-FID @{n:,}", f"KID @{n:,}",
            "classes"] + ([f"FMNIST-FID @{n_large:,}"] if n_large else []) + ["sample s/image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        score = r.get(n)
        cells = [r["model"], f"{r['images']:,}", f"{r['train_seconds']:.0f}",
                 f"{score['fid']:.1f}" if score else "—",
                 f"{score['kid']:.4f} ± {score['kid_std']:.4f}" if score else "—",
                 f"{score['coverage']['n_covered']}/10" if score else "—"]
        if n_large:
            cells.append(f"{r[n_large]['fid']:.1f}" if r.get(n_large) else "—")
        cells.append(f"{r['sample_seconds_per_image']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("time", help="time cfebm's sampling")
    p.add_argument("model", help="a run folder, checkpoint or export")
    p.add_argument("--json", required=True, help="where to write the timing")
    p.add_argument("--n", type=int, default=2000, help="samples")
    p = sub.add_parser("table", help="print the Markdown table of a side_by_side.sh folder")
    p.add_argument("out", help="the folder side_by_side.sh wrote")
    p.add_argument("--label", default="cfebm fmnist32", help="the name of cfebm's row")
    p.add_argument("--n", type=int, default=2000, help="the smaller sample count scored")
    p.add_argument("--n-large", type=int, default=0, help="the larger one (0: none)")
    args = parser.parse_args()

    if args.command == "time":
        model = load(args.model)
        seconds = time_sampling(model, args.n)
        report = {"model": str(args.model), "n": args.n, "machine": machine_facts(),
                  "sample_seconds": sum(seconds), "sample_batch_seconds": seconds,
                  "sample_seconds_per_image": sum(seconds) / args.n}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"{args.n} samples in {sum(seconds):.1f} s ({sum(seconds) / args.n:.4f} s/image, "
              f"{torch.get_num_threads()} threads); wrote {args.json}")
        return
    out = Path(args.out)
    rows = [cfebm_row(out, args.n, args.n_large, args.label), diffusion_row(out)]
    m = rows[1]["machine"]
    print(f"{m['cpu']} ({m['kind']}; {', '.join(m['flags'])}), {m['cores']} cores, "
          f"{m['torch_threads']} torch threads, torch {m['torch']}, load at start "
          f"{' '.join(m['loadavg'] or [])}\n")
    print(markdown(rows, args.n, args.n_large))


if __name__ == "__main__":
    main()
