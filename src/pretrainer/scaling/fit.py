"""Scaling-law fits on (N, D, C, loss) points from anywhere: our sweeps' results.csv or another study's table.

- `kaplan`: L(X) = (X_c / X)^alpha for X in N, D or C (Kaplan et al. 2020), optionally + E.
- `chinchilla`: Hoffmann et al.'s approach 3, L(N, D) = E + A/N^alpha + B/D^beta, fitted as they describe: in log
  space, log L = LSE(a - alpha log N, b - beta log D, e), the sum of Huber losses (delta 1e-3) minimised by L-BFGS
  from every start of their grid, keeping the best. The sum, not the mean: with the mean, values and gradients are
  n times smaller, and an optimiser that stops on a small gradient or a small decrease stops early (Besiroglu et
  al. 2024 traced the published fit's odd exponents to that). All starts run at once, batched (`minimize`).
- `isoflop`: approach 2, a parabola of loss over log N per compute budget, its vertex N_opt(C), then N_opt ∝ C^a.
- `envelope`: approach 1, the runs on the lower envelope of loss over C, then N_opt ∝ C^a and D_opt ∝ C^b.

A fit is a dict (FIT.json): the law, its parameters under the names used here (E, A, B, alpha, beta; a, b for
the allocation exponents), confidence intervals when bootstrapped, the points used and the objective value.
"""

from __future__ import annotations

import csv
import functools
import itertools
import math
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError

HUBER_DELTA = 1e-3
LAWS = ("kaplan", "chinchilla", "isoflop", "envelope")
# Hoffmann et al.'s initialisations for approach 3: 5 x 5 x 5 x 6 x 6 = 4500 starts
CHINCHILLA_GRID = {
    "alpha": np.arange(0, 2.01, 0.5),
    "beta": np.arange(0, 2.01, 0.5),
    "e": np.arange(-1, 1.01, 0.5),
    "a": np.arange(0, 25.1, 5),
    "b": np.arange(0, 25.1, 5),
}
# the sweep's results.csv names (scaling/sweep.py); data from elsewhere maps its own with --column
DEFAULT_COLUMNS = {"N": "N_nonemb", "D": "D", "C": "C", "loss": "val_loss"}


# ---------------------------------------------------------------------------------------------------- points


def read_points(path: str | Path, columns: dict[str, str] | None = None, drop_highest: int = 0) -> dict:
    """The points of a CSV as float64 arrays N, D, C and loss (those the file has; D = C / 6N and C = 6ND fill
    in the third of the three), checked finite and positive, without the `drop_highest` highest losses."""
    path = Path(path)
    unknown = set(columns or {}) - set(DEFAULT_COLUMNS)
    if unknown:
        raise ConfigError(f"--column {sorted(unknown)[0]}=... is not one of N, D, C, loss")
    names = {**DEFAULT_COLUMNS, **(columns or {})}
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise DataError(f"no CSV file at {path}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a CSV file (not text); give the results.csv of a sweep or a table") from None
    except csv.Error as e:
        raise DataError(f"{path} is not a CSV file ({e})") from None
    if len(rows) < 2:
        raise DataError(f"{path} has {'no header' if not rows else 'a header and no rows'}: no points to fit")
    header, rows = rows[0], [r for r in rows[1:] if r]
    for i, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(f"{path} is not a CSV of points: line {i} has {len(row)} fields, the header {len(header)}")
    present = {key: name for key, name in names.items() if name in header}
    if "loss" not in present:
        raise DataError(_missing(path, "loss", names["loss"], header))
    if "N" not in present:
        raise DataError(_missing(path, "N", names["N"], header))
    if "D" not in present and "C" not in present:
        raise DataError(_missing(path, "D", names["D"], header) + "; or give the compute with --column C=NAME")
    points = {}
    for key, name in present.items():
        index = header.index(name)
        values = []
        for line, row in enumerate(rows, start=2):
            try:
                value = float(row[index])
            except ValueError:
                raise DataError(f"{path} line {line}: column {name} is '{row[index]}', not a number") from None
            if not (math.isfinite(value) and value > 0):
                raise DataError(f"{path} line {line}: column {name} is {value}; {key} must be finite and positive")
            values.append(value)
        points[key] = np.array(values)
    if "run" in header:  # a sweep's: the plots find each run's curve by it
        points["run"] = np.array([row[header.index("run")] for row in rows])
    if "D" not in points:
        points["D"] = points["C"] / (6 * points["N"])
    if "C" not in points:
        points["C"] = 6 * points["N"] * points["D"]
    if drop_highest:
        if not 0 <= drop_highest < len(rows):
            raise ConfigError(
                f"--drop-highest takes 0 to {len(rows) - 1} for these {len(rows)} points (got {drop_highest})"
            )
        keep = np.sort(np.argsort(points["loss"], kind="stable")[: len(rows) - drop_highest])
        points = {key: values[keep] for key, values in points.items()}
    return points


