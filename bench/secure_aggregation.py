"""Secure aggregation benchmark: plaintext vs SecAgg+ (Umbra's, Flower's) vs TenSEAL vs Umbra CKKS.

Default mode, in process on this machine: one aggregation of ``--clients`` clients x
``--params`` float32 parameters: client compute (mean seconds per client: encode/mask or
encrypt, plus decrypting the aggregate for CKKS), server compute (seconds), bytes each client
uploads, and the relative error of the aggregate against the float64 plaintext sum. The
"Flower SecAgg+ masking functions" row only calls Flower's masking/unmasking helpers in
process; it is NOT Flower's SecAgg+ workflow (for that see ``--flower-round``). Also how
SecAgg+ server cost grows from 10 to 100 clients on a smaller vector, and a sweep of CKKS
parameters (bytes per client). Writes ``bench/results/secure_aggregation.json`` and prints
markdown tables of ratios to the plaintext sum.

``--flower-round``: whole training rounds in Flower simulations (Ray backend), ratios to the
plaintext round of the same simulation: Umbra's rounds (plaintext, Umbra SecAgg+, Umbra
CKKS) in one simulation, and Flower's own SecAgg+ through its legacy API (``DefaultWorkflow``
+ ``SecAggPlusWorkflow`` + ``secaggplus_mod``) against Flower's plaintext FedAvg round in
another; same clients, model (``--flower-hidden 448``: 1,000,996 parameters), data and local
training. Merged into the results file under ``flower_round``.

``--ckks-only``: only the CKKS rows (Umbra's threshold CKKS - what a run uses -, the
single-key scheme it replaced as a baseline, TenSEAL's tutorial parameters) and the
plaintext sum, merged into an existing results file of the same size.

Run:  PYTHONPATH=src .venv/bin/python bench/secure_aggregation.py
      PYTHONPATH=src .venv/bin/python bench/secure_aggregation.py --ckks-only
      PYTHONPATH=src .venv/bin/python bench/secure_aggregation.py --flower-round
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts

from umbra.secure.he import PRESETS, CkksAggregator, CkksKeyring, CkksParams

RESULTS = Path(__file__).resolve().parent / "results" / "secure_aggregation.json"
FLOWER_MASKING_ROW = "Flower SecAgg+ masking functions only, in process (not its workflow)"
CLIP = 1.0
#: The in-process SecAgg+ round (all clients and the server in one process) is a test helper.
SECAGG_SIM = Path(__file__).resolve().parents[1] / "tests"


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
    updates: list[np.ndarray],
    ref: np.ndarray,
    *,
    dropouts: int = 0,
    threshold: int | None = None,
    degree: int = -1,
) -> dict[str, Any]:
    if str(SECAGG_SIM) not in sys.path:
        sys.path.insert(0, str(SECAGG_SIM))
    from secagg_sim import run_secagg_round

    n = len(updates)
    dropped = set(range(n - dropouts, n))
    t = max(2, (2 * n) // 3) if threshold is None else threshold
    agg, tr = run_secagg_round(
        updates, threshold=t, clip_range=CLIP, dropouts=dropped, degree=degree
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


def bench_threshold_ckks(
    updates: list[np.ndarray], ref: np.ndarray, *, threshold: float = 0.67, rounds: int = 10
) -> dict[str, Any]:
    """Umbra's threshold CKKS (what a run uses), in process through the real protocol
    functions: key setup (signed advertisements, commit-reveal seed, collective key, Shamir
    shares), one round of encryption, server-side sum, t flooded decryption shares and the
    server's decoding. Bytes are the protocol payloads (message framing not included; the
    --flower-round simulation measures real messages). ``rounds`` sizes the decryption
    budget tau (hence the flooding noise and the scale)."""
    from umbra.secure import identity
    from umbra.secure.he import holder
    from umbra.secure.he.aggregator import ThresholdAggregator, decode_sum

    n, length = len(updates), updates[0].size
    run = 1
    private, roster = identity.generate_identities(range(n))
    cfgs = [
        holder.HolderConfig(client_id=i, identity_key=private[i], roster=roster,
                            threshold=threshold, rounds=rounds, clip=CLIP)
        for i in range(n)
    ]  # fmt: skip
    states: list[dict[str, Any]] = [{} for _ in range(n)]
    setup_s = [0.0] * n
    up = [0] * n
    down = [0] * n

    def timed(i: int, fn: Any, *args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kw)
        setup_s[i] += time.perf_counter() - t0
        return out

    def size(obj: Any) -> int:
        if isinstance(obj, bytes | bytearray):
            return len(obj)
        if isinstance(obj, np.ndarray):
            return obj.nbytes
        if isinstance(obj, dict):
            return sum(size(v) for v in obj.values())
        if isinstance(obj, list | tuple):
            return sum(size(v) for v in obj)
        return 8

    ads = [timed(i, holder.advertise, cfgs[i], states[i], run_id=run) for i in range(n)]
    adv_req = {"ids": np.arange(n), "pks": [a["pk"] for a in ads],
               "commits": [a["commit"] for a in ads], "sigs": [a["sig"] for a in ads]}  # fmt: skip
    reveals = [timed(i, holder.reveal, cfgs[i], states[i], adv_req, run_id=run) for i in range(n)]
    rev_req = {"ids": np.arange(n), "nonces": [r["nonce"] for r in reveals], "length": length}
    kg = [timed(i, holder.keygen, cfgs[i], states[i], rev_req, run_id=run) for i in range(n)]
    fins: list[dict[str, Any]] = []
    for i in range(n):
        fin_req = {"ids": np.arange(n), "bs": [k["b"] for k in kg], "sigs": [k["sig"] for k in kg],
                   "blobs": [k["blobs"][i] for k in kg]}  # fmt: skip
        fin = timed(i, holder.finish, cfgs[i], states[i], fin_req, run_id=run)
        fins.append(fin)
        up[i] += size(ads[i]) + size(reveals[i]) + size(kg[i]) + size(fin)
        down[i] += size(adv_req) + size(rev_req) + size(fin_req)
    acks = {"ack_ids": np.arange(n), "acks": [f["sig"] for f in fins]}
    for i in range(n):
        timed(i, holder.check_key_acks, cfgs[i], states[i], acks, run_id=run)
        down[i] += size(acks)  # sent with the first round's model
    setup_up, setup_down = float(np.mean(up)), float(np.mean(down))
    plan = holder.holder_plan(cfgs[0], states[0])

    enc_times, msgs = [], {}
    for i, u in enumerate(updates):
        t0 = time.perf_counter()
        msgs[i] = holder.encrypt_update(cfgs[i], states[i], u.astype(np.float64), round_number=1)
        enc_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    agg = ThresholdAggregator(plan, length=length, round_number=1)
    total = agg.aggregate(msgs, min_clients=plan.threshold)
    request = {"round": 1, "T": np.arange(plan.threshold), "c1": total.c1_blobs(agg.ring)}
    server_s = time.perf_counter() - t0
    shares, dec_times = {}, []
    for j in range(plan.threshold):
        t0 = time.perf_counter()
        shares[j] = holder.decryption_share(cfgs[j], states[j], request, round_number=1)["shares"]
        dec_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    out = decode_sum(plan, total, shares, length=length)
    server_s += time.perf_counter() - t0
    ct_up = float(np.mean([size(m["ciphertexts"]) + len(m["digest"]) for m in msgs.values()]))
    share_up = float(np.mean([size(v) for v in shares.values()]))
    c1_down = size(request["c1"])
    frac = plan.threshold / n
    round_up = ct_up + frac * share_up
    round_down = frac * c1_down
    p = plan.params
    return {
        "client_s": float(np.mean(enc_times)) + frac * float(np.mean(dec_times)),
        "encrypt_s": float(np.mean(enc_times)),
        "decryption_share_s": float(np.mean(dec_times)),
        "setup_client_s": float(np.mean(setup_s)),
        "server_s": server_s,
        "bytes_up": round_up,
        "bytes_up_ciphertexts": ct_up,
        "bytes_up_decryption_share": share_up,
        "bytes_down_c1_to_decryptor": c1_down,
        "bytes_down": round_down,
        "setup_bytes_up": setup_up,
        "setup_bytes_down": setup_down,
        "setup_bytes_up_per_round": setup_up / rounds,
        "bytes_up_with_setup_amortised": round_up + setup_up / rounds,
        "bytes_up_down_with_setup_amortised": round_up
        + round_down
        + (setup_up + setup_down) / rounds,
        "rel_err": _rel_err(out, ref),
        "max_abs_err": float(np.max(np.abs(out - ref))),
        "predicted_value_std": plan.value_std,
        "params": {
            "N": p.poly_modulus_degree,
            "data_primes_bits": list(p.data_bits),
            "special_prime_bits": p.special_bits,
            "log_qp": sum(p.data_bits) + p.special_bits,
            "security_bits": 128,
            "holders": plan.holders,
            "threshold_t": plan.threshold,
            "max_decryptions_tau": plan.max_decryptions,
            "noise_bound_B_log2": math.log2(plan.noise_bound),
            "flood_sigma_log2": math.log2(plan.flood_sigma),
            "statistical_bits": p.statistical_bits,
            "scale_bits": plan.scale_bits,
            "c0_drop_bits": plan.c0_drop_bits,
            "share_drop_bits": plan.share_drop_bits,
            "value_bound_per_sum": plan.value_bound,
            "clip_per_client": CLIP,
        },
        "note": "bytes_up = ciphertexts + (t/N) x one decryption share (only t holders "
        "decrypt); bytes_down = (t/N) x the summed c1 sent to a decryptor (the model download "
        "is the same as plaintext's and not counted); setup once per run, amortised over "
        "`rounds`",
    }


def bench_flower_masking_functions(
    updates: list[np.ndarray], ref: np.ndarray, *, neighbours: int
) -> dict[str, Any]:
    """Flower 1.42's SecAgg+ masking and unmasking helper functions, called in process.

    NOT Flower's SecAgg+ workflow: ``bench_flower_legacy_rounds`` runs that one
    (``SecAggPlusWorkflow`` + ``secaggplus_mod`` in a simulation).

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
        "note": "only Flower's masking/unmasking helper functions in process, NOT its SecAgg+ "
        "workflow (no key exchange stages, no messages, no simulation engine; see "
        "flower_round.flower_legacy_simulation); masks from numpy MT19937 seeded with a "
        "32-bit value",
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


