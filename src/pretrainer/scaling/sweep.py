"""Scaling sweeps: many runs of the one trainer, one row each in results.csv.

A sweep is a training recipe with a `sweep:` section (config.SweepConfig). Each run is that recipe with the
model's shape and train.max_steps changed (the learning-rate schedule ends where its token budget does), in its
own folder OUT/runs/NAME. A run already in results.csv is skipped, and a run that was cut short resumes from its
last checkpoint, so a killed sweep goes on where it stopped. With several devices, as many runs go at once, each
in its own process.
"""

from __future__ import annotations

import copy
import csv
import math
import re
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from ..config import Config, SweepConfig
from ..errors import ConfigError
from ..train import checkpoint
from ..train.metrics import read_metrics
from .flops import count_params, vocab_size_for_counting

COLUMNS = ("run", "kind", "n_layer", "d_model", "N", "N_nonemb", "D", "C", "train_loss", "val_loss", "wall_s")


@dataclass(frozen=True)
class PlannedRun:
    name: str
    kind: str  # grid | isoflop
    n_layer: int
    d_model: int
    steps: int
    tokens: int  # D: steps x tokens per step
    params: int  # N, every parameter
    non_embedding: int  # Kaplan's N
    budget: float | None = None  # isoflop: the compute budget the run belongs to

    @property
    def compute(self) -> float:
        return 6 * self.non_embedding * self.tokens


def shapes(s: SweepConfig) -> list[tuple[int, int]]:
    if bool(s.depths) == bool(s.shapes):
        raise ConfigError("a sweep needs sweep.depths (with sweep.aspect_ratio) or sweep.shapes, one of the two")
    if s.depths:
        if min(s.depths) < 1 or s.aspect_ratio < 1:
            raise ConfigError("sweep.depths and sweep.aspect_ratio must be positive")
        return [(depth, depth * s.aspect_ratio) for depth in s.depths]
    out = []
    for shape in s.shapes:
        match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", str(shape))
        if not match or min(int(match[1]), int(match[2])) < 1:
            raise ConfigError(f"sweep.shapes entry '{shape}' is not LAYERSxD_MODEL, e.g. 2x64")
        out.append((int(match[1]), int(match[2])))
    return out


