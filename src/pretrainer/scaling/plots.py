"""The pictures of a scaling study (PNG), drawn from the points and a fit (scaling/fit.py):
loss against compute with the frontier and the law (Kaplan et al.'s figure 1), IsoFLOP curves with their
parabolas (Hoffmann et al.'s figure 3), loss against tokens per model size, and predicted against actual."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import PretrainerError
from ..train.metrics import read_metrics
from .fit import chinchilla_loss, compute_budgets, frontier, kaplan_loss, predict


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.25)
    return plt, fig, ax


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _size_colours(plt, fig, ax, n: np.ndarray) -> dict[float, tuple]:
    """A colour per model size on a log scale, and its colour bar (a legend would list every size of a study)."""
    from matplotlib.colors import LogNorm

    norm = LogNorm(n.min(), n.max() if n.max() > n.min() else n.min() * 10)
    mappable = plt.cm.ScalarMappable(norm=norm, cmap="viridis")
    fig.colorbar(mappable, ax=ax, label="non-embedding parameters N")
    return {size: mappable.to_rgba(size) for size in np.unique(n)}


def law_over_compute(fit: dict, compute: np.ndarray) -> np.ndarray | None:
    """The loss `predict` gives at each compute (at the compute-optimal size for approaches 1-3, L(C) for a Kaplan
    fit in C); None where the fit predicts no loss from compute (a Kaplan fit in N or D, exponents that are not
    both positive)."""
    try:
        return np.array([predict(fit, c)["loss"] for c in compute])
    except PretrainerError:
        return None


def plot_compute(points: dict, fit: dict, path: Path) -> Path:
    plt, fig, ax = _figure()
    colours = _size_colours(plt, fig, ax, points["N"])
    ax.scatter(points["C"], points["loss"], c=[colours[n] for n in points["N"]], s=22, label="runs")
    edge = frontier(points)
    ax.plot(points["C"][edge], points["loss"][edge], "k--", lw=1, label="frontier (lower envelope)")
    grid = np.geomspace(points["C"].min(), points["C"].max(), 100)
    law = law_over_compute(fit, grid)
    if law is not None:
        ax.plot(grid, law, color="crimson", lw=1.5, label=f"fit: {_law_label(fit)}")
    ax.set_xlabel("compute C = 6·N·D (FLOPs)")
    ax.set_ylabel("loss")
    ax.set_title("loss against compute")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def _law_label(fit: dict) -> str:
    if fit["law"] == "chinchilla":
        return f"E={fit['E']:.2f}, α={fit['alpha']:.2f}, β={fit['beta']:.2f}"
    if fit["law"] == "kaplan":
        return f"({fit['variable']}_c/{fit['variable']})^{fit['alpha']:.3f}" + (
            f" + {fit['E']:.2f}" if fit["E"] else ""
        )
    return f"N_opt ∝ C^{fit['a']:.2f}"


def plot_isoflop(points: dict, fit: dict | None, path: Path) -> Path | None:
    """Loss over N per compute budget with each budget's parabola and its minimum; None when no budget has three
    sizes (a grid sweep's budgets are rarely shared)."""
    budgets = {c: idx for c, idx in compute_budgets(points).items() if len(np.unique(points["N"][idx])) >= 3}
    if not budgets:
        return None
    plt, fig, ax = _figure()
    cmap = plt.get_cmap("plasma")
    for k, (c, idx) in enumerate(sorted(budgets.items())):
        colour = cmap(k / max(1, len(budgets) - 1) * 0.85)
        n, loss = points["N"][idx], points["loss"][idx]
        p2, p1, p0 = np.polyfit(np.log(n), loss, 2)
        opt = -p1 / (2 * p2) if p2 > 0 else np.nan
        inside = np.log(n.min()) <= opt <= np.log(n.max())  # else the fit leaves the budget out
        ax.scatter(n, loss, color=colour, s=22, label=f"C = {c:.2g}" + ("" if inside else " (no minimum inside)"))
        grid = np.geomspace(n.min(), n.max(), 60)
        ax.plot(grid, p0 + p1 * np.log(grid) + p2 * np.log(grid) ** 2, color=colour, lw=1)
        if inside:
            ax.scatter([np.exp(opt)], [p0 + p1 * opt + p2 * opt**2], color=colour, marker="*", s=120, edgecolor="k")
    if fit is not None and fit["law"] == "isoflop":
        ax.set_title(f"IsoFLOP curves: N_opt ∝ C^{fit['a']:.2f} (★ minima)")
    else:
        ax.set_title("IsoFLOP curves (★ minima of the parabolas)")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def plot_tokens(points: dict, path: Path, runs_dir: Path | None = None) -> Path:
    """Loss against tokens seen, one colour per model size: the final losses as points, and each run's training
    curve too when `runs_dir` holds the sweep's runs (named by the points' run column)."""
    plt, fig, ax = _figure()
    ax.set_yscale("log")
    for n, colour in _size_colours(plt, fig, ax, points["N"]).items():
        runs = np.flatnonzero(points["N"] == n)
        ax.scatter(points["D"][runs], points["loss"][runs], color=colour, s=22, zorder=3)
        for i in runs if runs_dir is not None and "run" in points else ():
            metrics = runs_dir / points["run"][i] / "metrics.jsonl"
            if metrics.is_file():
                rows = [r for r in read_metrics(metrics) if "loss" in r and "tokens" in r]
                ax.plot([r["tokens"] for r in rows], [r["loss"] for r in rows], color=colour, lw=0.8, alpha=0.6)
    ax.set_xlabel("tokens D")
    ax.set_ylabel("loss (lines: training loss; points: final validation loss)")
    ax.set_title("sample efficiency: loss against tokens per model size")
    return _save(plt, fig, path)


def predicted(fit: dict, points: dict) -> np.ndarray | None:
    """The fit's loss at each point, where the law predicts one per point (approach 3 and Kaplan)."""
    if fit["law"] == "chinchilla":
        return chinchilla_loss(fit, points["N"], points["D"])
    if fit["law"] == "kaplan":
        return kaplan_loss(fit, points[fit["variable"]])
    return None


def plot_predicted(points: dict, fit: dict, path: Path) -> Path | None:
    guess = predicted(fit, points)
    if guess is None:
        return None
    plt, fig, ax = _figure()
    ax.set_xscale("linear")
    colours = _size_colours(plt, fig, ax, points["N"])
    ax.scatter(points["loss"], guess, c=[colours[n] for n in points["N"]], s=22)
    low, high = min(points["loss"].min(), guess.min()), max(points["loss"].max(), guess.max())
    ax.plot([low, high], [low, high], "k--", lw=1, label="predicted = actual")
    rmse = float(np.sqrt(np.mean((np.log(guess) - np.log(points["loss"])) ** 2)))
    ax.set_title(f"{fit['law']} fit: predicted against actual (RMSE of log loss {rmse:.4f})")
    ax.set_xlabel("actual loss")
    ax.set_ylabel("predicted loss")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def plot_all(points: dict, fit: dict, stem: Path, runs_dir: Path | None = None) -> list[Path]:
    """Every picture the points and the fit allow, as STEM-compute.png, -isoflop, -tokens, -predicted."""
    drawn = [
        plot_compute(points, fit, stem.with_name(stem.name + "-compute.png")),
        plot_isoflop(points, fit, stem.with_name(stem.name + "-isoflop.png")),
        plot_tokens(points, stem.with_name(stem.name + "-tokens.png"), runs_dir),
        plot_predicted(points, fit, stem.with_name(stem.name + "-predicted.png")),
    ]
    return [p for p in drawn if p is not None]