def _missing(path, key: str, name: str, header: list[str]) -> str:
    return f"{path} has no column '{name}' for {key} (it has {', '.join(header)}); name it with --column {key}=NAME"


# ------------------------------------------------------------------------------------------------- optimiser


def minimize(value_and_grad, x0: torch.Tensor, max_iter: int = 1000, memory: int = 10, gtol=1e-9, ftol=1e-15):
    """L-BFGS on S independent problems at once. `value_and_grad(x, rows)` maps x (R, P), the points of problems
    `rows` (R indices into S), to their values (R,) and gradients (R, P). Each problem keeps its own curvature
    pairs and its own backtracking (Armijo) step, and stops on its own: when its largest gradient component is
    below `gtol`, or a step lowers it by at most `ftol` · max(|f|, 1) (L-BFGS-B's rules, with stricter defaults),
    or after `max_iter` steps. Only the problems still running are evaluated. Returns (x, f, steps per problem)."""
    x = x0.detach().clone().to(torch.float64)
    rows, dims = x.shape
    f, g = value_and_grad(x, torch.arange(rows))
    s_hist = torch.zeros(memory, rows, dims, dtype=x.dtype)
    y_hist = torch.zeros_like(s_hist)
    rho = torch.zeros(memory, rows, dtype=x.dtype)  # 0 where a pair is missing or failed the curvature condition
    gamma = torch.ones(rows, dtype=x.dtype)
    steps = torch.zeros(rows, dtype=torch.long)
    active = torch.isfinite(f)
    for it in range(max_iter):
        idx = active.nonzero().squeeze(1)
        if len(idx) == 0:
            break
        xa, fa, ga = x[idx], f[idx], g[idx]
        order = [(it - 1 - j) % memory for j in range(min(it, memory))]  # newest pair first
        q, alphas = ga.clone(), []
        for j in order:
            alpha = rho[j, idx] * (s_hist[j, idx] * q).sum(1)
            q -= alpha[:, None] * y_hist[j, idx]
            alphas.append(alpha)
        r = gamma[idx, None] * q
        for j, alpha in zip(reversed(order), reversed(alphas), strict=True):
            beta = rho[j, idx] * (y_hist[j, idx] * r).sum(1)
            r += s_hist[j, idx] * (alpha - beta)[:, None]
        direction = -r
        uphill = ~((ga * direction).sum(1) < 0)  # not a descent direction: fall back to the gradient
        direction[uphill] = -ga[uphill]
        slope = (ga * direction).sum(1)
        # a row's first step moves no coordinate by more than 1; later ones start from the full quasi-Newton step
        t = torch.ones_like(fa) if it else torch.clamp(1 / direction.abs().amax(1), max=1.0)
        f_new, g_new = fa.clone(), ga.clone()
        accepted = torch.zeros_like(fa, dtype=torch.bool)
        for _ in range(60):
            trying = (~accepted).nonzero().squeeze(1)
            f_try, g_try = value_and_grad(xa[trying] + t[trying, None] * direction[trying], idx[trying])
            good = torch.isfinite(f_try) & (f_try <= fa[trying] + 1e-4 * t[trying] * slope[trying])
            f_new[trying[good]], g_new[trying[good]] = f_try[good], g_try[good]
            accepted[trying[good]] = True
            if accepted.all():
                break
            t[trying[~good]] /= 2
        x_new = xa + torch.where(accepted, t, 0)[:, None] * direction
        s, y = x_new - xa, g_new - ga
        sy = (s * y).sum(1)
        slot = it % memory
        s_hist[slot, idx], y_hist[slot, idx] = s, y
        curved = sy > 1e-12
        rho[slot, idx] = torch.where(curved, 1 / torch.where(curved, sy, 1), 0)
        gamma[idx] = torch.where(curved, sy / (y * y).sum(1).clamp_min(1e-300), gamma[idx])
        decrease = (fa - f_new) / torch.maximum(torch.maximum(fa.abs(), f_new.abs()), torch.ones_like(fa))
        done = ~accepted | (g_new.abs().amax(1) < gtol) | (decrease <= ftol)
        x[idx], f[idx], g[idx] = x_new, f_new, g_new
        steps[idx] += 1
        active[idx[done]] = False
    return x, f, steps


