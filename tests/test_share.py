"""Models shared as every other PyTorch model is: ``cfebm export --out DIR`` writes a folder a
model hub takes as it is (model.safetensors, config.json, a README.md model card), ``cfebm.load``
reads it back bit for bit, and a Hugging Face Hub repo id loads through ``huggingface_hub``,
here offline from a folder laid out as the Hub's cache lays it out."""

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import card_config, card_header
from safetensors.torch import load_file

from cfebm.cli import build_parser, main
from cfebm.config import apply_overrides, load_preset, to_dict
from cfebm.data import load_images
from cfebm.files import CheckpointError
from cfebm.model import EnergyNet
from cfebm.share import FOLDER_FILES, model_card, split_sizes
from cfebm.trained import TrainedModel, load

REPO = "someone/tiny-ebm"


def tensors(model: TrainedModel) -> dict[str, torch.Tensor]:
    out = {f"net.{k}": v for k, v in model.net.state_dict().items()}
    for i, net in enumerate(model.coarse):
        out.update({f"coarse.{i}.{k}": v for k, v in net.state_dict().items()})
    return out


def assert_same_model(a: TrainedModel, b: TrainedModel) -> None:
    ta, tb = tensors(a), tensors(b)
    assert set(ta) == set(tb)
    assert all(torch.equal(ta[k], tb[k]) for k in ta), "a tensor changed"
    assert (a.cfg, a.n_images, a.weights) == (b.cfg, b.n_images, b.weights)
    assert torch.equal(a.sample(6, seed=2), b.sample(6, seed=2))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny run with an EMA and a frozen coarse copy (both travel in an export), trained to
    its end."""
    run_dir = tmp_path_factory.mktemp("run")
    assert main(["train", "--preset", "tiny", "--run-dir", str(run_dir), "--no-progress",
                 "--set", "train.ema_decay=0.9", "--set", "sampler.init=frozen"]) == 0
    return run_dir


@pytest.fixture(scope="module")
def folder(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiny-ebm"
    assert main(["export", str(run), "--out", str(out)]) == 0
    return out


def test_export_to_a_folder_round_trips_bit_for_bit(run, folder, tmp_path):
    assert sorted(p.name for p in folder.iterdir()) == sorted(FOLDER_FILES)
    model = load(run)
    assert len(model.coarse) == 1 and model.weights == "ema"
    # model.safetensors is the one-file export, byte for byte
    one_file = tmp_path / "tiny.safetensors"
    assert main(["export", str(run), "--out", str(one_file)]) == 0
    assert (folder / "model.safetensors").read_bytes() == one_file.read_bytes()
    assert json.loads((folder / "config.json").read_text()) == to_dict(model.cfg)
    again = load(folder)
    assert again.source == str(folder / "model.safetensors")
    assert_same_model(model, again)
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.equal(model.energy(x), again.energy(x))


def test_the_trained_weights_export_as_a_folder_too(run, tmp_path):
    model = load(run, ema=False)
    again = load(model.export(tmp_path / "trained"))
    assert again.weights == "trained"
    assert_same_model(model, again)


def test_the_card_states_the_files_facts(run, folder):
    card = (folder / "README.md").read_text()
    facts = card_header(card)
    blob = (folder / "model.safetensors").read_bytes()
    assert facts["file"] == "model.safetensors" and facts["library_name"] == "cfebm"
    assert int(facts["bytes"]) == len(blob)
    assert facts["sha256"] == hashlib.sha256(blob).hexdigest()
    model = load(run)
    assert (int(facts["images"]), int(facts["seed"]), facts["weights"]) == (
        model.n_images, model.cfg.train.seed, "ema")
    assert card_config(card) == to_dict(model.cfg)
    # what the checkpoint knew of its run, and what it did not
    assert "- **Training time**: " in card and "*unknown*" in card
    assert "**Training**, **validation**, **test**: 256, 256 and 256 synthetic images" in card
    for heading in ("## Recipe", "## Data and splits", "## Training run", "## Scores",
                    "## Known limits", "## Config"):
        assert f"\n{heading}\n" in card


def train_command(card: str) -> list[str]:
    (line,) = re.findall(r"^ {4}(cfebm train .*)$", card, re.MULTILINE)
    return shlex.split(line)[1:]


def test_the_cards_train_command_gives_the_models_config(tmp_path):
    """A config that is no preset as it is: the card names the closest preset and the --sets
    that make it this config, and the real parser and config code agree."""
    sets = ["growth.lr=[0.002,0.001,0.0005]", "train.seed=7", "data.validation=1000",
            "sampler.start_noise=uniform", "data.root=/data/fmnist"]
    cfg = apply_overrides(load_preset("fmnist32"), sets)
    model = TrainedModel(EnergyNet(cfg.model), cfg, 1234)
    card = (model.export(tmp_path / "m") / "README.md").read_text()
    args = build_parser().parse_args(train_command(card))
    assert args.command == "train" and args.preset == card_header(card)["preset"] == "fmnist32"
    assert apply_overrides(load_preset(args.preset), args.set) == cfg
    assert len(args.set) <= len(sets)
    # its splits, by cfebm.data's rules: 1,000 of Fashion-MNIST's 60,000 training images held
    # out, its 10,000 test images
    assert "- **Training**: 59,000 images." in card and "- **Test**: 10,000 images" in card
    assert "**Validation**: 1,000 images held out" in card
    assert "- **Training time**: *unknown*" in card  # a model in memory knows none of it


@pytest.mark.parametrize("overrides", [[], ["data.limit=100", "data.validation=30"]])
def test_split_sizes_are_the_sizes_the_data_loads(overrides):
    data = apply_overrides(load_preset("tiny"), overrides).data
    loaded = tuple(len(load_images(data, split=s, resolution=8, image_channels=1))
                   for s in ("train", "validation", "test"))
    assert split_sizes(data) == loaded


@pytest.mark.fmnist
def test_fashion_mnist_split_sizes_are_the_sizes_the_data_loads():
    data = load_preset("fmnist32").data
    loaded = tuple(len(load_images(data, split=s, resolution=8, image_channels=1))
                   for s in ("train", "validation", "test"))
    assert split_sizes(data) == loaded == (55_000, 5_000, 10_000)


def test_the_packaged_model_exports_with_its_own_card(tmp_path, capsys):
    out = tmp_path / "fmnist32-2h"
    assert main(["export", "fmnist32-2h", "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    facts, packaged = card_header(card), card_header(model_card("fmnist32-2h"))
    blob = (out / "model.safetensors").read_bytes()
    assert facts["sha256"] == hashlib.sha256(blob).hexdigest() and facts["library_name"] == "cfebm"
    assert {k: facts[k] for k in ("train", "eval", "fmnist_fid")} == {
        k: packaged[k] for k in ("train", "eval", "fmnist_fid")}
    assert "## Known limits" in card and "## Test-split numbers" in card
    assert packaged["sha256"] in card  # the packaged file it was exported from
    # no link to a file that stays behind in cfebm's source
    assert not re.findall(r"\]\((?![a-z]+:|#)[^)]*\)", card)
    assert card_config(card) == to_dict(load("fmnist32-2h").cfg)
    assert_same_model(load("fmnist32-2h"), load(out))
    capsys.readouterr()
    assert main(["info", str(out)]) == 0  # the folder's card, as the packaged one's
    assert card in capsys.readouterr().out


def test_a_folder_whose_config_json_was_changed_is_refused(folder, tmp_path):
    changed = tmp_path / "changed"
    changed.mkdir()
    for name in FOLDER_FILES:
        (changed / name).write_bytes((folder / name).read_bytes())
    config = json.loads((changed / "config.json").read_text())
    config["sampler"]["eta0"] = 0.5
    (changed / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="differs from the config inside model.safetensors"):
        load(changed)


@pytest.mark.parametrize("name", ["m.pt", "m.bin"])
def test_an_export_is_a_safetensors_file_or_a_folder(run, tmp_path, name, capsys):
    assert main(["export", str(run), "--out", str(tmp_path / name)]) == 2
    assert "a .safetensors file or a folder" in capsys.readouterr().err
    assert not (tmp_path / name).exists()


def test_a_folder_without_a_model_says_so(tmp_path, capsys):
    assert main(["sample", str(tmp_path), "--n", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds no model" in err and "model.safetensors" in err and "\n" not in err


# ------------------------------------------------------------------------------------------------
# The Hugging Face Hub


def hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """``folder``'s files laid out as huggingface_hub's cache holds a downloaded model repo:
    blobs named by their hash, a snapshot of links to them named by the commit, and
    refs/main naming that commit. Returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in sorted(folder.iterdir()):
        blob = hashlib.sha256(path.read_bytes()).hexdigest()
        (repo / "blobs" / blob).write_bytes(path.read_bytes())
        (snapshot / path.name).symlink_to(Path("..", "..", "blobs", blob))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


