"""Seed each bug of issue 13 into a scratch copy of the package and check that its test fails.

    .venv/bin/python benchmarks/mutation/seeded.py            # every bug, its killing tests only
    .venv/bin/python benchmarks/mutation/seeded.py B3 B15     # some of them

For each bug the script copies cfebm/, tests/ and pyproject.toml into a temporary folder, makes
one textual edit there (the source tree is never touched), and runs the listed tests with that
folder first on sys.path. A bug is *killed* when pytest exits non-zero. The table it prints is
the one in benchmarks/RESULTS.md, section "Mutation testing of the core modules". Run it under ``nice -n 19`` on a shared machine.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

TRUTH = "tests/test_training_truth.py::"
RESUME = "tests/test_recovery_resume.py::"
CLI = "tests/test_cli_sampling.py::"
SAMPLER = "tests/test_sampler_truth.py::"
FMNIST = "tests/test_fmnist_features.py::"

# id: (what the bug does, file, original text, seeded text, killing tests)
BUGS = {
    "B1": ("train_step swaps the data and sample energies", "cfebm/train/step.py",
           "loss = cd_loss(e_data, e_sample)",
           "loss = cd_loss(e_sample, e_data)",
           [TRUTH + "test_linear_energy_gradient_is_data_mean_minus_sample_mean",
            TRUTH + "test_toy_run_moves_sample_moments_toward_the_data"]),
    "B2a": ("data_batch draws uniform noise instead of the stream's images", "cfebm/train/step.py",
            "x = shard.read_batch(stream, state.n_images + state.data_skip, batch)",
            ("x = torch.randint(0, 256, shard.read_batch(stream, state.n_images + "
             "state.data_skip, batch).shape, dtype=torch.uint8)"),
            [TRUTH + "test_data_batch_is_the_streams_images_at_the_stage_resolution",
             TRUTH + "test_toy_run_moves_sample_moments_toward_the_data"]),
    "B2b": ("train_step trains on uniform noise instead of its batch", "cfebm/train/step.py",
            "    n = x_data.shape[0]\n",
            "    n = x_data.shape[0]\n    x_data = torch.rand_like(x_data) * 2 - 1\n",
            [TRUTH + "test_linear_energy_gradient_is_data_mean_minus_sample_mean",
             TRUTH + "test_toy_run_moves_sample_moments_toward_the_data"]),
    "B3": ("rollback rewinds the image count but keeps the diverged weights and Adam state",
           "cfebm/train/loop.py",
           "    state = rolled_back(latest, current)\n",
           "    state.n_images = rolled_back(latest, current).n_images\n",
           [RESUME + "test_rollback_restores_latest_checkpoint_reseeds_and_halves_lr"]),
    "B4": ("the optimizer never applies lr_scale", "cfebm/train/step.py",
           'group["lr"] = growth.lr * state.lr_scale', 'group["lr"] = growth.lr',
           [TRUTH + "test_update_is_a_descent_step_with_the_schedule_lr_times_lr_scale",
            RESUME + "test_rollback_restores_latest_checkpoint_reseeds_and_halves_lr"]),
    "B5": ("no reseed of the chain noise after a rollback", "cfebm/train/loop.py",
           "state.generator.manual_seed(cfg.train.seed + RECOVERY_SEED_STRIDE * recoveries)",
           "pass",
           [RESUME + "test_rollback_restores_latest_checkpoint_reseeds_and_halves_lr"]),
    "B6": ("resume forgets the frozen coarse copies", "cfebm/train/checkpoint.py",
           'state.coarse = coarse_copies(state.sampling_net(), ckpt.get("coarse", []))',
           "state.coarse = []",
           [RESUME + "test_resume_mid_fade_after_a_recovery_equals_the_uninterrupted_run[frozen]"]),
    "B7": ("resume forgets lr_scale", "cfebm/train/checkpoint.py",
           'state.lr_scale = float(ckpt["lr_scale"])', "state.lr_scale = 1.0",
           [RESUME + "test_resume_mid_fade_after_a_recovery_equals_the_uninterrupted_run[noise]"]),
    "B8": ("resume forgets recoveries", "cfebm/train/checkpoint.py",
           'state.record.recoveries = int(ckpt["recoveries"])', "state.record.recoveries = 0",
           [RESUME + "test_resume_mid_fade_after_a_recovery_equals_the_uninterrupted_run[noise]"]),
    "B9": ("the signal handler's checkpoint is not written", "cfebm/train/loop.py",
           ('signals[0] if signals else "on another rank", state.n_images)\n'
            '        save_latest(state, run_dir)\n'),
           'signals[0] if signals else "on another rank", state.n_images)\n',
           [RESUME + "test_sigint_mid_stage_saves_the_last_iteration_and_resumes_exactly"]),
    "B10": ("cfebm sample runs 0 Langevin steps", "cfebm/cli/sample.py",
            'kwargs = {"steps": args.steps,',
            'kwargs = {"steps": 0,',
            [CLI + "test_cli_samples_are_algorithm_2_with_the_checkpoints_weights"]),
    "B11": ("cfebm sample ignores --seed", "cfebm/cli/sample.py",
            '"seed": args.seed,',
            '"seed": 0,',
            [CLI + "test_cli_samples_are_algorithm_2_with_the_checkpoints_weights"]),
    "B12": ("cfebm sample inverts --no-ema", "cfebm/cli/common.py",
            "ema=False if args.no_ema else None", "ema=None if args.no_ema else False",
            [CLI + "test_cli_samples_are_algorithm_2_with_the_checkpoints_weights"]),
    "B13": ("langevin_cfg ignores its eta0 (cfebm sample --noise)", "cfebm/sampling.py",
            "eta0 = cfg.eta0 if eta0 is None else eta0", "eta0 = cfg.eta0",
            [CLI + "test_langevin_cfg_noise_overrides_the_configs_eta0",
             CLI + "test_cli_samples_are_algorithm_2_with_the_checkpoints_weights"]),
    "B14": ("non-linear β blend (β² instead of β)", "cfebm/model.py",
            "h = beta * h + (1.0 - beta) * fade", "h = beta**2 * h + (1.0 - beta**2) * fade",
            [SAMPLER + "test_fading_energy_is_the_affine_blend_of_two_independent_paths"]),
    "B15": ("Langevin noise shared across the pixels of an image", "cfebm/sampling.py",
            "x = x + sigma * draw(torch.randn, x.shape, generator, x.device).to(x.dtype)",
            ("x = x + sigma * draw(torch.randn, (x.shape[0], 1, 1, 1), generator, "
             "x.device).to(x.dtype)"),
            [SAMPLER + "test_langevin_matches_a_correlated_gaussian_full_covariance"]),
    "B16": ("the Fashion-MNIST feature net is left in train mode", "cfebm/metrics/classifier.py",
            "return net.eval(), info", "return net, info",
            [FMNIST + "test_feature_net_is_in_eval_mode_and_batch_independent",
             FMNIST + "test_recomputed_test_accuracy_matches_the_recorded_one"]),
}


def seed_and_run(bug: str) -> tuple[bool, str]:
    _, path, old, new, tests = BUGS[bug]
    with tempfile.TemporaryDirectory(prefix=f"cfebm-{bug}-") as tmp:
        tmp = Path(tmp)
        for name in ("cfebm", "tests"):
            shutil.copytree(ROOT / name, tmp / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy(ROOT / "pyproject.toml", tmp / "pyproject.toml")
        target = tmp / path
        text = target.read_text()
        if text.count(old) != 1:
            return False, f"cannot seed: {old!r} occurs {text.count(old)} times in {path}"
        target.write_text(text.replace(old, new))
        # `python -m pytest` puts the cwd first on sys.path, ahead of the editable install.
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               *tests], cwd=tmp, capture_output=True, text=True, check=False)
        summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
        return proc.returncode != 0, summary


def main(argv: list[str]) -> int:
    bugs = argv or list(BUGS)
    survived = []
    print("| bug | what | killed | pytest summary |\n| --- | --- | --- | --- |")
    for bug in bugs:
        killed, summary = seed_and_run(bug)
        print(f"| {bug} | {BUGS[bug][0]} | {'yes' if killed else '**NO**'} | {summary} |",
              flush=True)
        if not killed:
            survived.append(bug)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