def secagg_graph(params: int, clients: int, repeats: int) -> dict[str, Any]:
    """SecAgg+ at ``clients`` clients, threshold ``ceil(0.67 n)``, ``n - t`` dropouts: the
    complete graph `graph_parameters` picks against the sparse degree ``2 ceil(log2 n)``
    used before (which cannot survive ``n - t`` dropouts, so it runs with none), medians of
    ``repeats`` in-process rounds; and the collusion bound at 8, 100 and 1,000 clients."""
    from umbra.secure.secagg.graph import collusion_bound

    n = clients
    t = math.ceil(0.67 * n)
    rng = np.random.default_rng(2)
    ups = [rng.normal(0, 0.1, params).astype(np.float32) for _ in range(n)]
    ref = np.sum([u.astype(np.float64) for u in ups], axis=0)
    sparse_k = min(n - 1, 2 * math.ceil(math.log2(n)))
    rows = []
    for label, degree, drop in (
        (f"complete (k = {n - 1})", -1, 0),
        (f"complete (k = {n - 1}), {n - t} dropouts", -1, n - t),
        (f"sparse (k = {sparse_k}), before", sparse_k, 0),
    ):
        runs = [
            bench_secagg(ups, ref, dropouts=drop, threshold=t, degree=degree)
            for _ in range(repeats)
        ]
        med = {k: float(np.median([r[k] for r in runs])) for k in ("client_s", "server_s")}
        rows.append({"graph": label, "clients": n, "params": params, **runs[-1], **med})
    bounds = []
    for m in (8, 100, 1000):
        b = collusion_bound(m, math.ceil(0.67 * m))
        bounds.append(
            {
                "clients": m,
                "threshold": b.threshold,
                "degree": b.degree,
                "share_threshold": b.share_threshold,
                "complete": b.complete,
                "colluders": b.colluders,
                "failure_probability": b.failure_probability,
            }
        )
    return {"rounds": rows, "collusion_bound": bounds}


