"""Where the image-only synthetic data lose accuracy: a DP linear classifier on the unpooled
scattering coefficients, and how much of it survives the trip through synthetic records.

The shipped generator's TSTR is capped by its feature space (pooled maps: a linear
classifier trained on real records reaches 0.82 there). This study asks the question one
step further out, on the `default` run's image records (fmnist-avt, 8 organisations,
Dirichlet 0.5, 30 % of images missing; 34,108 training images), in the unpooled space
(81 × 7 × 7 = 3,969 coefficients, each record divided by its norm as the generator's map
does):

1. **teacher**: multinomial logistic regression trained by full-batch DP gradient descent
   (momentum 0.9; per-record gradients clipped to C; every step a Gaussian mechanism,
   sample rate 1, σ calibrated by dp-accounting for T steps at (ε, 10⁻⁵)), the noise added
   either by **each organisation** to its own clipped gradient sum (what `umbra synth`'s
   releases do: √8 times the noise of one release) or **once** to the sum (what a secure
   sum with distributed noise would give). Features standardised with the records'
   exact per-coefficient mean and spread (no privacy spent on them: this favours it);
2. **transfer**: synthetic records drawn from the class-conditional Gaussians of the
   records (exact class means and within-class covariance, top 128 directions, the rest
   isotropic at the 128th eigenvalue: again favoured, no privacy spent), relabelled by
   sampling the teacher's class probabilities; a standardised logistic regression
   (scikit-learn, C = 10) trained on them and tested on the held-out images (TSTR);
3. without noise only: **class-conditional**, the same Gaussian with class means moved so
   its Bayes rule is the teacher's (μ_y = m + Σ w_y), the form a class-conditional
   generator would take, same student; and **isotropic**, the transfer with the
   covariance's directions left out (class means plus isotropic noise at the 128th
   eigenvalue).

``--end-to-end`` pays for everything instead, per organisation as ``umbra synth`` does: the
shipped generator (rank-16 class-conditional Gaussian, ``umbra synth``'s own functions and
ledger) fitted on the unpooled coefficients at (ε/2, δ/2), its samples scored with their own
labels and relabelled by a teacher trained at (ε/2, δ/2) on coefficients standardised by
the samples' spread (basic composition: (ε, δ) in all). Writes
bench/results/synth_transfer_end_to_end.json.

T, the step size and C were chosen on the same held-out images (favours the teacher).
Noise comes from the OS-seeded privacy stream. Writes bench/results/synth_transfer.json
(synth_transfer_n<N>.json for another ``--n``).

    .venv/bin/python bench/synth_transfer.py [--n 20000] [--end-to-end]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import umbra  # noqa: F401
from umbra.config import load_config
from umbra.privacy.budget import calibrate_noise_multiplier
from umbra.privacy.ledger import PrivacyLedger, replay
from umbra.privacy.randomness import SecureRandom
from umbra.run.prepare import prepare_data
from umbra.synth.feature_map import feature_map_for
from umbra.synth.federated_fit import fit_federated
from umbra.synth.network_classifier import restrict
from umbra.synth.noise_plan import plan_noise
from umbra.synth.statistics import statistics_groups

RESULTS = Path(__file__).parent / "results"
#: (steps, step size, clip) per ε, chosen on the held-out images; None: no noise.
SCHEDULES: dict[float | None, tuple[int, float, float]] = {
    None: (100, 64.0, 10.0),
    1.0: (30, 128.0, 0.3),
    10.0: (100, 64.0, 1.0),
}
RANK = 128
DELTA = 1e-5


def _images(data: Any, rows: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The unit-norm image coefficients and labels of ``rows`` whose presence ``mask`` (one
    row per record, the modalities' columns) holds the image."""
    keep = rows[mask[:, data.modality_index("image")]]
    x = np.asarray(data.features["image"])[keep].reshape(len(keep), -1).astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.asarray(data.labels)[keep]