def with_autograd(objective):
    """A `value_and_grad` for `minimize` from an objective mapping (R, P) to (R,), the same for every problem."""

    def value_and_grad(x, rows):
        x = x.detach().requires_grad_(True)
        f = objective(x)
        (g,) = torch.autograd.grad(f.sum(), x)
        return f.detach(), g

    return value_and_grad


def huber(residual: torch.Tensor, delta: float = HUBER_DELTA) -> torch.Tensor:
    small = residual.abs() <= delta
    return torch.where(small, 0.5 * residual**2, delta * (residual.abs() - 0.5 * delta))


# ------------------------------------------------------------------------------------------------ chinchilla


def _chinchilla_objective(log_n, log_d, log_loss, weights, reduction: str):
    """Values and gradients of the approach-3 objective for rows x = (a, b, e, alpha, beta), each row with its own
    point weights (S or 1, n). The gradient is written out: twice as fast as autograd, and the fit's time is here.
    With r = LSE(u) - log L over u = (a - alpha log N, b - beta log D, e) and p = softmax(u), dr/d(a, b, e) = p
    and dr/d(alpha, beta) = -(p_1 log N, p_2 log D); Huber's derivative is r clipped to ±delta."""

    def value_and_grad(x, rows):
        a, b, e, alpha, beta = (x[:, i : i + 1] for i in range(5))
        terms = torch.stack(torch.broadcast_tensors(a - alpha * log_n, b - beta * log_d, e))
        lse = torch.logsumexp(terms, 0)
        p = torch.exp(terms - lse)
        w = weights if len(weights) == 1 else weights[rows]
        w = w if reduction == "sum" else w / w.sum(1, keepdim=True)
        r = lse - log_loss
        f = (w * huber(r)).sum(1)
        dr = w * r.clamp(-HUBER_DELTA, HUBER_DELTA)
        g = torch.stack(
            [(dr * p[0]).sum(1), (dr * p[1]).sum(1), (dr * p[2]).sum(1),
             -(dr * p[0] * log_n).sum(1), -(dr * p[1] * log_d).sum(1)], 1
        )  # fmt: skip
        return f, g

    return value_and_grad


def _grid_starts(grid: dict[str, np.ndarray], names: tuple[str, ...]) -> torch.Tensor:
    return torch.tensor(list(itertools.product(*(grid[n] for n in names))), dtype=torch.float64)