# --- Whole rounds in Flower simulations (Ray backend) ---------------------------------------
#
# Two simulations, each comparing its secure rounds with plaintext rounds run interleaved on
# the same warm workers: (1) Umbra's Message-API rounds (plaintext, Umbra SecAgg+, Umbra CKKS);
# (2) Flower's legacy API (DefaultWorkflow with its default fit workflow vs SecAggPlusWorkflow
# + secaggplus_mod). Both train the same model on the same client data with the same
# ``train_local``. Bytes are the protobuf sizes of the messages (``message_bytes``) measured
# by the same grid wrapper in both; client seconds are measured around the ClientApp call.


class _MeasuredGrid:
    """Delegates to a Flower Grid; records per-node message bytes and time spent waiting for
    replies (the rest of a round's wall time is server compute). Flower's workflows call
    ``send_and_receive``; Umbra's rounds push and pull themselves
    (`umbra.federation.common`), so pushes and pulls are measured too: the wait of one
    push runs until the pull that brings its last reply. The byte measurement's own time
    is kept apart so it can be left out of the round's wall time."""

    def __init__(self, grid: Any) -> None:
        self._grid = grid
        self.reset()

    def reset(self) -> None:
        self.up: dict[int, int] = {}
        self.down: dict[int, int] = {}
        self.wait_s = 0.0
        self.measure_s = 0.0
        self._pending: set[str] = set()
        self._pushed_at = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def _count(self, book: dict[int, int], msgs: list[Any], *, src: bool) -> None:
        from umbra.federation.common import message_bytes

        t0 = time.perf_counter()
        for m in msgs:
            node = m.metadata.src_node_id if src else m.metadata.dst_node_id
            book[node] = book.get(node, 0) + message_bytes([m])
        self.measure_s += time.perf_counter() - t0

    def push_messages(self, messages: Any) -> list[str]:
        messages = list(messages)
        self._count(self.down, messages, src=False)
        self._pushed_at = time.perf_counter()
        ids = list(self._grid.push_messages(messages))
        self._pending = set(ids)
        return ids

    def pull_messages(self, message_ids: Any) -> list[Any]:
        replies = list(self._grid.pull_messages(message_ids))
        if replies and self._pending:
            self._pending.difference_update(r.metadata.reply_to_message_id for r in replies)
            if not self._pending:
                self.wait_s += time.perf_counter() - self._pushed_at
        self._count(self.up, replies, src=True)
        return replies

    def send_and_receive(self, messages: Any, *args: Any, **kwargs: Any) -> list[Any]:
        messages = list(messages)
        self._count(self.down, messages, src=False)
        t1 = time.perf_counter()
        replies = list(self._grid.send_and_receive(messages, *args, **kwargs))
        self.wait_s += time.perf_counter() - t1
        self._count(self.up, replies, src=True)
        return replies


