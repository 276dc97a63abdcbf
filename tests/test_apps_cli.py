"""`cfebm denoise / inpaint / superres / interpolate / noise-sweep` and `cfebm sample --trajectory`: every
command writes valid images, from the test split and from a folder of the user's own images,
and each bad input is one line with exit code 2."""

import json

import numpy as np
import pytest
from PIL import Image

from cfebm.cli import main


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Five 24x20 RGB PNGs of random colours: the user's own images (the model is gray, 16²)."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _valid_png(path, rows: int):
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.height >= rows * 16 * 2  # rows of 16² images at --scale 2
    return path


@pytest.mark.parametrize("command, rows", [
    (["denoise", "--sigma", "0.3"], 3),
    (["inpaint", "--mask", "centre", "--completions", "2"], 4),
    (["inpaint", "--mask", "pixels", "--missing", "0.3", "--completions", "1"], 3),
    (["superres", "--factor", "2", "--completions", "2"], 6),
    (["interpolate", "--pairs", "1", "--points", "4"], 2),
    (["noise-sweep", "--n", "3", "--etas", "0,0.02"], 2),
])
def test_commands_write_valid_grids(tiny_checkpoint, tmp_path, command, rows):
    out = tmp_path / "grid.png"
    n = [] if command[0] in ("interpolate", "noise-sweep") else ["--n", "3"]
    assert main([command[0], tiny_checkpoint, *command[1:], *n, "--steps", "2", "--out", str(out),
                 "--no-progress"]) == 0
    _valid_png(out, rows)


def test_restoration_of_a_folder_of_own_images(tiny_checkpoint, photos, tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main(["denoise", tiny_checkpoint, "--images", str(photos), "--sigma", "0.3", "--json",
                 str(report), "--out", str(tmp_path / "d.png"), "--no-progress"]) == 0
    r = json.loads(report.read_text())
    assert r["images"] == f"5 images from {photos}" and r["psnr_noisy"] > 10
    assert r["steps"] == 3  # round(10σ) by default
    assert "PSNR  noisy" in capsys.readouterr().out
    assert main(["inpaint", tiny_checkpoint, "--images", str(photos), "--mask", "right", "--steps", "2",
                 "--json", str(report), "--out", str(tmp_path / "i.png"), "--no-progress"]) == 0
    r = json.loads(report.read_text())
    assert r["hidden"] == 0.5 and r["diversity"] > 0
    _valid_png(tmp_path / "i.png", 7)


def test_export_and_user_mask_image(tiny_checkpoint, tmp_path):
    export = str(tmp_path / "m.safetensors")
    assert main(["export", tiny_checkpoint, "--out", export]) == 0
    a = np.full((16, 16), 255, np.uint8)
    a[:, :5] = 0
    Image.fromarray(a).save(tmp_path / "mask.png")
    report = tmp_path / "r.json"
    assert main(["inpaint", export, "--mask", str(tmp_path / "mask.png"), "--n", "2",
                 "--steps", "1", "--json", str(report), "--out", str(tmp_path / "i.png"),
                 "--no-progress"]) == 0
    assert json.loads(report.read_text())["hidden"] == pytest.approx(5 / 16)


def test_sample_trajectory(tiny_checkpoint, tmp_path):
    folder = tmp_path / "traj"
    assert main(["sample", tiny_checkpoint, "--n", "3", "--steps", "4", "--every", "2", "--trajectory",
                 str(folder), "--out", str(tmp_path / "s.png"), "--no-progress"]) == 0
    with Image.open(folder / "chain.gif") as gif:
        assert gif.n_frames == 2  # after steps 2 and 4
    _valid_png(folder / "strip.png", 3)
    with Image.open(folder / "energy.png") as img:
        img.verify()


def _mask_file(tmp_path, array, name="m.png"):
    Image.fromarray(np.asarray(array, np.uint8)).save(tmp_path / name)
    return str(tmp_path / name)


def test_bad_inputs_are_one_line(tiny_checkpoint, tmp_path, capsys):
    small = tmp_path / "small"
    small.mkdir()
    Image.new("L", (4, 4), 90).save(small / "a.png")
    half = np.full((16, 16), 255)
    half[:, 8:] = 0
    grey = half.copy()
    grey[3, 3] = 77
    cases = [
        (["inpaint", "--mask", _mask_file(tmp_path, half[:8, :8], "s.png")],
         "is 8x8 but the model works at 16x16"),
        (["inpaint", "--mask", _mask_file(tmp_path, grey, "g.png")], "is not binary"),
        (["inpaint", "--mask", _mask_file(tmp_path, np.stack([half, 255 - half, half], -1))],
         "3 different colour channels but the model has 1"),
        (["inpaint", "--mask", "middle"], "--mask takes one of occlusion, centre"),
        (["inpaint", "--mask", "pixels", "--missing", "1.5"], "missing pixels must be in"),
        (["denoise", "--images", str(small)], "1 of 1 images are smaller than the 16x16"),
        (["denoise", "--images", str(tmp_path / "nowhere")], "does not exist"),
        (["noise-sweep", "--noise", "0.1"], "takes its noise levels from --etas"),
        (["superres", "--factor", "8"], "--factor 8 does not divide the model's 16x16"),
    ]
    for args, message in cases:
        assert main([args[0], tiny_checkpoint, *args[1:], "--out", str(tmp_path / "x.png"),
                     "--no-progress"]) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("cfebm: error: ") and "\n" not in err and message in err, err


def test_superres_reports_every_method_at_its_factor(
        tiny_checkpoint, tmp_path, capsys):
    report = tmp_path / "sr.json"
    assert main(["superres", tiny_checkpoint, "--n", "4", "--factor", "4", "--completions", "1",
                 "--steps", "3", "--json", str(report), "--out", str(tmp_path / "sr.png"),
                 "--no-progress"]) == 0
    r = json.loads(report.read_text())
    assert r["factor"] == 4 and {"psnr_EBM", "psnr_bicubic", "ssim_low-res"} <= set(r)
    assert "from 4x4 (x4" in capsys.readouterr().out