def fit_chinchilla(
    points: dict, bootstrap: int = 0, seed: int = 0, starts: torch.Tensor | None = None, reduction: str = "sum"
) -> dict:
    """Approach 3 from every start of `CHINCHILLA_GRID` (or the (S, 5) `starts` given, as a, b, e, alpha, beta),
    keeping the lowest objective. `bootstrap` resamples the points with replacement that many times and refits
    each, all at once from the best fit, for 95% percentile intervals. `reduction="mean"` is for comparison only."""
    _check_count(points, 6, "chinchilla", "five parameters (E, A, B, alpha, beta)")
    log_n, log_d, log_loss = (torch.from_numpy(np.log(points[k]))[None] for k in ("N", "D", "loss"))
    if starts is None:
        starts = _grid_starts(CHINCHILLA_GRID, ("a", "b", "e", "alpha", "beta"))
    ones = torch.ones_like(log_n)
    x, f, _ = minimize(_chinchilla_objective(log_n, log_d, log_loss, ones, reduction), starts)
    best = int(torch.nan_to_num(f, nan=math.inf).argmin())
    a, b, e, alpha, beta = x[best].tolist()
    fit = {
        "law": "chinchilla",
        "E": math.exp(e),
        "A": math.exp(a),
        "B": math.exp(b),
        "alpha": alpha,
        "beta": beta,
        "points": len(points["loss"]),
        "objective": float(f[best]),
        "objective_reduction": reduction,
        "huber_delta": HUBER_DELTA,
        "starts": len(starts),
    }
    fit |= _allocation_exponents(alpha, beta)
    if bootstrap:
        n = log_n.shape[1]
        counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=bootstrap)
        weights = torch.from_numpy(counts).to(torch.float64)
        xs, _, _ = minimize(
            _chinchilla_objective(log_n, log_d, log_loss, weights, reduction), x[best].repeat(bootstrap, 1)
        )
        a, b, e, alpha, beta = xs.T.numpy()
        samples = {"E": np.exp(e), "A": np.exp(a), "B": np.exp(b), "alpha": alpha, "beta": beta}
        samples |= {"a": beta / (alpha + beta), "b": alpha / (alpha + beta)}
        fit["intervals"] = _intervals(samples)
        fit["bootstrap"] = bootstrap
    return fit


def _allocation_exponents(alpha: float, beta: float) -> dict:
    """N_opt ∝ C^a and D_opt ∝ C^b under L = E + A/N^alpha + B/D^beta and C = 6ND (Hoffmann et al., eq. 4)."""
    if alpha + beta <= 0:
        return {"a": None, "b": None}
    return {"a": beta / (alpha + beta), "b": alpha / (alpha + beta)}


def _intervals(samples: dict[str, np.ndarray]) -> dict[str, list[float]]:
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in samples.items()}


def chinchilla_loss(fit: dict, n, d):
    return fit["E"] + fit["A"] / np.asarray(n) ** fit["alpha"] + fit["B"] / np.asarray(d) ** fit["beta"]


def chinchilla_optimum(fit: dict, compute: float) -> tuple[float, float]:
    """Hoffmann et al.'s closed form: N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = G^-1 (C/6)^(alpha/(alpha+beta)),
    G = (alpha A / (beta B))^(1/(alpha+beta))."""
    alpha, beta, A, B = fit["alpha"], fit["beta"], fit["A"], fit["B"]
    if not (alpha > 0 and beta > 0):
        raise DataError(
            f"the fit has alpha={alpha:.3g}, beta={beta:.3g}: without a positive exponent for both N and D, loss "
            "has no compute-optimal size"
        )
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    return G * (compute / 6) ** (beta / (alpha + beta)), (compute / 6) ** (alpha / (alpha + beta)) / G


# ---------------------------------------------------------------------------------------------------- kaplan


