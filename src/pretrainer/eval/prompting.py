"""`pretrainer prompt`: a model asked a task's queries with k demonstrations, for every k and seed, without a weight
update; accuracy per k with its standard error across seeds, as a table, JSON and a PNG.

    data = load_prompt_task("tweets-sentiment", limit=300)
    results = run_prompting(model, tokenizer, data, PromptSettings(shots=(0, 1, 4, 8), seeds=3))
    print(results_table(results)); write_results(results, "runs/prompt/tweets.json")

A task with choices is scored by the log-likelihood of each choice after the prompt (`acc`, and `acc_norm` per
character); otherwise, or with chain of thought, zero-shot CoT or self-consistency, the model writes its answer,
which the task's regex extracts.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import statistics
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from ..errors import ConfigError, DataError
from ..files import atomic_file, write_atomic
from ..model.generate import check_language_model
from .icl import (
    STEP_BY_STEP,
    PromptData,
    answers_by_generation,
    choose,
    continuation_logprobs,
    demonstrations,
    fit_prompt,
    same_answer,
    self_consistency,
    template_fields,
    zero_shot_cot,
)


@dataclass
class PromptSettings:
    shots: tuple[int, ...] = (0,)  # the numbers of demonstrations, k
    seeds: int = 1  # demonstration draws per k (a k of 0 draws none: it runs once unless it samples)
    cot: bool = False  # demonstrations with their rationales; the answer is generated, then extracted
    zero_shot_cot: bool = False  # "Let's think step by step." after the query, then "Therefore, the answer is"
    self_consistency: int = 0  # N > 0: N sampled paths per query and their majority vote (maj@N)
    temperature: float = 0.7  # of self-consistency's sampling
    max_new_tokens: int = 128  # of a generated answer or reasoning
    batch_size: int = 16

    @property
    def generates(self) -> bool:
        return self.cot or self.zero_shot_cot or self.self_consistency > 0

    def check(self, data: PromptData) -> None:
        if not self.shots or any(k < 0 for k in self.shots):
            raise ConfigError(f"--shots takes numbers of demonstrations, 0 or more (got {list(self.shots)})")
        if len(set(self.shots)) < len(self.shots):
            raise ConfigError(f"--shots names a k more than once (got {list(self.shots)}); each k is one row of the "
                              "table, its --seeds the draws")  # fmt: skip
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be at least 1 (got {self.seeds})")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1 (got {self.max_new_tokens}); an answer needs one")
        if self.self_consistency < 0:
            raise ConfigError(f"--self-consistency takes a number of sampled paths (got {self.self_consistency})")
        if self.self_consistency and not self.temperature > 0:
            raise ConfigError(
                f"self-consistency samples its paths: give a --temperature above 0 (got {self.temperature})"
            )
        missing = [f for f in template_fields(data.task.rationale) if f not in data.pool[0]]
        if self.cot and missing:
            raise ConfigError(
                f"--cot shows worked demonstrations, but task {data.task.name}'s examples have no "
                f"{', '.join(missing)} field for its rationale template {data.task.rationale!r}; add rationales to "
                "the data, or leave out --cot"
            )


def run_prompting(model, tokenizer, data: PromptData, settings: PromptSettings, progress: bool = True) -> dict:
    """Every (k, seed) run of `settings` over the task's queries: the per-run accuracy and predictions, and a table
    of accuracy per k (mean over seeds ± its standard error; over queries when there is one seed)."""
    check_language_model(model)
    settings.check(data)
    task, queries = data.task, data.queries
    scoring = bool(task.choices) and not settings.generates
    if not scoring and settings.max_new_tokens > model.config.max_seq_len // 2:
        settings = dataclasses.replace(settings, max_new_tokens=model.config.max_seq_len // 2)
        warnings.warn(f"the model has {model.config.max_seq_len} positions: answers are cut at "
                      f"{settings.max_new_tokens} tokens, to leave half for the prompt", stacklevel=2)  # fmt: skip
    count = lambda text: len(tokenizer.encode(text).ids)  # as generation encodes a prompt
    limit = _prompt_limit(model, tokenizer, data, settings, scoring)
    trigger = STEP_BY_STEP if settings.zero_shot_cot else ""
    sampling = settings.self_consistency > 0
    runs = [(k, seed) for k in settings.shots for seed in (range(settings.seeds) if k or sampling else [0])]
    golds = [task.gold(q) for q in queries]
    results = {
        "task": task.name,
        "source": data.source,
        "mode": "log-likelihood of each choice" if scoring else "generation, then extraction",
        "settings": asdict(settings),
        "queries": len(queries),
        "prompt_limit_tokens": limit,
        "runs": [],
    }
    if task.choices:
        counts = Counter(golds)
        results["class_counts"] = {c: counts[c] for c in task.choices}
        results["majority"] = max(counts.values()) / len(queries)
    planned = []  # every prompt first: a query that cannot fit is said before any model runs
    for k, seed in runs:
        fitted = [fit_prompt(task, demonstrations(task, data.pool, k, seed, query) if k else [], query, count, limit,
                             settings.cot, trigger) for query in queries]  # fmt: skip
        prompts, dropped = [p for p, _ in fitted], [d for _, d in fitted]
        if any(dropped):
            warnings.warn(
                f"k={k} seed {seed}: {sum(map(bool, dropped))} of {len(prompts)} prompts drop demonstrations "
                f"({sum(dropped)} in all) to fit {limit} tokens",
                stacklevel=2,
            )
        planned.append((k, seed, prompts, dropped))
    bar = tqdm(total=len(runs) * len(queries), unit="prompt", disable=not progress, dynamic_ncols=True)
    for k, seed, prompts, dropped in planned:
        bar.set_description(f"k={k} seed={seed}")
        run = {"k": k, "seed": seed, "prompts_with_dropped_demonstrations": sum(map(bool, dropped))}
        if scoring:
            run.update(_score_choices(model, tokenizer, data, prompts, settings.batch_size, bar))
        else:
            run.update(_generate_answers(model, tokenizer, data, prompts, settings, seed, bar))
        results["runs"].append(run)
    bar.close()
    results["table"] = _table(results["runs"], len(queries))
    return results


def _prompt_limit(model, tokenizer, data: PromptData, settings: PromptSettings, scoring: bool) -> int:
    """The tokens a prompt may take: the model's positions, less (for a decoder) room for what follows it."""
    if model.config.arch == "encoder_decoder":
        return model.config.max_seq_len  # the encoder reads the prompt; the decoder has its own positions
    if scoring:
        choice_tokens = (len(tokenizer.encode(data.task.continuation(q, c)).ids) for q in data.queries[:50]
                         for c in data.task.choices)  # fmt: skip
        room = max(choice_tokens) + 1  # the seam can add a token
    else:
        room = settings.max_new_tokens + (24 if settings.zero_shot_cot else 0)  # + "Therefore, the answer is ..."
    return model.config.max_seq_len - room


