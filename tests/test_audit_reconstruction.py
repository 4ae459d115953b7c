"""Reconstruction attacks: closed-form recovery from a linear layer, gradient matching,
scattering inversion, PSNR/SSIM, and what SecAgg+ sums leave of a record."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from umbra.audit import audit_run
from umbra.audit.reconstruction_analytic import distinct_candidates, idlg_label, linear_inputs
from umbra.audit.reconstruction_matching import match_gradients
from umbra.audit.reconstruction_metrics import psnr, ssim
from umbra.config import Config, validate_config
from umbra.federation.checkpoint import save_checkpoint
from umbra.federation.train import Batchable, evaluate, get_arrays, train_local
from umbra.models import ModelSpec, MultimodalNet
from umbra.run.folder import CONFIG_FILE
from umbra.run.prepare import model_spec_for, prepare_data
from umbra.run.simulation import train_settings


def _grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    lin = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert lin.weight.grad is not None and lin.bias.grad is not None
    return lin.weight.grad.double().numpy(), lin.bias.grad.double().numpy()


def test_one_record_is_recovered_exactly_from_a_linear_layer() -> None:
    torch.manual_seed(0)
    model = nn.Linear(12, 5)
    x = torch.rand(1, 12, dtype=torch.float64)
    model = model.double()
    w, b = _grads(model, x, torch.tensor([3]))
    cands = linear_inputs(w, b)
    assert len(cands) == 5  # every row of a softmax layer gets a gradient
    for c in cands:
        assert np.allclose(c, x[0].numpy(), rtol=1e-9, atol=1e-12)
    assert len(distinct_candidates(cands)) == 1
    # an SGD update (−lr·∇) gives the same ratios
    assert np.allclose(linear_inputs(-0.1 * w, -0.1 * b)[0], x[0].numpy())
    assert idlg_label(b) == 3


def test_rows_one_record_dominates_give_that_record_in_a_batch() -> None:
    # Row r of the layer fires (ReLU) only for record r: each row's ratio is one record.
    n, d = 3, 6
    x = torch.rand(n, d, dtype=torch.float64) * 0.1
    x[torch.arange(n), torch.arange(n)] = 1.0
    lin = nn.Linear(d, n).double()
    with torch.no_grad():
        lin.weight.copy_(torch.eye(n, d, dtype=torch.float64))
        lin.bias.fill_(-0.5)
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(n, 4).double())
    w, b = _grads(model, x, torch.tensor([0, 1, 2]))
    found = distinct_candidates(linear_inputs(w, b))
    assert len(found) == n
    for i in range(n):
        assert any(np.allclose(c, x[i].numpy(), rtol=1e-9) for c in found), i


def test_no_gradient_no_candidate() -> None:
    assert linear_inputs(np.zeros((3, 4)), np.zeros(3)).shape == (0, 4)
    with pytest.raises(ValueError, match="weight"):
        linear_inputs(np.zeros((3, 4)), np.zeros(4))


def test_secagg_sum_of_eight_hides_the_record() -> None:
    # Eight organisations, one 12x12 image each; the server sees the sum of their
    # gradients (SecAgg+): the closed form gives mixtures, far from every image.
    gen = torch.Generator().manual_seed(1)
    imgs = torch.rand(8, 144, generator=gen, dtype=torch.float64)
    model = nn.Linear(144, 10).double()
    torch.manual_seed(1)
    labels = torch.randint(0, 10, (8,), generator=gen)
    ws, bs = zip(
        *(_grads(model, imgs[i : i + 1], labels[i : i + 1]) for i in range(8)), strict=True
    )
    alone = linear_inputs(ws[0], bs[0])[0]
    assert psnr(imgs[0].numpy(), alone) > 100  # exact without aggregation
    summed = distinct_candidates(linear_inputs(sum(ws), sum(bs)))
    for i in range(8):
        best = max(psnr(imgs[i].numpy(), c) for c in summed)
        # about what guessing mid-grey gets (10.8 dB on uniform pixels), not the record
        assert best < 13.0, i


def test_gradient_matching_recovers_an_input_of_a_tiny_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    params = list(model.parameters())
    x_true = torch.randn(1, 6)
    y = torch.tensor([1])
    target = torch.autograd.grad(nn.functional.cross_entropy(model(x_true), y), params)

    def grad_fn(x: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        loss = nn.functional.cross_entropy(model(x["v"]), y)
        return list(torch.autograd.grad(loss, params, create_graph=True))

    start = {"v": torch.randn(1, 6, generator=torch.Generator().manual_seed(5))}
    found = match_gradients(grad_fn, target, start, steps=400, lr=0.1)["v"]
    assert torch.allclose(found, x_true, atol=0.05), (found, x_true)
    assert not torch.allclose(start["v"], x_true, atol=0.05)


def test_psnr_against_hand_values() -> None:
    a = np.zeros((4, 4))
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
    assert psnr(a, a + 0.01, data_range=1.0) == pytest.approx(40.0)
    assert psnr(a, a + 25.5, data_range=255.0) == pytest.approx(20.0)
    assert psnr(a, a) == float("inf")


def test_ssim_against_closed_forms() -> None:
    c1 = (0.01 * 1.0) ** 2
    for p, q in ((0.2, 0.7), (0.5, 0.5), (0.0, 1.0)):
        # constant images: no variance, SSIM is the luminance term alone
        want = (2 * p * q + c1) / (p * p + q * q + c1)
        assert ssim(np.full((16, 16), p), np.full((16, 16), q)) == pytest.approx(want)
    rng = np.random.default_rng(0)
    img = rng.random((28, 28))
    assert ssim(img, img) == pytest.approx(1.0)
    assert ssim(img, 1 - img) < 0  # anti-correlated structure
    assert ssim(img, rng.random((28, 28))) < 0.2
    assert ssim(img, img + 0.05 * rng.standard_normal((28, 28))) > 0.8


def _write_run(run_dir: Path, cfg: Config) -> dict[str, Any]:
    """A finished run folder (config.json, a checkpoint, results.json with an earlier
    attack's figures), the model trained centrally on the run's own prepared data."""
    prep = prepare_data(cfg)
    torch.manual_seed(0)
    model = MultimodalNet(ModelSpec.from_dict(model_spec_for(cfg, prep.train)))
    pooled = prep.train.subset(np.concatenate(prep.parts)).with_mask(np.concatenate(prep.masks))
    train_local(model, Batchable.from_data(pooled), train_settings(cfg), seed=0)
    acc = evaluate(model, Batchable.from_data(prep.test), subsets=[])["accuracy"]
    run_dir.mkdir(parents=True)
    (run_dir / CONFIG_FILE).write_text(json.dumps(cfg.model_dump(mode="json")))
    save_checkpoint(run_dir / "checkpoints", server_round=1, arrays=get_arrays(model),
                    strategy={}, state={"history": []})  # fmt: skip
    results = {
        "config": cfg.model_dump(mode="json"),
        "final": {"accuracy": acc},
        "privacy": {"mode": "none", "unit": None, "delta": None, "epsilon": None},
        "audit": {"inversion": {"psnr": 9.5}},  # an earlier attack's figures: kept
    }
    (run_dir / "results.json").write_text(json.dumps(results))
    return results


def test_audit_adds_reconstruction_and_keeps_results(tmp_path: Path) -> None:
    cfg = validate_config(
        {
            "data": {"source": "synthetic", "n_train": 40, "n_test": 100, "missing": {}},
            "federation": {"num_clients": 2, "batch_size": 8, "local_epochs": 2},
            "model": {"hidden": 16, "embed_dim": 8, "dropout": 0.0},
            "audit": {"records": 20, "shadows": 1, "shadow_epochs": 1,
                      "reconstruction_steps": 20},
        }
    )  # fmt: skip
    run_dir = tmp_path / "run"
    before = _write_run(run_dir, cfg)
    audit_run(run_dir, ["audit.reconstruction=true"])
    after = json.loads((run_dir / "results.json").read_text())
    assert {k: v for k, v in after.items() if k != "audit"} == json.loads(
        json.dumps({k: v for k, v in before.items() if k != "audit"})
    )
    assert after["audit"]["inversion"] == before["audit"]["inversion"]
    assert set(after["audit"]) == {"inversion", "membership", "reconstruction"}
    rec = after["audit"]["reconstruction"]
    assert rec["model"] == "checkpoints/round_0001"
    single = rec["views"]["single"]
    assert single["label_inferred"] is True
    # tabular features reach the first Linear unchanged, text through a LayerNorm: both
    # come back exactly from one record's update, not under DP noise
    assert single["analytic"]["tabular"]["exact"] == 1
    assert single["analytic"]["text"]["exact"] == 1
    assert single["analytic"]["text"]["text_recovery_rate"] == 1.0
    dp = rec["views"]["dp"]["analytic"]
    assert dp["tabular"]["exact"] == 0 and dp["text"]["exact"] == 0
    assert dp["text"]["feature_cosine"] < 0.99 and dp["tabular"]["feature_cosine"] < 0.99
    assert rec["views"]["dp"]["noise_multiplier"] > 0.3
    assert rec["grid"] is None  # no image modality
    # off (the default): only the membership audit is rewritten
    audit_run(run_dir)
    again = json.loads((run_dir / "results.json").read_text())
    assert again["audit"]["reconstruction"] == rec


def test_report_embeds_the_grid_a_run_folder_holds(tmp_path: Path) -> None:
    from umbra.audit.reconstruction_grid import save_grid
    from umbra.report import render_report

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    imgs = np.random.default_rng(0).random((2, 1, 8, 8))
    save_grid(run_dir / "audit" / "reconstruction.png", imgs, imgs, ["a", "b"])
    png = (run_dir / "audit" / "reconstruction.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    results = {
        "config": {},
        "final": {"accuracy": 0.5},
        "audit": {
            "reconstruction": {
                "views": {"single": {"psnr": 9.0}},
                "grid": "audit/reconstruction.png",
            },
            "other": {"psnr": 1.0, "grid": "../outside.png"},
        },
    }
    (tmp_path / "outside.png").write_bytes(png)
    (run_dir / "results.json").write_text(json.dumps(results))
    page = render_report(run_dir).read_text(encoding="utf-8")
    embedded = base64.b64encode(png).decode("ascii")
    assert page.count(embedded) == 1  # the run folder's grid, not the file outside it
    assert "originals (top), reconstructions (bottom)" in page


def _shapes(n: int, seed: int) -> np.ndarray:
    """``(n, 1, 16, 16)`` images in [0, 1]: a bright block on black with a dark patch."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 1, 16, 16), dtype=np.float32)
    for i in range(n):
        r0, c0 = rng.integers(1, 6, 2)
        h, w = rng.integers(6, 11, 2)
        out[i, 0, r0 : r0 + h, c0 : c0 + w] = rng.uniform(0.6, 1.0)
        r1, c1 = r0 + rng.integers(1, max(2, h - 3)), c0 + rng.integers(1, max(2, w - 3))
        out[i, 0, r1 : r1 + rng.integers(2, 4), c1 : c1 + rng.integers(2, 4)] = rng.uniform(0, 0.4)
    return out


def _image_from_gradient(
    grads: dict[str, torch.Tensor], truth: torch.Tensor, pool: np.ndarray, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """The attack's chain on a GroupNorm + Linear encoder of 16x16 scattering coefficients:
    closed form on the first Linear (the candidate nearest the truth), then pixels from the
    nearest public image; returns the reconstruction and that prior image."""
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    from umbra.audit.reconstruction_scattering import (
        invert_scattering,
        nearest_prior,
        normalised_scattering,
    )

    cands = distinct_candidates(
        linear_inputs(grads["2.weight"].double().numpy(), grads["2.bias"].double().numpy())
    )  # GroupNorm's output; its affine is at (1, 0), so these are the normalised coefficients
    want = normalised_scattering(truth, 27).reshape(-1).numpy()
    best = cands[np.argmax(cands @ want / np.linalg.norm(cands, axis=1))].reshape(1, 81, 4, 4)
    with torch.no_grad():
        scatter = ScatteringTorch2D(J=2, shape=(16, 16), L=8)
        pool_coeffs = scatter(torch.from_numpy(pool)).reshape(len(pool), 81, 4, 4).numpy()
    near, weights = nearest_prior(best, pool_coeffs, groups=27)
    found = invert_scattering(best, (1, 16, 16), groups=27, init=pool[near[:, 0]],
                              weights=weights[:, 0], steps=steps)  # fmt: skip
    assert found.images.min() >= 0.0 and found.images.max() <= 1.0
    return found.images[0], pool[near[0, 0]]


def _tiny_image_model() -> tuple[nn.Module, torch.Tensor, np.ndarray, np.ndarray]:
    """The scattering encoder's shape (GroupNorm of 81 channels in 27 groups, Linear,
    ReLU) and a head; a known image, its coefficients and a disjoint public pool."""
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    torch.manual_seed(0)
    model = nn.Sequential(nn.GroupNorm(27, 81), nn.Flatten(), nn.Linear(81 * 16, 16),
                          nn.ReLU(), nn.Linear(16, 4))  # fmt: skip
    img = _shapes(1, 2)
    with torch.no_grad():
        coeffs = ScatteringTorch2D(J=2, shape=(16, 16), L=8)(torch.from_numpy(img))
    return model, coeffs.reshape(1, 81, 4, 4), img, _shapes(32, 1)


def _record_grads(model: nn.Module, x: torch.Tensor, y: int) -> dict[str, torch.Tensor]:
    model.zero_grad()
    nn.functional.cross_entropy(model(x), torch.tensor([y])).backward()
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def test_known_image_comes_back_from_one_records_plaintext_gradient() -> None:
    # One record's gradient of a GroupNorm + Linear encoder on scattering coefficients: the
    # closed form gives its group-normalised coefficients exactly, and those determine the
    # pixels. 30 dB is an RMS error of 3 % of the range; the public image the fit starts
    # from is at 13 dB, mid-grey at 6 dB: the fit, not the prior, recovers the record.
    model, coeffs, img, pool = _tiny_image_model()
    recon, start = _image_from_gradient(_record_grads(model, coeffs, 1), coeffs, pool, steps=25)
    assert psnr(img[0], recon) > 30.0
    assert psnr(img[0], start) < 15.0
    assert ssim(img[0], recon) > 0.95


def test_dp_noise_leaves_no_image_in_one_records_gradient() -> None:
    # DP-SGD's release of the same gradient: clipped to C = 1, Gaussian noise σ·C with
    # σ = 0.8 (below every σ the runs at ε = 3 use): the same chain stays at the level of
    # an unrelated image (the 32 public ones are at 9 dB median against the record).
    from umbra.privacy.randomness import SecureRandom

    model, coeffs, img, pool = _tiny_image_model()
    grads = _record_grads(model, coeffs, 1)
    norm = float(torch.sqrt(sum((g**2).sum() for g in grads.values())))
    rng = SecureRandom()
    noisy = {
        k: g * min(1.0, 1.0 / norm) + torch.from_numpy(rng.normal(tuple(g.shape), std=0.8)).float()
        for k, g in grads.items()
    }
    recon, _ = _image_from_gradient(noisy, coeffs, pool, steps=25)
    assert psnr(img[0], recon) <= 12.0


def test_prior_is_the_nearest_public_image_in_normalised_coefficients() -> None:
    from umbra.audit.reconstruction_scattering import nearest_prior, normalised_scattering

    rng = np.random.default_rng(3)
    pool = rng.random((6, 81, 2, 2)).astype(np.float32) * rng.uniform(0.5, 3, (6, 1, 1, 1))
    # group-normalising forgets each group's level and scale: a rescaled, shifted pool
    # record is still found, nearest first
    target = normalised_scattering(torch.from_numpy(4.0 * pool[[4, 1]] + 2.0), 27).numpy()
    idx, weights = nearest_prior(target, pool, groups=27, k=2)
    assert idx[:, 0].tolist() == [4, 1]
    var = pool[4].reshape(27, -1).var(axis=1)
    assert np.allclose(weights[0, 0], var / var.mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="k must be"):
        nearest_prior(target, pool, groups=27, k=7)


def test_cli_prints_one_row_per_view_and_method() -> None:
    from rich.console import Console

    from umbra.cli import _reconstruction_table

    recon = {
        "organisation": 3,
        "views": {
            "single": {"records": 1, "label_inferred": True, "analytic": {
                "image": {"exact": 1, "records": 1, "feature_cosine": 1.0, "psnr": 10.06},
                "text": {"exact": 1, "records": 1, "feature_cosine": 0.99996}}},
            "dp": {"records": 1, "noise_multiplier": 0.8, "analytic": {
                "image": {"exact": 0, "records": 1, "feature_cosine": 0.031, "psnr": 6.1}}},
        },
    }  # fmt: skip
    console = Console(record=True, width=200)
    console.print(_reconstruction_table(recon))
    lines = [ln for ln in console.export_text().splitlines() if "analytic" in ln]
    assert len(lines) == 2
    assert "single" in lines[0] and "1/1, 1.00, 10.1 dB" in lines[0] and "1/1, 1.00" in lines[0]
    assert "dp" in lines[1] and "0/1, 0.03, 6.1 dB" in lines[1]


def test_report_shows_one_row_per_view_with_results_json_numbers(tmp_path: Path) -> None:
    from umbra.report import render_report

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    image = {"exact": 2, "records": 4, "feature_cosine": 0.998, "psnr": 11.03}
    results = {
        "config": {},
        "final": {"accuracy": 0.5},
        "audit": {"reconstruction": {
            "attacker": "the server", "organisation": 3,
            "views": {"batch": {"records": 4, "analytic": {"image": image}},
                      "dp": {"records": 1, "noise_multiplier": 0.8, "analytic": {
                          "image": {"exact": 0, "records": 1, "feature_cosine": 0.03}}}}}},
    }  # fmt: skip
    (run_dir / "results.json").write_text(json.dumps(results))
    page = render_report(run_dir).read_text(encoding="utf-8")
    assert "what the server sees" in page and "organisation attacked:</b> 3" in page
    assert "<td>batch</td><td>analytic</td>" in page.replace("\n", "")
    assert "2/4, 1.00, 11.0 dB" in page and "0/1, 0.03" in page


def test_dp_view_uses_each_groups_clip_and_noise_from_the_runs_plan() -> None:
    from umbra.audit.reconstruction_audit import _dp_noise, _dp_update
    from umbra.federation.train import TrainSettings

    cfg = validate_config({"data": {"source": "synthetic"}, "privacy": {"clip_norm": 2.0}})
    groups = ["image", "text", "shared"]
    privacy = {
        "clip_norms": {"image": 0.5, "text": 0.35, "shared": 1.0},
        "plans": {"3": {"noise_multipliers": {"image": 3.45, "text": 4.88, "shared": 4.23}}},
    }
    settings = TrainSettings(lr=0.1, batch_size=32)
    dp = _dp_noise(cfg, privacy, groups, 3, 100, settings)
    assert dp.noise_multipliers == {"image": 3.45, "text": 4.88, "shared": 4.23}
    assert dp.clip_norms == {"image": 0.5, "text": 0.35, "shared": 1.0}
    # no plan for this organisation: one σ calibrated to privacy.epsilon, the config's clip
    other = _dp_noise(cfg, privacy, groups, 5, 100, settings)
    assert set(other.noise_multipliers.values()) == {other.noise_multipliers["image"]}
    assert other.clip_norms == dict.fromkeys(groups, 2.0) and "calibrated" in other.source
    # σ = 0 isolates the clipping: each group's norm becomes min(norm, C_g)
    quiet = replace(dp, noise_multipliers=dict.fromkeys(groups, 0.0))
    grads = {"a": torch.full((3,), 1.0), "b": torch.full((4,), 1.0), "c": torch.full((2,), 0.1)}
    out = _dp_update(grads, {"image": ["a", "b"], "text": [], "shared": ["c"]}, quiet)
    image_norm = float(torch.sqrt(out["a"].square().sum() + out["b"].square().sum()))
    assert image_norm == pytest.approx(0.5)
    assert torch.allclose(out["a"] / out["a"][0], torch.ones(3))  # direction kept
    assert torch.allclose(out["c"], grads["c"])  # ‖c‖ = 0.14 < 1: untouched


def test_grid_has_one_row_per_view_in_order() -> None:
    from umbra.audit.reconstruction_grid import grid_rows

    labels = ["one", "batch", "batch", "sum", "batch", "dp"]
    assert grid_rows(labels) == [("one", [0]), ("batch", [1, 2, 4]), ("sum", [3]), ("dp", [5])]
