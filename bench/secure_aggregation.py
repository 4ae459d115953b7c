"""Secure aggregation benchmark: plaintext sum vs Umbra SecAgg+ vs TenSEAL vs Umbra CKKS.

One aggregation round of ``--clients`` clients x ``--params`` float32 parameters, measured
in process on this machine: client compute (mean seconds per client: encode/mask or
encrypt, plus decrypting the aggregate for CKKS), server compute (seconds), bytes each client
uploads, and the relative error of the aggregate against the float64 plaintext sum. Also
how SecAgg+ server cost grows from 10 to 100 clients on a smaller vector, and a sweep of CKKS
parameters (bytes per client). Writes ``bench/results/secure_aggregation.json`` and prints
a markdown table of ratios to the plaintext sum.

Run:  PYTHONPATH=src .venv/bin/python bench/secure_aggregation.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts

from umbra.secure.he import PRESETS, CkksAggregator, CkksKeyring, CkksParams
from umbra.secure.secagg import run_secagg_round

RESULTS = Path(__file__).resolve().parent / "results" / "secure_aggregation.json"
CLIP = 1.0


def _rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def bench_plaintext(updates: list[np.ndarray]) -> dict[str, Any]:
    t0 = time.perf_counter()
    blobs = [u.astype(np.float32).tobytes() for u in updates]  # what a client uploads
    client = (time.perf_counter() - t0) / len(updates)
    t0 = time.perf_counter()
    total = np.zeros(updates[0].size, dtype=np.float64)
    for b in blobs:
        total += np.frombuffer(b, dtype=np.float32)
    server = time.perf_counter() - t0
    return {"client_s": client, "server_s": server, "bytes_up": len(blobs[0]), "rel_err": 0.0}


def bench_secagg(
    updates: list[np.ndarray], ref: np.ndarray, *, dropouts: int = 0
) -> dict[str, Any]:
    n = len(updates)
    dropped = set(range(n - dropouts, n))
    agg, tr = run_secagg_round(
        updates, threshold=max(2, (2 * n) // 3), clip_range=CLIP, dropouts=dropped
    )
    survivors = tr.survivors
    ref_s = ref - sum(updates[i].astype(np.float64) for i in dropped) if dropped else ref
    return {
        "client_s": float(np.mean([tr.client_seconds[i] for i in survivors])),
        "server_s": tr.server_seconds,
        "bytes_up": float(np.mean([tr.bytes_up[i] for i in survivors])),
        "bytes_down": float(np.mean([tr.bytes_down[i] for i in survivors])),
        "rel_err": _rel_err(np.asarray(agg), ref_s),
        "dropouts": dropouts,
    }


def bench_umbra_ckks(updates: list[np.ndarray], ref: np.ndarray, preset: str) -> dict[str, Any]:
    params = PRESETS[preset]
    n, length = len(updates), updates[0].size
    t0 = time.perf_counter()
    dealer = CkksKeyring.generate(params)
    keygen = time.perf_counter() - t0
    shared, server_ctx = dealer.shared_bytes(), dealer.server_context()
    rings = [dealer] + [CkksKeyring.from_shared(shared, params) for _ in range(n - 1)]
    enc_times, msgs = [], {}
    for i, u in enumerate(updates):
        t0 = time.perf_counter()
        msgs[i] = rings[i].encrypt_update(u, client_id=i, round_number=1, num_clients=n, clip=CLIP)
        enc_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    server = CkksAggregator(server_ctx, params, length=length, round_number=1)
    total, _ = server.aggregate(msgs, min_clients=n)
    server_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = rings[1].decrypt_sum(total, length=length, num_summed=n, clip=CLIP, num_clients=n)
    dec = time.perf_counter() - t0
    up = sum(len(c) for c in msgs[0]["ciphertexts"]) + len(msgs[0]["digest"])
    return {
        "client_s": float(np.mean(enc_times)) + dec,
        "encrypt_s": float(np.mean(enc_times)),
        "decrypt_s": dec,
        "keygen_s": keygen,
        "server_s": server_s,
        "bytes_up": up,
        "bytes_down": sum(map(len, total)),
        "rel_err": _rel_err(out, ref),
        "params": {
            "N": params.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(params.coeff_mod_bit_sizes),
            "log_q": params.log_q,
            "security_bits": params.security_bits,
            "scale_bits": params.scale_bits,
            "symmetric_seeded": params.symmetric,
            "complex_slots": params.complex_slots,
            "digits_per_real": params.digits_per_real,
        },
    }


def bench_flower_secaggplus(
    updates: list[np.ndarray], ref: np.ndarray, *, neighbours: int
) -> dict[str, Any]:
    """Flower 1.42's own SecAgg+ masking and unmasking code, called in process.

    Mirrors ``secaggplus_mod._collect_masked_vectors`` (client) and the unmask stage of
    ``SecAggPlusWorkflow`` (server) with Flower's defaults (clipping 8.0, 2^22 levels,
    modulus 2^32, int64 masked vectors) and the same neighbour count as Umbra. The key
    exchange stages and the simulation engine are not included.
    """
    from flwr.common import bytes_to_ndarray, ndarray_to_bytes
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_combine,
        factor_extract,
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize, quantize
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.primitives.asymmetric import generate_key_pairs

    n = len(updates)
    clip, q_range, mod_range = 8.0, 1 << 22, 1 << 32
    t_share = max(2, (2 * (neighbours + 1)) // 3)
    keys = [generate_key_pairs() for _ in range(n)]
    graph = {
        i: [(i + d) % n for d in range(-(neighbours // 2), neighbours // 2 + 1) if d]
        for i in range(n)
    }
    seeds = [os.urandom(32) for _ in range(n)]
    shares, uploads, times = [], [], []
    for i, u in enumerate(updates):
        t0 = time.perf_counter()
        shares.append(create_shares(seeds[i], t_share, neighbours + 1))
        q_ratio = q_range  # num_examples == max_weight
        vec = factor_combine(q_ratio, quantize([u.astype(np.float64)], clip, q_range))
        dims = [a.shape for a in vec]
        vec = parameters_addition(vec, pseudo_rand_gen(seeds[i], mod_range, dims))
        for j in graph[i]:
            mask = pseudo_rand_gen(generate_shared_key(keys[i][0], keys[j][1]), mod_range, dims)
            vec = (parameters_addition if i > j else parameters_subtraction)(vec, mask)
        vec = parameters_mod(vec, mod_range)
        uploads.append([ndarray_to_bytes(a) for a in vec])
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    total = [bytes_to_ndarray(b) for b in uploads[0]]
    for up in uploads[1:]:
        total = parameters_addition(total, [bytes_to_ndarray(b) for b in up])
    total = parameters_mod(total, mod_range)
    dims = [a.shape for a in total]
    for i in range(n):
        seed = combine_shares(shares[i][:t_share])
        total = parameters_subtraction(total, pseudo_rand_gen(seed, mod_range, dims))
    total = parameters_mod(total, mod_range)
    q_total, rest = factor_extract(total)
    out = dequantize(rest, clip, q_range)[0]
    out = (out - (n - 1) * clip) * (q_range / q_total)  # Flower returns the weighted mean
    out = out * n
    server_s = time.perf_counter() - t0
    return {
        "client_s": float(np.mean(times)),
        "server_s": server_s,
        "bytes_up": sum(map(len, uploads[0])),
        "rel_err": _rel_err(out, ref),
        "note": "Flower's own masking/unmasking functions in process (no key exchange stages, "
        "no simulation engine); masks from numpy MT19937 seeded with a 32-bit value",
    }


def _tenseal_context(n_poly: int, coeffs: list[int], scale_bits: int) -> ts.Context:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, n_poly, coeff_mod_bit_sizes=coeffs)
    ctx.global_scale = 2.0**scale_bits
    return ctx


def bench_tenseal(
    updates: list[np.ndarray],
    ref: np.ndarray,
    *,
    n_poly: int = 8192,
    coeffs: tuple[int, ...] = (60, 40, 40, 60),
    scale_bits: int = 40,
) -> dict[str, Any]:
    """TenSEAL's documented path: public-key CKKSVector per chunk of N/2 slots."""
    ctx = _tenseal_context(n_poly, list(coeffs), scale_bits)
    server_ctx = ts.context_from(ctx.serialize(save_secret_key=False))
    slots = n_poly // 2
    enc_times, payloads = [], []
    for u in updates:
        t0 = time.perf_counter()
        x = u.astype(np.float64)
        payloads.append(
            [ts.ckks_vector(ctx, x[k : k + slots]).serialize() for k in range(0, x.size, slots)]
        )
        enc_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    acc = [ts.ckks_vector_from(server_ctx, b) for b in payloads[0]]
    for p in payloads[1:]:
        for a, b in zip(acc, p, strict=True):
            a.add_(ts.ckks_vector_from(server_ctx, b))
    total = [a.serialize() for a in acc]
    server_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = np.concatenate([ts.ckks_vector_from(ctx, b).decrypt() for b in total])
    dec = time.perf_counter() - t0
    return {
        "client_s": float(np.mean(enc_times)) + dec,
        "encrypt_s": float(np.mean(enc_times)),
        "decrypt_s": dec,
        "server_s": server_s,
        "bytes_up": sum(map(len, payloads[0])),
        "rel_err": _rel_err(out[: ref.size], ref),
        "params": {"N": n_poly, "coeff_mod_bit_sizes": list(coeffs), "scale_bits": scale_bits},
    }


