"""Configuration: presets validate, overrides apply, bad values name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from umbra.config import (
    MANIFEST_ENCODERS,
    Config,
    apply_override,
    available_presets,
    config_fingerprint,
    load_config,
    preset_dict,
    resolve_config,
    validate_config,
)
from umbra.errors import ConfigError


def test_every_preset_validates() -> None:
    assert {"smoke", "default", "baseline"} <= set(available_presets())
    for name in available_presets():
        assert isinstance(load_config(name), Config)


def test_baseline_is_default_without_protection() -> None:
    """Same data and model; the federations differ only in the DP schedule (one joint
    DP-SGD step per round with server momentum, see docs/decisions.md)."""
    base, default = load_config("baseline"), load_config("default")
    assert base.privacy.mode == "none" and base.secure.aggregation == "none"
    assert base.data == default.data and base.model == default.model
    schedule = {"strategy", "fedavgm_momentum", "rounds"}
    assert base.federation.model_dump(exclude=schedule) == default.federation.model_dump(
        exclude=schedule
    )
    assert default.privacy.noise == "distributed" and default.secure.aggregation == "secagg+"
    assert base.federation.strategy == "fedavg"


def test_override_types_are_parsed() -> None:
    cfg = load_config(
        "smoke",
        overrides=[
            "federation.strategy=fedprox",
            "federation.rounds=7",
            "data.alpha=0.1",
            "data.missing={image=0.0, audio=0.5, text=0.2}",
            "run.progress=false",
        ],
    )
    assert cfg.federation.strategy == "fedprox" and cfg.federation.rounds == 7
    assert cfg.data.alpha == 0.1 and cfg.data.missing["audio"] == 0.5
    assert cfg.run.progress is False


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.alpha=0", "data.alpha"),
        ("data.alpha=-1", "data.alpha"),
        ("data.missing.audio=1.5", "data.missing.audio"),
        ("data.missing.image=-0.1", "data.missing.image"),
        ("data.nope=1", "unknown key 'data.nope'"),
        ("nosection.key=1", "unknown key 'nosection'"),
        ("federation.strategy=fedsgd", "federation.strategy"),
        ("federation.num_clients=0", "federation.num_clients"),
        ("federation.num_clients=500", "federation.num_clients = 500"),
        ('data.absent={"9" = ["audio"]}', "data.absent names client 9"),
        ("federation.rounds=abc", "federation.rounds"),
        ("data.image_features=fourier", "data.image_features"),
        ("noequals", "expected section.key=value"),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("smoke", overrides=[override])
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError, match=r"valid keys: .*alpha"):
        load_config("smoke", overrides=["data.alpah=0.3"])


def test_malformed_toml_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\nalpha = 0.5\n")
    with pytest.raises(ConfigError, match="malformed TOML"):
        load_config(file=bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(file=tmp_path / "missing.toml")


def test_fingerprint_ignores_rounds_and_audit_only() -> None:
    a = load_config("smoke")
    b = load_config("smoke", overrides=["federation.rounds=9"])
    c = load_config("smoke", overrides=["data.alpha=0.9"])
    d = load_config("smoke", overrides=["audit.enabled=true", "audit.shadows=16"])
    assert config_fingerprint(a) == config_fingerprint(b) == config_fingerprint(d)
    assert config_fingerprint(a) != config_fingerprint(c)


def test_apply_override_refuses_scalar_as_section() -> None:
    raw = {"data": 3}
    with pytest.raises(ConfigError, match="not a section"):
        apply_override(raw, "data.alpha=1")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["privacy.mode=example", "privacy.noise=distributed"], "needs secure.aggregation"),
        (["privacy.mode=client", "privacy.noise=distributed"], "needs secure.aggregation"),
        (["privacy.mode=example", "privacy.noise=distributed", "secure.aggregation=secagg+",
          "federation.strategy=scaffold"], "federation.strategy = 'scaffold'"),
    ],
)  # fmt: skip
def test_distributed_noise_needs_secure_aggregation(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config("smoke", overrides=overrides)
    assert "privacy.noise" in str(info.value) and "\n" not in str(info.value)
    load_config("smoke", overrides=[*overrides[:2], "secure.aggregation=ckks"])  # accepted


@pytest.mark.parametrize("preset", ["smoke", "default", "baseline"])
def test_manifest_override_selects_the_manifest(preset: str) -> None:
    """Every preset names fmnist-avt; a --set manifest still makes the manifest the data."""
    assert load_config(preset).data.source == "fmnist-avt"
    cfg = load_config(preset, overrides=["data.manifest=/data/m.csv"])
    assert (cfg.data.source, cfg.data.manifest) == ("manifest", "/data/m.csv")
    both = load_config(preset, overrides=["data.source=manifest", "data.manifest=/data/m.csv"])
    assert both.data == cfg.data


@pytest.mark.parametrize("source", ["fmnist-avt", "synthetic"])
def test_manifest_beside_another_source_is_refused(tmp_path: Path, source: str) -> None:
    with pytest.raises(ConfigError, match=rf"data.manifest = '/m.csv' conflicts with "
                       rf"data.source = '{source}'"):  # fmt: skip
        load_config("smoke", overrides=[f"data.source={source}", "data.manifest=/m.csv"])
    file = tmp_path / "c.toml"
    file.write_text(f'[data]\nsource = "{source}"\nmanifest = "/m.csv"\n')
    with pytest.raises(ConfigError, match="conflicts with"):
        load_config(file=file)


def test_manifest_in_a_config_file_without_source(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('[data]\nmanifest = "/m.csv"\n')
    assert load_config(file=file).data.source == "manifest"
    file.write_text("[data]\nn_train = 100\n")
    assert load_config(file=file).data.source == "fmnist-avt"
    cfg = load_config(file=file, overrides=["data.manifest=/m.csv"])
    assert cfg.data.source == "manifest"
    file.write_text('[data]\nsource = "fmnist-avt"\n')
    with pytest.raises(ConfigError, match="conflicts with"):
        load_config(file=file, overrides=["data.manifest=/m.csv"])


@pytest.mark.parametrize("preset", ["smoke", "default", "baseline"])
def test_manifest_run_gets_the_encoders_for_real_media(preset: str) -> None:
    """On a manifest the audio encoder is the conv one; every other choice is the preset's."""
    assert MANIFEST_ENCODERS == {"audio": "audio"}  # what docs/data.md documents
    toml = preset_dict(preset)  # the preset as written, read without the resolution step
    own = dict(toml.get("model", {}).get("encoders", {}))
    resolved = resolve_config(preset, overrides=["data.manifest=/m.csv"])
    encoders = resolved.config.model.encoders
    assert encoders.get("audio", "audio") == "audio"
    assert {m: e for m, e in encoders.items() if m != "audio"} == {
        m: e for m, e in own.items() if m != "audio"
    }
    if own.get("audio", "audio") == "audio":
        assert resolved.notes == []
    else:  # default and baseline name spectral-stats: the first status line says so
        assert resolved.notes == [
            f"model.encoders.audio = 'audio' for your manifest (the preset's {own['audio']!r} "
            f"suits fmnist-avt; --set model.encoders.audio={own['audio']} keeps it; see "
            "docs/data.md)"
        ]
    rest = resolved.config.model_dump()
    data = {k: v for k, v in toml["data"].items() if k != "source"}
    plain = validate_config({**toml, "data": {**data, "manifest": "/m.csv"}}).model_dump()
    rest["model"].pop("encoders")
    plain["model"].pop("encoders")
    assert rest == plain  # nothing but the audio encoder (and the source) is resolved


