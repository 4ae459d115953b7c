"""Encrypted services on the ``baseline`` model: CKKS inference and encrypted cross-modal
similarity search, against plaintext on the same embeddings.

Needs a finished ``baseline`` run (``umbra run --preset baseline --out runs/base1``).

* **Inference.** The run's 2,000 test records twice: as they are (every modality) and with
  each modality hidden with probability 0.3 (at least one kept), 4,000 records in one
  request of 4,096 slots. Agreement of the decrypted predictions with the plaintext
  evaluation of the same served (quadratic-activation) head, with the trained ReLU model,
  accuracies, the largest logit error; the latency of a one-record request and of the
  full request (client encryption, server evaluation, client decryption, bytes each way)
  beside the plaintext head (and the whole plaintext model) on the same records.
* **Similarity.** Text queries (test records' text embeddings) against image galleries of
  the run's training records in the shared space: recall@10 (a same-class image among the
  top 10), precision@10 and the overlap of the encrypted and plaintext top 10 over a
  10,000-item gallery; the cost of a query at 1k, 10k and 100k items (100k: the real
  embeddings tiled with a 1e-3 perturbation, there being fewer image records; the cost
  depends only on the size).

    PYTHONPATH=src .venv/bin/python bench/he_services.py [--run runs/base1] [--queries 100]

Everything runs in-process (`umbra.services.endpoint.local_transport`: the same request and
reply bytes as over HTTP, without the network). Writes bench/results/he_services.json and
bench/results/he_services.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from umbra.audit import load_final_model
from umbra.federation.train import Batchable
from umbra.services.embed import embed_records
from umbra.services.endpoint import local_transport
from umbra.services.inference import InferenceServer
from umbra.services.inference_client import InferenceClient
from umbra.services.protocol import INFER_PATH, SIMILARITY_PATH
from umbra.services.served_model import (
    federation_records,
    fused_embeddings,
    gallery_embeddings,
    relu_head,
    served_head,
)
from umbra.services.similarity import SimilarityServer, normalise
from umbra.services.similarity_client import SimilarityClient, top_k

RESULTS = Path(__file__).resolve().parent / "results"
HIDE = 0.3  # per-modality hiding probability of the missing-modality copy of the test set


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def _inference(final: Any) -> dict[str, Any]:
    model, prep = final.model, final.data
    head, fit_s = _timed(lambda: served_head(model, federation_records(prep), seed=0))
    test = prep.test
    rng = np.random.default_rng(0)  # evaluation data, not a privacy mechanism
    keep = rng.random(test.mask.shape) >= HIDE
    keep[~keep.any(axis=1), 0] = True
    both = [test, test.with_mask(test.mask & keep)]
    emb = np.concatenate([embed_records(model, d)[0] for d in both])  # (4000, M, D)
    mask = np.concatenate([d.mask for d in both])
    labels = np.concatenate([d.labels for d in both])
    fused = fused_embeddings(emb, mask)
    w1, b1, w2, b2 = relu_head(model)
    relu = np.maximum(fused @ w1.T + b1, 0) @ w2.T + b2
    poly = head.logits(fused)
    server = InferenceServer(head.folded(), modalities=model.modalities)
    client = InferenceClient()
    send = local_transport(inference=server)

    def once(n: int) -> dict[str, Any]:
        request, enc_s = _timed(client.request, emb[:n], mask[:n])
        reply, srv_s = _timed(send, INFER_PATH, request)
        logits, dec_s = _timed(client.logits, reply, n)
        total = enc_s + srv_s + dec_s
        return {
            "records": n, "encrypt_s": enc_s, "server_s": srv_s, "decrypt_s": dec_s,
            "total_s": total, "per_record_ms": 1e3 * total / n, "records_per_s": n / total,
            "request_bytes": len(request), "reply_bytes": len(reply), "logits": logits,
        }  # fmt: skip

    single = once(1)
    full = once(len(emb))
    enc = full.pop("logits")
    single.pop("logits")
    # plaintext: the head on fused embeddings (what the server computes), and the whole model
    _, head_s = _timed(lambda: np.maximum(fused @ w1.T + b1, 0) @ w2.T + b2)
    _, head1_s = _timed(lambda: np.maximum(fused[:1] @ w1.T + b1, 0) @ w2.T + b2)
    batch = Batchable.from_data(test)
    with torch.no_grad():
        inputs, m, _ = batch.take(torch.arange(len(batch)))
        _, model_s = _timed(lambda: model.eval()(inputs, m))
        one, m1, _ = batch.take(torch.arange(1))
        _, model1_s = _timed(lambda: model(one, m1))
    split = {"all modalities": slice(0, len(test)), "30 % hidden": slice(len(test), None)}

    def rates(sl: slice) -> dict[str, float]:
        e, p, r, y = enc[sl].argmax(1), poly[sl].argmax(1), relu[sl].argmax(1), labels[sl]
        return {
            "agree_with_plaintext_served": float((e == p).mean()),
            "agree_with_relu_model": float((e == r).mean()),
            "plaintext_served_agree_with_relu": float((p == r).mean()),
            "accuracy_encrypted": float((e == y).mean()),
            "accuracy_plaintext_served": float((p == y).mean()),
            "accuracy_relu_model": float((r == y).mean()),
            "records": len(y),
        }

    return {
        "params": server.params.describe(),
        "activation": "per-unit least-squares quadratic, head fine-tuned by distillation",
        "fit_s": fit_s,
        "max_logit_error": float(np.abs(enc - poly).max()),
        "all": rates(slice(None)),
        "subsets": {k: rates(v) for k, v in split.items()},
        "one_record": single,
        "full_request": full,
        "plaintext": {
            "head_per_record_ms": 1e3 * head_s / len(fused),
            "head_one_record_ms": 1e3 * head1_s,
            "model_per_record_ms": 1e3 * model_s / len(test),
            "model_one_record_ms": 1e3 * model1_s,
        },
        "ratio_per_record_vs_plaintext_head": full["per_record_ms"] / (1e3 * head_s / len(fused)),
        "ratio_per_record_vs_plaintext_model": full["per_record_ms"] / (1e3 * model_s / len(test)),
        "ratio_one_record_vs_plaintext_model": single["total_s"] / model1_s,
    }


def _similarity(final: Any, queries: int) -> dict[str, Any]:
    model, prep = final.model, final.data
    gallery, holders = gallery_embeddings(model, prep.train, "image", size=10_000)
    glabels = prep.train.labels[holders]
    test = prep.test
    t = test.modality_index("text")
    qidx = np.flatnonzero(test.mask[:, t])[:queries]
    qemb = embed_records(model, test.subset(qidx))[0][:, t, :]
    qlabels = test.labels[qidx]
    plain = normalise(qemb) @ normalise(gallery).T  # (Q, G)
    server = SimilarityServer(gallery, ids=[str(i) for i in range(len(gallery))])
    send = local_transport(similarity=server)
    client = SimilarityClient()
    hit = {"plaintext": [], "encrypted": []}
    prec = {"plaintext": [], "encrypted": []}
    overlap, err = [], 0.0
    times = []
    for k, q in enumerate(qemb):
        t0 = time.perf_counter()
        result = client.search(send, q)
        ranked = top_k(result.scores, 10)
        times.append(time.perf_counter() - t0)
        ref = top_k(plain[k], 10)
        err = max(err, float(np.abs(result.scores - plain[k]).max()))
        overlap.append(len(set(ranked.tolist()) & set(ref.tolist())) / 10)
        for name, top in (("encrypted", ranked), ("plaintext", ref)):
            same = glabels[top] == qlabels[k]
            hit[name].append(bool(same.any()))
            prec[name].append(float(same.mean()))
    out: dict[str, Any] = {
        "params": server.params.describe(),
        "gallery": len(gallery),
        "queries": len(qemb),
        "recall_at_10": {k: float(np.mean(v)) for k, v in hit.items()},
        "precision_at_10": {k: float(np.mean(v)) for k, v in prec.items()},
        "top10_overlap": float(np.mean(overlap)),
        "max_score_error": err,
        "queries_per_s_10k": 1.0 / float(np.mean(times)),
        "cost": {},
    }
    rng = np.random.default_rng(1)  # the 100k gallery's filler, not a privacy mechanism
    for size in (1_000, 10_000, 100_000):
        reps = -(-size // len(gallery))
        g = np.tile(gallery, (reps, 1))[:size]
        if size > len(gallery):
            g = g + 1e-3 * rng.normal(size=g.shape)
        srv = SimilarityServer(g)
        send = local_transport(similarity=srv)
        rows = []
        for q in qemb[:3]:
            request, enc_s = _timed(client.request, q)
            reply, srv_s = _timed(send, SIMILARITY_PATH, request)
            result, dec_s = _timed(client.scores, reply)
            _, rank_s = _timed(top_k, result.scores, 10)
            rows.append((enc_s, srv_s, dec_s + rank_s, len(request), len(reply)))
        enc_s, srv_s, dec_s, up, down = (float(np.median(c)) for c in zip(*rows, strict=True))
        out["cost"][str(size)] = {
            "ciphertexts_back": -(-size // srv.params.slots),
            "encrypt_s": enc_s, "server_s": srv_s, "decrypt_rank_s": dec_s,
            "total_s": enc_s + srv_s + dec_s, "request_bytes": int(up), "reply_bytes": int(down),
            "server_s_per_ciphertext": srv_s / -(-size // srv.params.slots),
        }  # fmt: skip
    return out


def _table(res: dict[str, Any]) -> str:
    inf, sim = res["inference"], res["similarity"]
    a, one, full, pl = inf["all"], inf["one_record"], inf["full_request"], inf["plaintext"]
    lines = [
        "# Encrypted services on the baseline model",
        "",
        f"{res['when']}, {res['cpus']} CPUs ({res['machine']}), load average "
        f"{res['load_average']:.1f} at the start; command: `{res['command']}`.",
        "",
        f"## Inference ({inf['params']})",
        "",
        "| test records | agree with plaintext (served head) | agree with ReLU model "
        "| accuracy encrypted | served plaintext | ReLU model |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in [("all 4,000", a), *inf["subsets"].items()]:
        lines.append(
            f"| {name} | {r['agree_with_plaintext_served']:.2%} | {r['agree_with_relu_model']:.2%} "
            f"| {r['accuracy_encrypted']:.4f} | {r['accuracy_plaintext_served']:.4f} "
            f"| {r['accuracy_relu_model']:.4f} |"
        )
    lines += [
        "",
        f"Largest logit error {inf['max_logit_error']:.1e}.",
        "",
        "| request | encrypt | server | decrypt | per record | records/s | up | down |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in (one, full):
        lines.append(
            f"| {r['records']:,} record{'s' if r['records'] > 1 else ''} | {r['encrypt_s']:.2f} s "
            f"| {r['server_s']:.2f} s | {r['decrypt_s']:.2f} s | {r['per_record_ms']:,.2f} ms "
            f"| {r['records_per_s']:,.2f} "
            f"| {r['request_bytes'] / 1e6:.1f} MB | {r['reply_bytes'] / 1e6:.1f} MB |"
        )
    lines += [
        "",
        f"Plaintext: the head {pl['head_per_record_ms'] * 1e3:.2f} µs per record, the whole "
        f"model {pl['model_per_record_ms']:.3f} ms per record ({pl['model_one_record_ms']:.1f} ms "
        f"for one). Encrypted / plaintext per record at full batch: "
        f"{inf['ratio_per_record_vs_plaintext_model']:.0f}x the whole model, "
        f"{inf['ratio_per_record_vs_plaintext_head']:.0f}x the head; one record: "
        f"{inf['ratio_one_record_vs_plaintext_model']:.0f}x.",
        "",
        f"## Similarity ({sim['params']})",
        "",
        f"{sim['queries']} text queries, {sim['gallery']:,} image gallery items: recall@10 "
        f"{sim['recall_at_10']['encrypted']:.4f} encrypted vs "
        f"{sim['recall_at_10']['plaintext']:.4f} plaintext; precision@10 "
        f"{sim['precision_at_10']['encrypted']:.4f} vs {sim['precision_at_10']['plaintext']:.4f}; "
        f"top-10 overlap {sim['top10_overlap']:.2%}; largest score error "
        f"{sim['max_score_error']:.1e}; {sim['queries_per_s_10k']:.2f} queries/s.",
        "",
        "| gallery | ciphertexts back | encrypt | server | decrypt + rank | total | up | down |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size, c in sim["cost"].items():
        lines.append(
            f"| {int(size):,} | {c['ciphertexts_back']} | {c['encrypt_s']:.2f} s "
            f"| {c['server_s']:.2f} s | {c['decrypt_rank_s']:.3f} s | {c['total_s']:.2f} s "
            f"| {c['request_bytes'] / 1e6:.1f} MB | {c['reply_bytes'] / 1e6:.2f} MB |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/base1"))
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    res: dict[str, Any] = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"bench/he_services.py --run {args.run} --queries {args.queries}",
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "load_average": os.getloadavg()[0],
    }
    final = load_final_model(args.run)
    res["model"] = f"{args.run}/{final.where}"
    res["inference"] = _inference(final)
    print(json.dumps(res["inference"]["all"], indent=1), flush=True)
    res["similarity"] = _similarity(final, args.queries)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "he_services.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / "he_services.md").write_text(_table(res))
    print(_table(res))


if __name__ == "__main__":
    main()
