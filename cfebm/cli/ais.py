"""``cfebm ais``: the test log-likelihood by annealed importance sampling: a stochastic upper
bound (forward chains) and the reverse estimate from the test images, which is a lower bound
only for exact samples of the model (``cfebm.metrics.ais``).

    cfebm ais fmnist32-2h --temperatures 100 --chains 20 --n 100 --out runs/ais.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cfebm.apps.likelihood import held_out, model_bounds
from cfebm.cli.common import FORMATTER, CLIError, add_model, count, load_model
from cfebm.metrics.ais import SCHEDULES, TRANSITIONS, schedule
from cfebm.metrics.mcmc import BASES, Base


def cmd_ais(args: argparse.Namespace) -> None:
    if not args.step_size > 0 or not args.base_std > 0:
        raise CLIError("--step-size and --base-std must be > 0")
    model = load_model(args)
    pilot = 0 if args.no_adapt or args.no_reverse else args.pilot_chains
    data = held_out(model, args.n, pilot=pilot, dequantize=not args.no_dequantize,
                    seed=args.seed)
    began = time.perf_counter()
    bounds = model_bounds(
        model, data.images, x_pilot=data.pilot if pilot else None, n_chains=args.chains,
        reverse=not args.no_reverse,
        betas=schedule(args.temperatures, args.schedule), base=Base(args.base, args.base_std),
        transition=args.transition, step_size=args.step_size, leapfrog=args.leapfrog,
        steps_per_temperature=args.steps_per_temperature, adapt=not args.no_adapt,
        pilot_chains=args.pilot_chains,
        batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress)
    seconds = time.perf_counter() - began
    report = {"model": str(model), "data": data.how, "n": len(data.images),
              "temperatures": args.temperatures, "schedule": args.schedule,
              "chains": args.chains, "transition": args.transition,
              "leapfrog": args.leapfrog if args.transition == "hmc" else None,
              "step_size": args.step_size, "adapt": not args.no_adapt,
              "pilot_chains": args.pilot_chains if not args.no_adapt else 0,
              "base": args.base, "seed": args.seed, "device": str(model.device),
              "seconds": seconds, **bounds.summary()}
    print(describe(report))
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")


def describe(r: dict) -> str:
    """The report as aligned lines: log Z both ways, the upper bound and the reverse estimate
    with their standard errors over the images, the gap with its paired one, acceptance, time.
    Each line says what its number bounds (``cfebm.metrics.ais.bounds``'s module docstring)."""
    d, n = r["dims"], r["n"]
    kernel = f"HMC ({r['leapfrog']} leapfrog)" if r["transition"] == "hmc" else "MALA"
    domain = f"[-1,1]^{d}" if r["base"] == "uniform" else f"R^{d}"
    lines = [f"model       {r['model']}", f"data        {r['data']}",
             f"path        {r['base']} base -> exp(-E) on {domain}",
             (f"            K={r['temperatures']} ({r['schedule']}), {kernel}, "
              f"{r['chains']} forward chains, one reverse chain per image"),
             (f"mean -E(x)  {r['mean_neg_energy']:.2f} ± {r['mean_neg_energy_se']:.2f} "
              f"(± s.e. over the {n} images)")]
    what = {"forward": "stochastic lower bound on log Z",
            "reverse": "chains from the test images: an upper bound on log Z only if they were "
                       "samples of the model"}
    for name in ("forward", "reverse"):
        if name in r:
            f = r[name]
            lines.append(f"log Z       {name:<8} {f['log_z']:.2f} ± {f['log_z_se']:.2f} "
                         f"(ESS {f['ess']:.1f} of {f['chains']}; {what[name]}; "
                         f"{f['seconds']:.0f} s)")
    lines.append(f"mean log-likelihood of the {n} images, nats/image of images in [-1,1] "
                 "([0,1]: +D·log 2), bits/dim on [0,256); ± s.e. over the images")
    only_if = "estimate; a lower bound only if the images were samples of the model"
    label = {"upper": ("upper  ", "stochastic upper bound, whatever the images"),
             "lower": ("reverse", only_if)}
    for name in ("upper", "lower"):
        if name in r:
            b, (tag, claim) = r[name], label[name]
            lines.append(f"            {tag}  {b['nats_[-1,1]']:.2f} ± {b['se_nats']:.2f}  "
                         f"([0,1]: {b['nats_[0,1]']:.2f})  {b['bits_per_dim']:.4f} bits/dim  "
                         f"{claim}")
    if "gap" in r:
        lines.append(f"            gap      {r['gap']['nats']:.2f} ± {r['gap']['se_nats']:.2f} "
                     "nats (upper − reverse; s.e. of the paired per-image difference)")
    for name in ("forward", "reverse"):
        if name in r:
            bands = "  ".join(f"β {lo:.3g}–{hi:.3g}: {rate:.2f}"
                              for lo, hi, rate in r[name]["acceptance_bands"])
            lines.append(f"acceptance  {name}: {bands}")
    lines.append(f"wall-clock  {r['seconds']:.1f} s on {r['device']}")
    return "\n".join(lines)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ais", help="test log-likelihood by annealed importance sampling (A.7): "
                       "a stochastic upper bound, and the reverse estimate from the test images "
                       "(a lower bound only for exact model samples)",
                       formatter_class=FORMATTER)
    add_model(p)
    p.add_argument("--temperatures", "-K", type=count(2), default=100,
                   help="K: intermediate distributions of the annealing path")
    p.add_argument("--schedule", choices=SCHEDULES, default="sigmoid", help="spacing of the β")
    p.add_argument("--chains", "-M", type=count(2), default=50, help="M: forward AIS chains")
    p.add_argument("--n", type=count(2), default=50,
                   help="test images (each also starts one reverse chain)")
    p.add_argument("--transition", choices=TRANSITIONS, default="hmc",
                   help="Metropolis-corrected kernel")
    p.add_argument("--step-size", type=float, default=0.01,
                   help="initial step size (MALA: x − h∇E + √(2h)ε; HMC: leapfrog step)")
    p.add_argument("--leapfrog", type=count(1), default=5, help="HMC leapfrog steps")
    p.add_argument("--steps-per-temperature", type=count(1), default=1,
                   help="transitions at each intermediate β")
    p.add_argument("--no-adapt", action="store_true",
                   help="keep the step size fixed instead of tuning one per temperature on a "
                   "pilot run (toward acceptance 0.65 HMC, 0.57 MALA)")
    p.add_argument("--pilot-chains", type=count(1), default=10,
                   help="chains of each pilot run that tunes the step sizes (the reverse one "
                   "starts from the test images after the first --n)")
    p.add_argument("--base", choices=BASES, default="uniform",
                   help="uniform on [-1,1]^D (the target is the model on that box) or N(0, s²)")
    p.add_argument("--base-std", type=float, default=1.0, help="s of the Gaussian base")
    p.add_argument("--no-dequantize", action="store_true",
                   help="score v/127.5 − 1 instead of uniformly dequantised (v + u)/128 − 1")
    p.add_argument("--no-reverse", action="store_true",
                   help="forward AIS only (no reverse estimate)")
    p.add_argument("--seed", type=int, default=0, help="seed of the chains and dequantisation")
    p.add_argument("--batch-size", type=count(1), default=50, help="chains per batch")
    p.add_argument("--out", default="ais.json", help="JSON report ('' to skip)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=cmd_ais)