@pytest.mark.parametrize("preset", ["smoke", "default", "baseline"])
def test_fmnist_runs_keep_the_preset_as_written(preset: str) -> None:
    resolved = resolve_config(preset, overrides=["federation.rounds=2"])
    toml = preset_dict(preset)
    toml.setdefault("federation", {})["rounds"] = 2
    assert resolved.config == validate_config(toml) and resolved.notes == []


@pytest.mark.parametrize(
    "overrides",
    [
        ["data.manifest=/m.csv", "model.encoders.audio=spectral-stats"],
        ["model.encoders.audio=spectral-stats", "data.source=manifest", "data.manifest=/m.csv"],
        ["data.manifest=/m.csv", 'model.encoders={audio = "spectral-stats"}'],
    ],
)
def test_an_explicit_audio_encoder_wins_on_a_manifest(overrides: list[str]) -> None:
    resolved = resolve_config("default", overrides=overrides)
    assert resolved.config.data.source == "manifest"
    assert resolved.config.model.encoders["audio"] == "spectral-stats"
    assert resolved.notes == []


def test_a_config_file_keeps_its_own_encoders_on_a_manifest(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('[model]\nencoders = { audio = "spectral-stats" }\n')
    resolved = resolve_config(file=file, overrides=["data.manifest=/m.csv"])
    assert resolved.config.model.encoders == {"audio": "spectral-stats"}
    assert resolved.notes == []


@pytest.mark.parametrize(
    ("header", "encoders", "image_features"),
    [
        ("id,label,audio", {"audio": "audio"}, "pixels"),
        ("label,image,tab:age", {"image": "scattering"}, "scattering"),
        ("label,image,audio,text", {"image": "scattering", "audio": "audio"}, "scattering"),
    ],
)
def test_manifest_defaults_follow_its_columns(
    tmp_path: Path, header: str, encoders: dict[str, str], image_features: str
) -> None:
    """The preset's choices for a modality the manifest lacks go (else the model refuses
    them); an explicit setting still wins."""
    path = tmp_path / "m.csv"
    path.write_text(header + "\n")
    resolved = resolve_config("default", overrides=[f"data.manifest={path}"])
    assert resolved.config.model.encoders == encoders
    assert resolved.config.data.image_features == image_features
    assert len(resolved.notes) == sum(
        ["audio" in header, "audio" not in header, "image" not in header, "image" not in header]
    )
    kept = resolve_config(
        "default",
        overrides=[f"data.manifest={path}", "data.image_features=scattering",
                   "model.encoders.image=scattering"],
    )  # fmt: skip
    assert kept.config.data.image_features == "scattering"
    assert kept.config.model.encoders["image"] == "scattering"


def test_saved_manifest_config_round_trips() -> None:
    cfg = load_config("smoke", overrides=["data.manifest=/m.csv"])
    assert Config.model_validate(cfg.model_dump(mode="json")) == cfg