def _teacher(
    parts: list[tuple[np.ndarray, np.ndarray]],
    centre: np.ndarray,
    spread: np.ndarray,
    k: int,
    *,
    eps: float | None,
    per_org: bool,
    schedule: float | None = None,
    delta: float = DELTA,
) -> tuple[np.ndarray, np.ndarray]:
    """DP-GD multinomial logistic regression at (``eps``, ``delta``) with the steps, step
    size and clip of ``SCHEDULES[schedule]`` (default: of ``eps``); returns (W, b) in the
    unit-vector space."""
    steps, lr, clip = SCHEDULES[eps if schedule is None else schedule]
    sigma = (
        0.0
        if eps is None
        else calibrate_noise_multiplier(epsilon=eps, delta=delta, sample_rate=1.0, steps=steps)
    )
    feats = [
        (torch.tensor(np.c_[(u - centre) / spread, np.ones(len(u))], dtype=torch.float32), y)
        for u, y in parts
    ]
    n = sum(len(y) for _, y in parts)
    d = feats[0][0].shape[1]
    w = torch.zeros(d, k)
    v = torch.zeros_like(w)
    rng = SecureRandom()
    for _ in range(steps):
        total = torch.zeros(d, k)
        for x, y in feats:
            r = torch.softmax(x @ w, 1) - torch.nn.functional.one_hot(torch.as_tensor(y), k)
            scale = torch.clamp(clip / (x.norm(dim=1) * r.norm(dim=1)), max=1.0)
            total += ((r * scale[:, None]).T @ x).T
            if sigma and per_org:
                total += torch.as_tensor(rng.normal((d, k), std=sigma * clip), dtype=torch.float32)
        if sigma and not per_org:
            total += torch.as_tensor(rng.normal((d, k), std=sigma * clip), dtype=torch.float32)
        v = 0.9 * v + total / n
        w = w - lr * v
    wu = w[:-1].double().numpy() / spread[:, None]
    return wu, w[-1].double().numpy() - centre @ wu


def _accuracy(w: np.ndarray, b: np.ndarray, u: np.ndarray, y: np.ndarray) -> float:
    return float(((u @ w + b).argmax(1) == y).mean())


def _student(x: np.ndarray, y: np.ndarray, ut: np.ndarray, yt: np.ndarray) -> float:
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=10, max_iter=1000))
    return float(clf.fit(x, y).score(ut, yt))


def _end_to_end(
    prep: Any,
    parts: list[tuple[np.ndarray, np.ndarray]],
    eps: float,
    n: int,
    test: tuple[np.ndarray, np.ndarray],
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Everything private: the shipped generator fitted on the unpooled coefficients at
    (ε/2, δ/2) by ``umbra synth``'s functions (each organisation's noised statistics, ledger
    first), its samples scored with its own labels and relabelled by a teacher trained at
    (ε/2, δ/2) on coefficients standardised by the samples' spread (post-processing)."""
    cfg = load_config("default")
    j = prep.train.modality_index("image")
    image = restrict(prep.train, ("image",))
    maps = {"image": feature_map_for(prep.train.feature_shapes()["image"], max_dim=10**6)}
    sig = plan_noise(
        epsilon=eps / 2,
        delta=DELTA / 2,
        groups=statistics_groups(maps),
        cov_weight=cfg.synth.cov_weight,
        accountant=cfg.privacy.accountant,
    )
    with tempfile.TemporaryDirectory() as tmp:
        ledger = PrivacyLedger(
            Path(tmp) / "ledger.jsonl", delta=DELTA / 2, accountant=cfg.privacy.accountant
        )
        masks = [m[:, j : j + 1] for m in prep.masks]
        gen = fit_federated(
            image,
            prep.parts,
            masks,
            maps,
            noise_multipliers=sig,
            ledger=ledger,
            rank=cfg.synth.rank,
        )
        eps_gen = replay(Path(tmp) / "ledger.jsonl").epsilon["total"]
    prior = gen.joint.sum(1)
    labels = rng.choice(len(prior), n, p=prior / prior.sum())
    x = gen.models["image"].sample(labels, rng)
    centre, spread = x.mean(0), x.std(0) * math.sqrt(x.shape[1]) + 1e-12
    w, b = _teacher(parts, centre, spread, len(prior), eps=eps / 2, per_org=True,
                    schedule=eps, delta=DELTA / 2)  # fmt: skip
    return {
        "epsilon_generator_ledger": eps_gen,
        "epsilon_teacher": eps / 2,
        "generator_rank": cfg.synth.rank,
        "generator_tstr": _student(x, labels, *test),
        "teacher": _accuracy(w, b, *test),
        "relabelled_tstr": _student(x, _taught(x, w, b, rng), *test),
    }


