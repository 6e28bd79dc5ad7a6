from pathlib import Path

import pytest

from pretrainer.config import ConfigError, from_yaml_text, load_config, to_yaml

CONFIGS = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_recipes_load(path):
    config = load_config(path)
    assert config.model.n_layer >= 1


def test_overrides_apply_and_round_trip():
    config = load_config("configs/gpt-tiny.yaml", ["model.n_layer=3", "train.precision=bf16"])
    assert config.model.n_layer == 3 and config.train.precision == "bf16"
    assert from_yaml_text(to_yaml(config)) == config


def test_unknown_override_names_nearest_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'model.d_modle'; did you mean 'model.d_model'"):
        load_config(None, ["model.d_modle=64"])


def test_unknown_key_in_yaml_names_nearest_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_step: 10\n")
    with pytest.raises(ConfigError, match=r"'train.max_step'; did you mean 'train.max_steps'"):
        load_config(bad)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.d_model=abc", "bad value for 'model.d_model'"),
        ("train.precision=fp8", "train.precision='fp8' is not one of fp32, bf16, fp16"),
        ("objective.seq_len=1024", "larger than the model's positions"),
        ("model.n_head=3", "not divisible"),
        ("train.max_steps=0", "train.max_steps must be at least 1"),
        ("model.n_layer", "not of the form section.key=value"),
    ],
)
def test_bad_values_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/nope.yaml")
