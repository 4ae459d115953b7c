"""report.html in a real browser: headless Chromium renders the page and the screenshot shows
the report (a dark title on the page background, body text, coloured plots), not a blank page."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from umbra.report import render_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH, HEIGHT = 1000, 1600
TITLE_ROWS = 120  # px: the <header> (h1 and the meta line) sits inside the top band

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium is not installed (Debian package `chromium`; `make system` adds it)",
)


def _results() -> dict[str, Any]:
    """A small run's results.json: rounds (a line plot) and per-modality accuracy (a bar chart)."""
    return {
        "umbra_version": "0.1.0",
        "config": {"federation": {"mode": "federated", "strategy": "fedavg", "rounds": 3}},
        "rounds": [
            {"round": r, "clients": 3, "accuracy": 0.5 + 0.1 * r, "loss": 1.5 - 0.3 * r}
            for r in (1, 2, 3)
        ],
        "final": {
            "accuracy": 0.81,
            "loss": 0.6,
            "per_modality_accuracy": {"image": 0.71, "audio": 0.42, "fused": 0.81},
        },
    }


def screenshot(page: Path, out: Path) -> subprocess.CompletedProcess[bytes]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--hide-scrollbars",
            f"--screenshot={out}",
            f"--window-size={WIDTH},{HEIGHT}",
            page.as_uri(),
        ],
        timeout=120,
        capture_output=True,
    )


def pixels(png: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(png) as img:
        return np.asarray(img.convert("RGB"), dtype=np.int16)  # (H, W, 3)


def check_rendered(rgb: np.ndarray) -> None:
    """The screenshot shows a report: title text in the top band, more text and colour below."""
    flat = rgb.reshape(-1, 3)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    assert len(colours) > 16, f"only {len(colours)} colours: a blank page"
    background = colours[counts.argmax()]
    differs = np.abs(rgb - background).sum(axis=-1) > 60  # (H, W): clearly not background
    title = differs[:TITLE_ROWS]
    assert title.mean() > 0.005, f"title band is background ({title.mean():.4f} of pixels differ)"
    assert title.any(axis=1).sum() >= 10, "no title text rows in the top band"
    body = differs[TITLE_ROWS:]
    assert body.any(axis=1).sum() >= 100, "almost no content below the title"
    # The two plots put ~70k strongly coloured pixels on the page; without them only the
    # headings' blue rules remain (~7k).
    chroma = rgb.max(axis=-1) - rgb.min(axis=-1)  # (H, W): 0 for greys
    assert (chroma > 80).sum() >= 20_000, "few coloured pixels: the plots did not render"


def test_chromium_renders_the_report(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps(_results()))
    page = render_report(tmp_path)
    shot = tmp_path / "shot.png"
    proc = screenshot(page, shot)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    rgb = pixels(shot)
    assert rgb.shape == (HEIGHT, WIDTH, 3)
    check_rendered(rgb)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (None, "<!DOCTYPE html><html><body></body></html>"),  # a blank page
        ("<body>", '<body style="display:none">'),  # the report's markup, laid out as nothing
        ("base64,", "base64,AAAA"),  # the report with its plots undecodable
    ],
    ids=["blank", "hidden-report", "broken-plots"],
)
def test_check_rejects_a_page_without_the_report(tmp_path: Path, old: str | None, new: str) -> None:
    """The pixel checks above fail on pages that do not show the report and its plots."""
    if old is None:
        html = new
    else:
        (tmp_path / "results.json").write_text(json.dumps(_results()))
        text = render_report(tmp_path).read_text(encoding="utf-8")
        assert old in text
        html = text.replace(old, new)
    page = tmp_path / "page.html"
    page.write_text(html, encoding="utf-8")
    shot = tmp_path / "blank.png"
    assert screenshot(page, shot).returncode == 0
    with pytest.raises(AssertionError):
        check_rendered(pixels(shot))
