"""The membership audit end to end on small in-process models: an overfit model is
caught, records the model never saw are not told apart, and ``umbra audit DIR`` rewrites
results.json keeping every old field, adds the Attacks section, and refuses bad folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from test_report import body_rows, parse
from umbra.audit import audit_run, load_finished_run
from umbra.audit.membership_audit import membership_audit
from umbra.audit.query import model_logits
from umbra.audit.records import audit_records
from umbra.config import Config, config_fingerprint, validate_config
from umbra.data.dataset import MultimodalData
from umbra.data.sources.synthetic import make_synthetic
from umbra.errors import ConfigError, DataError
from umbra.federation.checkpoint import save_checkpoint
from umbra.federation.train import Batchable, evaluate, get_arrays, train_local
from umbra.models import ModelSpec, MultimodalNet
from umbra.report import render_report
from umbra.run.folder import CONFIG_FILE
from umbra.run.prepare import PreparedData, model_spec_for, prepare_data
from umbra.run.simulation import train_settings

#: A hard task (noise 3x the class signal) on few records: the model can only memorise.
_MODS = ("text", "tabular")


def _cfg(**audit: Any) -> Config:
    return validate_config(
        {
            "data": {"source": "synthetic", "n_train": 40, "n_test": 1000, "missing": {}},
            "federation": {"num_clients": 2, "batch_size": 8, "lr": 0.05, "momentum": 0.5,
                           "local_epochs": 60},
            "model": {"hidden": 32, "embed_dim": 16, "dropout": 0.0, "modality_dropout": 0.0},
            "audit": {"records": 40, "shadows": 4, "shadow_epochs": 60,
                      "shadow_fraction": 0.0625, **audit},
        }
    )  # fmt: skip


def _data(n: int, seed: int) -> MultimodalData:
    return make_synthetic(n=n, modalities=_MODS, noise=3.0, seed=seed)


def _prep(train: MultimodalData, test: MultimodalData) -> PreparedData:
    half = len(train) // 2
    parts = [np.arange(half), np.arange(half, len(train))]
    return PreparedData(train, test, parts, [train.mask[p] for p in parts])


@pytest.fixture(scope="module")
def overfit() -> tuple[MultimodalNet, ModelSpec, MultimodalData, MultimodalData]:
    """A model trained for 60 epochs on 40 records (train accuracy 1, test near chance)."""
    torch.set_num_threads(1)
    train, test = _data(40, seed=1), _data(1000, seed=2)
    spec = ModelSpec.from_dict(model_spec_for(_cfg(), train))
    torch.manual_seed(0)
    model = MultimodalNet(spec)
    train_local(model, Batchable.from_data(train), train_settings(_cfg()), seed=0)
    return model, spec, train, test


def test_overfit_model_is_caught(
    overfit: tuple[MultimodalNet, ModelSpec, MultimodalData, MultimodalData],
) -> None:
    model, spec, train, test = overfit
    cfg = _cfg()
    out = membership_audit(model, spec, _prep(train, test), cfg, train_settings(cfg))
    loss, lira = out["attacks"]["loss"], out["attacks"]["lira"]
    assert out["members"]["count"] == 40 and out["non_members"]["count"] == 40
    assert out["shadows"]["count"] == 4 and out["shadows"]["records_each"] == 60
    assert loss["auc"] >= 0.7, loss["auc"]
    assert lira["auc"] >= 0.7, lira["auc"]

    # the model memorised: its members' losses lie far below the held-out records'
    def ce(d: MultimodalData) -> np.ndarray:
        z = torch.tensor(model_logits(model, d))
        return torch.nn.functional.cross_entropy(
            z, torch.tensor(d.labels), reduction="none"
        ).numpy()

    assert np.median(ce(train)) < 0.25 * np.median(ce(test))
    assert out["dp"] is None


def test_unseen_records_are_not_told_apart(
    overfit: tuple[MultimodalNet, ModelSpec, MultimodalData, MultimodalData],
) -> None:
    """'Members' the model never saw against non-members: AUC within the binomial
    spread of 0.5 (3.5 standard errors; Hanley-McNeil at 300 + 300 records ≈ 0.024)."""
    model, spec, _, test = overfit
    unseen = _data(300, seed=3)
    cfg = _cfg(records=300, shadows=2, shadow_fraction=0.1, shadow_epochs=20)
    out = membership_audit(model, spec, _prep(unseen, test), cfg, train_settings(cfg))
    for name, att in out["attacks"].items():
        assert abs(att["auc"] - 0.5) <= 3.5 * att["auc_standard_error"], (name, att["auc"])


def test_records_keep_training_masks_and_a_disjoint_pool() -> None:
    cfg = validate_config({"data": {"source": "synthetic", "n_train": 200, "n_test": 400,
                                    "missing": {"text": 0.5}}, "audit": {"records": 100}})  # fmt: skip
    prep = prepare_data(cfg)
    recs = audit_records(prep, cfg, cfg.audit, np.random.default_rng(0))
    assert len(recs.members) == 100 and len(recs.non_members) == 100
    assert len(recs.shadow_pool) == 300
    j = prep.train.modalities.index("text")
    # members hold the masks the organisations trained on; non-members get the same rate
    pooled = np.concatenate(prep.masks)
    assert pooled[:, j].mean() == pytest.approx(0.5, abs=0.1)
    assert recs.non_members.mask[:, j].mean() == pytest.approx(0.5, abs=0.12)
    tab = prep.train.modalities.index("tabular")
    feats = {r.tobytes() for r in recs.non_members.features["tabular"]}
    assert not feats & {r.tobytes() for r in recs.shadow_pool.features["tabular"]}
    assert not {r.tobytes() for r in recs.members.features["tabular"]} & feats
    assert tab >= 0


# --------------------------------------------------------------------------- run folders


def _write_run(run_dir: Path, cfg: Config) -> dict[str, Any]:
    """A finished run folder as umbra run leaves it (config.json, checkpoints, results.json,
    report.html), trained centrally in-process on the run's own prepared data."""
    prep = prepare_data(cfg)
    spec = model_spec_for(cfg, prep.train)
    torch.manual_seed(0)
    model = MultimodalNet(ModelSpec.from_dict(spec))
    pooled = prep.train.subset(np.concatenate(prep.parts)).with_mask(np.concatenate(prep.masks))
    train_local(model, Batchable.from_data(pooled), train_settings(cfg), seed=0)
    acc = evaluate(model, Batchable.from_data(prep.test), subsets=[])["accuracy"]
    assert isinstance(acc, float)
    run_dir.mkdir(parents=True)
    (run_dir / CONFIG_FILE).write_text(json.dumps(cfg.model_dump(mode="json")))
    save_checkpoint(run_dir / "checkpoints", server_round=1, arrays=get_arrays(model),
                    strategy={}, state={"history": []})  # fmt: skip
    privacy = {"mode": "none", "unit": None, "delta": None, "accountant": None, "epsilon": None}
    results = {
        "umbra_version": "test",
        "config": cfg.model_dump(mode="json"),
        "fingerprint": config_fingerprint(cfg),
        "rounds": [{"round": 1, "accuracy": acc, "bytes_up": 0, "bytes_down": 0, "clients": 1}],
        "final": {"accuracy": acc, "macro_f1": 0.0, "loss": 1.0},
        "privacy": privacy,
        "secure_aggregation": "none",
        "audit": {"inversion": {"psnr": 9.5}},  # an earlier attack's figures: kept
    }
    (run_dir / "results.json").write_text(json.dumps(results))
    render_report(run_dir)
    return results


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = _cfg(shadows=2, shadow_epochs=10)
    cfg = validate_config({**cfg.model_dump(mode="json"), "data": {
        **cfg.data.model_dump(mode="json"), "n_train": 60, "n_test": 200,
        "missing": {"text": 0.3}}})  # fmt: skip
    root = tmp_path_factory.mktemp("runs") / "tiny"
    _write_run(root, cfg)
    return root