OFFLINE_LOAD = """
import json, os, sys
import torch
import cfebm
from safetensors.torch import save_file

torch.set_num_threads(1)  # as the tests' process, so the chains round alike
model = cfebm.load(sys.argv[1])
x = model.sample(6, seed=2)
save_file({"x": x, "energy": model.energy(x)}, sys.argv[2])
model.export(sys.argv[3])
os.chdir(sys.argv[4])  # where a folder of the repo id's name exists: it wins
local = cfebm.load(sys.argv[1])
print(json.dumps({"hub": model.source, "local": local.source, "local_images": local.n_images}))
"""


def test_a_hub_repo_id_loads_offline_from_the_hub_cache(run, folder, tmp_path):
    """A fresh process with HF_HUB_OFFLINE=1 and HF_HOME / HF_HUB_CACHE at a cache laid out as
    the Hub's: ``cfebm.load("owner/name")`` takes the cached snapshot, bit for bit; a local
    folder of the same name wins over it."""
    pytest.importorskip("huggingface_hub")
    home = tmp_path / "hf"
    snapshot = hub_cache(home / "hub", REPO, folder)
    local = tmp_path / "cwd"
    load(run / "checkpoints" / "stage0-8x8.pt").export(local / REPO)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(home), HF_HUB_CACHE=str(home / "hub"))
    done = subprocess.run([sys.executable, "-c", OFFLINE_LOAD, REPO, str(tmp_path / "s.st"),
                           str(tmp_path / "again.safetensors"), str(local)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240,
                          check=False)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(found["hub"]) == snapshot / "model.safetensors"
    assert (tmp_path / "again.safetensors").read_bytes() == (folder / "model.safetensors"
                                                              ).read_bytes()
    model, drawn = load(folder), load_file(tmp_path / "s.st")
    assert torch.equal(drawn["x"], model.sample(6, seed=2))
    assert torch.equal(drawn["energy"], model.energy(drawn["x"]))
    assert found["local"] == os.path.join(REPO, "model.safetensors")
    assert found["local_images"] == load(run / "checkpoints" / "stage0-8x8.pt").n_images
    assert found["local_images"] != model.n_images


def test_a_repo_id_the_hub_cannot_give_fails_in_one_line(tmp_path, monkeypatch, capsys):
    constants = pytest.importorskip("huggingface_hub.constants")
    # what HF_HUB_OFFLINE=1 and HF_HUB_CACHE set when huggingface_hub is imported
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "someone/missing", "--n", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'someone/missing' is no local file or folder" in err and "Hub" in err
    assert "\n" not in err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "README.md").write_text("# another library's model\n")
    snapshot = hub_cache(tmp_path / "hub", "someone/not-a-model", tmp_path / "other")
    assert snapshot.is_dir()
    with pytest.raises(CheckpointError, match="holds no model.safetensors"):
        load("someone/not-a-model")