def _timed_client_app(inner: Any, log_path: str) -> Any:
    """A ClientApp that runs ``inner`` and appends ``{node, s}`` per message to ``log_path``
    (simulation workers are local processes; one short append per message)."""
    from flwr.clientapp import ClientApp

    class _Timed(ClientApp):
        def __call__(self, message: Any, context: Any) -> Any:
            t0 = time.perf_counter()
            out = inner(message, context)
            line = json.dumps({"node": int(context.node_id), "s": time.perf_counter() - t0})
            with open(log_path, "a") as fh:
                fh.write(line + "\n")
            return out

    return _Timed()


class _RoundLog:
    """Collects one simulation's per-round measurements (the first pass is the warm-up)."""

    def __init__(self, modes: tuple[str, ...], client_log: Path) -> None:
        self.rows: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
        self.client_log = client_log
        self._pos = 0

    def _client_seconds(self) -> dict[int, float]:
        with open(self.client_log) as fh:
            fh.seek(self._pos)
            lines = fh.readlines()
            self._pos = fh.tell()
        per_node: dict[int, float] = {}
        for line in lines:
            rec = json.loads(line)
            per_node[rec["node"]] = per_node.get(rec["node"], 0.0) + rec["s"]
        return per_node

    def add(
        self,
        mode: str,
        elapsed: float,
        grid: _MeasuredGrid,
        *,
        keep: bool,
        reported_up: float | None = None,
    ) -> None:
        client = self._client_seconds()  # always read, so the next round starts clean
        if not keep:
            return
        wall = elapsed - grid.measure_s
        row = {
            "wall_s": wall,
            "server_s": wall - grid.wait_s,
            "client_s": float(np.mean(list(client.values()))),
            "bytes_up": float(np.mean(list(grid.up.values()))),
            "bytes_down": float(np.mean(list(grid.down.values()))),
        }
        if reported_up is not None:  # the round's own accounting, as a cross-check
            row["reported_bytes_up"] = reported_up
        self.rows[mode].append(row)

    def summary(self, baseline: str) -> dict[str, dict[str, float]]:
        med = {
            m: {k: float(np.median([r[k] for r in rs])) for k in rs[0]}
            for m, rs in self.rows.items()
        }
        base = med[baseline]
        return {
            m: {
                "round_s_median": r["wall_s"],
                "round_ratio": r["wall_s"] / base["wall_s"],
                "server_s_median": r["server_s"],
                "client_s_median": r["client_s"],
                "client_ratio": r["client_s"] / base["client_s"],
                "bytes_up_per_client": r["bytes_up"],
                "bytes_ratio": r["bytes_up"] / base["bytes_up"],
                "bytes_down_per_client": r["bytes_down"],
                "rounds_measured": len(self.rows[m]),
                "round_s_each": [round(x["wall_s"], 3) for x in self.rows[m]],
                **(
                    {"round_reported_bytes_up_per_client": r["reported_bytes_up"]}
                    if "reported_bytes_up" in r
                    else {}
                ),
            }
            for m, r in med.items()
        }


@dataclass
class _SimSetup:
    root: Path
    clients: int
    records: int
    model_spec: dict[str, Any]
    params: int
    settings: Any  # umbra.federation.train.TrainSettings

    @property
    def data_dir(self) -> str:
        return str(self.root / "train")


def _sim_setup(clients: int, records: int, hidden: int) -> _SimSetup:
    import tempfile

    from umbra.data.sources.synthetic import make_synthetic
    from umbra.federation.client_data import write_federation_data
    from umbra.federation.server_app import initial_arrays
    from umbra.federation.train import TrainSettings
    from umbra.models import ModelSpec

    root = Path(tempfile.mkdtemp(prefix="umbra-bench-flower-"))
    data = make_synthetic(n=records * clients, num_classes=4, seed=0)
    parts = [
        np.sort(p) for p in np.array_split(np.random.default_rng(0).permutation(len(data)), clients)
    ]
    masks = [np.ones((len(p), len(data.modalities)), dtype=bool) for p in parts]
    write_federation_data(root / "train", data, parts, masks)
    model_spec = ModelSpec.from_data(data, hidden=hidden).to_dict()
    params = int(sum(a.size for a in initial_arrays(model_spec, 0).values()))
    return _SimSetup(
        root, clients, records, model_spec, params, TrainSettings(epochs=1, batch_size=32)
    )


def _run_sim(server: Any, client: Any, clients: int) -> None:
    import logging

    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=clients,
        backend_config={
            # 2 workers: this machine has 2 cores; the server's work runs in the driver
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": min(2, os.cpu_count() or 2),
                "include_dashboard": False,
                "log_to_driver": False,
            },
        },
    )


