"""DP synthetic data of the `default` preset's federation: train-on-synthetic /
test-on-real accuracy, fidelity and a membership attack at several ε.

The generator is fitted exactly as ``umbra synth`` fits it (same functions: the run's data
prepared as the `default` run prepares it — fmnist-avt, 48,000 records over 8
organisations, Dirichlet(0.5), 30 % of each modality missing, images as scattering
coefficients — each organisation's noised statistics, ledger first), without training the
run's model first: the generator needs the run's data, not its model. Beside it, the same
classifier trained on as many *real* training records (the non-private reference) and the
Fréchet distance between real training and real held-out records (the sampling floor).

Two TSTR classifiers: ``linear`` (logistic regression on the feature maps) for every
modality subset, and ``network`` (the run's own model architecture trained from scratch,
``synth.classifier_epochs`` epochs) for the image alone and fused; each beside its own
ceiling, the same classifier trained on real training records.

    .venv/bin/python bench/synth.py [--eps 1 3 10] [--n 10000] [--real 10000]
    .venv/bin/python bench/synth.py --families [--eps 1 10]
    .venv/bin/python bench/synth.py --model discriminant --image-only --eps 1 3 10 --n 60000
    .venv/bin/python bench/synth.py --model discriminant --image-only --fmnist-all --n 60000
    .venv/bin/python bench/synth.py --noise local     # each organisation's own noise

``--fmnist-all`` (with ``--image-only``) fits on the data DPImageBench's figures come from:
all 60,000 Fashion-MNIST training images (every one holding its image), split over the
preset's organisations by the preset's partition, and tests on the 10,000 t10k images; it
adds the ceiling (the classifiers trained on the 60,000 real images) and the membership
attack on each image-only generator. Results: ``<stem>_image_n<N>_fmnist_all.json``.

``--families`` asks whether a richer model family would do better under the same noise:
on the image alone, a Gaussian with its own full covariance per class and a mixture of 4
such Gaussians per class, in the top-32 principal subspace of the pooled feature maps.
Their per-cell sums, counts and second moments get the noise the shipped generator's
``image.mean`` and ``image.cov`` groups get at that ε, from each of the 8 organisations
(the subspace and the components' assignment are taken from the records without privacy
cost, which favours the richer models). The score is each model's own Bayes rule on the
held-out records. Writes bench/results/synth_families.json.

Writes bench/results/synth.json and bench/results/synth.md (``--model discriminant``:
synth_discriminant.json / .md) and synth_images.png (synth_images_discriminant.png): one
rendered image per class at the largest ε.
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

import umbra  # noqa: F401
from umbra.config import load_config
from umbra.privacy.ledger import PrivacyLedger, replay
from umbra.run.prepare import prepare_data
from umbra.synth.fidelity import frechet_distance
from umbra.synth.membership_attack import generator_membership, sample_records
from umbra.synth.network_classifier import restrict
from umbra.synth.noise_plan import plan_noise
from umbra.synth.statistics import statistics_groups
from umbra.synth.synthesis import (
    CLASSIFIER_NAMES,
    fit_generator,
    generator_maps,
    noise_claim,
    tstr_classifier,
)
from umbra.synth.tstr import tstr_accuracy

RESULTS = Path(__file__).parent / "results"
SUBSETS = [("image",), ("audio",), ("text",)]
#: DPImageBench's Fashion-MNIST train-on-synthetic accuracy (ε = 1 / 10), for the table.
PUBLISHED = {"DP-MERF": (66.3, 60.8), "DPDM": (76.4, 85.6), "DP-FETA": (81.7, 87.3)}


def _fd(a: Any, b: Any, maps: dict[str, Any]) -> dict[str, float]:
    out = {}
    for j, m in enumerate(b.modalities):
        x = np.asarray(a.features[m])[a.mask[:, j]]
        y = np.asarray(b.features[m])[b.mask[:, j]]
        out[m] = frechet_distance(maps[m].forward(x)[0], maps[m].forward(y)[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eps", type=float, nargs="+", default=[1.0, 3.0, 10.0])
    ap.add_argument("--n", type=int, default=10_000, help="synthetic records per ε")
    ap.add_argument("--real", type=int, default=10_000, help="real records of the ceilings")
    ap.add_argument("--preset", default="default")
    ap.add_argument(
        "--model",
        choices=("gaussian", "discriminant"),
        default="gaussian",
        help="synth.model (results: synth.json / synth_discriminant.json)",
    )
    ap.add_argument(
        "--noise",
        choices=("local", "distributed"),
        default=None,
        help="synth.noise (default: the preset's, distributed on default; results of "
        "local: <stem>_local.json)",
    )
    ap.add_argument("--families", action="store_true", help="the model-family study only")
    ap.add_argument(
        "--image-only",
        action="store_true",
        help="the image-only rows only (results: <stem>_image_n<N>.json)",
    )
    ap.add_argument(
        "--fmnist-all",
        action="store_true",
        help="with --image-only: all 60,000 Fashion-MNIST training images over the preset's "
        "organisations, tested on the 10,000 t10k images (DPImageBench's data)",
    )
    args = ap.parse_args()
    if args.fmnist_all and not args.image_only:
        ap.error("--fmnist-all needs --image-only")
    cfg = load_config(args.preset)
    cfg.synth.model = args.model
    cfg.synth.noise = args.noise
    if args.families:
        _families(cfg, args.eps)
        return
    s = cfg.synth
    t0 = time.perf_counter()
    prep = prepare_data(cfg)
    maps = generator_maps(cfg, prep.train.feature_shapes())
    members = prep.train.subset(np.concatenate(prep.parts)).with_mask(np.concatenate(prep.masks))
    rng = np.random.default_rng(0)
    real = sample_records(members, args.real, rng)
    network = tstr_classifier(cfg, maps, "network")
    rows: dict[str, Any] = {}
    if not args.image_only:
        rows["real (no privacy)"] = {
            "tstr": tstr_accuracy(real, prep.test, maps, SUBSETS),
            "tstr_network": _network_tstr(real, prep.test, network, image=True),
            "frechet": _fd(real, prep.test, maps),
        }
        print("real", rows["real (no privacy)"], f"{time.perf_counter() - t0:.0f} s", flush=True)
    image = restrict(prep.train, ("image",))
    image_test = restrict(prep.test, ("image",))
    parts, masks = prep.parts, [m[:, :1] for m in prep.masks]
    if args.fmnist_all:
        image, image_test, parts = _fmnist_all(cfg)
        masks = [image.mask[idx] for idx in parts]
        ceiling = image.subset(rng.permutation(len(image))[: args.n])
        rows["real (no privacy), image only"] = {
            "tstr_image": tstr_accuracy(ceiling, image_test, {"image": maps["image"]}, [])["fused"],
            "tstr_image_network": network.fit_score(ceiling, image_test, ("image",)),
        }
        print("real", rows["real (no privacy), image only"], flush=True)
    for eps in args.eps:
        # the image alone, the whole ε on it: the setting of the published image generators
        gen, spent = _fit(cfg, image, parts, masks, {"image": maps["image"]}, eps)
        syn = gen.sample(args.n, rng)
        acc = tstr_accuracy(syn, image_test, {"image": maps["image"]}, [])["fused"]
        net = network.fit_score(syn, image_test, ("image",))
        row: dict[str, Any] = {
            "epsilon_ledger": spent,
            "tstr_image": acc,
            "tstr_image_network": net,
        }
        if args.fmnist_all:
            attack = generator_membership(
                gen,
                sample_records(image, s.audit_records, rng),
                sample_records(image_test, s.audit_records, rng),
                epsilon=spent,
                delta=cfg.privacy.delta,
                rng=rng,
            )
            row["membership_auc"] = attack["auc"]
        rows[f"image only, ε = {eps:g}"] = row
        print(eps, "image only", row, f"{time.perf_counter() - t0:.0f} s", flush=True)
    for eps in [] if args.image_only else args.eps:
        gen, spent = _fit(cfg, prep.train, prep.parts, prep.masks, maps, eps)
        syn = gen.sample(args.n, rng)
        attack = generator_membership(
            gen,
            sample_records(members, s.audit_records, rng),
            sample_records(prep.test, s.audit_records, rng),
            epsilon=spent,
            delta=cfg.privacy.delta,
            rng=rng,
        )
        rows[f"ε = {eps:g}"] = {
            "epsilon_ledger": spent,
            "tstr": tstr_accuracy(syn, prep.test, maps, SUBSETS),
            "tstr_network": _network_tstr(syn, prep.test, network),
            "frechet": _fd(syn, prep.test, maps),
            "membership_auc": attack["auc"],
            "membership_tpr_at_fpr": attack["tpr_at_fpr"],
        }
        print(eps, rows[f"ε = {eps:g}"], f"{time.perf_counter() - t0:.0f} s", flush=True)
        if eps == max(args.eps) and cfg.data.image_features == "scattering":
            _render_one_per_class(gen, rng, cfg, args.model)
    out = {
        "command": f"bench/synth.py --eps {' '.join(f'{e:g}' for e in args.eps)} --n {args.n}"
        f" --preset {args.preset} --model {args.model}"
        + (" --image-only" if args.image_only else "")
        + (" --fmnist-all" if args.fmnist_all else "")
        + (f" --noise {args.noise}" if args.noise else ""),
        "model": args.model,
        "noise": noise_claim(cfg, len(prep.parts)),
        "preset": args.preset,
        "records_train": len(image) if args.fmnist_all else len(prep.train),
        "records_test": len(image_test) if args.fmnist_all else len(prep.test),
        "organisations": len(parts),
        "synthetic_records": args.n,
        "real_records_of_the_ceilings": min(args.n, len(image)) if args.fmnist_all else args.real,
        **({"rank": s.rank} if args.model == "gaussian" else {}),
        "dims": {m: f.dim for m, f in maps.items()},
        "classifier": {
            "linear": "multinomial logistic regression (scikit-learn, C = 10) on the "
            "generator's feature maps, standardised (image: scattering coefficients, "
            f"{maps['image'].dim} per record)",
            "network": CLASSIFIER_NAMES["network"]
            + f" (Adam, {cfg.synth.classifier_epochs} epochs, batch 256; image encoder "
            f"{cfg.model.encoders.get('image', 'image')}, hidden {cfg.model.hidden})",
        },
        "rows": rows,
        "published_image_only": PUBLISHED,
        "seconds": time.perf_counter() - t0,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = "synth" if args.model == "gaussian" else f"synth_{args.model}"
    stem += f"_image_n{args.n}" if args.image_only else ""
    stem += "_fmnist_all" if args.fmnist_all else ""
    stem += "_local" if args.noise == "local" else ""
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(_table(out))
    print(_table(out))


def _fmnist_all(cfg: Any) -> tuple[Any, Any, list[np.ndarray]]:
    """Fashion-MNIST's 60,000 training images as image-only records split over the
    preset's organisations (its partition, seed and smallest size), and the 10,000 t10k
    images; images as the preset's ``data.image_features``."""
    from umbra.data.dataset import MultimodalData
    from umbra.data.sources.fmnist import CLASS_NAMES, Split, load_fmnist
    from umbra.run.prepare import client_parts, image_features

    def split(name: Split) -> Any:
        x, y = load_fmnist(name)
        mask = np.ones((len(y), 1), dtype=bool)
        return image_features(MultimodalData({"image": x}, mask, y, ("image",), CLASS_NAMES), cfg)

    train, test = split("train"), split("test")
    parts = client_parts(cfg, train.labels)
    return train, test, parts