def _score_choices(model, tokenizer, data: PromptData, prompts: list[str], batch_size: int, bar) -> dict:
    task = data.task
    picks, picks_norm = [], []
    for first in range(0, len(prompts), batch_size):  # chunks, for the progress bar
        chunk = range(first, min(first + batch_size, len(prompts)))
        requests = [(prompts[i], task.continuation(data.queries[i], c)) for i in chunk for c in task.choices]
        scores = continuation_logprobs(model, tokenizer, requests, batch_size * len(task.choices))
        for n, _ in enumerate(chunk):
            logprobs = [lp for lp, _ in scores[n * len(task.choices) : (n + 1) * len(task.choices)]]
            best, best_norm = choose(logprobs, list(task.choices))
            picks.append(task.choices[best])
            picks_norm.append(task.choices[best_norm])
        bar.update(len(chunk))
    golds = [task.gold(q) for q in data.queries]
    return {
        "acc": _mean(p == g for p, g in zip(picks, golds, strict=True)),
        "acc_norm": _mean(p == g for p, g in zip(picks_norm, golds, strict=True)),
        "predictions": [
            {"gold": g, "pick": p, "pick_norm": pn} for g, p, pn in zip(golds, picks, picks_norm, strict=True)
        ],
    }


def _generate_answers(model, tokenizer, data: PromptData, prompts: list[str], settings: PromptSettings, seed: int,
                      bar) -> dict:  # fmt: skip
    task, paths = data.task, settings.self_consistency
    how = zero_shot_cot if settings.zero_shot_cot else answers_by_generation
    sampling = {"temperature": settings.temperature, "seed": seed} if paths else {"temperature": 0.0}
    answer = functools.partial(how, model, tokenizer, task, max_new_tokens=settings.max_new_tokens,
                               batch_size=settings.batch_size, **sampling)  # fmt: skip
    outputs = []
    step = max(1, settings.batch_size // max(1, paths))  # queries per call: a batch holds all of a query's paths
    for first in range(0, len(prompts), step):
        chunk = prompts[first : first + step]
        outputs += self_consistency(answer, chunk, paths) if paths else answer(chunk)
        bar.update(len(chunk))
    golds = [task.gold(q) for q in data.queries]
    predictions = []
    for gold, out in zip(golds, outputs, strict=True):
        kept = {"gold": gold, "answer": out["answer"], "correct": same_answer(out["answer"], gold)}
        if paths:
            kept["counts"] = out["counts"]  # the answer distribution over the sampled paths
        else:
            kept["text"] = out.get("reasoning", "") + (f"\n{out['text']}" if "reasoning" in out else out["text"])
        predictions.append(kept)
    return {
        "acc": _mean(p["correct"] for p in predictions),
        "no_answer": sum(p["answer"] is None for p in predictions),
        "predictions": predictions,
    }


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _table(runs: list[dict], queries: int) -> list[dict]:
    """Per k: the mean over seeds of each score, and its standard error: across seeds (their standard deviation
    over the square root of their number) or, with one run, over queries (binomial: sqrt(p(1 - p) / n))."""
    table = []
    for k in dict.fromkeys(r["k"] for r in runs):
        of_k = [r for r in runs if r["k"] == k]
        row = {"k": k, "seeds": len(of_k), "se_over": "seeds" if len(of_k) > 1 else "queries"}
        for score in ("acc", "acc_norm"):
            if score not in of_k[0]:
                continue
            values = [r[score] for r in of_k]
            mean = statistics.fmean(values)
            se = (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1
                  else math.sqrt(mean * (1 - mean) / queries))  # fmt: skip
            row[score], row[f"{score}_se"] = mean, se
        row["prompts_with_dropped_demonstrations"] = sum(r["prompts_with_dropped_demonstrations"] for r in of_k)
        table.append(row)
    return table


def results_table(results: dict) -> str:
    """The results as lines of text: what was asked, then accuracy per k."""
    lines = [f"{results['task']}: {results['queries']} queries; {results['mode']}"]
    if "class_counts" in results:
        counts = ", ".join(f"{c} {n}" for c, n in results["class_counts"].items())
        lines.append(f"answers: {counts}; always the commonest: {results['majority']:.3f}")
    scores = [s for s in ("acc", "acc_norm") if s in results["table"][0]]
    lines.append(f"{'k':>3}  " + "  ".join(f"{s:>15}" for s in scores) + "  seeds")
    for row in results["table"]:
        cells = "  ".join(f"{row[s]:>7.3f} ± {row[s + '_se']:.3f}" for s in scores)
        cut = row["prompts_with_dropped_demonstrations"]
        lines.append(f"{row['k']:>3}  {cells}  {row['seeds']:>5}" + (f"  ({cut} prompts cut)" if cut else ""))
    lines.append("± standard error across seeds (over queries where a k has one run)")
    return "\n".join(lines)


def write_results(results: dict, out: str | Path) -> tuple[Path, Path]:
    """The results as JSON at `out` and a PNG of accuracy against k beside it (same name, .png)."""
    out = Path(out)
    if out.suffix != ".json":
        raise ConfigError(f"--out '{out}' should name a .json file (the PNG goes beside it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    return out, plot_accuracy(results, out.with_suffix(".png"))


def plot_accuracy(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = results["table"]
    if not table:
        raise DataError("no results to plot")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ks = [row["k"] for row in table]
    for score in ("acc", "acc_norm"):
        if score in table[0]:
            ax.errorbar(ks, [r[score] for r in table], yerr=[r[score + "_se"] for r in table], marker="o",
                        capsize=3, label=score)  # fmt: skip
    if "majority" in results:
        ax.axhline(results["majority"], color="grey", linestyle="--", linewidth=1, label="always the commonest")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("demonstrations in the prompt (k)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"{results['task']} ({results['queries']} queries)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path
