"""Composition by adding energies (issue 39): A AND B, A AND NOT B, of two models trained on
different class partitions of Fashion-MNIST.

Model A learns the classes ``A`` (its ``data.subset``), model B the classes ``B``. Sampled
alone, each makes its own classes; sampled as a product of experts, E_A(x) + λ·E_B(x)
(``cfebm.guides.product``), the chains should make what both accept, the classes in A ∩ B;
with E_A(x) − λ·E_B(x) (``cfebm.guides.negation``), those in A − B. Each sample's class is the
FMNIST-FID feature net's (not a guide), so the score is the share of samples in the asked set.
The weight λ is chosen on validation seeds by a rule fixed before the run (the largest share in
A ∩ B, ties to the smaller λ) and reported with fresh seeds; no data split is read, only the
two models' own chains.

    cfebm train --preset quickstart --run-dir runs/compose-a --set data.subset=0,2,3,4,6
    cfebm train --preset quickstart --run-dir runs/compose-b --set data.subset=0,1,3,5,7
    python benchmarks/compose.py runs/compose-a runs/compose-b --n 500 --json runs/compose.json \\
        --grid docs/compose_quickstart.png

(A: T-shirt, pullover, dress, coat, shirt, "tops"; B: T-shirt, trouser, dress, sandal, sneaker;
A ∩ B: T-shirt and dress; A − B: pullover, coat and shirt.)
"""

from __future__ import annotations

import argparse
import time

from record import write_report
from torch import Tensor

from cfebm import guides
from cfebm.apps.figures import save_rows
from cfebm.data.images import classes_of
from cfebm.metrics import FMNISTFeatures
from cfebm.metrics.evaluate import at_resolution
from cfebm.trained import TrainedModel, load

VAL_SEED, TEST_SEED = 100, 0   # the weight's choice and the report draw different chains


def shares(classes: Tensor, sets: dict[str, set[int]]) -> dict[str, float]:
    """The fraction of predicted ``classes`` (N,) that falls in each named set of classes."""
    return {name: sum((classes == k).sum().item() for k in members) / len(classes)
            for name, members in sets.items()}


def draws(a: TrainedModel, b: TrainedModel, weight: float, n: int, seed: int
          ) -> dict[str, Tensor]:
    """n samples each of A, B, A AND B and A AND NOT B (weight λ on B's energy)."""
    return {"A": a.sample(n, seed=seed), "B": b.sample(n, seed=seed),
            "A AND B": a.sample(n, seed=seed, guide=guides.product(b, weight)),
            "A AND NOT B": a.sample(n, seed=seed, guide=guides.negation(b, weight))}


def measure(a, b, classify, sets, weight: float, n: int, seed: int) -> tuple[dict, dict]:
    """Per way of sampling, the share of its samples in every set; and the samples."""
    samples = draws(a, b, weight, n, seed)
    return {way: shares(classify(x), sets) for way, x in samples.items()}, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_a")
    parser.add_argument("model_b")
    parser.add_argument("--weights", default="0.5,1,2", help="weights λ of B's energy to try")
    parser.add_argument("--n-val", type=int, default=100, help="samples per way and weight")
    parser.add_argument("--n", type=int, default=500, help="samples per way in the report")
    parser.add_argument("--json", help="write the results as JSON")
    parser.add_argument("--grid", help="a figure: one row of 10 samples per way of sampling")
    args = parser.parse_args()

    started = time.time()
    a, b = load(args.model_a), load(args.model_b)
    ca, cb = (set(classes_of(m.cfg.data.subset or "0,1,2,3,4,5,6,7,8,9", "fashion_mnist"))
              for m in (a, b))
    sets = {"A": ca, "B": cb, "A ∩ B": ca & cb, "A − B": ca - cb}
    if not sets["A ∩ B"] or not sets["A − B"]:
        raise SystemExit(f"the models' classes {sorted(ca)} and {sorted(cb)} need a common "
                         "class and one of A's that B lacks")
    extractor = at_resolution(FMNISTFeatures(device=a.device), a.resolution)
    classify = extractor.predict_classes

    rows = []
    for w in (float(w) for w in args.weights.split(",")):
        result, _ = measure(a, b, classify, sets, w, args.n_val, VAL_SEED)
        rows.append({"weight": w, **result})
        print(f"validation  λ {w:4.1f}  A AND B in A∩B {result['A AND B']['A ∩ B']:.3f}  "
              f"A AND NOT B in A−B {result['A AND NOT B']['A − B']:.3f}", flush=True)
    chosen = max(rows, key=lambda r: (r["A AND B"]["A ∩ B"], -r["weight"]))["weight"]
    print(f"chosen on validation seeds: λ = {chosen:g}", flush=True)
    report, samples = measure(a, b, classify, sets, chosen, args.n, TEST_SEED)
    for way, share in report.items():
        print(f"report  {way:12s} " + "  ".join(f"in {k} {v:.3f}" for k, v in share.items()),
              flush=True)
    if args.grid:
        save_rows([x[:10] for x in samples.values()], args.grid, labels=list(samples), scale=2)
    if args.json:
        write_report(args.json, {
            "model_a": args.model_a, "model_b": args.model_b,
            "classes": {k: sorted(v) for k, v in sets.items()}, "validation": rows,
            "weight": chosen, "report": report, "n": args.n, "n_val": args.n_val,
            "seconds": time.time() - started})


if __name__ == "__main__":
    main()
