"""Heterogeneous federation: per-organisation architectures, the held-out transfer set,
one round against a hand-run reference, and bad input as one line with exit code 2."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from umbra import cli
from umbra.config import Config, load_config
from umbra.data.dataset import MultimodalData
from umbra.data.sources.synthetic import make_synthetic
from umbra.errors import ConfigError, DataError
from umbra.federation.hetero import (
    check_transfer,
    hold_out_transfer,
    organisation_specs,
    run_hetero,
)
from umbra.federation.strategies.modality import modality_weighted_average
from umbra.federation.train import Batchable, TrainSettings, get_arrays, set_arrays, train_local
from umbra.models import MultimodalNet, parameter_modality
from umbra.run.prepare import model_spec_for, prepare_data

SYNTH = [
    "data.source=synthetic",
    "data.n_train=240",
    "data.n_test=60",
    "federation.num_clients=3",
    "federation.rounds=1",
    "federation.local_epochs=1",
    "model.hidden=16",
    "model.embed_dim=8",
    "model.dropout=0.0",
    "model.modality_dropout=0.0",
    "hetero.transfer_records=40",
    "hetero.distill_batch=20",
    "run.eval_every=1",
]


def _cfg(*extra: str) -> Config:
    return load_config("smoke", overrides=[*SYNTH, *extra])


def test_organisation_overrides_change_only_that_organisation() -> None:
    cfg = _cfg('hetero.organisations={"1"={hidden=32}}')
    prep = prepare_data(cfg)
    specs = organisation_specs(cfg, model_spec_for(cfg, prep.train))
    assert [s.hidden for s in specs] == [16, 32, 16]
    assert {s.embed_dim for s in specs} == {8}


def test_an_architecture_without_the_shared_embedding_size_is_refused() -> None:
    with pytest.raises(ConfigError, match="shared embedding space"):
        _cfg('hetero.organisations={"2"={embed_dim=16}}')
    with pytest.raises(ConfigError, match="names client 5"):
        _cfg('hetero.organisations={"5"={hidden=32}}')


def test_an_encoder_that_cannot_take_the_modality_is_refused() -> None:
    cfg = _cfg('hetero.organisations={"0"={encoders={text="scattering"}}}')
    prep = prepare_data(cfg)
    with pytest.raises(ConfigError, match=r"hetero\.organisations\.0: .*scattering"):
        organisation_specs(cfg, model_spec_for(cfg, prep.train))


def test_held_out_transfer_set_is_disjoint_from_every_organisation() -> None:
    cfg = _cfg()
    prep = prepare_data(cfg)
    kept, transfer = hold_out_transfer(prep, 40, seed=0)
    assert len(transfer) == 40
    held = set(np.concatenate(prep.parts).tolist()) - set(np.concatenate(kept.parts).tolist())
    assert len(held) == 40
    for idx, mask, old_idx, old_mask in zip(kept.parts, kept.masks, prep.parts, prep.masks,
                                            strict=True):  # fmt: skip
        assert not held & set(idx.tolist())
        keep = np.isin(old_idx, idx)
        np.testing.assert_array_equal(mask, old_mask[keep])  # masks follow their records
    held_sorted = np.array(sorted(held))
    np.testing.assert_array_equal(transfer.labels, prep.train.labels[held_sorted])


def test_a_transfer_set_with_other_modalities_is_refused() -> None:
    data = make_synthetic(n=8, modalities=("image", "text"), seed=0)
    shapes = {"image": (1, 8, 8), "audio": (1, 8, 8), "text": (16,)}
    with pytest.raises(DataError, match=r"holds \['image', 'text'\].*take \['image', 'audio'"):
        check_transfer(data, shapes, "t.csv")
    flat = MultimodalData({"image": np.zeros((8, 64), np.float32), "text": data.features["text"]},
                          data.mask, data.labels, data.modalities, data.class_names)  # fmt: skip
    with pytest.raises(DataError, match="image features of shape"):
        check_transfer(flat, {"image": (1, 8, 8), "text": (16,)}, "t.csv")


def test_one_homogeneous_round_is_the_modality_aware_fedavg_round() -> None:
    cfg = _cfg("hetero.distill_steps=0")
    prep = prepare_data(cfg)
    spec = model_spec_for(cfg, prep.train)
    result = run_hetero(cfg, prep, spec)
    # the reference: the same three local trainings, averaged by the strategy's own rule
    kept, _ = hold_out_transfer(prep, 40, seed=0)
    torch.manual_seed(cfg.run.seed)
    start = get_arrays(MultimodalNet(organisation_specs(cfg, spec)[0]))
    settings = TrainSettings(epochs=1.0, batch_size=cfg.federation.batch_size,
                             lr=cfg.federation.lr, momentum=cfg.federation.momentum,
                             modality_dropout=0.0, align_weight=cfg.model.align_weight,
                             temperature=cfg.model.temperature)  # fmt: skip
    arrays, counts = [], []
    for i, (idx, mask) in enumerate(zip(kept.parts, kept.masks, strict=True)):
        data = kept.train.subset(idx).with_mask(mask)
        model = MultimodalNet(organisation_specs(cfg, spec)[0])
        set_arrays(model, start)
        train_local(model, Batchable.from_data(data), settings,
                    seed=cfg.run.seed * 1_000_003 + 1009 + i)  # fmt: skip
        arrays.append(get_arrays(model))
        counts.append({"num-examples": float(len(idx)),
                       **{f"n-{m}": float(c) for m, c in data.counts().items()}})  # fmt: skip
    ref = MultimodalNet(organisation_specs(cfg, spec)[0])
    set_arrays(ref, modality_weighted_average(arrays, counts, parameter_modality))
    from umbra.federation.train import evaluate

    want = evaluate(ref, Batchable.from_data(kept.test))
    assert result.global_model["accuracy"] == pytest.approx(want["accuracy"])
    assert result.architectures[0]["subsets"] == pytest.approx(want["subsets"])
    assert [o["architecture"] for o in result.organisations] == [0, 0, 0]
    assert result.transfer_records == 40


@pytest.mark.parametrize("teachers", ["local", "averaged"])
def test_heterogeneous_run_reports_every_organisation_and_distils(teachers: str) -> None:
    cfg = _cfg('hetero.organisations={"2"={hidden=32}}', "hetero.distill_steps=30",
               f"hetero.teachers={teachers}",
               "hetero.distill_lr=0.01")  # fmt: skip
    prep = prepare_data(cfg)
    result = run_hetero(cfg, prep, model_spec_for(cfg, prep.train))
    assert [a["organisations"] for a in result.architectures] == [[0, 1], [2]]
    assert [o["architecture"] for o in result.organisations] == [0, 0, 1]
    row = result.history[-1]
    for a in (0, 1):  # each architecture ends closer to the round's ensemble
        assert row[f"kl-after/{a}"] < row[f"kl-before/{a}"]
    assert 0.0 <= result.global_model["accuracy"] <= 1.0
    assert set(result.retrieval) == {"0", "1"}


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
          *args: str) -> tuple[int, str]:  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["umbra", "hetero", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def _sets(*extra: str) -> list[str]:
    return [a for s in [*SYNTH, *extra] for a in ("--set", s)]


def test_cli_refuses_an_unjoinable_architecture_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _main(monkeypatch, capsys, "--preset", "smoke", "--out", str(tmp_path),
                      *_sets('hetero.organisations={"1"={embed_dim=32}}'))  # fmt: skip
    assert code == 2
    assert "shared embedding space" in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_a_transfer_manifest_with_other_modalities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    manifest = tmp_path / "transfer.csv"
    manifest.write_text("label,image\n" + "".join(f"{i % 2},{i}.png\n" for i in range(4)))
    code, err = _main(monkeypatch, capsys, "--preset", "smoke", "--out", str(tmp_path / "o"),
                      *_sets(f"hetero.transfer={manifest}",
                             f"data.cache_dir={tmp_path / 'cache'}"))  # fmt: skip
    assert code == 2, err
    assert "transfer set" in err and "holds ['image']" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "hetero.json").exists()


def test_umbra_run_refuses_per_organisation_architectures(tmp_path: Path) -> None:
    from umbra.experiment import run_experiment

    with pytest.raises(ConfigError, match="umbra hetero"):
        run_experiment(_cfg('hetero.organisations={"1"={hidden=32}}'), tmp_path)
