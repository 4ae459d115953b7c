"""report.html: sections present exactly when their data is, numbers equal results.json's,
a privacy statement generated from the results, escaping, and a page that parses."""

from __future__ import annotations

import base64
import copy
import gzip
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure

from umbra.errors import DataError
from umbra.privacy.ledger import PrivacyLedger, Release, replay
from umbra.report import plots, privacy_statement, render_report, summarize_ledger
from umbra.report.audit import audit_metrics
from umbra.report.format import fmt_delta, fmt_eps
from umbra.report.html import summary_rounds

#: results.json files written by real runs: ``make demo`` (240 rounds, example-level DP
#: with SecAgg+, evaluated every 10th round) and ``umbra run --preset smoke`` (no DP)
DATA = Path(__file__).parent / "data" / "report"
VOID = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "source", "wbr"}
ALL_SECTIONS = {
    "summary",
    "statement",
    "training",
    "modalities",
    "missing",
    "communication",
    "privacy",
    "ledger",
    "secure",
    "audit",
    "data",
    "config",
}


class Page(HTMLParser):
    """Collects sections, tables (cell text and data-value), images and nesting errors."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.sections: list[str] = []
        self.tables: dict[str, list[list[tuple[str, Any]]]] = {}
        self.images: list[str] = []
        self.alts: list[str] = []
        self.collapsed: dict[str, bool] = {}  # table -> inside a closed <details>
        self._details_open: list[bool] = []
        self.text: dict[str, str] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._value: Any = None
        self._section: str | None = None
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "section":
            self._section = a["id"]
            assert self._section is not None
            self.sections.append(self._section)
            self.text[self._section] = ""
        elif tag == "table":
            self._table = a.get("data-table")
            assert self._table is not None
            self.tables[self._table] = []
            self.collapsed[self._table] = bool(self._details_open) and not any(self._details_open)
        elif tag == "details":
            self._details_open.append("open" in a)
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell, self._value = [], a.get("data-value")
        elif tag == "img":
            self.images.append(a.get("src") or "")
            self.alts.append(a.get("alt") or "")

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            value = None if self._value is None else json.loads(self._value)
            self.tables[self._table][-1].append(("".join(self._cell), value))
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "details" and self._details_open:
            self._details_open.pop()
        elif tag == "section":
            self._section = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._section is not None:
            self.text[self._section] += data


def parse(html_text: str) -> Page:
    page = Page()
    page.feed(html_text)
    page.close()
    assert page.errors == [] and page.stack == [], (page.errors, page.stack)
    return page


def body_rows(page: Page, name: str) -> list[list[tuple[str, Any]]]:
    return page.tables[name][1:]  # skip the header row


# --------------------------------------------------------------------------- fixtures

MODS = ["image", "audio", "text"]


def write_ledger(path: Path, rounds: int = 3, clients: int = 3) -> None:
    """A real ledger: DP-SGD releases of three modality groups per client and round."""
    ledger = PrivacyLedger(path, unit="example", delta=1e-5)
    for r in range(1, rounds + 1):
        for c in range(clients):
            ledger.record(
                Release.dpsgd(
                    round=r,
                    party=f"client-{c}",
                    sample_rate=0.02,
                    steps=50,
                    noise_multipliers={"image": 1.1, "audio": 1.3, "text": 0.9},
                    clip_norms={"image": 1.0, "audio": 0.5, "text": 1.0},
                )
            )


def full_results(ledger: Path) -> dict[str, Any]:
    eps_final = replay(ledger).epsilon
    eps_rounds = [replay(ledger, up_to_round=r).epsilon for r in (1, 2, 3)]
    return {
        "umbra_version": "0.1.0",
        "fingerprint": "abc123",
        "config": {
            "data": {"source": "fmnist-avt", "manifest": None},
            "federation": {
                "mode": "federated",
                "strategy": "fedavg",
                "num_clients": 3,
                "rounds": 3,
            },
            "secure": {"aggregation": "secagg+", "threshold": 0.67},
            "privacy": {"mode": "example", "noise": "central"},
        },
        "data": {
            "source": "fmnist-avt",
            "modalities": MODS,
            "class_names": ["t-shirt", "trouser", "bag"],
            "n_train": 600,
            "n_test": 200,
            "clients": [
                {
                    "client": i,
                    "records": 200,
                    "per_modality": {"image": 200 - 10 * i, "audio": 150, "text": 190},
                    "labels": [100, 100 - 50 * i, 50 * i],
                }
                for i in range(3)
            ],
        },
        "rounds": [
            {
                "round": r,
                "clients": 3,
                "accuracy": 0.5 + 0.1 * r,
                "macro_f1": 0.45 + 0.1 * r,
                "loss": 1.5 - 0.3 * r,
                "train_loss": 1.6 - 0.3 * r,
                "bytes_up": 1_234_567 + r,
                "bytes_down": 2_345_678,
                "wall_s": 3.25 * r,
                "epsilon": eps_rounds[r - 1],
            }
            for r in (1, 2, 3)
        ],
        "final": {
            "accuracy": 0.8123,
            "macro_f1": 0.8011,
            "loss": 0.61,
            "per_modality_accuracy": {"image": 0.71, "audio": 0.42, "text": 0.38, "fused": 0.8123},
            "missing_modality_accuracy": {
                "image+audio": 0.75,
                "image+text": 0.74,
                "audio+text": 0.55,
            },
        },
        # the format umbra.run.results.privacy_results writes
        "privacy": {
            "mode": "example",
            "unit": "example",
            "noise": "central",
            "delta": 1e-5,
            "accountant": "pld",
            "adjacency": "zero-out",
            "budget": {"epsilon": 8.0, "delta": 1e-5},
            "epsilon": eps_final,
            "epsilon_observer": "model_holder",
            "observers": {
                name: {"epsilon": eps_final, "amplified": True, "why": "records sampled secretly"}
                for name in ("server", "other_clients", "model_holder")
            },
            "releases": 9,
            "clip_norms": {"image": 1.0, "audio": 0.5, "text": 1.0},
        },
        "secure_aggregation": "secagg+",
        "audit": {
            "membership": {
                "auc": 0.5312,
                "advantage": 0.041,
                "tpr_at_fpr": {"0.01": 0.012},
                "roc": {"fpr": [0.0, 0.1, 0.5, 1.0], "tpr": [0.0, 0.12, 0.53, 1.0]},
            },
            "inversion": {"psnr": 9.87, "ssim": 0.05},
        },
        "bytes": {"up_total": 3 * 1_234_567 + 6, "down_total": 3 * 2_345_678},
        "timing": {"data_s": 1.0, "train_s": 10.0, "total_s": 11.0},
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, Any]]:
    """A real ledger and the results that go with it (built once: replays take a while)."""
    path = tmp_path_factory.mktemp("base") / "ledger.jsonl"
    write_ledger(path)
    return path.read_bytes(), full_results(path)


@pytest.fixture
def run(tmp_path: Path, base: tuple[bytes, dict[str, Any]]) -> tuple[Path, dict[str, Any]]:
    (tmp_path / "ledger.jsonl").write_bytes(base[0])
    res = copy.deepcopy(base[1])
    (tmp_path / "results.json").write_text(json.dumps(res))
    return tmp_path, res


@pytest.fixture
def fast_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip rasterising figures (tests of section logic only; one tiny real PNG instead)."""
    png = plots.png_bytes(Figure(figsize=(0.1, 0.1)))
    monkeypatch.setattr(plots, "png_bytes", lambda fig: png)