def run_config(base: Config, n_layer: int, d_model: int, steps: int | None = None) -> Config:
    """The recipe of one run: the base with this shape (derived sizes follow it) and, given, this many steps."""
    s = base.sweep
    if d_model % s.head_dim:
        raise ConfigError(f"sweep: d_model {d_model} is not a multiple of sweep.head_dim={s.head_dim}")
    config = copy.deepcopy(base)
    m = config.model
    m.n_layer, m.d_model, m.n_head = n_layer, d_model, d_model // s.head_dim
    m.head_dim = m.n_kv_head = m.d_ff = None  # derived again from the new width
    m.vocab_size = vocab_size_for_counting(base)[0]
    config.model = m.resolved()
    if steps is not None:
        t = config.train
        t.max_steps = steps
        t.warmup_steps = min(t.warmup_steps, steps // 10)  # a short run would otherwise be all warm-up
        t.eval_every = steps  # the validation loss is the sweep's number, once at the end
        t.save_every = min(t.save_every, steps)
    config.sweep = SweepConfig()  # a run is a plain training run
    return config


def plan(base: Config) -> tuple[list[PlannedRun], list[str]]:
    """The runs of a sweep, and notes on IsoFLOP sizes left out for too few steps."""
    s = base.sweep
    if not (s.tokens or s.compute):
        raise ConfigError(
            "a sweep needs sweep.tokens (a grid of token budgets), sweep.compute (IsoFLOP budgets) or both"
        )
    for key in ("tokens", "compute"):
        if any(not (math.isfinite(v) and v > 0) for v in getattr(s, key)):
            raise ConfigError(f"sweep.{key} must be positive numbers (got {getattr(s, key)})")
    if base.model.arch != "decoder" or base.objective.name != "causal_lm":
        raise ConfigError("a sweep trains decoders on causal_lm (model.arch=decoder, objective.name=causal_lm)")
    tokens_per_step = base.train.batch_size * base.train.grad_accum * base.objective.seq_len
    runs, notes = [], []
    for n_layer, d_model in shapes(s):
        counts = count_params(run_config(base, n_layer, d_model).model)
        budgets = [(d, None) for d in s.tokens] + [(c / (6 * counts.non_embedding), c) for c in s.compute]
        for tokens, budget in budgets:
            steps = max(1, round(tokens / tokens_per_step))
            if budget is not None and steps < s.min_steps:
                notes.append(f"{n_layer}x{d_model} left out of C={budget:.3g}: {steps} steps < sweep.min_steps")
                continue
            kind = "grid" if budget is None else "isoflop"
            name = f"L{n_layer}-d{d_model}-" + (f"D{tokens:.3g}" if budget is None else f"C{budget:.3g}")
            runs.append(PlannedRun(name, kind, n_layer, d_model, steps, steps * tokens_per_step, counts.total,
                                   counts.non_embedding, budget))  # fmt: skip
    return runs, notes


def finished(out: Path) -> set[str]:
    path = out / "results.csv"
    if not path.exists():
        return set()
    with open(path, newline="") as f:
        return {row["run"] for row in csv.DictReader(f)}


def _append(out: Path, row: dict) -> None:
    path = out / "results.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()


def _train_one(config: Config, run_dir: Path) -> tuple[float, float, float]:
    """Train (or finish) one run; (final train loss, val loss, wall seconds of this call)."""
    from ..train.trainer import train

    start = time.perf_counter()
    result = train(config, run_dir, resume=checkpoint.latest(run_dir) is not None)
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    return rows[-1]["loss"], result.val_loss, time.perf_counter() - start


def sweep(base: Config, out: str | Path, devices: list[str] | None = None, say=print) -> Path:
    """Run every planned run not yet in OUT/results.csv, appending a row as each finishes; OUT/results.csv."""
    from ..train.trainer import resolve_device

    for device in devices or []:  # each, before any run starts in a process of its own
        resolve_device(device, "--devices")
    out = Path(out)
    runs, notes = plan(base)
    for note in notes:
        say(note)
    done = finished(out)
    todo = [r for r in runs if r.name not in done]
    say(f"{len(runs)} runs planned, {len(runs) - len(todo)} already in {out / 'results.csv'}, {len(todo)} to go")
    out.mkdir(parents=True, exist_ok=True)
    devices = devices or [base.train.device]

    def finish(run: PlannedRun, outcome: tuple[float, float, float]) -> None:
        train_loss, val_loss, wall = outcome
        row = {"run": run.name, "kind": run.kind, "n_layer": run.n_layer, "d_model": run.d_model, "N": run.params,
               "N_nonemb": run.non_embedding, "D": run.tokens, "C": f"{run.compute:.6g}",
               "train_loss": f"{train_loss:.5f}", "val_loss": f"{val_loss:.5f}", "wall_s": f"{wall:.1f}"}  # fmt: skip
        _append(out, row)
        say(f"{run.name}: N_nonemb {run.non_embedding:,}, D {run.tokens:,}, C {run.compute:.3g}: val loss "
            f"{val_loss:.4f} ({wall:.0f} s)")  # fmt: skip

    configs = {r.name: run_config(base, r.n_layer, r.d_model, r.steps) for r in todo}
    if len(devices) == 1:
        for run in todo:
            configs[run.name].train.device = devices[0]
            finish(run, _train_one(configs[run.name], out / "runs" / run.name))
        return out / "results.csv"
    # one process per device, each running one run at a time; the parent alone writes results.csv
    free, pending = list(devices), {}
    queue = list(todo)
    with ProcessPoolExecutor(len(devices), mp_context=get_context("spawn")) as pool:
        while queue or pending:
            while queue and free:
                run, device = queue.pop(0), free.pop(0)
                config = configs[run.name]
                config.train.device, config.train.progress = device, False
                pending[pool.submit(_train_one, config, out / "runs" / run.name)] = (run, device)
            complete, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in complete:
                run, device = pending.pop(future)
                free.append(device)
                finish(run, future.result())
    return out / "results.csv"