def bench_umbra_rounds(setup: _SimSetup, repeats: int) -> dict[str, Any]:
    """Umbra's Message-API rounds in ONE Flower simulation (Ray backend): plaintext, Umbra
    SecAgg+ and Umbra CKKS interleaved on the same warm workers, from the same global model
    (local training included). The first pass is a warm-up."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    from umbra.config import FederationConfig
    from umbra.federation.client_app import ClientSpec, make_client_app
    from umbra.federation.common import SecureSettings
    from umbra.federation.rounds import PlainTrainRound, TrainRound
    from umbra.federation.secure_round import SecureTrainRound
    from umbra.federation.server_app import initial_arrays
    from umbra.federation.strategies import build_strategy
    from umbra.models import parameter_modality
    from umbra.secure import transports
    from umbra.secure.he.workflow import CkksTransport
    from umbra.secure.identity import generate_identities

    clients = setup.clients
    identities, roster = generate_identities(range(clients))
    secure = SecureSettings(threshold=0.67, clip_range=4.0, roster=roster, rounds=repeats + 1)
    registry = transports()
    client_log = setup.root / "umbra-client-times.jsonl"
    client_log.touch()
    client = make_client_app(
        ClientSpec(
            data_dir=setup.data_dir,
            state_dir=str(setup.root / "state"),
            model_spec=setup.model_spec,
            settings=setup.settings,
            seed=0,
            transports=(registry.get("secagg+"), registry.get("ckks")),
            secure=secure,
            identities=identities,
        )
    )
    modes = ("none", "secagg+", "ckks")
    log = _RoundLog(modes, client_log)
    setup_bytes: dict[str, float] = {}
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        while len(list(grid.get_node_ids())) < clients:
            time.sleep(0.1)
        measured = _MeasuredGrid(grid)
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
        arrays = initial_arrays(setup.model_spec, 0)
        rounds: dict[str, TrainRound] = {"none": PlainTrainRound(timeout_s=600.0)}
        for name in ("secagg+", "ckks"):
            transport = registry.get(name).server(secure)
            rounds[name] = SecureTrainRound(transport, timeout_s=600.0)
        rnd = 0
        for rep in range(repeats + 1):
            for mode in modes:
                rnd += 1
                measured.reset()
                start = time.perf_counter()
                out = rounds[mode](strategy, measured, rnd, arrays)
                elapsed = time.perf_counter() - start
                if out.record is None:
                    raise RuntimeError(f"{mode} round aborted: {out.note}")
                if out.clients != clients:
                    raise RuntimeError(f"{mode} round: {out.clients} of {clients} clients")
                log.add(
                    mode, elapsed, measured, keep=rep > 0, reported_up=out.bytes_up / out.clients
                )
        ckks_round = rounds["ckks"]
        assert isinstance(ckks_round, SecureTrainRound)
        assert isinstance(ckks_round.transport, CkksTransport)
        keys = ckks_round.transport.keys
        setup_bytes.update(
            up=keys.bytes_up / clients, down=keys.bytes_down / clients, rounds=repeats + 1
        )

    _run_sim(server, _timed_client_app(client, str(client_log)), clients)
    modes_summary = log.summary("none")
    ckks = modes_summary["ckks"]
    plain = modes_summary["none"]
    ckks["key_setup_bytes_up_per_client"] = setup_bytes.get("up", 0.0)
    ckks["key_setup_bytes_down_per_client"] = setup_bytes.get("down", 0.0)
    ckks["key_setup_note"] = (
        "threshold CKKS key setup, once per run, in the warm-up round (not in the medians); "
        "amortised columns spread it over the simulation's ckks rounds"
    )
    k = max(1.0, setup_bytes.get("rounds", 1.0))
    ckks["bytes_up_amortised_per_client"] = (
        ckks["bytes_up_per_client"] + ckks["key_setup_bytes_up_per_client"] / k
    )
    ckks["bytes_ratio_amortised"] = (
        ckks["bytes_up_amortised_per_client"] / plain["bytes_up_per_client"]
    )
    total_plain = plain["bytes_up_per_client"] + plain["bytes_down_per_client"]
    ckks["bytes_up_down_ratio"] = (
        ckks["bytes_up_per_client"] + ckks["bytes_down_per_client"]
    ) / total_plain
    return {
        "api": "Umbra (Flower Message API: flwr.serverapp.ServerApp main, Grid)",
        "modes": modes_summary,
    }


def bench_flower_legacy_rounds(setup: _SimSetup, repeats: int) -> dict[str, Any]:
    """Flower's own SecAgg+ through its legacy API in ONE Flower simulation: a legacy
    ServerApp main running ``DefaultWorkflow`` on a ``LegacyContext`` whose fit rounds
    alternate between Flower's default fit workflow (plaintext FedAvg) and
    ``SecAggPlusWorkflow``; clients are a ``ClientApp(client_fn=..., mods=[...])`` over a
    ``NumPyClient`` whose ``fit`` runs the same ``train_local`` as Umbra's client, with
    ``secaggplus_mod`` applied to the SecAgg+ rounds' messages."""
    from flwr.app import Context
    from flwr.app.message_type import MessageType
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.common import ndarrays_to_parameters
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
    from flwr.server.workflow.default_workflows import default_fit_workflow
    from flwr.serverapp import Grid, ServerApp

    from umbra.federation.client_data import load_client_data
    from umbra.federation.server_app import initial_arrays
    from umbra.federation.train import Batchable, get_arrays, set_arrays, train_local
    from umbra.models import ModelSpec, MultimodalNet

    clients = setup.clients
    init = initial_arrays(setup.model_spec, 0)
    keys = list(init)
    data_dir, model_spec, settings = setup.data_dir, setup.model_spec, setup.settings

    class _Client(NumPyClient):
        def __init__(self, partition: int) -> None:
            self.partition = partition

        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
            import torch

            torch.set_num_threads(1)  # as Umbra's ClientSpec.threads
            data = load_client_data(data_dir, self.partition)
            model = MultimodalNet(ModelSpec.from_dict(model_spec))
            set_arrays(model, dict(zip(keys, parameters, strict=True)))
            train_local(model, Batchable.from_data(data), settings, seed=self.partition)
            out = get_arrays(model)
            return [out[k] for k in keys], len(data), {}

    def client_fn(context: Context) -> Any:
        return _Client(int(context.node_config["partition-id"])).to_client()

    def secaggplus_rounds_only(msg: Any, ctxt: Any, call_next: Any) -> Any:
        """Flower's ``secaggplus_mod`` on SecAgg+ messages; the plaintext rounds' train
        messages (no SecAgg+ configs, which the mod requires) go straight to the client."""
        if (
            msg.metadata.message_type == MessageType.TRAIN
            and RECORD_KEY_CONFIGS not in msg.content.config_records
        ):
            return call_next(msg, ctxt)
        return secaggplus_mod(msg, ctxt, call_next)

    client_log = setup.root / "flower-client-times.jsonl"
    client_log.touch()
    client = ClientApp(client_fn=client_fn, mods=[secaggplus_rounds_only])
    # Umbra's SecAgg+ at 10 clients: 8 neighbours, threshold ceil(0.67 n). Flower counts a
    # node's own share: num_shares = 8 neighbours + 1 = 9, threshold 7 shares of 9.
    neighbours = min(clients - 1, 8)
    flows = {
        "none": default_fit_workflow,
        "secagg+": SecAggPlusWorkflow(
            num_shares=neighbours + 1,
            reconstruction_threshold=min(neighbours, max(2, math.ceil(0.67 * (neighbours + 1)))),
        ),
    }
    modes = tuple(flows)
    log = _RoundLog(modes, client_log)

    # Each mode keeps its own global model, as in two separate runs interleaved on the same
    # workers: SecAggPlusWorkflow hands the strategy a float64 aggregate, so after its first
    # round Flower's SecAgg+ global model (the next download) is float64, while plaintext
    # FedAvg's stays float32.
    models: dict[str, Any] = {}

    def fit_round(grid: Any, context: Any) -> None:
        rnd = int(context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])
        mode = modes[(rnd - 1) % len(modes)]
        if mode in models:
            context.state.array_records[MAIN_PARAMS_RECORD] = models[mode]
        before = context.state.array_records[MAIN_PARAMS_RECORD]
        grid.reset()
        start = time.perf_counter()
        flows[mode](grid, context)
        elapsed = time.perf_counter() - start
        if context.state.array_records[MAIN_PARAMS_RECORD] is before:
            raise RuntimeError(f"Flower legacy {mode} round {rnd} did not update the model")
        models[mode] = context.state.array_records[MAIN_PARAMS_RECORD]
        log.add(mode, elapsed, grid, keep=rnd > len(modes))

    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=clients,
            min_evaluate_clients=0,
            min_available_clients=clients,
            initial_parameters=ndarrays_to_parameters([init[k] for k in keys]),
        )
        legacy = LegacyContext(
            context=context,
            config=ServerConfig(num_rounds=len(modes) * (repeats + 1)),
            strategy=strategy,
        )
        DefaultWorkflow(fit_workflow=fit_round)(_MeasuredGrid(grid), legacy)

    _run_sim(server, _timed_client_app(client, str(client_log)), clients)
    return {
        "api": "Flower legacy API (LegacyContext, DefaultWorkflow, SecAggPlusWorkflow, "
        "secaggplus_mod, NumPyClient)",
        "secaggplus": {
            "num_shares": neighbours + 1,
            "reconstruction_threshold": flows["secagg+"].reconstruction_threshold,
            "clipping_range": flows["secagg+"].clipping_range,
            "quantization_range": flows["secagg+"].quantization_range,
            "modulus_range": flows["secagg+"].modulus_range,
        },
        "modes": log.summary("none"),
    }


