"""Plots for the run report, drawn with matplotlib's Agg renderer into PNG bytes.

Every function takes plain numbers and returns PNG bytes (or None when there is nothing to
draw), so ``report.html`` can embed them as base64 ``data:`` URLs. Figures are built with
``matplotlib.figure.Figure`` (no pyplot, no global backend state), so they are safe to draw
from any thread.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "bar_chart",
    "line_chart",
    "membership_roc",
    "png_bytes",
    "roc_curve",
    "stacked_bars",
]

_DPI = 110
_SIZE = (6.4, 3.2)  # inches


def png_bytes(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes with the Agg canvas."""
    FigureCanvasAgg(fig)
    fig.set_layout_engine("constrained")  # one layout pass; bbox_inches="tight" draws twice
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _present(x: Sequence[float], ys: Sequence[float | None]) -> tuple[list[float], list[float]]:
    """The points of a series that have a value."""
    pts = [(a, b) for a, b in zip(x, ys, strict=True) if b is not None]
    return [a for a, _ in pts], [b for _, b in pts]


def line_chart(
    x: Sequence[float],
    series: Mapping[str, Sequence[float | None]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    right: Mapping[str, Sequence[float | None]] | None = None,
    right_label: str = "",
) -> bytes | None:
    """One line per series over ``x``; optional right-axis series.

    A None value is a round without that value (e.g. not evaluated): the line joins the
    points on either side of it, so series measured every few rounds still read as curves.
    """
    if not x or not any(any(v is not None for v in s) for s in series.values()):
        return None
    fig = Figure(figsize=_SIZE)
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, alpha=0.3)
    for name, ys in series.items():
        ax.plot(*_present(x, ys), marker="o", ms=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds, indices
    handles, labels = ax.get_legend_handles_labels()
    if right:
        ax2 = ax.twinx()
        for k, (name, ys) in enumerate(right.items()):
            ax2.plot(
                *_present(x, ys),
                ls="--",
                marker="s",
                ms=3,
                color=f"C{len(series) + k}",
                label=name,
            )
        ax2.set_ylabel(right_label)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if right:  # "best" sees only the left axis' lines: put the legend under the plot
        fig.set_layout_engine("constrained")
        fig.legend(handles, labels, loc="outside lower center", ncols=4, fontsize="small")
    else:
        ax.legend(handles, labels, loc="best", fontsize="small")
    return png_bytes(fig)


def bar_chart(
    values: Mapping[str, float],
    *,
    ylabel: str,
    title: str,
    highlight: str | None = None,
    ylim: tuple[float, float] | None = (0.0, 1.0),
) -> bytes | None:
    """One bar per key, value printed on top; ``highlight`` draws that bar darker."""
    if not values:
        return None
    fig = Figure(figsize=(max(4.0, 0.9 * len(values) + 2), _SIZE[1]))
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, axis="y", alpha=0.3)
    names = list(values)
    colors = ["#1f4e79" if n == highlight else "#6fa8dc" for n in names]
    bars = ax.bar(names, [values[n] for n in names], color=colors)
    ax.bar_label(bars, fmt="%.3f", fontsize="small")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(names) > 4:
        ax.tick_params(axis="x", labelrotation=30)
    return png_bytes(fig)


def stacked_bars(
    x: Sequence[float],
    stacks: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
) -> bytes | None:
    """Bars over ``x`` stacked from the series of ``stacks`` (bottom first)."""
    if not x or not stacks:
        return None
    fig = Figure(figsize=_SIZE)
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, axis="y", alpha=0.3)
    bottom = [0.0] * len(x)
    for name, ys in stacks.items():
        ax.bar(x, ys, bottom=bottom, label=name)
        bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    return png_bytes(fig)


def roc_curve(fpr: Sequence[float], tpr: Sequence[float], *, title: str) -> bytes | None:
    """An ROC curve (linear axes) with the chance diagonal."""
    if len(fpr) < 2 or len(fpr) != len(tpr):
        return None
    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, alpha=0.3)
    ax.plot(fpr, tpr, label="attack")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    return png_bytes(fig)


def membership_roc(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    floor: float,
    ceiling: tuple[Sequence[float], Sequence[float]] | None = None,
    title: str,
) -> bytes | None:
    """Membership-attack ROC curves on log-log axes (low false-positive rates are where such
    attacks are judged), the chance diagonal, and an optional DP ceiling. ``floor``: the
    smallest rate drawn (1 / number of non-members): zero rates sit on it."""
    curves = {k: v for k, v in curves.items() if len(v[0]) >= 2 and len(v[0]) == len(v[1])}
    if not curves:
        return None
    fig = Figure(figsize=(5.2, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, which="both", alpha=0.25)
    for name, (fpr, tpr) in curves.items():
        ax.step([max(f, floor) for f in fpr], [max(t, floor) for t in tpr], where="post",
                label=name)  # fmt: skip
    ax.plot([floor, 1], [floor, 1], ls=":", color="grey", label="chance")
    if ceiling is not None:
        fpr, tpr = ceiling
        ax.plot([max(f, floor) for f in fpr], [max(t, floor) for t in tpr], ls="--",
                color="#a33", label="DP ceiling")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1.05)
    ax.set_xlabel("false positive rate (non-members called members)")
    ax.set_ylabel("true positive rate (members found)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    return png_bytes(fig)
