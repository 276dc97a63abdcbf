"""Log-likelihood bounds against the number of temperatures K (paper A.7, Table 10).

For each model and each K: forward AIS (M chains from U([−1, 1]ᴰ)) and reverse AIS from the
first n dequantised test images (``cfebm.apps.likelihood``), HMC on the sigmoid schedule, step
sizes tuned on 10-chain pilot runs (the reverse one from the 10 test images after the first n).
"upper" is a stochastic upper bound on the n images' mean log-likelihood. "lower" is the
reverse estimate: a lower bound only if the images were exact samples of the model
(``cfebm.metrics.ais``). Each comes with its standard error over the images. The gap comes with
the standard error of the paired per-image difference. Writes ``ais.jsonl`` (one
``LikelihoodBounds.summary`` per run, with its wall-clock), a Markdown table and a plot of both
numbers (nats per image on the [0, 1] scale of Table 10) against K.

    OMP_NUM_THREADS=1 python benchmarks/ais.py --models fmnist32-2h=cfebm/weights/fmnist32-2h.safetensors \
        --ks 100 --chains 20 --n 100 --out runs/ais
    python benchmarks/ais.py --replot runs/ais/ais.jsonl runs/ais300/ais.jsonl --plot out.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cfebm.apps.likelihood import held_out, model_bounds
from cfebm.metrics.ais import schedule
from cfebm.trained import load


def run(name: str, path: str, ks: list[int], args: argparse.Namespace) -> list[dict]:
    model = load(path)
    data = held_out(model, args.n, pilot=10, seed=args.seed)
    rows = []
    for k in ks:
        began = time.perf_counter()
        bounds = model_bounds(model, data.images, x_pilot=data.pilot, n_chains=args.chains,
                              betas=schedule(k),
                              transition="hmc", leapfrog=args.leapfrog,
                              step_size=args.step_size, batch_size=args.chains, seed=args.seed,
                              progress=True)
        row = {"model": name, "source": str(model), "data": data.how, "K": k,
               "chains": args.chains, "n": len(data.images), "leapfrog": args.leapfrog,
               "seconds": time.perf_counter() - began, **bounds.summary()}
        rows.append(row)
        print(table_row(row), flush=True)
    return rows


def table_row(r: dict) -> str:
    """One Markdown row, each number ± its standard error (rows written before the standard
    errors over the images existed show the number alone)."""
    lo, up = r["lower"], r["upper"]

    def pm(value: float, se: float | None, digits: int = 1) -> str:
        return f"{value:.{digits}f}" + ("" if se is None else f" ± {se:.{digits}f}")

    gap = r.get("gap", {"nats": up["nats_[-1,1]"] - lo["nats_[-1,1]"], "se_nats": None})
    return (f"| {r['model']} | {r['K']} | {r['n']} | {pm(lo['nats_[0,1]'], lo.get('se_nats'))} | "
            f"{pm(up['nats_[0,1]'], up.get('se_nats'))} | {pm(gap['nats'], gap['se_nats'], 2)} | "
            f"{lo['bits_per_dim']:.4f} | {up['bits_per_dim']:.4f} | "
            f"{pm(r['forward']['log_z'], r['forward']['log_z_se'], 2)} | "
            f"{pm(r['reverse']['log_z'], r['reverse']['log_z_se'], 2)} | {r['seconds']:.0f} |")


HEADER = ("| model | K | n | reverse estimate (nats, [0, 1]) | upper bound (nats, [0, 1]) | "
          "gap (paired) | reverse bpd | upper bpd | log Ẑ fwd | log Ẑ rev | seconds |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 2.9), squeeze=False)
    for ax, name in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == name]
        ks = [r["K"] for r in mine]
        key = "nats_[0,1]"
        reverse = "reverse AIS from test images\n(a lower bound only for model samples)"
        for side, marker, label in (("upper", "v", "upper bound (forward AIS)"),
                                    ("lower", "^", reverse)):
            # Error bars: the standard error over the test images, where the rows have one.
            se = [r[side].get("se_nats") for r in mine]
            ax.errorbar(ks, [r[side][key] for r in mine], marker=marker, linestyle="-",
                        yerr=None if None in se else se, capsize=2, label=label)
        for r in mine:
            ax.annotate(f"{r['seconds']:.0f}s", (r["K"], r["lower"][key]),
                        fontsize=6, textcoords="offset points", xytext=(3, -3))
        ax.set_xscale("log")
        ax.set_xlabel("K (temperatures)", fontsize=8)
        ax.set_ylabel("log-likelihood, nats/image (images in [0, 1])", fontsize=8)
        ax.set_title(f"{name}: D = {mine[0]['dims']}, M = {mine[0]['chains']}, "
                     f"n = {mine[0]['n']}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=[],
                        help="NAME=PATH or a packaged name (fmnist32-2h)")
    parser.add_argument("--replot", nargs="+", type=Path, default=[],
                        help="only table and plot the rows of these ais.jsonl files")
    parser.add_argument("--ks", nargs="+", type=int, default=[10, 30, 100])
    parser.add_argument("--ks-last", nargs="*", type=int, default=None,
                        help="K values for the last model instead of --ks (a costlier model)")
    parser.add_argument("--chains", type=int, default=20, help="M forward chains")
    parser.add_argument("--n", type=int, default=20, help="test images = reverse chains")
    parser.add_argument("--leapfrog", type=int, default=5)
    parser.add_argument("--step-size", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/ais"))
    parser.add_argument("--plot", type=Path, default=None, help="PNG (default: in --out)")
    args = parser.parse_args()
    if args.replot:
        rows = [json.loads(line) for f in args.replot for line in f.read_text().splitlines()]
        rows.sort(key=lambda r: (r["model"], r["K"]))
        print("\n".join([HEADER, *map(table_row, rows)]))
        plot(rows, args.plot or Path("ais_bounds.png"))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    print(HEADER)
    rows = []
    for i, spec in enumerate(args.models):
        name, _, path = spec.rpartition("=") if "=" in spec else (spec, "", spec)
        last = i == len(args.models) - 1 and args.ks_last
        rows += run(name, path, args.ks_last if last else args.ks, args)
        with (args.out / "ais.jsonl").open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    plot(rows, args.plot or args.out / "ais_bounds.png")


if __name__ == "__main__":
    main()
