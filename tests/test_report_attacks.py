"""The report's Attacks section shows results.json's numbers: the reconstruction rows with
the label-only PSNR floor beside the PSNR, and the poisoning audit's detectors and
reputations, each cell equal to the value it was rendered from."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from umbra.report import render_report
from umbra.report.audit import poisoning_rows, poisoning_sentences, reconstruction_rows

RECON = {
    "organisation": 3,
    "views": {
        "single record": {"linear": {"image": {"exact": 1, "records": 1, "feature_cosine": 0.99,
                                               "psnr": 23.456, "label_floor_psnr": 11.234}}},
        "secagg+ sum": {"linear": {"image": {"exact": 0, "records": 8, "feature_cosine": 0.2,
                                             "psnr": 9.87, "label_floor_psnr": float("nan")}}},
    },
}  # fmt: skip
POISONING = {
    "detection": {"precision": 0.44, "recall": 0.03, "true_positives": 4,
                  "false_positives": 5, "k": 3.0},
    "reputation": {"precision": 0.9375, "recall": 0.8333, "true_positives": 90,
                   "false_positives": 6, "k": 3.0, "warmup": 3, "min_cosine": 0.0,
                   "rounds": 40, "excluded_rounds": {"0": 37, "5": 37, "13": 6},
                   "excluded_final": [0, 5],
                   "scores": {"0": {"rounds": 40, "cosine": -0.123456, "log_norm": 0.01},
                              "5": {"rounds": 40, "cosine": -0.2, "log_norm": -0.5},
                              "13": {"rounds": 40, "cosine": 0.05, "log_norm": 0.8}}},
    "attack": {"kind": "sign-flip", "attackers": [0, 5]},
    "defence": {"aggregator": "mean", "trim_fraction": None, "byzantine": None,
                "clip_updates": None, "detect": True, "reputation": True},
}  # fmt: skip


def test_poisoning_sentences_say_who_attacked_and_what_each_detector_caught() -> None:
    entry = {**POISONING, "backdoor": {"success_rate": 0.25, "records": 100},
             "reputation": {**POISONING["reputation"], "false_negatives": 18}}  # fmt: skip
    s = poisoning_sentences(entry)
    assert s[0] == ("A poisoning attack was planted on purpose: sign-flip by organisations 0 "
                    "and 5, against the mean aggregator, per-round screening and the "
                    "reputation over rounds.")  # fmt: skip
    # screening has no false_negatives count: its recall alone; the reputation's counts
    assert s[1] == ("Per-round screening caught 3 % of the attacker client-rounds and 5 honest "
                    "ones (precision 0.44).")  # fmt: skip
    assert s[2] == ("The reputation over rounds caught 90 of 108 attacker client-rounds "
                    "(83.3 %) and 6 honest ones (precision 0.938).")  # fmt: skip
    assert s[3].startswith("The backdoor moved 25 % of the triggered test records")
    scale = {"attack": {"kind": "scale", "scale": 10.0, "attackers": [2]},
             "defence": {"aggregator": "median", "clip_updates": "median"}}  # fmt: skip
    assert poisoning_sentences(scale) == [
        "A poisoning attack was planted on purpose: scaling ×10 by organisation 2, against "
        "the median aggregator and update-norm clipping."
    ]


def test_reconstruction_cells_show_the_label_floor() -> None:
    header, rows = reconstruction_rows(RECON)
    assert header == ["what the server sees", "method", "image"]
    assert rows[0] == ["single record", "linear", "1/1, 0.99, 23.5 dB (labels alone 11.2 dB)"]
    assert rows[1] == ["secagg+ sum", "linear", "0/8, 0.20, 9.9 dB"]  # no floor: not shown


def test_poisoning_rows_come_from_the_entry() -> None:
    detectors, clients = poisoning_rows(POISONING)
    assert detectors == [["per-round screening", 0.44, 0.03, 4, 5],
                         ["reputation", 0.9375, 0.8333, 90, 6]]  # fmt: skip
    assert clients == [
        [0, "attacker", 40, -0.123456, 0.01, "yes"],
        [5, "attacker", 40, -0.2, -0.5, "yes"],
        [13, "honest", 40, 0.05, 0.8, "no"],
    ]
    assert poisoning_rows({"attack": {"kind": "scale"}}) == ([], [])
    # with the response rule on, each client's mean response sits before the exclusion
    scores = {p: {**r, "response": 0.1 * i} for i, (p, r)
              in enumerate(POISONING["reputation"]["scores"].items())}  # fmt: skip
    entry = {**POISONING, "reputation": {**POISONING["reputation"], "scores": scores}}
    _, clients = poisoning_rows(entry)
    assert [row[5:] for row in clients] == [[0.0, "yes"], [0.1, "yes"], [0.2, "no"]]


def test_nested_defence_settings_read_as_their_parts(tmp_path: Path) -> None:
    results: dict[str, Any] = {
        "config": {},
        "final": {"accuracy": 0.5},
        "rounds": [],
        "audit": {
            "poisoning": {
                **POISONING,
                "defence": {
                    "aggregator": "centered-clip",
                    "reputation": True,
                    "centered_clip": {"tau": "median", "iterations": 1},
                },
            }
        },
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    page = render_report(tmp_path).read_text(encoding="utf-8")
    assert ("<b>defences:</b> aggregator = centered-clip, reputation = True, "
            "centered_clip (tau median, iterations 1)</p>") in page  # fmt: skip


def _table_values(page: str, name: str) -> list[list[str]]:
    """Each row's cells of the table ``name``: a number cell's exact data-value, else text."""
    m = re.search(rf'<table data-table="{re.escape(name)}">(.*?)</table>', page, re.S)
    assert m is not None, name
    rows = re.findall(r"<tr>(.*?)</tr>", m.group(1), re.S)[1:]  # without the header
    cells = [re.findall(r'<td(?: class="n" data-value="([^"]*)")?>(.*?)</td>', r) for r in rows]
    return [[v if v else text for v, text in row] for row in cells]


def test_report_numbers_equal_results_json(tmp_path: Path) -> None:
    results: dict[str, Any] = {"config": {}, "final": {"accuracy": 0.5},
                               "audit": {"reconstruction": RECON, "poisoning": POISONING}}  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(results))
    page = render_report(tmp_path).read_text(encoding="utf-8")
    saved = json.loads((tmp_path / "results.json").read_text())["audit"]
    recon = _table_values(page, "audit.reconstruction")
    single = saved["reconstruction"]["views"]["single record"]["linear"]["image"]
    assert (
        f"{single['psnr']:.1f} dB (labels alone {single['label_floor_psnr']:.1f} dB)" in recon[0][2]
    )
    det = _table_values(page, "audit.poisoning.detection")
    for row, key in zip(det, ("detection", "reputation"), strict=True):
        q = saved["poisoning"][key]
        assert [json.loads(v) for v in row[1:]] == [
            q["precision"],
            q["recall"],
            q["true_positives"],
            q["false_positives"],
        ]
    rep = _table_values(page, "audit.poisoning.reputation")
    scores = saved["poisoning"]["reputation"]["scores"]
    assert len(rep) == len(scores)
    for row in rep:
        s = scores[row[0]]
        assert json.loads(row[2]) == s["rounds"]
        assert json.loads(row[3]) == pytest.approx(s["cosine"], abs=0)
        assert json.loads(row[4]) == pytest.approx(s["log_norm"], abs=0)
    assert "<b>attack:</b> sign-flip by organisations 0, 5" in page
    assert "detect = True, reputation = True" in page