def fit_kaplan(points: dict, variable: str = "C", irreducible: bool = False, bootstrap: int = 0, seed: int = 0) -> dict:
    """L(X) = (X_c / X)^alpha (+ E with `irreducible`): a line in log-log space by least squares, or with E the
    sum of Huber losses of log L = LSE(alpha (log X_c - log X), e) from a grid of starts. In C, over the runs on
    the lower envelope only (Kaplan et al.'s L(C_min): a run that spends its compute badly is not on the law); in
    N or D, over every point given (the law holds for runs limited by that variable alone: choose them)."""
    if variable not in ("N", "D", "C"):
        raise ConfigError(f"--variable {variable} is not one of N, D, C")
    used = {k: v[frontier(points)] for k, v in points.items()} if variable == "C" else points
    parameters = 3 if irreducible else 2
    _check_count(used, parameters + 1, "kaplan", f"{parameters} parameters")
    x, loss = used[variable], used["loss"]
    if len(np.unique(x)) < 2:
        raise DataError(f"every point has the same {variable}: a power law in {variable} needs at least two values")
    if not irreducible:
        slope, intercept = np.polyfit(np.log(x), np.log(loss), 1)
        law = {"alpha": -slope, "X_c": math.exp(-intercept / slope) if slope else math.inf, "E": 0.0}
    else:
        log_x, log_loss = (torch.from_numpy(np.log(v))[None] for v in (x, loss))

        def objective(p):
            c, e, alpha = p[:, 0:1], p[:, 1:2], p[:, 2:3]
            return huber(torch.logaddexp(alpha * (c - log_x), e) - log_loss).sum(1)

        grid = {"c": np.arange(0, 50.1, 5), "e": np.arange(-1, 1.01, 0.5), "alpha": np.arange(0.05, 1.01, 0.15)}
        p, f, _ = minimize(with_autograd(objective), _grid_starts(grid, ("c", "e", "alpha")))
        c, e, alpha = p[int(torch.nan_to_num(f, nan=math.inf).argmin())].tolist()
        law = {"alpha": alpha, "X_c": math.exp(c), "E": math.exp(e)}
    fit = {"law": "kaplan", "variable": variable, **law, "points": len(loss)}
    fit["objective"] = float(np.sum((np.log(kaplan_loss(fit, x)) - np.log(loss)) ** 2))
    if bootstrap:
        refit = functools.partial(fit_kaplan, variable=variable, irreducible=irreducible)
        fit |= _resampled(points, refit, ("alpha", "X_c", "E"), bootstrap, seed)
    return fit


def kaplan_loss(fit: dict, x):
    return fit["E"] + (fit["X_c"] / np.asarray(x, dtype=np.float64)) ** fit["alpha"]


# ------------------------------------------------------------------------------------- isoflop and envelope


def compute_budgets(points: dict, tolerance: float = 0.1) -> dict[float, np.ndarray]:
    """The points' indices per compute budget, keyed by its geometric mean C: values of C within `tolerance` of
    the smallest of their group are one budget. A sweep rounds each run's steps, so the runs of one IsoFLOP
    budget differ by a few percent (more for the largest models' few steps); budgets are usually 2x or more
    apart. On a grid's scattered C values the groups act as log-spaced bins."""
    order = np.argsort(points["C"], kind="stable")
    groups, current = [], [order[0]]
    for i in order[1:]:
        if points["C"][i] <= points["C"][current[0]] * (1 + tolerance):
            current.append(i)
        else:
            groups.append(current)
            current = [i]
    groups.append(current)
    return {float(np.exp(np.log(points["C"][g]).mean())): np.array(g) for g in groups}


