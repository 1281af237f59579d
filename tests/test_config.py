"""Config validation: unknown keys and impossible values name the key and the allowed range."""

from __future__ import annotations

import tomllib

import pytest

from securedream.config import (
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_to_toml,
    load_preset_dict,
    preset_names,
    resolve_config,
)
from securedream.errors import ConfigError


def test_presets_ship_and_validate() -> None:
    names = preset_names()
    assert {"smoke", "demo", "paper-mnist"} <= set(names)
    for name in names:
        cfg = resolve_config(preset=name)
        assert isinstance(cfg, RunConfig)
        assert cfg.name == name


@pytest.mark.parametrize(
    ("override", "key", "fragment"),
    [
        ("clients.count=0", "clients.count", "[1, 1000]"),
        ("clients.cuont=3", "clients.cuont", "unknown key"),
        ("dreams.lr=0", "dreams.lr", "(0.0, 100.0]"),
        ("dreams.lr=-1", "dreams.lr", "(0.0, 100.0]"),
        ('data.split="random"', "data.split", "iid"),
        ('method="fedprox"', "method", "codream"),
        ("rounds=1.5", "rounds", "integer"),
        ("output.checkpoint=1", "output.checkpoint", "true or false"),
        ('clients.models=["cnn-bn", "cnn-bn", "cnn-bn"]', "clients.models", "one per client"),
        ('clients.models=["nope"]', "clients.models", "cnn-bn"),
        ("dreams.snapshots=500", "dreams.snapshots", "global_steps"),
        ("nosuchtable.x=1", "nosuchtable.x", "unknown"),
        ("dreams.w_bn=nan", "dreams.w_bn", "finite"),
    ],
)
def test_bad_values_name_the_key(override: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config(preset="smoke", overrides=[override])
    assert info.value.key == key
    assert fragment in str(info.value)


def test_override_types_are_parsed_as_toml() -> None:
    cfg = resolve_config(
        preset="smoke",
        overrides=[
            "clients.count=3",
            'clients.models="cnn-bn"',
            "dreams.w_bn=0.5",
            "data.split=iid",
            "output.dream_grid=false",
        ],
    )
    assert cfg.clients.count == 3
    assert cfg.dreams.w_bn == 0.5
    assert cfg.data.split == "iid"  # bare words fall back to strings
    assert cfg.output.dream_grid is False


def test_overrides_do_not_mutate_the_preset() -> None:
    raw = load_preset_dict("smoke")
    before = repr(raw)
    apply_overrides(raw, ["clients.count=7"])
    assert repr(raw) == before


def test_malformed_override() -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        resolve_config(preset="smoke", overrides=["clients.count"])


def test_unknown_preset_lists_available() -> None:
    with pytest.raises(ConfigError, match="smoke"):
        resolve_config(preset="nope")


def test_resolved_config_round_trips_through_toml() -> None:
    cfg = resolve_config(preset="demo", overrides=["dreams.w_diversity=0.25", 'name="x\\"y"'])
    again = config_from_dict(tomllib.loads(config_to_toml(cfg)))
    assert again == cfg


def test_config_file_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        resolve_config(config_path=tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_config(config_path=bad)
    good = tmp_path / "good.toml"
    good.write_text('rounds = 3\n[data]\ndataset = "digits"\n')
    cfg = resolve_config(config_path=good)
    assert cfg.rounds == 3 and cfg.data.dataset == "digits"


def test_single_model_applies_to_every_client() -> None:
    cfg = resolve_config(preset="smoke", overrides=['clients.models=["cnn-gn"]', "clients.count=3"])
    assert cfg.client_models() == ["cnn-gn"] * 3
