"""The packaged models: each loads by the name of the preset that trained it, has a model card
beside it (cfebm/weights/<name>.md) whose facts are the file's, and a preset's name is no model."""

import hashlib
import shlex
from importlib import resources
from pathlib import Path

import pytest
from conftest import card_config, card_header
from safetensors import safe_open

from cfebm.cli import main
from cfebm.config import apply_overrides, load_preset, preset_names, to_dict
from cfebm.files import CheckpointError
from cfebm.share import PRETRAINED, model_card
from cfebm.trained import EXPORT_FORMAT, load

WEIGHTS = Path(str(resources.files("cfebm") / "weights"))


def test_every_packaged_export_is_named_and_has_a_card():
    """Every cfebm export in cfebm/weights/ is a packaged model (the classifier is no export),
    and every packaged model's file and card are there."""
    exports = set()
    for path in WEIGHTS.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            if (f.metadata() or {}).get("format") == EXPORT_FORMAT:
                exports.add(path.name)
    assert exports == set(PRETRAINED.values())
    for name, file in PRETRAINED.items():
        assert file == f"{name}.safetensors"
        assert (WEIGHTS / f"{name}.md").is_file(), f"{name} has no model card"


@pytest.mark.parametrize("name", PRETRAINED)
def test_the_card_describes_its_file(name):
    """Name, preset, size and sha256 in the header are the file's; the stated config is the
    export's, resolved (defaults filled in as loading fills them)."""
    card = model_card(name)
    facts = card_header(card)
    blob = (WEIGHTS / PRETRAINED[name]).read_bytes()
    assert (facts["name"], facts["file"]) == (name, PRETRAINED[name])
    assert facts["preset"] in preset_names()
    assert int(facts["bytes"]) == len(blob)
    assert facts["sha256"] == hashlib.sha256(blob).hexdigest()
    model = load(name, device="cpu")
    assert card_config(card) == to_dict(model.cfg)
    assert int(facts["images"]) == model.n_images
    assert int(facts["seed"]) == model.cfg.train.seed


@pytest.mark.parametrize("name", PRETRAINED)
def test_the_cards_train_command_gives_the_models_config(name):
    """`cfebm train --preset P --set ...` as the card writes it resolves to the export's config:
    the preset named is the recipe, and the card's overrides are all that differs."""
    facts = card_header(model_card(name))
    argv = shlex.split(facts["train"])
    assert argv[:2] == ["cfebm", "train"]
    preset = argv[argv.index("--preset") + 1]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert preset == facts["preset"] == name  # named after the preset that trained it
    resolved = apply_overrides(load_preset(preset), sets)
    assert to_dict(resolved) == to_dict(load(name, device="cpu").cfg)


def test_info_prints_the_card_of_a_packaged_model(capsys):
    name = next(iter(PRETRAINED))
    assert main(["info", name]) == 0
    out = capsys.readouterr().out
    assert out.startswith("file ") and model_card(name) in out


def test_a_presets_name_is_not_a_model(capsys):
    """`fmnist32` is a preset to train; loading it by name fails in one line that says so and
    names the packaged models, from Python and from the command line."""
    assert "fmnist32" in preset_names() and "fmnist32" not in PRETRAINED
    with pytest.raises(CheckpointError, match=r"'fmnist32' is a preset to train.*packaged "
                       r"models are fmnist32-2h"):
        load("fmnist32")
    assert main(["sample", "fmnist32", "--n", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fmnist32-2h" in err
    with pytest.raises(CheckpointError, match=r"no file or packaged model named 'fmnist64'"):
        load("fmnist64")
