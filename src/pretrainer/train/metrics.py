"""What a run reports: metrics.jsonl rows, TensorBoard events (when installed), and loss.png."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError, DataError
from ..files import atomic_file, write_atomic


class MetricsLog:
    def __init__(self, run_dir: Path, keep_until_step: int | None = None):
        """Append to RUN_DIR/metrics.jsonl. On resume, rows after the checkpoint's step (written by the
        interrupted run and about to be redone) are dropped first, and so is a line a kill cut short."""
        self.path = Path(run_dir) / "metrics.jsonl"
        if keep_until_step is None:
            self.path.write_text("")
        elif self.path.exists():
            rows = [r for r in read_metrics(self.path) if r["step"] <= keep_until_step]
            write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in rows))
        self._file = open(self.path, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        except ImportError:  # tensorboard is optional
            self._tb = None

    def log(self, row: dict) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float):
                    self._tb.add_scalar(key, value, row["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NoMetrics:
    """What the other ranks of a many-process run log: nothing (rank 0 writes metrics.jsonl)."""

    def log(self, row: dict) -> None:
        pass

    def __enter__(self) -> NoMetrics:
        return self

    def __exit__(self, *exc) -> None:
        pass


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl; a last line without its newline (the writer was killed mid-row) is left out."""
    text = Path(path).read_text(errors="replace")
    complete = text[: text.rfind("\n") + 1]
    rows = []
    for n, line in enumerate(complete.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not a JSON row ({e.msg}); a metrics.jsonl holds one JSON object per "
                            "line") from None  # fmt: skip
    return rows


def plot_loss(run_dir: Path) -> Path:
    """RUN_DIR/loss.png: training and validation loss against step, and each validation group's apart (a
    mixture's tasks, synthetic:induction's two halves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if train:
        ax.plot(*zip(*train, strict=True), label="train", lw=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation", ms=3)
    groups = dict.fromkeys(k for r in rows for k in r if k.startswith("val_loss_"))
    for key in groups:
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(
            *zip(*points, strict=True),
            "--",
            label=f"validation, {key.removeprefix('val_loss_').replace('_', ' ')}",
            lw=1,
        )
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(run_dir) / "loss.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def compare_runs(run_dirs: list[Path], out: Path, metric: str = "val_loss") -> list[dict]:
    """OUT (a PNG): `metric` against step for each run, one curve per run; returns each run's last and best value.
    Runs of one recipe's shape (the same batch, say a dense model and its mixture of experts) line up step by step."""
    if Path(out).suffix.lower() != ".png" or Path(out).is_dir():
        raise ConfigError(f"--out {out} should name the PNG file to write, like compare.png")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    for run in map(Path, run_dirs):
        if not (run / "metrics.jsonl").is_file():
            raise DataError(f"'{run}' has no metrics.jsonl: give the folders of runs (pretrainer train --run-dir)")
        points = [(r["step"], r[metric]) for r in read_metrics(run / "metrics.jsonl") if metric in r]
        if not points:
            raise DataError(f"'{run}/metrics.jsonl' has no {metric}; its numbers are named like val_loss, val_ppl")
        curves[run.name] = points
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in curves.items():
        ax.plot(*zip(*points, strict=True), "o-", label=name, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out, "wb") as f:
        fig.savefig(f, dpi=120, format="png")
    plt.close(fig)
    best = min if "loss" in metric or "ppl" in metric else max
    return [
        {"run": name, "steps": points[-1][0], "last": points[-1][1], "best": best(v for _, v in points)}
        for name, points in curves.items()
    ]