def _copy(folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(folder, out)
    return out


def test_audit_rewrites_results_keeping_everything(folder: Path, tmp_path: Path) -> None:
    run_dir = _copy(folder, tmp_path)
    before = json.loads((run_dir / "results.json").read_text())
    assert "Membership-inference" not in (run_dir / "report.html").read_text()
    files = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    out = audit_run(run_dir)
    after = json.loads((run_dir / "results.json").read_text())
    assert {k: v for k, v in after.items() if k != "audit"} == {
        k: v for k, v in before.items() if k != "audit"
    }
    assert after["audit"]["inversion"] == before["audit"]["inversion"]
    assert after["audit"]["membership"] == json.loads(json.dumps(out))
    assert out["model"] == "checkpoints/round_0001"
    for rel, data in files.items():  # every other file of the run untouched
        if rel.name not in ("results.json", "report.html"):
            assert (run_dir / rel).read_bytes() == data, rel
    # The report shows the figures of results.json, exactly.
    page = parse((run_dir / "report.html").read_text(encoding="utf-8"))
    assert "audit" in page.sections
    rows = {r[0][0]: r for r in body_rows(page, "audit.membership")}
    for key, label in (("loss", "loss threshold"), ("lira", "offline LiRA")):
        att = out["attacks"][key]
        row = rows[label]
        assert row[1][1] == att["auc"] and row[2][1] == att["auc_standard_error"]
        assert [c[1] for c in row[3:]] == [att["tpr_at_fpr"][f] for f in ("0.001", "0.01")]
    subs = {r[0][0]: r for r in body_rows(page, "audit.membership.subsets")}
    for name, s in out["attacks"]["loss"]["subsets"].items():
        assert subs[name][1][1] == s["members"] and subs[name][3][1] == s["auc"]
    assert "DP ceiling (any attack)" not in rows
    auc = out["attacks"]["loss"]["auc"]
    assert (
        f"AUC {auc:.3g}" in page.text["statement"] or f"{auc:.3g} (loss" in page.text["statement"]
    )
    # a repeated audit gives the same figures (run.seed drives its choices)
    again = audit_run(run_dir)
    assert again["attacks"] == out["attacks"]


def test_audit_of_a_dp_run_states_the_ceiling(folder: Path, tmp_path: Path) -> None:
    run_dir = _copy(folder, tmp_path)
    res = json.loads((run_dir / "results.json").read_text())
    eps = {"total": 1.0, "text": 0.7, "tabular": 0.7, "shared": 0.7}
    res["privacy"] = {"mode": "example", "unit": "example", "delta": 1e-5, "epsilon": eps,
                      "observers": {"model_holder": {"epsilon": eps}}}  # fmt: skip
    (run_dir / "results.json").write_text(json.dumps(res))
    out = audit_run(run_dir, ["audit.fpr=[0.01, 0.1]"])
    assert out["dp"]["epsilon"] == 1.0 and out["dp"]["delta"] == 1e-5
    assert out["dp"]["ceiling_at_fpr"]["0.1"] == pytest.approx(np.e * 0.1 + 1e-5)
    check = out["attacks"]["loss"]["dp_ceiling_check"]
    assert set(check) == {"max_excess", "under_ceiling", "significant_violation"}
    page = parse((run_dir / "report.html").read_text(encoding="utf-8"))
    rows = {r[0][0]: r for r in body_rows(page, "audit.membership")}
    assert [c[1] for c in rows["DP ceiling (any attack)"][3:]] == [
        out["dp"]["ceiling_at_fpr"]["0.01"],
        out["dp"]["ceiling_at_fpr"]["0.1"],
    ]
    assert "caps any membership test" in page.text["statement"]


def test_report_has_no_attacks_section_without_audit(folder: Path) -> None:
    page = parse((folder / "report.html").read_text(encoding="utf-8"))
    assert "audit" in page.sections  # the fixture's earlier inversion figures
    res = json.loads((folder / "results.json").read_text())
    del res["audit"]
    from umbra.report import build_report

    assert 'id="audit"' not in build_report(res)


def test_refusals_in_process(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no finished run"):
        load_finished_run(tmp_path)
    run_dir = _copy(folder, tmp_path)
    with pytest.raises(ConfigError, match="only audit"):
        load_finished_run(run_dir, ["data.n_train=5"])
    with pytest.raises(ConfigError, match=r"audit\.shadows"):
        load_finished_run(run_dir, ["audit.shadows=0"])
    with pytest.raises(ConfigError, match=r"audit\.fpr"):
        load_finished_run(run_dir, ["audit.fpr=[0.5, 1.5]"])
    unfinished = json.loads((run_dir / "results.json").read_text())
    del unfinished["final"]
    (tmp_path / "unfinished").mkdir()
    shutil.copy(run_dir / CONFIG_FILE, tmp_path / "unfinished" / CONFIG_FILE)
    (tmp_path / "unfinished" / "results.json").write_text(json.dumps(unfinished))
    with pytest.raises(DataError, match="did not finish"):
        load_finished_run(tmp_path / "unfinished")
    # a model of another shape than the config's
    ckpt = run_dir / "checkpoints" / "round_0001"
    names = json.loads((ckpt / "model.json").read_text())
    with np.load(ckpt / "model.npz") as z:
        arrays = {k: z[f"a{i}"] for i, k in enumerate(names)}
    first = names[0]
    bad = {**arrays, first: np.zeros(tuple(s + 1 for s in arrays[first].shape), np.float32)}
    save_checkpoint(run_dir / "checkpoints", server_round=1, arrays=bad, strategy={},
                    state={"history": []})  # fmt: skip
    with pytest.raises(DataError, match="does not match the run's config"):
        audit_run(run_dir)
    # the right shapes, other weights: not the run's final model
    other = {k: np.random.default_rng(1).normal(0, 1, v.shape).astype(v.dtype)
             if v.dtype.kind == "f" else v for k, v in arrays.items()}  # fmt: skip
    save_checkpoint(run_dir / "checkpoints", server_round=1, arrays=other, strategy={},
                    state={"history": []})  # fmt: skip
    with pytest.raises(DataError, match="is not the run's final model"):
        audit_run(run_dir)
    # config.json and results.json of different runs
    res = json.loads((run_dir / "results.json").read_text())
    res["config"]["data"]["n_train"] = 61
    (run_dir / "results.json").write_text(json.dumps(res))
    with pytest.raises(DataError, match="different runs"):
        load_finished_run(run_dir)


@pytest.mark.parametrize(
    ("setup", "args", "needle"),
    [
        ("empty", [], "holds no finished run"),
        ("run", ["--set", "audit.records=5"], "audit.records"),
    ],
)
def test_cli_refuses_with_one_line(
    folder: Path, tmp_path: Path, setup: str, args: list[str], needle: str
) -> None:
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    if setup != "empty":
        run_dir = _copy(folder, tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "umbra.cli", "audit", str(run_dir), *args],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_overrides_reach_the_audit(folder: Path) -> None:
    cfg, _ = load_finished_run(folder, ["audit.shadows=3", "audit.shadow_data=training-rest"])
    assert cfg.audit.shadows == 3 and cfg.audit.shadow_data == "training-rest"
    saved = validate_config(json.loads((folder / CONFIG_FILE).read_text()))
    assert cfg.model_dump(exclude={"audit"}) == saved.model_dump(exclude={"audit"})


def test_reference_auc_of_the_audit_scores(
    overfit: tuple[MultimodalNet, ModelSpec, MultimodalData, MultimodalData],
) -> None:
    """The loss attack's AUC equals sklearn's on -loss computed from the logits directly."""
    model, spec, train, test = overfit
    cfg = _cfg(records=40)
    out = membership_audit(model, spec, _prep(train, test), cfg, train_settings(cfg))

    # the audit drew its non-members with np.random.default_rng([seed, stream]); recompute
    # the members' side exactly (all 40) and check the AUC is sklearn's for some 40 of test
    def ce(d: MultimodalData) -> np.ndarray:
        z = torch.tensor(model_logits(model, d))
        return torch.nn.functional.cross_entropy(
            z, torch.tensor(d.labels), reduction="none"
        ).numpy()

    rng = np.random.default_rng([cfg.run.seed, 0xA0D17])
    recs = audit_records(_prep(train, test), cfg, cfg.audit, rng)
    y = np.r_[np.ones(len(recs.members)), np.zeros(len(recs.non_members))]
    ref = roc_auc_score(y, -np.r_[ce(recs.members), ce(recs.non_members)])
    assert out["attacks"]["loss"]["auc"] == pytest.approx(ref, abs=1e-12)


def test_statement_sentences_come_from_the_numbers() -> None:
    from umbra.report.statement import privacy_statement

    def attack(auc: float, tpr: float, excess: float, sig: bool) -> dict[str, Any]:
        check = {"max_excess": excess, "under_ceiling": excess <= 0, "significant_violation": sig}
        return {"auc": auc, "auc_standard_error": 0.01, "tpr_at_fpr": {"0.001": 0.0, "0.01": tpr},
                "dp_ceiling_check": check}  # fmt: skip

    entry = {
        "members": {"count": 2000}, "non_members": {"count": 1500},
        "attacks": {"loss": attack(0.53, 0.012, 0.0, False), "lira": attack(0.52, 0.02, 0.0, False)},
        "dp": {"epsilon": 1.0, "delta": 1e-5, "ceiling_at_fpr": {"0.001": 0.0027, "0.01": 0.0272}},
    }  # fmt: skip
    parts = {
        p.title: " ".join(p.sentences) for p in privacy_statement({"audit": {"membership": entry}})
    }
    said = parts["Attacks"]
    assert (
        "among 2,000 members and 1,500 non-members with AUC 0.53 (loss threshold) and 0.52" in said
    )
    assert "offline LiRA attack finds 2 % of members" in said  # the attack finding most at 1 %
    assert "caps any membership test at 2.72 % of members at 1 % FPR" in said
    assert "stay under that ceiling" in said
    entry["attacks"]["lira"] = attack(0.9, 0.5, 0.47, True)
    said = " ".join(privacy_statement({"audit": {"membership": entry}})[-1].sentences)
    assert "rises above it by up to 0.47" in said and "in doubt" in said


@pytest.mark.parametrize("enabled", [True, False])
def test_umbra_run_audits_when_enabled(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, enabled: bool
) -> None:
    """``umbra run --set audit.enabled=true`` audits the run folder after training (the
    training itself stubbed out: it is tested elsewhere)."""
    from typer.testing import CliRunner

    import umbra.audit
    import umbra.experiment
    from umbra.cli import app

    final = {"accuracy": 0.5, "macro_f1": 0.5, "per_modality_accuracy": {},
             "missing_modality_accuracy": {}}  # fmt: skip
    results = {"final": final, "timing": {"data_s": 0.0, "train_s": 0.0, "total_s": 0.0}}
    monkeypatch.setattr(umbra.experiment, "run_experiment", lambda cfg, run_dir, **kw: results)
    calls: list[tuple[Path, list[str]]] = []
    membership = {
        "members": {"count": 10}, "non_members": {"count": 10}, "shadows": {"count": 1},
        "attacks": {"loss": {"auc": 0.5, "auc_standard_error": 0.1, "tpr_at_fpr": {"0.01": 0.0}}},
        "dp": None, "seconds": 1.0,
    }  # fmt: skip

    def fake_audit(run_dir: Path, overrides: list[str], **kw: Any) -> dict[str, Any]:
        calls.append((run_dir, overrides))
        return membership

    monkeypatch.setattr(umbra.audit, "audit_run", fake_audit)
    out = tmp_path / "r"
    args = ["run", "--preset", "smoke", "--out", str(out)]
    res = CliRunner().invoke(app, args + (["--set", "audit.enabled=true"] if enabled else []))
    assert res.exit_code == 0, res.output
    assert calls == ([(out, [])] if enabled else [])
    if enabled:
        assert "Membership inference against the final model" in res.output
