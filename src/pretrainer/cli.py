"""The `pretrainer` command line: parse, build a config, call the library."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from .config import load_config
from .errors import CheckpointError, ConfigError, PretrainerError


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML recipe, e.g. configs/gpt-tiny.yaml")
    # a default makes argparse count the overrides as optional (without one it names them among the missing)
    p.add_argument("overrides", nargs="*", default=[], metavar="section.key=value", help="e.g. train.max_steps=200")


def cmd_data(args) -> None:
    from .data.shards import prepare

    shards = prepare(load_config(args.config, args.overrides).data)
    m = shards.manifest
    verb = "up to date" if shards.reused else "written"
    print(
        f"{shards.dir}: {verb}; vocab {m['vocab_size']}, {m['dtype']}, "
        + ", ".join(f"{k} {v['tokens']:,} tokens in {v['documents']} documents" for k, v in m["splits"].items())
    )


def cmd_train(args) -> None:
    from .train.trainer import train

    teacher = [] if args.teacher is None else [f"objective.teacher={args.teacher}"]
    config = load_config(args.config, [*args.overrides, *teacher])
    run_dir = args.run_dir or Path("runs") / Path(args.config).stem
    _report(train(config, run_dir, resume=args.resume), f"{run_dir}/loss.png")


def _report(result, written: str) -> None:
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for the run
        return
    scores = ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in result.scores.items()) or "not evaluated"
    if result.already_finished:
        print(f"{result.run_dir} already finished at step {result.step} ({scores}); raise train.max_steps to train on")
    else:
        print(f"done: step {result.step}, {scores}; {written}")


def cmd_finetune(args) -> None:
    from .train.trainer import finetune

    config = load_config(args.config, args.overrides)
    run_dir = args.run_dir or Path("runs") / Path(args.config).stem
    _report(finetune(config, run_dir, source=args.source, resume=args.resume), f"best: {run_dir}/checkpoints/best")


def cmd_eval(args) -> None:
    from .eval.tasks import baseline, evaluate, scores_file
    from .train.trainer import resolve_device

    if args.baseline is not None:
        if args.run is not None or args.task is None:
            raise ConfigError("--baseline scores no run: give --task NAME (a built-in task) and no RUN")
        result = baseline(args.baseline, args.task, args.split)
        print(f"{args.baseline} baseline (answer: {result['answer']}):")
    elif args.run is None:
        raise ConfigError("eval needs a fine-tuned RUN (or --baseline NAME --task NAME)")
    else:
        result = evaluate(args.run, args.split, args.task, resolve_device(args.device, "--device"))
        print(f"{result['checkpoint']}:")
    for scored in result["tasks"].values() if "tasks" in result else [result]:
        print(f"{scored['task']} {scored['split']} ({scored['examples']:,} examples):")
        for name, value in scored["scores"].items():
            print(f"  {name:12} {value:.4f}")
        if scored.get("no_class"):
            print(f"  ({scored['no_class']:,} generated answers name no label: counted wrong)")
    if args.run is not None:
        print(f"written: {scores_file(args.run, args.split, args.task)}")


def cmd_generate(args) -> None:
    from .convert import load_any
    from .model.generate import check_language_model, check_sampling, generate_text
    from .train.trainer import resolve_device

    if args.num_samples < 1:
        raise ConfigError(f"--num-samples must be at least 1 (got {args.num_samples})")
    temperature = 0.0 if args.greedy else args.temperature
    check_sampling(args.max_new_tokens, temperature, args.top_k, args.top_p)  # before a long load
    device = resolve_device(args.device, "--device")
    model, tokenizer, notes = load_any(args.checkpoint)
    for note in notes:
        print(f"note: {note}")
    check_language_model(model)  # generate() checks too; here it comes first, before the tokenizer's absence
    if tokenizer is None:
        raise CheckpointError(f"'{args.checkpoint}' has no tokenizer.json; generating text needs the model's tokenizer")
    model = model.to(device)
    for i in range(args.num_samples):
        seed = None if args.seed is None else args.seed + i
        text = generate_text(
            model,
            tokenizer,
            args.prompt,
            args.max_new_tokens,
            stop=args.stop,
            temperature=temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=seed,
        )
        print(text if model.config.arch == "encoder_decoder" else args.prompt + text)
        if i + 1 < args.num_samples:
            print("-" * 40)


def cmd_prompt(args) -> None:
    from .convert import load_any
    from .eval.icl import load_prompt_task, prompting_model
    from .eval.prompting import PromptSettings, results_table, run_prompting, write_results

    settings = PromptSettings(
        shots=tuple(_numbers(args.shots, "--shots")),
        seeds=args.seeds,
        cot=args.cot,
        zero_shot_cot=args.zero_shot_cot,
        self_consistency=args.self_consistency,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    data = load_prompt_task(args.task, args.limit, args.sample_seed)
    settings.check(data)  # before a long load
    model, tokenizer, notes = load_any(args.model)
    for note in notes:
        print(f"note: {note}")
    model = prompting_model(model, tokenizer, args.model, args.device, args.precision)
    results = run_prompting(model, tokenizer, data, settings)
    results["model"] = args.model
    print(results_table(results))
    out = Path(args.out) if args.out else Path("runs") / "prompt" / f"{Path(args.model).stem}-{data.task.name}.json"
    print("written: " + ", ".join(map(str, write_results(results, out))))


def _numbers(text: str, flag: str) -> list[int]:
    try:
        return [int(n) for n in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} takes whole numbers separated by commas, like 0,1,4,8 (got {text!r})") from None


def cmd_convert(args) -> None:
    from .convert import convert

    out, notes = convert(args.source, args.destination)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {out}")


def cmd_compare(args) -> None:
    from .train.metrics import compare_runs

    out = Path(args.out)
    rows = compare_runs(args.runs, out, args.metric)
    width = max(len(r["run"]) for r in rows)
    print(f"{'run':{width}s}  {'steps':>6s}  {'last ' + args.metric:>16s}  {'best':>10s}")
    for r in rows:
        print(f"{r['run']:{width}s}  {r['steps']:>6d}  {r['last']:>16.4f}  {r['best']:>10.4f}")
    print(f"written: {out}")


def cmd_scaling_count(args) -> None:
    import json

    from .scaling.flops import count_report

    report = count_report(load_config(args.config, args.overrides))
    m = report["model"]
    if args.json:
        print(json.dumps(report, indent=2))
        return
    if report["note"]:
        print(f"note: {report['note']}")
    shape = f"{m['n_layer']}" + (f"+{m['n_decoder_layer']}" if m["n_decoder_layer"] else "")
    print(f"{args.config}: {m['arch']}, {shape} layers, d_model {m['d_model']}, {m['n_head']} heads, vocab "
          f"{m['vocab_size']}")  # fmt: skip
    for part, n in report["parts"].items():
        print(f"  {part:32s} {n:>15,}")
    print(f"  {'total':32s} {report['total']:>15,}")
    print(f"  {'embedding':32s} {report['embedding']:>15,}   vocabulary and position parameters: tables, output head")
    print(f"  {'non-embedding N':32s} {report['non_embedding']:>15,}   Kaplan's N, for the scaling laws")
    print(f"  {'matmul weights':32s} {report['matmul']:>15,}   every weight a token meets, the output head too")
    inputs, targets = report["input_len"], report["target_len"]
    lengths = f"input {inputs}, target {targets}" if targets else f"context {inputs}"
    print("training FLOPs per token:")
    print(f"  {'6N (Kaplan, for C = 6ND)':32s} {report['kaplan_flops_per_token']:>15,.0f}")
    print(f"  {'model FLOPs (for MFU)':32s} {report['model_flops_per_token']:>15,.0f}   6·matmul weights + attention "
          f"12·L·d·T, {lengths}")  # fmt: skip


def cmd_scaling_sweep(args) -> None:
    from .scaling.sweep import sweep

    config = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / f"sweep-{Path(args.config).stem}"
    devices = args.devices.split(",") if args.devices else None
    results = sweep(config, out, devices)
    print(f"done: {results}; next: pretrainer scaling fit {results} --law chinchilla")


def cmd_scaling_fit(args) -> None:
    import json

    from .files import write_atomic
    from .scaling.fit import fit, read_points
    from .scaling.plots import plot_all

    columns = {}
    for item in args.column:
        key, sep, name = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--column takes KEY=NAME, like --column loss=val_loss (got {item!r})")
        columns[key] = name
    csv_path = Path(args.csv)
    points = read_points(csv_path, columns, args.drop_highest)
    result = fit(points, args.law, args.bootstrap, args.seed, args.variable, args.irreducible)
    out = Path(args.out) if args.out else csv_path.with_name(f"fit-{args.law}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(result, indent=2) + "\n")
    for budget in result.get("left_out", []):
        print(f"note: C={budget['C']:.3g} left out: {budget['why']}")
    print(fit_summary(result))
    runs = csv_path.parent / "runs"
    pictures = plot_all(points, result, out.with_suffix(""), runs if runs.is_dir() else None)
    print("written: " + ", ".join(map(str, [out, *pictures])))


def fit_summary(fit: dict) -> str:
    names = {"chinchilla": ("E", "A", "B", "alpha", "beta", "a", "b"), "kaplan": ("alpha", "X_c", "E"),
             "isoflop": ("a", "b", "loss_exponent"), "envelope": ("a", "b", "loss_exponent")}[fit["law"]]  # fmt: skip
    intervals = fit.get("intervals", {})
    parts = []
    for name in names:
        low_high = f" [{intervals[name][0]:.4g}, {intervals[name][1]:.4g}]" if name in intervals else ""
        parts.append(f"{name} = {fit[name]:.4g}{low_high}")
    law = fit["law"] + (f" L({fit['variable']})" if fit["law"] == "kaplan" else "")
    return f"{law} fit on {fit['points']} points (objective {fit['objective']:.4g}): " + ", ".join(parts)


def cmd_scaling_predict(args) -> None:
    import json

    from .scaling.fit import predict

    try:
        fit = json.loads(Path(args.fit).read_text())
    except FileNotFoundError:
        raise ConfigError(f"no fit at {args.fit}; make one with pretrainer scaling fit") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{args.fit} is not a FIT.json of pretrainer scaling fit (not JSON)") from None
    result = predict(fit, args.compute)
    if args.json:
        print(json.dumps(result, indent=2))
    elif result["N_opt"] is None:
        print(f"C = {result['compute']:.3g} FLOPs: loss {result['loss']:.4f} (a kaplan L(C) fit gives no allocation)")
    else:
        print(
            f"C = {result['compute']:.3g} FLOPs: N_opt {result['N_opt']:.4g} parameters, D_opt {result['D_opt']:.4g} "
            f"tokens ({result['tokens_per_parameter']:.1f} tokens per parameter), loss {result['loss']:.4f}"
        )


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line, like every other user error, and takes no
    abbreviations (--resum would silently mean --resume)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message):
        raise PretrainerError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="pretrainer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pretrainer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="fetch or read a corpus, train a tokenizer, write token shards")
    _config_args(p)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="pretrain a model from a config")
    _config_args(p)
    p.add_argument(
        "--from",
        dest="teacher",
        help="distil from this teacher, a run or checkpoint folder of an MLM encoder (objective.teacher)",
    )
    p.add_argument("--run-dir", help="where metrics, checkpoints and plots go (default runs/CONFIG_NAME)")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", help="adapt a pretrained model to a task: a head, or text to text for T5")
    _config_args(p)
    p.add_argument(
        "--from",
        dest="source",
        help="the pretrained model: a run or checkpoint folder, a transformers folder, a .gguf file, or minilm | "
        "smollm2 (default: the recipe's finetune.source; none: from scratch)",
    )
    p.add_argument("--run-dir", help="where metrics, checkpoints and plots go (default runs/CONFIG_NAME)")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("eval", help="score a fine-tuned run on a split of its task (accuracy, F1, ROUGE, ...)")
    p.add_argument("run", nargs="?", help="a fine-tuned run folder (its best checkpoint) or a checkpoint folder")
    p.add_argument("--split", default="test", help="train, validation or test (default test)")
    p.add_argument("--task", help="a built-in task to score on instead of the run's own (a mixture's: one of them)")
    p.add_argument("--baseline", help="score a model-free answer on --task instead: majority | first-line")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="continue a prompt with a trained model")
    p.add_argument(
        "checkpoint", help="a run or checkpoint folder, a transformers folder, a .gguf file, or smollm2 (built in)"
    )
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--stop", action="append", default=[], help="stop before this string (repeatable)")
    p.add_argument("--seed", type=int)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("prompt", help="ask a model a task in k-shot prompts, without training (in-context learning)")
    p.add_argument(
        "model", help="a run or checkpoint folder, a transformers folder, a .gguf file, or smollm2 (built in)"
    )
    p.add_argument("task", help="a task YAML file, or built in: tweets-sentiment, addition, last-letters, reversal, "
                   "coin-flip")  # fmt: skip
    p.add_argument("--shots", default="0", help="numbers of demonstrations, comma-separated (default 0; e.g. 0,1,4,8)")
    p.add_argument("--seeds", type=int, default=1, help="demonstration draws per k (default 1)")
    p.add_argument("--limit", type=int, help="ask this many queries, a seeded random sample (default: all)")
    p.add_argument("--sample-seed", type=int, default=0, help="the seed of that sample (default 0)")
    p.add_argument("--cot", action="store_true", help="chain of thought: demonstrations with their rationales")
    p.add_argument("--zero-shot-cot", action="store_true", help='"Let\'s think step by step.", then the answer')
    p.add_argument("--self-consistency", type=int, default=0, metavar="N", help="majority vote of N sampled paths")
    p.add_argument("--temperature", type=float, default=0.7, help="of self-consistency's samples (default 0.7)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="of a generated answer (default 128)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--out", help="results JSON, a PNG beside it (default runs/prompt/MODEL-TASK.json)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_prompt)

    p = sub.add_parser("compare", help="runs' validation curves in one picture, and their last and best values")
    p.add_argument("runs", nargs="+", help="run folders (each with its metrics.jsonl)")
    p.add_argument("--metric", default="val_loss", help="a number the runs log: val_loss (default), val_ppl, ...")
    p.add_argument("--out", default="compare.png", help="the PNG to write (default compare.png)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("convert", help="to and from Hugging Face transformers checkpoints (safetensors, GGUF)")
    p.add_argument(
        "source",
        help="a run/checkpoint folder of ours, a transformers folder, a .gguf file, or "
        "a built-in checkpoint: minilm (BERT), smollm2 (Llama GGUF)",
    )
    p.add_argument("destination", help="the folder to write (must not exist)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("scaling", help="parameter and FLOP counts, sweeps, scaling-law fits and predictions")
    scaling = p.add_subparsers(dest="scaling_command", required=True)
    p = scaling.add_parser("count", help="parameters by part, embedding and not, and training FLOPs per token")
    _config_args(p)
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.set_defaults(func=cmd_scaling_count)

    p = scaling.add_parser("sweep", help="train the runs of a recipe's sweep section; one row each in results.csv")
    _config_args(p)
    p.add_argument("--out", help="the sweep's folder (default runs/sweep-CONFIG_NAME); rerun to resume")
    p.add_argument("--devices", help="run this many at once, one per device: cuda:0,cuda:1 (default train.device)")
    p.set_defaults(func=cmd_scaling_sweep)

    p = scaling.add_parser("fit", help="fit a scaling law to a CSV of runs (a sweep's results.csv or any table)")
    p.add_argument("csv", help="one row per run")
    p.add_argument("--law", required=True, help="kaplan | chinchilla (approach 3) | isoflop (2) | envelope (1)")
    p.add_argument("--column", action="append", default=[], metavar="KEY=NAME",
                   help="the CSV's column for N, D, C or loss (default N=N_nonemb D=D C=C loss=val_loss)")  # fmt: skip
    p.add_argument("--drop-highest", type=int, default=0, metavar="K", help="leave out the K highest losses")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N", help="95%% intervals from N resamples")
    p.add_argument("--seed", type=int, default=0, help="of the bootstrap resamples")
    p.add_argument("--variable", default="C", help="kaplan: L of N, D or C (default C)")
    p.add_argument("--irreducible", action="store_true", help="kaplan: add an irreducible loss E")
    p.add_argument("--out", help="FIT.json; the plots go beside it (default fit-LAW.json beside the CSV)")
    p.set_defaults(func=cmd_scaling_fit)

    p = scaling.add_parser("predict", help="the compute-optimal size, tokens and loss at a budget, from a fit")
    p.add_argument("fit", help="a FIT.json of pretrainer scaling fit")
    p.add_argument("--compute", type=float, required=True, help="the budget in FLOPs, e.g. 1e21")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_scaling_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user's mistake is one line on stderr and exit status 2 (a bug keeps its traceback)."""
    warnings.simplefilter("default")
    warnings.formatwarning = lambda message, category, *a, **k: f"warning: {message}\n"
    try:
        parser = build_parser()
        # overrides may come after options (train CFG --run-dir D a.b=1), which argparse alone rejects
        args, extra = parser.parse_known_args(argv)
        unknown = [e for e in extra if e.startswith("-") or not hasattr(args, "overrides")]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        if extra:
            args.overrides += extra
        args.func(args)
    except PretrainerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; a run continues from its last checkpoint with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