def test_without_huggingface_hub_a_repo_id_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"needs huggingface_hub: pip install 'cfebm\[hub\]'"):
        load("someone/tiny-ebm")
    with pytest.raises(CheckpointError, match="does not exist"):  # a path, never a repo id
        load(Path("someone/tiny-ebm"))


def test_the_card_reports_the_runs_own_evaluations(run, tmp_path):
    """A checkpoint in its run folder: the card reads the run's metrics.jsonl, where
    cfebm.train.loop writes each in-training evaluation (rows as TrainingEval makes them)."""
    copy = tmp_path / "run"
    (copy / "checkpoints").mkdir(parents=True)
    latest = copy / "checkpoints" / "latest.pt"
    latest.write_bytes((run / "checkpoints" / "latest.pt").read_bytes())
    n = load(latest).n_images
    rows = [{"n_images": n - 64, "eval_resolution": 16, "eval_beta": 1.0, "eval_n": 1000,
             "eval_fid": 40.25, "eval_kid": 0.031, "eval_kid_std": 0.004, "eval_best": True},
            {"n_images": n, "eval_resolution": 16, "eval_beta": 1.0, "eval_n": 1000,
             "eval_fid": 41.5, "eval_kid": 0.033, "eval_kid_std": 0.004, "eval_best": False}]
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    (copy / "metrics.jsonl").write_text("\n".join(metrics + [json.dumps(r) for r in rows]) + "\n")
    card = (load(latest).export(tmp_path / "m") / "README.md").read_text()
    assert f"FID **41.50**, KID 0.033 ± 0.004 at these {n:,} images, 1,000 samples" in card
    assert f"evaluation(s): FID 40.25 at {n - 64:,} images" in card
    assert "- **When**: 20" in card  # the dates of the run log's rows