def _taught(x: np.ndarray, w: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labels sampled from the teacher's class probabilities."""
    logits = x @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return (p.cumsum(1) > rng.random((len(x), 1))).argmax(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="synthetic records per row")
    ap.add_argument("--end-to-end", action="store_true", help="the all-private rows only")
    args = ap.parse_args()
    t0 = time.perf_counter()
    prep = prepare_data(load_config("default"))
    parts = [_images(prep.train, idx, m) for idx, m in zip(prep.parts, prep.masks, strict=True)]
    ut, yt = _images(prep.test, np.arange(len(prep.test)), prep.test.mask)
    if args.end_to_end:
        out: dict[str, Any] = {"command": f"bench/synth_transfer.py --end-to-end --n {args.n}"}
        for eps in (1.0, 10.0):
            rng = np.random.default_rng(0)
            out[f"ε = {eps:g}"] = _end_to_end(prep, parts, eps, args.n, (ut, yt), rng)
            print(eps, out[f"ε = {eps:g}"], f"{time.perf_counter() - t0:.0f} s", flush=True)
        out["seconds"] = time.perf_counter() - t0
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "synth_transfer_end_to_end.json").write_text(json.dumps(out, indent=2) + "\n")
        return
    u = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    k = prep.train.num_classes
    centre, spread = u.mean(0), u.std(0) * math.sqrt(u.shape[1]) + 1e-12
    prior = np.bincount(y, minlength=k) / len(y)
    means = np.stack([u[y == c].mean(0) for c in range(k)])
    within = u - means[y]
    lam, vec = np.linalg.eigh(within.T @ within / len(u))
    lam, vec = lam[::-1][:RANK], vec[:, ::-1][:, :RANK]
    iso = float(lam[-1])
    sample_rng = np.random.default_rng(0)

    def gaussian(centres: np.ndarray, labels: np.ndarray) -> np.ndarray:
        z = sample_rng.normal(size=(len(labels), RANK)) * np.sqrt(lam) @ vec.T
        e = sample_rng.normal(size=(len(labels), u.shape[1])) * math.sqrt(iso)
        return centres[labels] + z + e - (e @ vec) @ vec.T

    rows: dict[str, Any] = {}
    for eps in SCHEDULES:
        for per_org in (True, False) if eps is not None else (True,):
            w, b = _teacher(parts, centre, spread, k, eps=eps, per_org=per_org)
            labels = sample_rng.choice(k, args.n, p=prior)
            x = gaussian(means, labels)
            taught = _taught(x, w, b, sample_rng)
            name = (
                "no noise"
                if eps is None
                else f"ε = {eps:g}, "
                + ("noise by each organisation" if per_org else "noise once on the sum")
            )
            row = {
                "teacher": _accuracy(w, b, ut, yt),
                "transfer_tstr": _student(x, taught, ut, yt),
                "steps_lr_clip": SCHEDULES[eps],
            }
            if eps is None:
                # class-conditional: N(m + Σ w_y, Σ), Σ the sampling covariance above
                sig_w = (vec * lam) @ (vec.T @ w) + iso * (w - vec @ (vec.T @ w))
                shifted = sig_w.T - prior @ sig_w.T + centre
                row["class_conditional_tstr"] = _student(gaussian(shifted, labels), labels, ut, yt)
                # the transfer without the covariance's directions: isotropic at λ_128
                xi = means[labels] + sample_rng.normal(size=x.shape) * math.sqrt(iso)
                row["transfer_isotropic_tstr"] = _student(xi, _taught(xi, w, b, sample_rng), ut, yt)
            rows[name] = row
            print(name, row, f"{time.perf_counter() - t0:.0f} s", flush=True)
    out = {
        "command": f"bench/synth_transfer.py --n {args.n}",
        "train_images": len(y),
        "test_images": len(yt),
        "organisations": len(parts),
        "dim": int(u.shape[1]),
        "delta": DELTA,
        "synthetic_records": args.n,
        "rows": rows,
        "seconds": time.perf_counter() - t0,
    }
    RESULTS.mkdir(exist_ok=True)
    name = "synth_transfer.json" if args.n == 20_000 else f"synth_transfer_n{args.n}.json"
    (RESULTS / name).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