SIM_NOTES = (
    "Each simulation interleaves its rounds on the same warm Ray workers (2 CPUs, 1 per "
    "client task); the first pass is a warm-up, then medians over the measured rounds. A "
    "round = send the global model to every client, each client loads its partition and "
    "runs Umbra's train_local (1 epoch, batch 32: light on purpose, the point is aggregation "
    "overhead), returns its update (plaintext, masked, or encrypted, with all protocol "
    "stages), server aggregates and updates the model. round_s = round wall time minus the "
    "benchmark's own byte measurement; server_s = round_s minus time waiting for replies "
    "(in grid.send_and_receive, or from a push to the pull that brings its last reply); client_s = mean per client of the seconds spent in the "
    "ClientApp over all the round's messages (incl. local training); bytes = protobuf sizes "
    "of the messages (umbra.federation.common.message_bytes) summed over the round's "
    "stages, mean per client. Ratios are to the plaintext round of the same simulation. "
    "Umbra's rounds all start from the same initial model; in the Flower legacy simulation "
    "each mode keeps its own global model (Flower's SecAgg+ aggregate is float64, so its "
    "download is 8 bytes per parameter after the first round)."
)


def bench_flower_round(
    clients: int, repeats: int, hidden: int, records: int, sims: tuple[str, ...]
) -> dict[str, Any]:
    setup = _sim_setup(clients, records, hidden)
    load_start = os.getloadavg()[0]
    out: dict[str, Any] = {
        "clients": clients,
        "params": setup.params,
        "hidden": hidden,
        "records_per_client": records,
        "local_training": "umbra train_local, 1 epoch, batch 32, "
        f"{setup.settings.steps(records)} SGD steps per client",
        "repeats": repeats,
        "notes": SIM_NOTES,
    }
    try:
        if "umbra" in sims:
            out["umbra_simulation"] = bench_umbra_rounds(setup, repeats)
        if "flower-legacy" in sims:
            out["flower_legacy_simulation"] = bench_flower_legacy_rounds(setup, repeats)
    finally:
        shutil.rmtree(setup.root, ignore_errors=True)
    out["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_1m": {"start": load_start, "end": os.getloadavg()[0]},
    }
    return out