def fit_isoflop(points: dict, bootstrap: int = 0, seed: int = 0) -> dict:
    """Approach 2: per budget, loss = p0 + p1 log N + p2 (log N)^2 and its vertex N_opt; then log N_opt =
    log k + a log C by least squares, D_opt = C / 6 N_opt (so b = 1 - a), and the loss at the optimum as a power
    law in C. A budget whose sizes do not bracket its optimum (the parabola opens downward, or its vertex lies
    outside the sizes run) says nothing about N_opt: it is left out, and listed in `left_out` with the reason."""
    minima, left_out = [], []
    for c, idx in compute_budgets(points).items():
        log_n, loss = np.log(points["N"][idx]), points["loss"][idx]
        if len(np.unique(log_n)) < 3:
            left_out.append({"C": c, "why": f"{len(np.unique(log_n))} model sizes; a parabola needs 3"})
            continue
        p2, p1, p0 = np.polyfit(log_n, loss, 2)
        log_opt = -p1 / (2 * p2) if p2 > 0 else math.nan
        if not log_n.min() <= log_opt <= log_n.max():
            why = "the losses curve downward" if p2 <= 0 else f"the minimum, N = {math.exp(log_opt):.3g}, is outside"
            left_out.append({"C": c, "why": f"{why}: its sizes ({points['N'][idx].min():.3g} to "
                             f"{points['N'][idx].max():.3g}) do not bracket its optimum"})  # fmt: skip
            continue
        minima.append({"C": c, "N_opt": math.exp(log_opt), "loss": p0 + p1 * log_opt + p2 * log_opt**2,
                       "parabola": [p2, p1, p0], "sizes": len(idx)})  # fmt: skip
    if len(minima) < 2:
        reasons = "".join(f" (C={b['C']:.3g}: {b['why']})" for b in left_out[:2])
        raise DataError(
            f"isoflop needs at least two compute budgets whose sizes bracket their optimum; these points have "
            f"{len(minima)}{reasons}; budgets are C values within 10% of each other: sweep with sweep.compute and "
            "sizes on both sides of the optimum, or use --law chinchilla"
        )
    log_c = np.log([m["C"] for m in minima])
    a, log_k = np.polyfit(log_c, np.log([m["N_opt"] for m in minima]), 1)
    loss_slope, loss_intercept = np.polyfit(log_c, np.log([m["loss"] for m in minima]), 1)
    fit = {
        "law": "isoflop",
        "a": a,
        "b": 1 - a,
        "N_coefficient": math.exp(log_k),
        "loss_exponent": -loss_slope,  # L_opt(C) = loss_coefficient * C^-loss_exponent
        "loss_coefficient": math.exp(loss_intercept),
        "budgets": minima,
        "left_out": left_out,
        "points": int(sum(m["sizes"] for m in minima)),
        "objective": float(np.sum((a * log_c + log_k - np.log([m["N_opt"] for m in minima])) ** 2)),
    }
    if bootstrap:
        fit |= _resampled(points, fit_isoflop, ("a", "b"), bootstrap, seed)
    return fit


def frontier(points: dict) -> np.ndarray:
    """Indices of the runs on the lower envelope of loss over compute, cheapest first: per compute budget
    (`compute_budgets`) its best run, kept if it beats every cheaper budget's best (Hoffmann et al.'s approach 1
    takes the best run per FLOP bin)."""
    best, keep = math.inf, []
    for _, idx in sorted(compute_budgets(points).items()):
        i = int(idx[np.argmin(points["loss"][idx])])
        if points["loss"][i] < best:
            keep.append(i)
            best = points["loss"][i]
    return np.array(keep, dtype=int)


def fit_envelope(points: dict, bootstrap: int = 0, seed: int = 0) -> dict:
    """Approach 1: the runs on the lower envelope of loss over C (`frontier`), then N_opt = k_N C^a and
    D_opt = k_D C^b over them by least squares in log space, and their loss as a power law in C."""
    edge = frontier(points)
    if len(np.unique(points["C"][edge])) < 2:
        raise DataError(
            "the lower envelope of loss over compute has fewer than two compute values: add runs at more budgets"
        )
    log_c = np.log(points["C"][edge])
    a, log_kn = np.polyfit(log_c, np.log(points["N"][edge]), 1)
    b, log_kd = np.polyfit(log_c, np.log(points["D"][edge]), 1)
    loss_slope, loss_intercept = np.polyfit(log_c, np.log(points["loss"][edge]), 1)
    fit = {
        "law": "envelope",
        "a": a,
        "b": b,
        "N_coefficient": math.exp(log_kn),
        "D_coefficient": math.exp(log_kd),
        "loss_exponent": -loss_slope,
        "loss_coefficient": math.exp(loss_intercept),
        "frontier": edge.tolist(),
        "points": len(points["loss"]),
        "objective": float(np.sum((a * log_c + log_kn - np.log(points["N"][edge])) ** 2)),
    }
    if bootstrap:
        fit |= _resampled(points, fit_envelope, ("a", "b"), bootstrap, seed)
    return fit


