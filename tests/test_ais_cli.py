"""`cfebm ais` on a model trained here (the tiny preset): the report's numbers agree with the
model's own energy and with each other, runs are reproducible, bad input is one line."""

import json
import math

import pytest
import torch

from cfebm.apps.likelihood import held_out
from cfebm.cli import main
from cfebm.trained import load


def _run(tiny_checkpoint, out, *extra):
    assert main(["ais", tiny_checkpoint, "-K", "6", "-M", "4", "--n", "5", "--batch-size", "3",
                 "--no-progress", "--out", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_report_matches_the_models_energy_and_its_own_units(tiny_checkpoint, tmp_path, capsys):
    r = _run(tiny_checkpoint, tmp_path / "a.json")
    printed = capsys.readouterr().out
    assert "bits/dim" in printed and "acceptance" in printed and "wall-clock" in printed
    assert "a lower bound only if the images were samples of the model" in printed
    model = load(tiny_checkpoint)
    x = held_out(model, 5, seed=0).images
    assert x.min() >= -1 and x.max() < 1 and len(x) == 5
    with torch.no_grad():
        neg_e = -model.energy(x).double()
    assert r["mean_neg_energy"] == pytest.approx(float(neg_e.mean()), rel=1e-5)
    assert r["mean_neg_energy_se"] == pytest.approx(float(neg_e.std()) / math.sqrt(5), rel=1e-4)
    d = r["dims"]
    assert d == model.channels * model.resolution ** 2
    for side in ("lower", "upper"):
        b = r[side]
        assert b["nats_[0,1]"] == pytest.approx(b["nats_[-1,1]"] + d * math.log(2))
        assert b["bits_per_dim"] == pytest.approx(-(b["nats_[-1,1]"] - d * math.log(128))
                                                  / (d * math.log(2)))
    # The bounds are mean(−E) minus the two log Z estimates, each from its own chains.
    assert r["upper"]["nats_[-1,1]"] == pytest.approx(r["mean_neg_energy"] - r["forward"]["log_z"])
    assert r["lower"]["nats_[-1,1]"] == pytest.approx(r["mean_neg_energy"] - r["reverse"]["log_z"])
    assert r["forward"]["chains"] == 4 and r["reverse"]["chains"] == 5
    # The gap is paired: −E(x_i) cancels, leaving the two log Z estimates and their errors.
    assert r["gap"]["nats"] == pytest.approx(r["reverse"]["log_z"] - r["forward"]["log_z"])
    assert r["gap"]["se_nats"] == pytest.approx(math.hypot(r["reverse"]["log_z_se"],
                                                           r["forward"]["log_z_se"]))
    assert r["upper"]["se_nats"] == pytest.approx(math.hypot(r["mean_neg_energy_se"],
                                                             r["forward"]["log_z_se"]))
    assert r["upper"]["se_bits_per_dim"] == pytest.approx(r["upper"]["se_nats"] / (d * math.log(2)))
    assert "only if" in r["lower"]["what"] and "no assumption" in r["upper"]["what"]
    assert all(0 <= rate <= 1 for _, _, rate in r["forward"]["acceptance_bands"])


def test_runs_are_seeded(tiny_checkpoint, tmp_path):
    a = _run(tiny_checkpoint, tmp_path / "a.json", "--transition", "mala")
    b = _run(tiny_checkpoint, tmp_path / "b.json", "--transition", "mala")
    c = _run(tiny_checkpoint, tmp_path / "c.json", "--transition", "mala", "--seed", "1")
    assert a["upper"] == b["upper"] and a["lower"] == b["lower"]
    assert c["upper"] != a["upper"]
    forward_only = _run(tiny_checkpoint, tmp_path / "d.json", "--transition", "mala", "--no-reverse")
    assert forward_only["upper"] == a["upper"] and "lower" not in forward_only
    assert "gap" not in forward_only


def test_bad_inputs_are_one_line(tiny_checkpoint, tmp_path, capsys):
    assert main(["ais", tiny_checkpoint, "--step-size", "0", "--out", ""]) == 2
    err = capsys.readouterr().err
    assert "--step-size" in err and err.count("\n") == 1
    assert main(["ais", str(tmp_path / "missing.pt"), "--out", ""]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_the_pilot_images_follow_the_scored_ones(tiny_checkpoint):
    model = load(tiny_checkpoint)
    data, more = held_out(model, 5, pilot=3), held_out(model, 8)
    assert torch.equal(data.images, more.images[:5]) and torch.equal(data.pilot, more.images[5:])
    assert torch.equal(held_out(model, 5, dequantize=False).images * 127.5 + 127.5,
                       (more.images[:5] + 1).mul(128).floor())
