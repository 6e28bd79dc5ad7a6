"""Interleaved timing shared by the benchmarks: contenders alternate in rounds, who goes first alternating too, and
a ratio is the median of the rounds' ratios (each compares calls made back to back, so the machine's drift cancels
out). Imported as `timing` by the scripts beside it (`python benchmarks/NAME.py`)."""

from __future__ import annotations

import statistics
import time


def rounds(contenders: dict, n_rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each contender, per round, alternating who goes first."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(n_rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return times


def summary(what: str, unit: str, work: float, times: dict[str, list[float]], target: float | None,
            ours: str = "ours", theirs: str = "theirs") -> str:  # fmt: skip
    ratios = sorted(t / o for o, t in zip(times[ours], times[theirs], strict=True))
    median = statistics.median(ratios)
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [median, median, median]
    verdict = "—" if target is None else f"≥ {target}× " + ("met" if median >= target else "**missed**")
    return (
        f"| {what} | {work / statistics.median(times[ours]):,.1f} | {work / statistics.median(times[theirs]):,.1f} | "
        f"**{median:.2f}×** ({quartiles[0]:.2f}–{quartiles[2]:.2f}) | {verdict} | {unit} |"
    )