def _network_tstr(
    syn: Any, test: Any, network: Any, *, image: bool = False
) -> dict[str, float | None]:
    """The network classifier fused and (with ``image``) on the image alone, records
    holding one (the image-only rows measure the image of the synthetic sets)."""
    out = {"fused": network.fit_score(syn, test, test.modalities), "image": None}
    if image:
        j = test.modality_index("image")
        out["image"] = network.fit_score(
            syn.subset(np.flatnonzero(syn.mask[:, j])),
            test.subset(np.flatnonzero(test.mask[:, j])),
            ("image",),
        )
    return out


def _fit(cfg: Any, train: Any, parts: Any, masks: Any, maps: Any, eps: float) -> Any:
    """The generator of ``train`` at ``eps`` as ``umbra synth`` fits it, and ε replayed."""
    with tempfile.TemporaryDirectory() as tmp:
        ledger = PrivacyLedger(
            Path(tmp) / "ledger.jsonl", delta=cfg.privacy.delta, accountant=cfg.privacy.accountant
        )
        gen, _ = fit_generator(
            cfg, train, parts, masks, maps, epsilon=eps, delta=cfg.privacy.delta, ledger=ledger
        )
        return gen, replay(Path(tmp) / "ledger.jsonl").epsilon["total"]


def _render_one_per_class(gen: Any, rng: np.random.Generator, cfg: Any, model: str) -> None:
    from umbra.synth.render import render_scattering, write_png
    from umbra.synth.synthesis import image_value_range

    syn = gen.sample(400, rng)
    have = syn.mask[:, syn.modality_index("image")]
    pick = [int(np.flatnonzero(have & (syn.labels == c))[0]) for c in range(syn.num_classes)]
    images = render_scattering(
        np.asarray(syn.features["image"])[pick],
        gen.maps["image"],
        (1, 28, 28),
        value_range=image_value_range(cfg),
        steps=cfg.synth.render_steps,
    )
    name = "synth_images.png" if model == "gaussian" else f"synth_images_{model}.png"
    write_png(np.concatenate(list(images), axis=2), RESULTS / name)


