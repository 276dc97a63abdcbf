import json
import subprocess
import sys

import pytest
from PIL import Image

from cfebm.cli import main


def test_train_writes_the_run_directory(tiny_run):
    for name in ["config.json", "metrics.jsonl", "training.png", "checkpoints/latest.pt",
                 "checkpoints/stage0-8x8.pt", "samples/final.png", "samples/0000.0k-init.png"]:
        assert (tiny_run / name).exists(), name
    rows = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["n_images"] == 384 and {r["resolution"] for r in rows} == {8, 16}
    assert json.loads((tiny_run / "config.json").read_text())["model"]["channels"] == 4


def test_sample_writes_a_grid_and_files(tiny_run, tmp_path, capsys):
    out, each = tmp_path / "grid.png", tmp_path / "each"
    ckpt = str(tiny_run / "checkpoints" / "latest.pt")
    assert main(["sample", ckpt, "--n", "6", "--out", str(out), "--each", str(each),
                 "--scale", "1", "--steps", "3"]) == 0
    assert Image.open(out).size == (3 * 18 + 2, 2 * 18 + 2)  # 3x2 grid of 16 px + 2 px padding
    assert len(list(each.glob("*.png"))) == 6
    assert Image.open(next(each.glob("*.png"))).size == (16, 16)
    assert main(["sample", ckpt, "--n", "2", "--out", str(out), "--cascade", "--noise", "0"]) == 0
    assert "8px×5 -> 16px×5" in capsys.readouterr().out


def test_info_describes_the_checkpoint(tiny_run, capsys):
    assert main(["info", str(tiny_run / "checkpoints" / "latest.pt")]) == 0
    out = capsys.readouterr().out
    assert "384 / 384 images" in out and "samples as      stage 1 of 2 (16x16, beta 1.000)" in out and "c=4" in out


def test_resume_continues_and_refuses_without_flag(tiny_run, tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert main(["train", "--preset", "tiny", "--run-dir", str(run_dir), "--stop-at", "64",
                 "--no-progress"]) == 0
    assert main(["train", "--preset", "tiny", "--run-dir", str(run_dir), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--run-dir", str(run_dir), "--resume", "--no-progress"]) == 0
    assert "384 images" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["train", "--preset", "nope", "--run-dir", "x"], "unknown preset"),
    (["train", "--preset", "tiny", "--set", "train.seed=x", "--dry-run"], "must be of type int"),
    (["sample", "missing.pt"], "does not exist"),
    (["info", "pyproject.toml"], "cannot read"),
    (["train", "--preset", "tiny", "--set", "model.activation=tanhh", "--dry-run"],
     "model.activation must be one of swish, swish_proebm"),
    (["train", "--preset", "tiny", "--set", "train.eval_every=64", "--dry-run"],
     "'train.eval_every' is now 'eval.every'"),
])
def test_bad_input_gives_one_clear_error(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cfebm: error:") and message in err and "\n" not in err


@pytest.mark.parametrize("argv, message", [
    (["sample", "fmnist32-2h", "--out", "den"], "'den' is not an image file name"),
    (["denoise", "fmnist32-2h", "--out", "den.pngx"], "'den.pngx' is not an image file name"),
])
def test_an_output_image_without_an_image_extension_is_refused_before_any_work(argv, message,
                                                                               capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: argument --out:" in last and message in last


def test_missing_data_stops_before_a_run_folder_exists(tmp_path, capsys):
    # a wrong data.root must not leave a half-made run behind: fixing the path and running the
    # same command again has to start the run, not ask for --resume
    run_dir = tmp_path / "r"
    argv = ["train", "--preset", "tiny", "--run-dir", str(run_dir), "--no-progress",
            "--set", "data.dataset=folder", "--set", f"data.root={tmp_path / 'nowhere'}"]
    assert main(argv) == 2
    assert "does not exist" in capsys.readouterr().err and not run_dir.exists()


def test_dry_run_prints_the_resolved_config(capsys):
    assert main(["train", "--preset", "quickstart", "--set", "train.seed=5", "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["seed"] == 5 and cfg["data"]["dataset"] == "fashion_mnist"


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "cfebm.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "train" in out and "sample" in out and "info" in out


@pytest.mark.slow
def test_sigint_writes_a_checkpoint_and_the_run_resumes(tmp_path):
    # A real signal from another process, at a time the test does not control. No stage ends
    # and no periodic checkpoint falls due in the first million images, so a latest.pt past 0
    # images can only come from the signal handling. test_recovery_resume.py delivers the
    # signal at a known iteration.
    import os
    import signal
    import time

    from cfebm.files import read

    run_dir = tmp_path / "r"
    train = [sys.executable, "-m", "cfebm.cli", "train", "--preset", "tiny", "--run-dir",
             str(run_dir), "--no-progress",
             "--set", "growth.stage_images=[1_000_000, 1_000_000]",
             "--set", "run.checkpoint_every=1_000_000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(train, env=env, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.time() < deadline, "training did not get going"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 0
    assert "stopped by signal" in proc.stderr.read()
    n_images = read(run_dir / "checkpoints" / "latest.pt")["n_images"]
    assert n_images >= 64 and n_images % 16 == 0  # whole iterations, past the last log line
    assert main(["train", "--run-dir", str(run_dir), "--resume", "--no-progress",
                 "--stop-at", str(n_images + 32)]) == 0
    assert read(run_dir / "checkpoints" / "latest.pt")["n_images"] == n_images + 32
