"""The federated runner: the run's Flower apps (ServerApp and ClientApp, their specs built
from the config, the secure transport from its registry) on Flower's simulation engine."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from umbra.config import Config
from umbra.errors import UmbraError
from umbra.federation.client_data import write_federation_data
from umbra.federation.common import SecureSettings, SecureTransport
from umbra.federation.server_app import RunResult
from umbra.federation.train import TrainSettings
from umbra.run.folder import client_state_root
from umbra.run.prepare import PreparedData

__all__ = [
    "RoundCallback",
    "run_federated",
    "secure_setup",
    "secure_transport",
    "train_settings",
]

RoundCallback = Callable[[dict[str, Any]], None]


def train_settings(cfg: Config) -> TrainSettings:
    """Each organisation's local training settings (federated and centralized alike)."""
    fed, mdl = cfg.federation, cfg.model
    return TrainSettings(
        epochs=fed.local_epochs,
        batch_size=fed.batch_size,
        lr=fed.lr,
        momentum=fed.momentum,
        weight_decay=fed.weight_decay,
        proximal_mu=0.0,
        modality_dropout=mdl.modality_dropout,
        align_weight=mdl.align_weight,
        temperature=mdl.temperature,
    )


def secure_transport(cfg: Config) -> SecureTransport | None:
    """The run's secure transport from the registry (None: plaintext rounds)."""
    if cfg.secure.aggregation == "none":
        return None
    from umbra.secure import transports

    return transports().get(cfg.secure.aggregation)


def secure_setup(cfg: Config) -> tuple[SecureTransport | None, SecureSettings, dict[int, bytes]]:
    """The run's secure transport (from the registry; None: plaintext), its settings and
    the simulated nodes' private identity keys (empty unless the transport signs: CKKS's
    key set-up, SecAgg+'s advertisements).

    Identity keys are Ed25519 from the OS CSPRNG (never run.seed): each private key belongs
    to its node only (the ClientApp picks its own partition's key), the public roster goes
    to everyone. Kept in memory only, never in the run folder. (A deployment uses the
    SuperNodes' authentication keys instead: `umbra.apps.client`.)
    """
    transport = secure_transport(cfg)
    identities: dict[int, bytes] = {}
    roster: dict[int, bytes] = {}
    if transport is not None and transport.signed:
        from umbra.secure.identity import generate_identities

        identities, roster = generate_identities(range(cfg.federation.num_clients))
    secure = SecureSettings.from_section(cfg.secure, roster=roster, rounds=cfg.federation.rounds)
    return transport, secure, identities


def run_federated(
    cfg: Config,
    run_dir: Path,
    prep: PreparedData,
    model_spec: dict[str, Any],
    on_round: RoundCallback | None,
) -> RunResult:
    """Write each organisation's data, build the apps from ``cfg`` and run the simulation."""
    from flwr.simulation import run_simulation

    from umbra.federation.attacks import AttackSpec
    from umbra.federation.client_app import ClientSpec, make_client_app
    from umbra.federation.server_app import ServerSpec, make_server_app

    transport, secure, identities = secure_setup(cfg)
    fed_dir = run_dir / ".federation"
    write_federation_data(fed_dir / "train", prep.train, prep.parts, prep.masks)
    write_federation_data(
        fed_dir / "test", prep.test, [np.arange(len(prep.test))], [prep.test.mask]
    )
    results: list[RunResult] = []
    server_spec = ServerSpec.from_config(
        cfg,
        run_dir=str(run_dir),
        test_dir=str(fed_dir / "test"),
        model_spec=model_spec,
        secure=secure,
        transport=transport,
        on_round=on_round,
        on_finish=results.append,
    )
    server = make_server_app(server_spec)
    client = make_client_app(
        ClientSpec(
            data_dir=str(fed_dir / "train"),
            state_dir=str(client_state_root(run_dir)),
            model_spec=model_spec,
            settings=train_settings(cfg),
            seed=cfg.run.seed,
            threads=cfg.run.threads,
            transports=(transport,) if transport is not None else (),
            secure=secure,
            identities=identities,
            privacy_unit=cfg.privacy.mode,
            attack=AttackSpec.from_config(cfg),
        )
    )
    logging.getLogger("flwr").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=cfg.federation.num_clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": cfg.run.num_cpus,
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": "error",
            },
        },
    )
    if not results:
        raise UmbraError("the federation stopped before finishing (see the log above)")
    shutil.rmtree(fed_dir, ignore_errors=True)
    return results[0]