def _resampled(points: dict, fit_fn, keys: tuple[str, ...], bootstrap: int, seed: int) -> dict:
    """Percentile intervals of `keys` over fits to resampled points; a resample the law cannot fit (a budget left
    with too few sizes) is skipped and counted out."""
    rng = np.random.default_rng(seed)
    n, samples = len(points["loss"]), {k: [] for k in keys}
    for _ in range(bootstrap):
        draw = np.sort(rng.integers(0, n, n))
        try:
            fit = fit_fn({k: v[draw] for k, v in points.items()})
        except DataError:
            continue
        for k in keys:
            samples[k].append(fit[k])
    if not samples[keys[0]]:
        return {"bootstrap": 0}
    return {"intervals": _intervals({k: np.array(v) for k, v in samples.items()}), "bootstrap": len(samples[keys[0]])}


# ------------------------------------------------------------------------------------------ fit and predict


def fit(points: dict, law: str, bootstrap: int = 0, seed: int = 0, variable: str = "C", irreducible=False) -> dict:
    if law not in LAWS:
        raise ConfigError(f"--law {law} is not one of {', '.join(LAWS)}")
    if bootstrap < 0:
        raise ConfigError(f"--bootstrap takes a number of resamples, 0 or more (got {bootstrap})")
    if law == "kaplan":
        return fit_kaplan(points, variable, irreducible, bootstrap, seed)
    if law == "chinchilla":
        return fit_chinchilla(points, bootstrap, seed)
    return (fit_isoflop if law == "isoflop" else fit_envelope)(points, bootstrap, seed)


def predict(fit: dict, compute: float) -> dict:
    """The compute-optimal model size, tokens and loss at `compute` FLOPs under a fit."""
    if not (math.isfinite(compute) and compute > 0):
        raise ConfigError(f"--compute {compute} must be a positive number of FLOPs, e.g. 1e21")
    law = fit.get("law")
    needed = {"chinchilla": ("E", "A", "B", "alpha", "beta"), "kaplan": ("variable", "alpha", "X_c", "E"),
              "isoflop": ("a", "N_coefficient", "loss_coefficient", "loss_exponent")}  # fmt: skip
    needed["envelope"] = needed["isoflop"]
    lacking = [key for key in needed.get(law, ()) if not isinstance(fit.get(key), int | float | str)]
    if lacking:
        raise DataError(f"the {law} fit lacks {', '.join(lacking)}: is it a FIT.json of pretrainer scaling fit?")
    if law == "chinchilla":
        n, d = chinchilla_optimum(fit, compute)
        loss = float(chinchilla_loss(fit, n, d))
    elif law in ("isoflop", "envelope"):
        n = fit["N_coefficient"] * compute ** fit["a"]
        d = compute / (6 * n)
        loss = fit["loss_coefficient"] * compute ** -fit["loss_exponent"]
    elif law == "kaplan":
        if fit["variable"] != "C":
            raise ConfigError(
                f"a kaplan fit of L({fit['variable']}) says nothing about compute; fit --variable C, or chinchilla, "
                "isoflop or envelope for the optimal allocation"
            )
        return {"compute": compute, "N_opt": None, "D_opt": None, "tokens_per_parameter": None,
                "loss": float(kaplan_loss(fit, compute))}  # fmt: skip
    else:
        raise DataError(f"the fit's law is {law!r}, not one of {', '.join(LAWS)}: is it a FIT.json of ours?")
    return {"compute": compute, "N_opt": n, "D_opt": d, "tokens_per_parameter": d / n, "loss": loss}


def _check_count(points: dict, needed: int, law: str, what: str) -> None:
    if len(points["loss"]) < needed:
        raise DataError(f"{law} fits {what} and needs at least {needed} points; these are {len(points['loss'])}")
