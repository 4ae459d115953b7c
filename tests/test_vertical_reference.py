"""The centralized reference trains what split training trains: same batches, same model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from umbra.config import resolve_config
from umbra.federation.server_app import initial_arrays, load_model
from umbra.federation.train import Batchable, get_arrays, train_local
from umbra.run.prepare import model_spec_for, prepare_data
from umbra.run.simulation import train_settings
from umbra.vertical.build import build_vertical
from umbra.vertical.party import FeatureParty
from umbra.vertical.reference import train_centralized
from umbra.vertical.trainer import local_exchange, train_epoch

SETS = ["data.source=synthetic", "data.n_train=160", "data.n_test=40", "federation.batch_size=24",
        "federation.lr=0.1", "federation.weight_decay=0.001",
        'vertical.parties=[["image"], ["audio", "tabular"], ["text"]]']  # fmt: skip


def test_centralized_reference_equals_split_training_after_two_epochs(tmp_path: Path) -> None:
    cfg = resolve_config(preset="vertical", overrides=SETS).config
    prep = prepare_data(cfg)
    spec = model_spec_for(cfg, prep.train)
    init = initial_arrays(spec, 0)
    setup = build_vertical(cfg, prep.train, spec, work_dir=tmp_path / "w",
                           state_root=tmp_path / "s", init=init)  # fmt: skip
    assert not setup.alignment.holders.all()  # some entities miss a party: masks are used
    parties = [FeatureParty(s) for s in setup.specs]
    step = 0
    for epoch in (1, 2):
        stats = train_epoch(setup.holder, local_exchange(parties), epoch=epoch, first_step=step,
                            secure=False, clip=64.0)  # fmt: skip
        step = stats.next_step
    split = setup.holder.export()
    for p in parties:
        split |= p.export()
    fed = cfg.federation
    ref = get_arrays(train_centralized(setup, prep.train, spec, epochs=2, lr=fed.lr,
                                       momentum=fed.momentum, weight_decay=fed.weight_decay))  # fmt: skip
    assert set(split) == set(ref)
    moved = max(float(np.abs(ref[k] - init[k]).max()) for k in ref)
    assert moved > 1e-2  # it trained
    for k in ref:
        np.testing.assert_allclose(split[k], ref[k], atol=1e-6, rtol=0, err_msg=k)
    # the centralized trainer with its own batch order is a different trajectory
    other = load_model(spec, init)
    pooled, _ = setup.pooled(prep.train)
    settings = replace(train_settings(cfg), epochs=2.0)
    train_local(other, Batchable.from_data(pooled), settings, seed=0)
    diff = max(float(np.abs(get_arrays(other)[k] - ref[k]).max()) for k in ref)
    assert diff > 1e-3


def test_reference_rejects_zero_epochs(tmp_path: Path) -> None:
    cfg = resolve_config(preset="vertical", overrides=SETS).config
    prep = prepare_data(cfg)
    spec = model_spec_for(cfg, prep.train)
    setup = build_vertical(cfg, prep.train, spec, work_dir=tmp_path / "w",
                           state_root=tmp_path / "s", init=initial_arrays(spec, 0))  # fmt: skip
    with pytest.raises(ValueError, match="epochs"):
        train_centralized(setup, prep.train, spec, epochs=0, lr=0.1, momentum=0.9,
                          weight_decay=0.0)  # fmt: skip