def ckks_sweep(x: np.ndarray) -> list[dict[str, Any]]:
    """Bytes per client (one update of len(x)) for several CKKS parameter choices."""
    rows = []
    for n_poly, coeffs, scale in [
        ((8192), (60, 40, 40, 60), 40),
        (8192, (60, 40, 60), 40),
        (4096, (40, 20, 40), 20),
    ]:
        ctx = _tenseal_context(n_poly, list(coeffs), scale)
        slots = n_poly // 2
        t0 = time.perf_counter()
        size = sum(
            len(ts.ckks_vector(ctx, x[k : k + slots]).serialize()) for k in range(0, x.size, slots)
        )
        rows.append(
            {
                "api": "tenseal CKKSVector (public key)",
                "N": n_poly,
                "coeff_mod_bit_sizes": list(coeffs),
                "bytes": size,
                "encrypt_s": time.perf_counter() - t0,
            }
        )
    variants = {
        "sealapi public key, real slots": CkksParams(symmetric=False, complex_slots=False),
        "sealapi seeded symmetric, real slots": CkksParams(complex_slots=False),
        "sealapi seeded symmetric, complex slots (umbra)": PRESETS["umbra"],
        "sealapi seeded symmetric, complex slots, 2 x 22-bit digits (umbra-digits)": PRESETS[
            "umbra-digits"
        ],
        "sealapi seeded symmetric, N=2048 is impossible (TenSEAL needs 2 primes <= 54 bits)": None,
    }
    for name, params in variants.items():
        if params is None:
            continue
        ring = CkksKeyring.generate(params)
        t0 = time.perf_counter()
        size = sum(map(len, ring.encrypt(x, num_clients=10, clip=CLIP)))
        rows.append(
            {
                "api": name,
                "N": params.poly_modulus_degree,
                "coeff_mod_bit_sizes": list(params.coeff_mod_bit_sizes),
                "bytes": size,
                "encrypt_s": time.perf_counter() - t0,
            }
        )
    return rows