THRESHOLD_ROW = "Umbra threshold CKKS (N=8192, fitted primes + 60, t-of-N, flooded)"


def _ckks_methods(updates: list[np.ndarray], ref: np.ndarray, rounds: int) -> dict[str, Any]:
    """The CKKS rows: Umbra's threshold scheme (what a run uses), the single-key presets it
    replaced (baselines only: one secret key shared by all clients, raw decryption) and
    TenSEAL with its tutorial parameters."""
    return {
        THRESHOLD_ROW: bench_threshold_ckks(updates, ref, rounds=rounds),
        "TenSEAL default (N=8192, [60,40,40,60])": bench_tenseal(updates, ref),
        "Umbra single-key CKKS baseline (N=4096, [60,49], seeded, complex)": bench_umbra_ckks(
            updates, ref, "umbra"
        ),
    }


def _finish_methods(methods: dict[str, dict[str, Any]], params: int) -> None:
    base = methods["plaintext sum"]
    base_round = base["client_s"] + base["server_s"]
    for m in methods.values():
        m["bytes_ratio"] = m["bytes_up"] / base["bytes_up"]
        m["client_s_per_1M"] = m["client_s"] * 1e6 / params
        m["round_compute_s"] = m["client_s"] + m["server_s"]
        m["round_compute_ratio"] = m["round_compute_s"] / base_round


