"""Time per round: Umbra's simulation vs the same model trained by a bare Flower FedAvg app.

Both run on Flower's simulation engine in this process, on the same client data files,
the same MultimodalNet, the same local epochs/batch size/learning rate, with a central
evaluation on the same test set after every round. The bare app is what a user would
write from Flower's PyTorch quickstart: a ClientApp with a plain cross-entropy loop and
``FedAvg().start()``. Umbra adds modality dropout, the InfoNCE alignment loss,
modality-aware aggregation, byte accounting and per-round checkpoints.

    .venv/bin/python bench/round_overhead.py [--rounds 6] [--clients 8] [--n-train 12000]

Writes bench/results/round_overhead.json and prints a markdown table. The first round of
each run (actor start-up) is excluded from the per-round mean.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import umbra  # noqa: F401  (silences protobuf gencode warnings)
from umbra.config import load_config
from umbra.experiment import run_experiment
from umbra.federation.client_data import load_client_data, write_federation_data
from umbra.federation.server_app import initial_arrays
from umbra.federation.train import Batchable, evaluate, set_arrays
from umbra.models import ModelSpec, MultimodalNet
from umbra.run.prepare import model_spec_for, prepare_data

BACKEND = {
    "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
    "init_args": {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False,
                  "logging_level": "error"},
}  # fmt: skip


def bare_flower(cfg, prep, model_spec, work: Path) -> list[float]:  # type: ignore[no-untyped-def]
    """A quickstart-style Flower app: plain CE training, Flower's FedAvg, central eval."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    write_federation_data(work / "train", prep.train, prep.parts, prep.masks)
    fed = cfg.federation
    data_dir = str(work / "train")
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        pid = int(context.node_config["partition-id"])
        data = Batchable.from_data(load_client_data(data_dir, pid))
        model = MultimodalNet(ModelSpec.from_dict(model_spec))
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=fed.lr, momentum=fed.momentum)
        model.train()
        n = len(data)
        steps = max(1, int(np.ceil(fed.local_epochs * n / fed.batch_size)))
        perm = torch.randperm(n)
        for s in range(steps):
            idx = perm[(s * fed.batch_size) % n :][: fed.batch_size]
            inputs, mask, labels = data.take(idx)
            loss = torch.nn.functional.cross_entropy(model(inputs, mask), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        content = RecordDict({
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"num-examples": n}),
        })  # fmt: skip
        return Message(content=content, reply_to=msg)

    test = Batchable.from_data(prep.test)
    eval_model = MultimodalNet(ModelSpec.from_dict(model_spec))
    stamps: list[float] = []

    def central_eval(rnd: int, arrays: ArrayRecord) -> MetricRecord:
        eval_model.load_state_dict(arrays.to_torch_state_dict())
        ev = evaluate(eval_model, test, subsets=[])
        stamps.append(time.perf_counter())
        return MetricRecord({"accuracy": float(ev["accuracy"])})  # type: ignore[arg-type]

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        model = MultimodalNet(ModelSpec.from_dict(model_spec))
        set_arrays(model, initial_arrays(model_spec, cfg.run.seed))
        FedAvg(
            fraction_evaluate=0.0,
            min_available_nodes=fed.num_clients,
            min_train_nodes=fed.num_clients,
        ).start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=fed.rounds,
            evaluate_fn=central_eval,
        )

    logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(server_app=server, client_app=client, num_supernodes=fed.num_clients,
                   backend_config=BACKEND)  # type: ignore[arg-type]  # fmt: skip
    return [b - a for a, b in itertools.pairwise(stamps)]  # round r = eval r-1 -> eval r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--n-train", type=int, default=12000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    cfg = load_config("baseline", overrides=[
        f"federation.rounds={args.rounds}", f"federation.num_clients={args.clients}",
        f"data.n_train={args.n_train}", "run.progress=false",
    ])  # fmt: skip
    prep = prepare_data(cfg)
    model_spec = model_spec_for(cfg, prep.train)
    with tempfile.TemporaryDirectory() as tmp:
        bare = bare_flower(cfg, prep, model_spec, Path(tmp) / "bare")
        res = run_experiment(cfg, Path(tmp) / "umbra")
    umbra_rounds = [r["wall_s"] for r in res["rounds"]]
    # skip round 1 (actor start-up) in both
    b = statistics.mean(bare[1:] if len(bare) > 1 else bare)
    u = statistics.mean(umbra_rounds[1:])
    out = {
        "rounds": args.rounds, "clients": args.clients, "n_train": args.n_train,
        "bare_flower_round_s": b, "umbra_round_s": u, "ratio": u / b,
        "bare_rounds_s": bare, "umbra_rounds_s": umbra_rounds,
        "umbra_final_accuracy": res["final"]["accuracy"],
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "round_overhead.json").write_text(json.dumps(out, indent=2))
    print("| per round (mean of rounds 2..R) | seconds | ratio to bare Flower |")
    print("|---|---:|---:|")
    print(f"| bare Flower FedAvg app | {b:.2f} | 1.00 |")
    print(f"| Umbra (`baseline` preset) | {u:.2f} | {u / b:.2f} |")


if __name__ == "__main__":
    main()
