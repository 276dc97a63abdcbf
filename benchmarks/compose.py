"""Composition by adding energies (issue 39): A AND B, A AND NOT B, of two models trained on
different class partitions of Fashion-MNIST.

Model A learns the classes ``A`` (its ``data.subset``), model B the classes ``B``. Sampled
alone, each makes its own classes; sampled as a product of experts, E_A(x) + λ·E_B(x)
(``cfebm.guides.product``), the chains should make what both accept, the classes in A ∩ B;
with E_A(x) + λ·softplus(E_A(x) − E_B(x) − c) (``cfebm.guides.exclusion``, what ``cfebm sample
A --not B`` runs), those in A − B. Each sample's class is the FMNIST-FID feature net's (not a
guide), so the score is the share of samples in the asked set.
Each way's weight λ is chosen on validation seeds by a rule fixed before the run (the largest
share in A ∩ B for AND, in A − B for NOT; ties to the smaller λ) and reported with fresh seeds;
no data split is read, only the two models' own chains.

    cfebm train --preset quickstart --minutes 0 --run-dir runs/compose-a --set data.subset=0,2,3,4,6
    cfebm train --preset quickstart --minutes 0 --run-dir runs/compose-b --set data.subset=0,1,3,5,7
    python benchmarks/compose.py runs/compose-a runs/compose-b --n 500 --json runs/compose.json \\
        --grid docs/compose_quickstart.png

(`--minutes 0`: the whole schedule, as the recorded models trained, not the quick start's
4-minute budget. A: T-shirt, pullover, dress, coat, shirt, "tops"; B: T-shirt, trouser, dress,
sandal, sneaker; A ∩ B: T-shirt and dress; A − B: pullover, coat and shirt.)
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


def composed(a: TrainedModel, b: TrainedModel, way: str, weight: float, offset: float, n: int,
             seed: int) -> Tensor:
    """n samples of A AND B (E_A + λ·E_B) or A AND NOT B (E_A + λ·softplus(E_A − E_B − c),
    ``guides.exclusion``)."""
    guide = (guides.product(b, weight) if way == "A AND B"
             else guides.exclusion(a, b, weight, offset=offset))
    return a.sample(n, seed=seed, guide=guide)


def choose(a, b, classify, sets, way: str, target: str, weights: list[float], offset: float,
           n: int) -> tuple[float, list[dict]]:
    """The weight of ``way`` with the largest share in ``target`` on validation seeds (the
    smaller weight on ties), and every weight's shares."""
    rows = []
    for w in weights:
        share = shares(classify(composed(a, b, way, w, offset, n, VAL_SEED)), sets)
        rows.append({"weight": w, **share})
        print(f"validation  {way}  λ {w:4.1f}  in {target} {share[target]:.3f}", flush=True)
    return max(rows, key=lambda r: (r[target], -r["weight"]))["weight"], rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_a")
    parser.add_argument("model_b")
    parser.add_argument("--weights", default="0.5,1,2", help="λ of A AND B to try")
    parser.add_argument("--not-weights", default="1,3,10,30", help="λ of A AND NOT B to try")
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

    offset = guides.energy_offset(a, b)
    print(f"energy offset c = log Z_B − log Z_A ≈ {offset:.2f} (from 100 chains each)")
    w_and, rows_and = choose(a, b, classify, sets, "A AND B", "A ∩ B",
                             [float(w) for w in args.weights.split(",")], offset, args.n_val)
    w_not, rows_not = choose(a, b, classify, sets, "A AND NOT B", "A − B",
                             [float(w) for w in args.not_weights.split(",")], offset, args.n_val)
    print(f"chosen on validation seeds: λ = {w_and:g} (AND), {w_not:g} (NOT)", flush=True)
    samples = {"A": a.sample(args.n, seed=TEST_SEED), "B": b.sample(args.n, seed=TEST_SEED),
               "A AND B": composed(a, b, "A AND B", w_and, offset, args.n, TEST_SEED),
               "A AND NOT B": composed(a, b, "A AND NOT B", w_not, offset, args.n, TEST_SEED)}
    report = {way: shares(classify(x), sets) for way, x in samples.items()}
    for way, share in report.items():
        print(f"report  {way:12s} " + "  ".join(f"in {k} {v:.3f}" for k, v in share.items()),
              flush=True)
    if args.grid:
        save_rows([x[:10] for x in samples.values()], args.grid, labels=list(samples), scale=2)
    if args.json:
        write_report(args.json, {
            "model_a": args.model_a, "model_b": args.model_b,
            "classes": {k: sorted(v) for k, v in sets.items()}, "offset": offset,
            "validation": {"A AND B": rows_and, "A AND NOT B": rows_not},
            "weights": {"A AND B": w_and, "A AND NOT B": w_not}, "report": report,
            "n": args.n, "n_val": args.n_val,
            "seconds": time.time() - started})


if __name__ == "__main__":
    main()