def secagg_scaling(params: int, clients: list[int]) -> list[dict[str, Any]]:
    rng = np.random.default_rng(1)
    rows = []
    for n in clients:
        ups = [rng.normal(0, 0.1, params).astype(np.float32) for _ in range(n)]
        ref = np.sum([u.astype(np.float64) for u in ups], axis=0)
        for drop in (0, n // 10):
            r = bench_secagg(ups, ref, dropouts=drop)
            rows.append({"clients": n, "params": params, **r})
    return rows


def bench_flower_round(clients: int, repeats: int, hidden: int) -> dict[str, Any]:
    """Wall time and bytes of whole training rounds in ONE Flower simulation (Ray backend):
    plaintext, Umbra SecAgg+ and Umbra CKKS rounds interleaved on the same warm workers,
    from the same global model (local training included). The first pass is a warm-up."""
    import logging
    import tempfile
    from types import SimpleNamespace

    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    import umbra.secure.plugins  # noqa: F401  (registers the secure round transports)
    from umbra.config import FederationConfig
    from umbra.data.sources.synthetic import make_synthetic
    from umbra.federation.client_app import ClientSpec, make_client_app
    from umbra.federation.client_data import write_federation_data
    from umbra.federation.rounds import TRAIN_ROUNDS
    from umbra.federation.server_app import initial_arrays
    from umbra.federation.strategies import build_strategy
    from umbra.federation.train import TrainSettings
    from umbra.models import ModelSpec, parameter_modality

    root = Path(tempfile.mkdtemp(prefix="umbra-bench-flower-"))
    data = make_synthetic(n=250 * clients, num_classes=4, seed=0)
    parts = [
        np.sort(p) for p in np.array_split(np.random.default_rng(0).permutation(len(data)), clients)
    ]
    masks = [np.ones((len(p), len(data.modalities)), dtype=bool) for p in parts]
    write_federation_data(root / "train", data, parts, masks)
    model_spec = ModelSpec.from_data(data, hidden=hidden).to_dict()
    params = int(sum(a.size for a in initial_arrays(model_spec, 0).values()))
    secure = {
        "aggregation": "secagg+",
        "threshold": 0.67,
        "clip_range": 4.0,
        "ckks_params": "umbra",
        "dropout_clients": [],
    }
    client = make_client_app(
        ClientSpec(
            data_dir=str(root / "train"),
            state_dir=str(root / "state"),
            model_spec=model_spec,
            settings=TrainSettings(epochs=1, batch_size=32),
            seed=0,
            actions=("secagg", "ckks"),
            extra={"secure": secure},
        )
    )
    modes = ("none", "secagg+", "ckks")
    rows: dict[str, dict[str, list[float]]] = {m: {"wall_s": [], "bytes_up": []} for m in modes}
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        while len(list(grid.get_node_ids())) < clients:
            time.sleep(0.1)
        fed = FederationConfig.model_validate({"num_clients": clients})
        strategy = build_strategy(
            "fedavg",
            fed,
            key_modality=parameter_modality,
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=clients,
            min_evaluate_nodes=0,
            min_available_nodes=clients,
        )
        arrays = initial_arrays(model_spec, 0)
        spec = SimpleNamespace(extra={"secure": secure}, node_timeout_s=600.0)
        rnd = 0
        for rep in range(repeats + 1):
            for mode in modes:
                rnd += 1
                start = time.perf_counter()
                out = TRAIN_ROUNDS[mode](strategy, grid, rnd, arrays, spec)
                wall = time.perf_counter() - start
                if out.record is None:
                    raise RuntimeError(f"{mode} round aborted: {out.note}")
                if rep:
                    rows[mode]["wall_s"].append(wall)
                    rows[mode]["bytes_up"].append(out.bytes_up / max(out.clients, 1))

    logging.getLogger("flwr").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False},
        },
    )
    base = float(np.median(rows["none"]["wall_s"]))
    base_bytes = float(np.median(rows["none"]["bytes_up"]))
    return {
        "clients": clients,
        "params": params,
        "repeats": repeats,
        "modes": {
            m: {
                "round_s_median": float(np.median(r["wall_s"])),
                "round_ratio": float(np.median(r["wall_s"])) / base,
                "bytes_up_per_client": float(np.median(r["bytes_up"])),
                "bytes_ratio": float(np.median(r["bytes_up"])) / base_bytes,
            }
            for m, r in rows.items()
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--scaling-params", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--flower-round",
        action="store_true",
        help="only time whole rounds in one Flower simulation (plaintext vs SecAgg+ vs CKKS) "
        "and merge them into --out",
    )
    ap.add_argument("--flower-clients", type=int, default=4)
    ap.add_argument("--flower-repeats", type=int, default=3)
    ap.add_argument("--flower-hidden", type=int, default=128)
    args = ap.parse_args()
    if args.flower_round:
        flower = bench_flower_round(args.flower_clients, args.flower_repeats, args.flower_hidden)
        flower["command"] = (
            "PYTHONPATH=src .venv/bin/python bench/secure_aggregation.py --flower-round "
            f"--flower-clients {args.flower_clients} --flower-repeats {args.flower_repeats} "
            f"--flower-hidden {args.flower_hidden}"
        )
        previous = json.loads(args.out.read_text()) if args.out.exists() else {}
        previous["flower_round"] = flower
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(previous, indent=2))
        print(
            f"\nWhole training rounds in one Flower simulation ({flower['clients']} clients, "
            f"{flower['params']:,} parameters, median of {flower['repeats']})\n"
        )
        print("| round transport | round s | round / plaintext | bytes up/client | bytes ratio |")
        print("|---|---:|---:|---:|---:|")
        for name, m in flower["modes"].items():
            print(
                f"| {name} | {m['round_s_median']:.2f} | {m['round_ratio']:.2f}x | "
                f"{m['bytes_up_per_client']:,.0f} | {m['bytes_ratio']:.2f}x |"
            )
        print(f"\nwrote {args.out}")
        return
    rng = np.random.default_rng(0)
    updates = [rng.normal(0, 0.1, args.params).astype(np.float32) for _ in range(args.clients)]
    ref = np.sum([u.astype(np.float64) for u in updates], axis=0)

    methods: dict[str, dict[str, Any]] = {}
    methods["plaintext sum"] = bench_plaintext(updates)
    methods["Umbra SecAgg+"] = bench_secagg(updates, ref)
    methods["Umbra SecAgg+ (1 dropout)"] = bench_secagg(updates, ref, dropouts=1)
    methods["Flower SecAgg+ (its functions, in process)"] = bench_flower_secaggplus(
        updates, ref, neighbours=min(args.clients - 1, 8)
    )
    methods["TenSEAL default (N=8192, [60,40,40,60])"] = bench_tenseal(updates, ref)
    methods["Umbra CKKS (N=4096, [60,49], seeded, complex)"] = bench_umbra_ckks(
        updates, ref, "umbra"
    )
    methods["Umbra CKKS digits (2 x 22-bit per real)"] = bench_umbra_ckks(
        updates, ref, "umbra-digits"
    )
    base = methods["plaintext sum"]
    base_round = base["client_s"] + base["server_s"]
    for m in methods.values():
        m["bytes_ratio"] = m["bytes_up"] / base["bytes_up"]
        m["client_s_per_1M"] = m["client_s"] * 1e6 / args.params
        m["round_compute_s"] = m["client_s"] + m["server_s"]
        m["round_compute_ratio"] = m["round_compute_s"] / base_round

    scaling = secagg_scaling(args.scaling_params, [10, 100])
    sweep = ckks_sweep(updates[0].astype(np.float64))
    for row in sweep:
        row["bytes_ratio"] = row["bytes"] / (4 * args.params)

    result = {
        "command": "PYTHONPATH=src .venv/bin/python bench/secure_aggregation.py "
        f"--clients {args.clients} --params {args.params} --scaling-params {args.scaling_params}",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "clients": args.clients,
        "params": args.params,
        "notes": "in-process, one round; client_s = mean per client (CKKS: encrypt + decrypt of "
        "the aggregate); round_compute = client_s + server_s (clients run in parallel in a "
        "federation); bytes_up = payload bytes one client uploads (secagg+: all 4 stages).",
        "methods": methods,
        "secagg_scaling": scaling,
        "ckks_sweep": sweep,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))

    print(f"\n{args.clients} clients x {args.params:,} float32 parameters, one round\n")
    print(
        "| method | client s | server s | bytes/client | bytes ratio | (client+server) / plaintext "
        "| rel. error |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, m in methods.items():
        print(
            f"| {name} | {m['client_s']:.3f} | {m['server_s']:.3f} | {m['bytes_up']:,.0f} | "
            f"{m['bytes_ratio']:.3f}x | {m['round_compute_ratio']:.1f}x | {m['rel_err']:.1e} |"
        )
    print(f"\nSecAgg+ scaling ({args.scaling_params:,} params)\n")
    print("| clients | dropouts | client s | server s | bytes/client |")
    print("|---:|---:|---:|---:|---:|")
    for r in scaling:
        print(
            f"| {r['clients']} | {r['dropouts']} | {r['client_s']:.4f} | {r['server_s']:.3f} | "
            f"{r['bytes_up']:,.0f} |"
        )
    print("\nCKKS parameters: bytes per client for one update\n")
    print("| API | N | primes | bytes | ratio to float32 | encrypt s |")
    print("|---|---:|---|---:|---:|---:|")
    for r in sweep:
        print(
            f"| {r['api']} | {r['N']} | {r['coeff_mod_bit_sizes']} | {r['bytes']:,} | "
            f"{r['bytes_ratio']:.2f}x | {r['encrypt_s']:.2f} |"
        )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