def _print_methods(methods: dict[str, dict[str, Any]], args: Any) -> None:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--scaling-params", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--flower-round",
        action="store_true",
        help="only time whole rounds in Flower simulations (Umbra: plaintext vs SecAgg+ vs "
        "CKKS; Flower legacy API: plaintext FedAvg vs Flower's SecAgg+) and merge them into --out",
    )
    ap.add_argument(
        "--ckks-only",
        action="store_true",
        help="only the in-process CKKS rows (threshold CKKS, single-key baselines, TenSEAL "
        "default) and the plaintext sum; merged into --out",
    )
    ap.add_argument("--ckks-rounds", type=int, default=10, help="threshold CKKS: run rounds (tau)")
    ap.add_argument("--flower-clients", type=int, default=10)
    ap.add_argument("--flower-repeats", type=int, default=3, help="measured passes after 1 warm-up")
    ap.add_argument(
        "--flower-hidden", type=int, default=448, help="model width; 448 -> 1,000,996 parameters"
    )
    ap.add_argument("--flower-records", type=int, default=64, help="training records per client")
    ap.add_argument(
        "--flower-sims",
        default="umbra,flower-legacy",
        help="comma-separated subset of: umbra, flower-legacy",
    )
    ap.add_argument(
        "--graph",
        action="store_true",
        help="only SecAgg+'s graph: complete vs the former sparse degree at --clients clients "
        "and --scaling-params parameters, and the collusion bound; merged into --out",
    )
    ap.add_argument("--graph-repeats", type=int, default=3)
    args = ap.parse_args()
    if args.graph:
        graph = secagg_graph(args.scaling_params, args.clients, args.graph_repeats)
        graph["command"] = (
            "PYTHONPATH=src .venv/bin/python bench/secure_aggregation.py --graph "
            f"--clients {args.clients} --scaling-params {args.scaling_params} "
            f"--graph-repeats {args.graph_repeats}"
        )
        previous = json.loads(args.out.read_text()) if args.out.exists() else {}
        previous["secagg_graph"] = graph
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(previous, indent=2))
        print("| SecAgg+ graph | client s | server s | bytes up/client | ratio client s |")
        print("|---|---:|---:|---:|---:|")
        base = graph["rounds"][-1]["client_s"]
        for r in graph["rounds"]:
            print(
                f"| {r['graph']} | {r['client_s']:.3f} | {r['server_s']:.3f} | "
                f"{r['bytes_up']:,.0f} | {r['client_s'] / base:.2f} |"
            )
        print("\n| n | t | degree | Shamir threshold | colluders tolerated | failure prob. |")
        print("|---:|---:|---:|---:|---:|---:|")
        for b in graph["collusion_bound"]:
            print(
                f"| {b['clients']} | {b['threshold']} | {b['degree']} | {b['share_threshold']} "
                f"| {b['colluders']} | {b['failure_probability']:.1e} |"
            )
        print(f"\nwrote {args.out}")
        return
    if args.flower_round:
        sims = tuple(x.strip() for x in args.flower_sims.split(",") if x.strip())
        unknown = set(sims) - {"umbra", "flower-legacy"}
        if unknown or not sims:
            ap.error(f"--flower-sims: unknown {sorted(unknown)}")
        flower = bench_flower_round(
            args.flower_clients, args.flower_repeats, args.flower_hidden, args.flower_records, sims
        )
        flower["command"] = (
            "PYTHONPATH=src .venv/bin/python bench/secure_aggregation.py --flower-round "
            f"--flower-clients {args.flower_clients} --flower-repeats {args.flower_repeats} "
            f"--flower-hidden {args.flower_hidden} --flower-records {args.flower_records} "
            f"--flower-sims {','.join(sims)}"
        )
        previous = json.loads(args.out.read_text()) if args.out.exists() else {}
        old = previous.get("flower_round", {})
        same = all(old.get(k) == flower[k] for k in ("clients", "params", "records_per_client"))
        for key in ("umbra_simulation", "flower_legacy_simulation"):
            if key not in flower and same and key in old:  # keep the simulation not rerun
                flower[key] = old[key]
                flower.setdefault("earlier_commands", {})[key] = old.get("command")
        previous["flower_round"] = flower
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(previous, indent=2))
        print(
            f"\nWhole training rounds in Flower simulations ({flower['clients']} clients, "
            f"{flower['params']:,} parameters, median of {flower['repeats']} after a warm-up)\n"
        )
        print(
            "| simulation | round | round s | round / plaintext | server s | client s "
            "| bytes up/client | bytes ratio |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for key in ("umbra_simulation", "flower_legacy_simulation"):
            for name, m in flower.get(key, {}).get("modes", {}).items():
                print(
                    f"| {key} | {name} | {m['round_s_median']:.2f} | {m['round_ratio']:.2f}x | "
                    f"{m['server_s_median']:.2f} | {m['client_s_median']:.2f} | "
                    f"{m['bytes_up_per_client']:,.0f} | {m['bytes_ratio']:.3f}x |"
                )
        print(f"\nwrote {args.out}")
        return
    rng = np.random.default_rng(0)
    updates = [rng.normal(0, 0.1, args.params).astype(np.float32) for _ in range(args.clients)]
    ref = np.sum([u.astype(np.float64) for u in updates], axis=0)

    methods: dict[str, dict[str, Any]] = {}
    methods["plaintext sum"] = bench_plaintext(updates)
    if args.ckks_only:
        ckks_methods = _ckks_methods(updates, ref, args.ckks_rounds)
        _finish_methods({"plaintext sum": methods["plaintext sum"], **ckks_methods}, args.params)
        previous = json.loads(args.out.read_text()) if args.out.exists() else {}
        if previous.get("params") != args.params or previous.get("clients") != args.clients:
            raise SystemExit(
                "--ckks-only merges into a results file of the same --params/--clients"
            )
        previous.setdefault("methods", {})
        for name in list(previous["methods"]):
            if "CKKS" in name and name not in ckks_methods and "TenSEAL" not in name:
                del previous["methods"][name]  # rows of a former CKKS scheme
        previous["methods"].update(ckks_methods)
        previous["ckks_command"] = (
            "PYTHONPATH=src .venv/bin/python bench/secure_aggregation.py --ckks-only "
            f"--clients {args.clients} --params {args.params} --ckks-rounds {args.ckks_rounds}"
        )
        args.out.write_text(json.dumps(previous, indent=2))
        _print_methods(ckks_methods, args)
        print(f"\nwrote {args.out}")
        return
    methods["Umbra SecAgg+"] = bench_secagg(updates, ref)
    methods["Umbra SecAgg+ (1 dropout)"] = bench_secagg(updates, ref, dropouts=1)
    methods[FLOWER_MASKING_ROW] = bench_flower_masking_functions(
        updates, ref, neighbours=min(args.clients - 1, 8)
    )
    methods.update(_ckks_methods(updates, ref, args.ckks_rounds))
    _finish_methods(methods, args.params)

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

    _print_methods(methods, args)
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