def _families(cfg: Any, eps_list: list[float], dim: int = 32, cells: int = 4) -> None:
    """The model-family study of the module docstring."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal
    from sklearn.mixture import GaussianMixture

    from umbra.privacy.randomness import SecureRandom

    t0 = time.perf_counter()
    prep = prepare_data(cfg)
    j = prep.train.modality_index("image")
    members = prep.train.subset(np.concatenate(prep.parts)).with_mask(np.concatenate(prep.masks))
    have, held = members.mask[:, j], prep.test.mask[:, j]
    fmap = generator_maps(cfg, prep.train.feature_shapes())["image"]
    u = fmap.forward(np.asarray(members.features["image"])[have])[0]
    v = fmap.forward(np.asarray(prep.test.features["image"])[held])[0]
    y, y_test = members.labels[have], prep.test.labels[held]
    lam, vec = np.linalg.eigh(u.T @ u)
    basis = vec[:, np.argsort(lam)[::-1][:dim]]  # (D, dim)
    z, z_test = u @ basis, v @ basis  # ‖z‖ ≤ 1
    orgs = len(prep.parts)
    noise = SecureRandom()
    out: dict[str, Any] = {"dim": dim, "records": len(z), "organisations": orgs, "rows": {}}
    for c in (1, cells):
        assign = np.zeros(len(z), dtype=np.int64)
        for k in range(members.num_classes):
            gm = GaussianMixture(c, covariance_type="full", random_state=0, reg_covar=1e-6)
            assign[y == k] = gm.fit(z[y == k]).predict(z[y == k])
        for eps in [*eps_list, None]:
            sig = {"image.mean": 0.0, "image.cov": 0.0}
            if eps is not None:
                sig = plan_noise(
                    epsilon=eps,
                    delta=cfg.privacy.delta,
                    groups=statistics_groups({"image": fmap}),
                    cov_weight=cfg.synth.cov_weight,
                    accountant=cfg.privacy.accountant,
                )
            s1 = sig["image.mean"] * math.sqrt(orgs)  # one noise per organisation, summed
            s2 = sig["image.cov"] * math.sqrt(orgs)
            scores = []
            for k in range(members.num_classes):
                comps = []
                for i in range(c):
                    cell = z[(y == k) & (assign == i)]
                    n = max(len(cell) + float(noise.normal((1,), std=s1)[0]), 10.0)
                    mean = (cell.sum(axis=0) + noise.normal((dim,), std=s1)) / n
                    upper = np.triu(noise.normal((dim, dim), std=s2))
                    second = cell.T @ cell + upper + np.triu(upper, 1).T
                    w, rot = np.linalg.eigh(second / n - np.outer(mean, mean))
                    cov = (rot * np.maximum(w, 1e-5)) @ rot.T
                    comps.append(math.log(n) + multivariate_normal(mean, cov).logpdf(z_test))
                scores.append(logsumexp(np.stack(comps), axis=0))
            acc = float((np.argmax(np.stack(scores, axis=1), axis=1) == y_test).mean())
            name = f"{c} full-covariance Gaussian(s) per class, ε = {'∞' if eps is None else eps}"
            out["rows"][name] = acc
            print(name, acc, f"{time.perf_counter() - t0:.0f} s", flush=True)
    out["seconds"] = time.perf_counter() - t0
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "synth_families.json").write_text(json.dumps(out, indent=2) + "\n")


def _f(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def _table(out: dict[str, Any]) -> str:
    lines = [
        "| data | ε (ledger) | TSTR fused | image | audio | text | network: fused | image"
        " | FD image | membership AUC |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in out["rows"].items():
        if "tstr" not in r:
            continue
        t = r["tstr"]
        eps = f"{r['epsilon_ledger']:.2f}" if "epsilon_ledger" in r else "—"
        auc = f"{r['membership_auc']:.3f}" if "membership_auc" in r else "—"
        lines.append(
            f"| {name} | {eps} | {t['fused']:.3f} | {t['image']:.3f} | "
            f"{t['audio']:.3f} | {t['text']:.3f} | {_f(r['tstr_network']['fused'])} | "
            f"{_f(r['tstr_network']['image'])} | {r['frechet']['image']:.3f} | {auc} |"
        )
    attacked = any("membership_auc" in r for r in out["rows"].values())
    lines += [
        "",
        "| image only (whole ε on the image) | ε (ledger) | TSTR image, linear | network |"
        + (" membership AUC |" if attacked else ""),
        "|---|---:|---:|---:|" + ("---:|" if attacked else ""),
    ]
    for name, r in out["rows"].items():
        if "tstr_image" in r:
            eps = f"{r['epsilon_ledger']:.2f}" if "epsilon_ledger" in r else "—"
            auc = f" {_f(r.get('membership_auc'))} |" if attacked else ""
            lines.append(
                f"| {name} | {eps} | {r['tstr_image']:.3f} | {_f(r['tstr_image_network'])} |" + auc
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
