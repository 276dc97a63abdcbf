import json

import numpy as np
import torch
from PIL import Image

from cfebm.viz import kept_lines, plot_metrics, save_grid, stage_changes


def test_plot_metrics_skips_recovery_and_eval_events(tmp_path):
    rows = [
        {"n_images": 64, "stage": 0, "loss": 0.1, "e_data": -1.0, "e_sample": -0.9},
        {"event": "recovery", "n_images": 96, "rolled_back_to": 64, "loss": -1e4},
        {"n_images": 128, "eval_fid": 80.0, "eval_resolution": 8, "eval_n": 16},
        {"n_images": 128, "stage": 1, "loss": 0.2, "e_data": -2.0, "e_sample": -1.8},
        {"n_images": 160, "eval_fid": 90.0, "eval_resolution": 16, "eval_n": 16,
         "eval_coarse_resolution": 8, "eval_fid_coarse": 85.0},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = plot_metrics(path, tmp_path / "training.png")
    with Image.open(out) as image:
        with_fid = image.size
    # Without evaluation rows there is no FID panel, so the figure is shorter.
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if "eval_fid" not in r))
    with Image.open(plot_metrics(path, tmp_path / "plain.png")) as image:
        assert image.size[0] == with_fid[0] > 100 and image.size[1] < with_fid[1]
    path.write_text(json.dumps(rows[1]) + "\n")
    assert plot_metrics(path, tmp_path / "none.png") is None


def test_save_grid_writes_the_pixels_it_is_given(tmp_path):
    x = torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1).expand(2, 1, 4, 4)
    out = save_grid(x, tmp_path / "grid.png", nrow=2, padding=0)
    with Image.open(out) as image:
        pixels = torch.tensor(np.array(image.convert("L")))
    assert pixels[:, :4].eq(0).all() and pixels[:, 4:].eq(255).all()


def test_stage_lines_sit_where_a_stage_ended_not_at_the_next_log_row():
    rows = [{"n_images": n, "stage": s} for n, s in
            [(2560, 0), (19200, 0), (20480, 1), (64000, 1), (66560, 2), (69120, 2)]]
    assert stage_changes(rows) == [19.2, 64.0]


def test_kept_lines_drop_what_a_rollback_discarded():
    """Lines written after the checkpoint a recovery went back to belong to a trajectory the
    run threw away; a second recovery further back discards more."""
    def train(n, tag):
        return {"n_images": n, "stage": 0, "e_data": 0.0, "e_sample": 0.0, "tag": tag}

    def back(n, to):
        return {"event": "recovery", "n_images": n, "rolled_back_to": to}

    lines = [train(32, "a"), train(64, "a"), {"n_images": 64, "eval_fid": 9.0, "tag": "a"},
             train(96, "a"), {"n_images": 96, "eval_fid": 99.0, "tag": "a"}, back(112, 64),
             train(96, "b"), back(112, 32), train(64, "c")]
    kept = kept_lines(lines)
    assert kept == [lines[0], lines[5], lines[7], lines[8]]
    assert kept_lines(lines[:7]) == lines[:3] + lines[5:7]
    # an FID-watch rollback discards the same way: the failed evaluation at 96 and what led to it
    watched = lines[:5] + [{"event": "fid_watch", "n_images": 96, "rolled_back_to": 64},
                           train(96, "d")]
    assert kept_lines(watched) == lines[:3] + watched[5:]
