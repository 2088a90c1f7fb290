"""Training configuration: defaults, files, overrides and every refusal."""

from __future__ import annotations

import pytest

from intermodal.errors import IntermodalError
from intermodal.training.config import TrainConfig, config_from_dict, load_config, parse_value


def test_defaults_follow_the_paper():
    config = load_config(None)
    assert isinstance(config, TrainConfig)
    assert config.loss.name == "intra"
    assert config.train.direction == "both"
    assert config.train.amp == "auto"
    assert config.data.dim == 3


def test_toml_file_and_overrides(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text(
        'out = "runs/a"\n'
        "[data]\nmanifest = 'm.json'\ndim = 2\n"
        "[model]\nfeatures = [8, 16]\n"
        "[loss]\nname = 'mind'\nsmoothness = 2\nsymmetric = true\n"
    )
    config = load_config(path, ["loss.smoothness=0.5", "train.steps=7", "out=runs/b"])
    assert config.data.manifest == "m.json"
    assert config.data.dim == 2
    assert config.model.features == [8, 16]
    assert config.loss.name == "mind"
    assert config.loss.symmetric is True
    assert config.loss.smoothness == 0.5 and isinstance(config.loss.smoothness, float)
    assert config.train.steps == 7
    assert config.out == "runs/b"


@pytest.mark.parametrize("name", ["train.yaml", "train.yml", "train.ini"])
def test_bad_config_format(tmp_path, name):
    """TOML is the one configuration format: any other file is refused by name."""
    path = tmp_path / name
    path.write_text("loss:\n  name: ngf\n")
    with pytest.raises(IntermodalError, match=f"{name}: configuration must be a .toml file"):
        load_config(path)


def test_resolved_round_trips():
    config = load_config(None, ["augment.probability=0.5", "model.features=[4, 8]"])
    values = config.resolved()
    assert values["augment"]["probability"] == 0.5
    assert values["model"]["features"] == [4, 8]
    assert config_from_dict(values) == config


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("0.5", 0.5),
        ("true", True),
        ("[1, 2]", [1, 2]),
        ('"x"', "x"),
        ("a/b.json", "a/b.json"),
    ],
)
def test_override_values_are_toml_literals_or_strings(text, value):
    assert parse_value(text) == value


@pytest.mark.parametrize("key", ["loss.weight_smooth", "trian.steps", "outdir", "model.features.x"])
def test_bad_unknown_override_key_names_it_and_the_valid_keys(key):
    with pytest.raises(IntermodalError) as error:
        load_config(None, [f"{key}=1"])
    message = str(error.value)
    assert repr(key) in message
    assert "loss.smoothness" in message and "train.steps" in message


def test_bad_unknown_key_in_file(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text("[loss]\nname = 'intra'\nweight = 3\n")
    with pytest.raises(IntermodalError, match=r"'loss.weight'.*valid keys.*loss.dice"):
        load_config(path)


def test_bad_unknown_section_in_file(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text("[optimiser]\nlr = 3\n")
    with pytest.raises(IntermodalError, match="'optimiser'"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("loss.name=ssd", "loss.name must be one of"),
        ("train.steps=0", "train.steps"),
        ("train.steps=2.5", "train.steps must be an integer"),
        ("loss.symmetric=yes", "loss.symmetric must be true or false"),
        ("train.amp=sometimes", "train.amp"),
        ("data.dim=4", "data.dim"),
        ("loss.lncc_window=4", "loss.lncc_window"),
        ("loss.scales=[]", "loss.scales must be a non-empty list"),
        ("loss.scales=[1, 0]", "loss.scales must be a non-empty list of ints >= 1"),
        ("loss.scales=[1.5]", "loss.scales"),
        ("loss.volume_penalty=-0.5", "loss.volume_penalty must be a number >= 0"),
        ("augment.probability=2", "augment.probability"),
        ("train.direction=sideways", "train.direction"),
        ("model.features=[8, 0]", "model.features"),
        ("device=tpu", "device"),
        ("loss=3", "loss is a section"),
        ("train.steps", "key=value"),
    ],
)
def test_bad_values(override, match):
    with pytest.raises(IntermodalError, match=match):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(IntermodalError, match="not found"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[loss\n")
    with pytest.raises(IntermodalError, match="not valid TOML"):
        load_config(broken)


def test_to_toml_reads_back(tmp_path):
    config = load_config(
        None, ['out="runs/a \\"b\\""', "loss.smoothness=0.25", "model.features=[4]"]
    )
    path = tmp_path / "resolved.toml"
    path.write_text(config.to_toml())
    assert load_config(path) == config
