"""Algorithm 1 and the run around it: everything that trains a model and nothing that uses one.

- ``step``: the training state, one iteration of Algorithm 1 (negatives, Eq. 2's loss, one
  optimiser step), the EMA;
- ``loop``: the run on disk (``run_training``): logs, grids, checkpoints, signals, recovery;
- ``data``: the images a run reads (and a translation run's source stream);
- ``evaluation``: in-training FID on the validation split, the best checkpoint, the FID watch;
- ``recovery``: telling a diverging run from a healthy one;
- ``checkpoint``: saving and loading a whole training state to continue it exactly;
- ``budget``: a preset's schedule fitted to ``--minutes`` on this machine;
- ``distributed``: torchrun data parallelism; ``speed``: what a run prints about its speed.

The method it trains (``model``, ``growth``, ``sampling``, ``chains``) sits below it; the apps
and the CLI above it. ``cfebm.load`` reads what it writes.
"""

from cfebm.train.loop import RunError, run_training

__all__ = ["RunError", "run_training"]
