"""The lab's plots, as PNG bytes. matplotlib's object interface only (no pyplot, no global
backend), so plotting works without a screen and from any thread."""

import io
import math

import numpy as np
import torch
from matplotlib.figure import Figure

from fastoptim.lab.compare import OPTIMIZERS, Comparison
from fastoptim.lab.lr_find import LRFind

# Losses at or below this are drawn at it, so a log axis can show a loss of exactly 0.
FLOOR = 1e-12


def color(optimizer: str) -> str:
    """The same colour for an optimizer in every plot."""
    index = OPTIMIZERS.index(optimizer) if optimizer in OPTIMIZERS else len(OPTIMIZERS)
    return f"C{index}"


def png(figure: Figure) -> bytes:
    """``figure`` rendered as PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def smoothed(values: np.ndarray, window: int) -> np.ndarray:
    """The geometric mean of each ``window`` consecutive values (along the last axis), so
    minibatch noise does not hide the trend on a log scale."""
    if window == 1:
        return values
    kernel = np.ones(window) / window
    logs = np.log(values)
    means = np.apply_along_axis(lambda row: np.convolve(row, kernel, mode="valid"), -1, logs)
    return np.exp(means)


def loss_plot(comparison: Comparison) -> bytes:
    """Training loss per step on a log scale, one line per optimizer: the mean over seeds as
    a moving geometric mean over steps/50 steps, the raw loss faint behind it, the range
    across seeds shaded when there are several; the target dashed."""
    figure = Figure(figsize=(7, 4.2))
    axes = figure.add_subplot()
    window = max(1, comparison.steps // 50)
    for optimizer, lr in comparison.lrs.items():
        curves = [run.losses for run in comparison.runs_of(optimizer)]
        length = min(len(curve) for curve in curves)
        if length < window:
            continue
        values = np.maximum(np.array([curve[:length] for curve in curves]), FLOOR)
        mean = values.mean(0)
        if window > 1:
            axes.plot(mean, color=color(optimizer), alpha=0.15, linewidth=0.8)
        steps = np.arange(window - 1, length)
        label = f"{optimizer} (lr {lr:.3g})"
        axes.plot(steps, smoothed(mean, window), color=color(optimizer), label=label)
        if len(curves) > 1:
            band = smoothed(values.min(0), window), smoothed(values.max(0), window)
            axes.fill_between(steps, *band, color=color(optimizer), alpha=0.2)
    if comparison.problem.target_loss is not None:
        axes.axhline(comparison.problem.target_loss, color="grey", linestyle="--", label="target")
    axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    average = f" (moving average of {window} steps)" if window > 1 else ""
    axes.set_title(f"{comparison.problem.name}: loss{average}")
    axes.legend(fontsize="small")
    return png(figure)


def trajectory_plot(comparison: Comparison) -> bytes:
    """The path of each optimizer's point (first seed) over the contours of a 2-D problem's
    surface (log-spaced levels)."""
    problem = comparison.problem
    assert problem.surface is not None and problem.bounds is not None
    x_min, x_max, y_min, y_max = problem.bounds
    x, y = torch.meshgrid(
        torch.linspace(x_min, x_max, 300), torch.linspace(y_min, y_max, 300), indexing="xy"
    )
    z = problem.surface(x, y).numpy()
    low = max(float(z.min()), 1e-3)
    levels = np.geomspace(low, max(float(z.max()), 10 * low), 25)
    figure = Figure(figsize=(6.5, 5))
    axes = figure.add_subplot()
    z = np.maximum(z, low)
    axes.contour(x.numpy(), y.numpy(), z, levels=levels, colors="0.55", linewidths=0.5)
    for optimizer, lr in comparison.lrs.items():
        path = np.array(comparison.runs_of(optimizer)[0].trajectory)
        if len(path):
            axes.plot(
                path[:, 0],
                path[:, 1],
                color=color(optimizer),
                linewidth=1.2,
                label=f"{optimizer} (lr {lr:.3g})",
            )
            axes.plot(path[-1, 0], path[-1, 1], "o", color=color(optimizer), markersize=4)
    start = comparison.runs[0].trajectory[0] if comparison.runs[0].trajectory else None
    if start:
        axes.plot(*start, "k*", markersize=10, label="start")
    axes.set_xlim(x_min, x_max)
    axes.set_ylim(y_min, y_max)
    axes.set_title(f"{problem.name}: trajectories")
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return png(figure)


def accuracy_plot(comparison: Comparison) -> bytes:
    """Test accuracy along training, one line per optimizer (first seed)."""
    figure = Figure(figsize=(7, 4.2))
    axes = figure.add_subplot()
    for optimizer in comparison.lrs:
        points = np.array(comparison.runs_of(optimizer)[0].accuracy)
        if len(points):
            axes.plot(
                points[:, 0], points[:, 1], color=color(optimizer), marker=".", label=optimizer
            )
    axes.set_xlabel("step")
    axes.set_ylabel("test accuracy")
    axes.set_title(f"{comparison.problem.name}: test accuracy")
    axes.legend(fontsize="small", loc="lower right")
    return png(figure)


def sweep_plot(comparison: Comparison) -> bytes:
    """The lr sweep of ``lr="auto"``: each optimizer's score against lr, the chosen lr
    marked; diverged lrs are left out."""
    figure = Figure(figsize=(7, 4.2))
    axes = figure.add_subplot()
    for optimizer, pairs in comparison.sweeps.items():
        finite = np.array([(lr, max(score, FLOOR)) for lr, score in pairs if math.isfinite(score)])
        if len(finite):
            axes.plot(
                finite[:, 0], finite[:, 1], color=color(optimizer), marker=".", label=optimizer
            )
            chosen = comparison.lrs[optimizer]
            score = dict(pairs)[chosen]
            axes.plot(
                chosen,
                max(score, FLOOR),
                "o",
                color=color(optimizer),
                markersize=9,
                fillstyle="none",
            )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("mean loss, last quarter of the sweep run")
    axes.set_title(f"{comparison.problem.name}: lr sweep (circled: chosen)")
    axes.legend(fontsize="small")
    return png(figure)


def lr_find_plot(result: LRFind) -> bytes:
    """The range test: raw and smoothed loss against lr (log scale), the burn-in shaded,
    the lowest smoothed loss and the suggested lr marked."""
    figure = Figure(figsize=(7, 4.2))
    axes = figure.add_subplot()
    axes.plot(result.lrs, result.losses, color="C7", alpha=0.5, label="loss")
    axes.plot(result.lrs, result.smoothed, color="C0", label="smoothed")
    if result.burn_in:
        axes.axvspan(
            result.lrs[0], result.lrs[result.burn_in], color="grey", alpha=0.15, label="burn-in"
        )
    axes.axvline(result.lrs[result.best], color="C3", linestyle=":", label="lowest smoothed")
    axes.axvline(
        result.suggestion, color="C2", linestyle="--", label=f"suggested lr {result.suggestion:.3g}"
    )
    axes.set_xscale("log")
    if min(result.losses) > 0:
        axes.set_yscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss")
    axes.set_title(f"{result.problem}: LR range test, {result.optimizer}")
    axes.legend(fontsize="small")
    return png(figure)