def render(run_dir: Path, res: dict[str, Any], *, verify: bool = True) -> tuple[str, Page]:
    (run_dir / "results.json").write_text(json.dumps(res))
    text = render_report(run_dir, verify_ledger=verify).read_text(encoding="utf-8")
    return text, parse(text)


# --------------------------------------------------------------------------- tests


def test_full_report_numbers_equal_results(run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, res = run
    text, page = render(run_dir, res)
    assert set(page.sections) == ALL_SECTIONS
    rows = body_rows(page, "rounds")
    header = [h for h, _ in page.tables["rounds"][0]]
    assert len(rows) == len(res["rounds"])
    for row, want in zip(rows, res["rounds"], strict=True):
        got = dict(zip(header, (v for _, v in row), strict=True))
        assert got["round"] == want["round"] and got["accuracy"] == want["accuracy"]
        assert got["macro-F1"] == want["macro_f1"] and got["test loss"] == want["loss"]
        assert got["bytes up"] == want["bytes_up"] and got["bytes down"] == want["bytes_down"]
        assert got["ε total"] == want["epsilon"]["total"]
    per = {k: v for (k, _), (_, v) in body_rows(page, "per_modality_accuracy")}
    assert per == res["final"]["per_modality_accuracy"]
    miss = {k: v for (k, _), (_, v) in body_rows(page, "missing_modality_accuracy")}
    assert miss == res["final"]["missing_modality_accuracy"]
    eps = {k: v for (k, _), (_, v) in body_rows(page, "epsilon")}
    assert eps == res["privacy"]["epsilon"]
    # The ledger replay shown in the report is the reported ε (both come from the ledger).
    led = {k: v for (k, _), (_, v) in body_rows(page, "ledger_epsilon")}
    assert led == pytest.approx(res["privacy"]["epsilon"], rel=1e-12)
    totals = [r[-1][1] for r in body_rows(page, "bytes")]
    assert totals == [res["bytes"]["up_total"], res["bytes"]["down_total"]]
    ledger_rows = {k: v for (k, _), (_, v) in body_rows(page, "ledger")}
    assert ledger_rows["releases"] == 9 and ledger_rows["parties"] == 3
    groups = {r[0][0]: r[2][1] for r in body_rows(page, "ledger_groups")}
    assert groups == {"image": 9 * 50, "audio": 9 * 50, "text": 9 * 50}  # steps per group
    for attack in res["audit"]:
        got_m = {k: v for (k, _), (_, v) in body_rows(page, f"audit.{attack}")}
        assert got_m == audit_metrics(res["audit"][attack])
    clients = body_rows(page, "clients")
    assert [r[1][1] for r in clients] == [c["records"] for c in res["data"]["clients"]]
    assert [r[2][1] for r in clients] == [
        c["per_modality"]["image"] for c in res["data"]["clients"]
    ]
    assert [r[-1][1] for r in clients] == [
        sum(1 for n in c["labels"] if n > 0) for c in res["data"]["clients"]
    ]
    # Self-contained: every image is an embedded PNG, nothing is fetched from elsewhere.
    assert len(page.images) >= 5
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in text and "https://" not in text
    assert not page.tags & {"script", "link", "iframe", "object"}
    assert "<style>" in text


def test_statement_is_generated_from_results(run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, res = run
    ledger = summarize_ledger(run_dir / "ledger.jsonl")
    parts = {p.title: " ".join(p.sentences) for p in privacy_statement(res, ledger)}
    assert list(parts) == [
        "Data that stayed with each organisation",
        "Protections in this run",
        "Trust assumptions",
        "Privacy budget",
        "Attacks",
    ]
    assert (
        "Each of the 3 organisations (600 training records in all)"
        in parts["Data that stayed with each organisation"]
    )
    assert "images, audio recordings and texts" in parts["Data that stayed with each organisation"]
    up = sum(r["bytes_up"] for r in res["rounds"])
    assert (
        f"{up / 1e6:.1f} MB from the organisations"
        in parts["Data that stayed with each organisation"]
    )
    assert "over 3 rounds" in parts["Data that stayed with each organisation"]
    assert "at the example level" in parts["Protections in this run"]
    # the threshold is a fraction of a round's organisations: ⌈0.67 · 3⌉ = 3
    assert (
        "the sum of at least 67% of the round's organisations (3 of 3 when all take part)"
        in parts["Protections in this run"]
    )
    assert "Shamir threshold, 67% of the round's organisations" in parts["Trust assumptions"]
    assert "no training loss, no per-modality record counts" in parts["Protections in this run"]
    eps = res["privacy"]["epsilon"]
    budget = parts["Privacy budget"]
    assert f"ε = {fmt_eps(eps['total'])}, δ = {fmt_delta(1e-5)}" in budget
    assert "PLD accountant" in budget
    assert "against whoever holds the trained models" in budget
    assert "zero-out neighbours" in budget
    for who in ("the server", "any other organisation", "whoever holds the trained models"):
        assert f"Against {who}: ε = {fmt_eps(eps['total'])}, with amplification" in budget
    for m in MODS:
        assert f"{m} ε = {fmt_eps(eps[m])}" in budget
    assert "9 releases over 3 rounds" in budget and "the same value" in budget
    assert "within it" in budget
    attacks = parts["Attacks"]
    assert "membership-inference attack reached AUC = 0.531 (guessing gives 0.5)" in attacks
    assert "TPR at FPR 0.01 = 0.012" in attacks
    assert "gradient-inversion attack reached PSNR (dB) = 9.87 and SSIM = 0.05" in attacks

    # Different data, different sentences.
    other = copy.deepcopy(res)
    other["privacy"]["epsilon"] = {"total": 12.5}
    other["secure_aggregation"] = "none"
    other["config"]["federation"]["mode"] = "centralized"
    parts2 = {p.title: " ".join(p.sentences) for p in privacy_statement(other, ledger)}
    assert "pooled in one place" in parts2["Data that stayed with each organisation"]
    assert "in the clear" in parts2["Protections in this run"]
    assert "ε = 12.50" in parts2["Privacy budget"] and "OVER it" in parts2["Privacy budget"]
    assert "does NOT match" in parts2["Privacy budget"]
    # Distributed example-level noise: the statement says where the noise was and what
    # the bound assumes.
    shared = copy.deepcopy(res)
    shared["privacy"]["noise"] = "distributed"
    parts3 = {p.title: " ".join(p.sentences) for p in privacy_statement(shared, ledger)}
    assert "one DP-SGD step per round taken jointly" in parts3["Protections in this run"]
    assert "before any update left" not in parts3["Protections in this run"]
    assert "does not collude with organisations" in parts3["Trust assumptions"]
    assert "does not collude" not in parts["Trust assumptions"]
    # No data, no statement: nothing is said that the results do not back.
    assert privacy_statement({}) == []
    only_secure = privacy_statement({"secure_aggregation": "ckks"})
    assert [p.title for p in only_secure] == ["Protections in this run", "Trust assumptions"]


SECTION_DATA: list[tuple[str, set[str]]] = [
    ("audit", {"audit"}),
    ("privacy", {"privacy"}),
    ("secure_aggregation", {"secure"}),
    ("rounds", {"training", "communication"}),
    ("final.per_modality_accuracy", {"modalities"}),
    ("final.missing_modality_accuracy", {"missing"}),
    ("data.clients", {"data"}),
    ("config", {"config"}),
    ("ledger", {"ledger"}),
]


@pytest.mark.parametrize(("field", "sections"), SECTION_DATA)
@pytest.mark.usefixtures("fast_plots")
def test_section_omitted_without_its_data(
    run: tuple[Path, dict[str, Any]], field: str, sections: set[str]
) -> None:
    run_dir, res = run
    res = copy.deepcopy(res)
    if field == "ledger":
        (run_dir / "ledger.jsonl").unlink()
    else:
        *path, last = field.split(".")
        obj = res
        for k in path:
            obj = obj[k]
        del obj[last]
    _, page = render(run_dir, res, verify=False)
    assert set(page.sections) == ALL_SECTIONS - sections


@pytest.mark.usefixtures("fast_plots")
def test_privacy_off_report(run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, res = run
    (run_dir / "ledger.jsonl").unlink()
    res = copy.deepcopy(res)
    res["privacy"] = {
        "mode": "none",
        "unit": None,
        "delta": None,
        "accountant": None,
        "epsilon": None,
    }
    res["secure_aggregation"] = "none"
    for r in res["rounds"]:
        del r["epsilon"]
    del res["audit"]
    _, page = render(run_dir, res)
    assert set(page.sections) == ALL_SECTIONS - {"privacy", "ledger", "audit"}
    assert "Differential privacy was not active" in page.text["statement"]
    assert "up to 3 individual updates per round, in the clear" in page.text["secure"]
    assert "ε total" not in [h for h, _ in page.tables["rounds"][0]]


def test_minimal_results(tmp_path: Path) -> None:
    _, page = render(tmp_path, {"rounds": [{"round": 1, "accuracy": 0.3}]})
    assert page.sections == ["training"]
    assert body_rows(page, "rounds") == [[("1", 1), ("0.3", 0.3)]]
    _, page = render(tmp_path, {})
    assert page.sections == []


@pytest.mark.usefixtures("fast_plots")
def test_strings_are_escaped(run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, res = run
    evil = '<script>alert("x")</script>'
    res = copy.deepcopy(res)
    res["data"]["class_names"] = [evil]
    res["data"]["source"] = "manifest"
    res["data"]["manifest"] = evil
    res["audit"][evil] = {"auc": 0.5}
    res["final"]["missing_modality_accuracy"][evil] = 0.1
    text, page = render(run_dir, res, verify=False)
    assert "<script" not in text
    assert "script" not in page.tags
    assert text.count("&lt;script&gt;") >= 4
    assert evil in page.text["statement"]  # shown as text, never as markup


def test_bad_run_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no results\.json"):
        render_report(tmp_path)
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="JSON object"):
        render_report(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(DataError, match="not readable JSON"):
        render_report(tmp_path)


@pytest.mark.usefixtures("fast_plots")
def test_damaged_ledger_is_reported_not_fatal(run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, res = run
    with (run_dir / "ledger.jsonl").open("a") as f:
        f.write('{"type": "release", "release": 99, "gro')  # a write cut short by a crash
    _, page = render(run_dir, res)
    assert "ledger" in page.sections
    rows = {k: v for (k, _), (_, v) in body_rows(page, "ledger")}
    assert rows["unreadable lines (skipped)"] == 1
    assert "truncated last line" in page.text["ledger"]


@pytest.mark.usefixtures("fast_plots")
def test_unreadable_ledger_is_reported_not_fatal(run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, res = run
    lines = (run_dir / "ledger.jsonl").read_text().splitlines(keepends=True)
    lines[2] = "{not a record\n"  # damage before the last line: not a crash mid-write
    (run_dir / "ledger.jsonl").write_text("".join(lines))
    _, page = render(run_dir, res)
    assert "ledger" in page.sections and "ledger" not in page.tables
    assert "could not be read" in page.text["ledger"] and "line 3" in page.text["ledger"]
    assert "The privacy ledger could not be read" in page.text["statement"]


# --------------------------------------------------------------------------- real runs


def real_results(name: str) -> dict[str, Any]:
    path = DATA / name
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    results = json.loads(raw)
    assert isinstance(results, dict)
    return results


def as_dicts(page: Page, name: str) -> list[dict[str, Any]]:
    header = [h for h, _ in page.tables[name][0]]
    return [dict(zip(header, (v for _, v in row), strict=True)) for row in body_rows(page, name)]


def round_row(r: dict[str, Any]) -> dict[str, Any]:
    """The per-round table row the page must show for round ``r`` of results.json."""
    want = {
        "round": r["round"],
        "clients": r["clients"],
        "accuracy": r.get("accuracy"),
        "macro-F1": r.get("macro_f1"),
        "test loss": r.get("loss"),
        "bytes up": r["bytes_up"],
        "bytes down": r["bytes_down"],
        "wall (s)": r["wall_s"],
    }
    if "epsilon" in r:
        want["ε total"] = r["epsilon"]["total"]
    if r.get("train_loss") is not None:
        want["train loss"] = r["train_loss"]
    return want


def check_bytes(page: Page, res: dict[str, Any]) -> None:
    """The byte figures equal sums and means computed here from results.json."""
    rounds = res["rounds"]
    got = as_dicts(page, "bytes")
    for row, key, total in zip(
        got, ("bytes_up", "bytes_down"), ("up_total", "down_total"), strict=True
    ):
        per = [r[key] for r in rounds]
        assert row["per round (mean)"] == pytest.approx(sum(per) / len(per), rel=1e-12)
        assert row["least in a round"] == min(per) and row["most in a round"] == max(per)
        assert row["total"] == res["bytes"][total] == sum(per)
    clients = as_dicts(page, "bytes_per_client")
    names = list(rounds[0]["bytes_per_client"])
    assert [r[0][0] for r in body_rows(page, "bytes_per_client")] == names
    for c, name in zip(clients, names, strict=True):
        ups = [r["bytes_per_client"][name]["up"] for r in rounds]
        downs = [r["bytes_per_client"][name]["down"] for r in rounds]
        assert c["rounds"] == len(rounds)
        assert c["up in total"] == sum(ups) and c["down in total"] == sum(downs)
        assert c["up per round"] == pytest.approx(sum(ups) / len(ups), rel=1e-12)
        assert c["down per round"] == pytest.approx(sum(downs) / len(downs), rel=1e-12)
    # the organisations' figures add up to the run's
    assert sum(c["up in total"] for c in clients) == res["bytes"]["up_total"]


@pytest.mark.usefixtures("fast_plots")
def test_long_dp_run_shows_a_summary_and_collapses_the_full_table(tmp_path: Path) -> None:
    res = real_results("demo_results.json.gz")
    rounds = res["rounds"]
    assert len(rounds) == 240 and res["privacy"]["mode"] != "none"
    assert all(r["train_loss"] is None for r in rounds)  # not sent to the server under DP
    text, page = render(tmp_path, res, verify=False)

    evaluated = [r for r in rounds if r.get("accuracy") is not None]
    assert [r["round"] for r in evaluated] == list(range(10, 241, 10))
    summary = as_dicts(page, "rounds")
    assert summary == [round_row(r) for r in evaluated]  # round 240 is evaluated: the last
    assert not page.collapsed["rounds"]
    assert as_dicts(page, "rounds_all") == [round_row(r) for r in rounds]
    assert page.collapsed["rounds_all"]  # in a <details> that starts closed
    assert "all 240 rounds" in page.text["training"]
    assert "24 of 240 rounds: the evaluated rounds and the last." in page.text["training"]

    for name in ("rounds", "rounds_all"):
        assert "train loss" not in [h for h, _ in page.tables[name][0]]
    assert "No training loss: under differential privacy" in page.text["training"]
    assert "not sent to the server" in page.text["training"]

    # 240 rounds of near-identical size: figures, not a chart of identical bars
    assert "bytes per round" not in page.alts
    check_bytes(page, res)
    assert "http://" not in text and "https://" not in text
    assert all(src.startswith("data:image/png;base64,") for src in page.images)


@pytest.mark.usefixtures("fast_plots")
def test_short_run_without_dp_shows_every_round_and_train_loss(tmp_path: Path) -> None:
    res = real_results("smoke_results.json")
    rounds = res["rounds"]
    assert len(rounds) == 3 and res["privacy"]["mode"] == "none"
    text, page = render(tmp_path, res)
    assert as_dicts(page, "rounds") == [round_row(r) for r in rounds]
    assert [r["train loss"] for r in as_dicts(page, "rounds")] == [r["train_loss"] for r in rounds]
    assert "rounds_all" not in page.tables and "<details><summary>all" not in text
    assert "No training loss" not in page.text["training"]
    check_bytes(page, res)


@pytest.mark.usefixtures("fast_plots")
def test_bytes_chart_only_when_rounds_differ(tmp_path: Path) -> None:
    res = real_results("smoke_results.json")
    _, page = render(tmp_path, res)
    assert "bytes per round" not in page.alts
    # a round that moves twice as much (e.g. a key exchange): now a chart is worth it
    res["rounds"][0]["bytes_up"] *= 2
    _, page = render(tmp_path, res)
    assert "bytes per round" in page.alts


def test_summary_rounds() -> None:
    def rows(rounds: list[dict[str, Any]]) -> tuple[list[int], str]:
        keep, which = summary_rounds(rounds)
        return [rounds[i]["round"] for i in keep], which

    every = [{"round": i, "accuracy": 0.5} for i in range(1, 36)]
    assert rows(every) == ([10, 20, 30, 35], "every 10th round")
    sparse = [{"round": i, **({"accuracy": 0.5} if i % 10 == 0 else {})} for i in range(1, 46)]
    assert rows(sparse) == ([10, 20, 30, 40, 45], "the evaluated rounds")
    # evaluated every 3rd of 240 rounds: 80 evaluations, every 4th kept (one per 12 rounds)
    dense = [{"round": i, **({"accuracy": 0.5} if i % 3 == 0 else {})} for i in range(1, 241)]
    assert rows(dense) == (list(range(12, 241, 12)), "every 4th evaluated round")
    short = [{"round": i} for i in range(1, 21)]
    assert summary_rounds(short) == (list(range(20)), "every round")
    assert summary_rounds([]) == ([], "every round")


@pytest.mark.usefixtures("fast_plots")
def test_real_dp_run_privacy_figures_equal_results(tmp_path: Path) -> None:
    res = real_results("demo_results.json.gz")
    priv = res["privacy"]
    _, page = render(tmp_path, res, verify=False)
    eps = {k: v for (k, _), (_, v) in body_rows(page, "epsilon")}
    assert eps == priv["epsilon"] and eps["total"] > 0
    settings = {k: (text, v) for (k, _), (text, v) in body_rows(page, "privacy")}
    for key in ("mode", "unit", "adjacency", "noise", "epsilon_observer", "accountant"):
        assert settings[key][0] == str(priv[key])
    assert settings["delta"][1] == priv["delta"]
    clips = {k.removeprefix("clip_norms (")[:-1]: v for k, (_, v) in settings.items()
             if k.startswith("clip_norms")}  # fmt: skip
    assert clips == priv["clip_norms"]
    observed = {r[0][0]: r[1][1] for r in body_rows(page, "observers")}
    assert observed == {
        name.replace("_", " "): o["epsilon"]["total"] for name, o in priv["observers"].items()
    }
    budget = page.text["statement"]
    assert f"(ε = {fmt_eps(priv['epsilon']['total'])}, δ = {fmt_delta(priv['delta'])})" in budget
    assert f"budget was ε = {fmt_eps(priv['budget']['epsilon'])}; the run is within it" in budget
    assert "Secure aggregation (SecAgg+) was active" in page.text["statement"]
    assert [r[1][0] for r in body_rows(page, "secure")][:1] == [res["secure_aggregation"]]


@pytest.mark.usefixtures("fast_plots")
def test_real_run_without_dp_says_so(tmp_path: Path) -> None:
    res = real_results("smoke_results.json")
    assert res["privacy"]["mode"] == "none" and res["privacy"]["epsilon"] is None
    _, page = render(tmp_path, res)
    assert "privacy" not in page.sections and "ledger" not in page.sections
    assert "Differential privacy was not active" in page.text["statement"]
    assert "Secure aggregation was off" in page.text["statement"]
    assert "differential privacy" in page.text["summary"] and "off" in page.text["summary"]
