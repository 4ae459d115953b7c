"""Clients that stop answering mid-run: the round loop finishes each round with the
clients that replied, names the dropouts by partition id in the round's row, does not
wait for a node the federation no longer lists, and takes the node back when it returns.

The real ClientApp answers through an in-process Grid whose nodes can go silent (a crashed
SuperNode the SuperLink still lists) or leave the listing (after Flower's heartbeat).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from umbra.config import FederationConfig
from umbra.data.sources.synthetic import make_synthetic
from umbra.federation.availability import NodeFloor
from umbra.federation.client_app import ClientSpec, make_client_app
from umbra.federation.client_data import write_federation_data
from umbra.federation.in_process_grid import InProcessGrid
from umbra.federation.server_app import RoundReport, ServerSpec, run_rounds
from umbra.federation.train import TrainSettings
from umbra.models import ModelSpec

N_CLIENTS = 4
MODS = ("image", "audio", "text")
LOST = 2  # the partition id that crashes


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fed")
    data = make_synthetic(n=120, num_classes=3, modalities=MODS, seed=5)
    parts = [np.arange(i, 100, N_CLIENTS) for i in range(N_CLIENTS)]
    masks = [np.ones((len(p), len(MODS)), dtype=bool) for p in parts]
    write_federation_data(root / "train", data, parts, masks)
    test = np.arange(100, 120)
    write_federation_data(root / "test", data, [test], [np.ones((len(test), len(MODS)), bool)])
    spec = ModelSpec.from_data(data, hidden=8, embed_dim=8).to_dict()
    return {"root": root, "model_spec": spec}


def _app(federation: dict[str, Any], state: Path) -> Any:
    return make_client_app(
        ClientSpec(
            data_dir=str(federation["root"] / "train"),
            state_dir=str(state),
            model_spec=federation["model_spec"],
            settings=TrainSettings(epochs=1, batch_size=10, lr=0.05),
            seed=3,
        )
    )


@pytest.mark.timeout(120)  # a round that waits for a node no longer listed never ends
def test_a_crashed_client_drops_out_and_rejoins(federation: dict[str, Any], tmp_path: Path) -> None:
    grid = InProcessGrid(
        _app(federation, tmp_path / "state"),
        [700 + 5 * i for i in range(N_CLIENTS)],
        seed_torch=True,
    )
    lost = grid.node_ids[LOST]
    rows: list[RoundReport] = []

    def on_round(row: RoundReport) -> None:
        rows.append(row)
        if row["round"] == 1:
            grid.silent = {lost}  # crashes: still listed, never answers
        elif row["round"] == 2:
            grid.gone = {lost}  # the federation stops listing it
        elif row["round"] == 3:
            grid.silent = grid.gone = set()  # restarted

    spec = ServerSpec(
        run_dir=str(tmp_path / "run"),
        test_dir=str(federation["root"] / "test"),
        model_spec=federation["model_spec"],
        federation=FederationConfig(
            num_clients=N_CLIENTS, rounds=4, batch_size=10, reply_timeout_s=5.0
        ),
        seed=1,
        on_round=on_round,
    )
    result = run_rounds(spec, grid.as_grid())

    everyone = sorted(grid.node_ids)
    others = [n for n in everyone if n != lost]
    assert grid.sent_to == [everyone, everyone, others, everyone]
    assert [r["clients"] for r in result.history] == [4, 3, 3, 4]
    assert not any(r["aborted"] for r in result.history)
    assert [r.get("dropped") for r in result.history] == [None, [LOST], None, None]
    assert [sorted(r["bytes_per_client"]) for r in result.history] == [
        ["0", "1", "2", "3"], ["0", "1", "3"], ["0", "1", "3"], ["0", "1", "2", "3"]
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("available", "want"),
    [(8, (8, 8)), (7, (7, 7)), (6, (6, 6)), (5, (6, 6)), (1, (6, 6))],
)
def test_node_floor_follows_the_connected_nodes_down_to_the_quorum(
    available: int, want: tuple[int, int]
) -> None:
    # every one of 8 clients trains; secure aggregation needs 6 of them
    assert NodeFloor(min_train_nodes=8, min_available_nodes=8, quorum=6).floors(available) == want


def test_node_floor_keeps_a_partial_sample_as_configured() -> None:
    # fraction_train 0.5 of 7 clients: Flower samples max(int(n * 0.5), 4) nodes
    floor = NodeFloor(min_train_nodes=4, min_available_nodes=7, quorum=1)
    assert floor.floors(7) == (4, 7)
    assert floor.floors(5) == (4, 5)
    assert floor.floors(3) == (3, 3)


def test_node_floor_needs_a_quorum_of_one_or_more() -> None:
    with pytest.raises(ValueError, match="quorum"):
        NodeFloor(min_train_nodes=3, min_available_nodes=3, quorum=0)
