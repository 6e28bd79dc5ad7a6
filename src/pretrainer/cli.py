"""The `pretrainer` command line: parse, build a config, call the library."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .config import load_config
from .errors import CheckpointError, ConfigError, PretrainerError


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML recipe, e.g. configs/gpt-tiny.yaml")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. train.max_steps=200")


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

    config = load_config(args.config, args.overrides)
    run_dir = args.run_dir or Path("runs") / Path(args.config).stem
    _report(train(config, run_dir, resume=args.resume), f"{run_dir}/loss.png")


def _report(result, written: str) -> None:
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
    from .eval.tasks import baseline, evaluate
    from .train.trainer import resolve_device

    if args.baseline is not None:
        if args.run is not None or args.task is None:
            raise ConfigError("--baseline scores no run: give --task NAME (a built-in task) and no RUN")
        result = baseline(args.baseline, args.task, args.split)
        print(f"{args.baseline} baseline (answer: {result['answer']}):")
    elif args.run is None:
        raise ConfigError("eval needs a fine-tuned RUN (or --baseline NAME --task NAME)")
    else:
        result = evaluate(args.run, args.split, args.task, resolve_device(args.device))
        print(f"{result['checkpoint']}:")
    for scored in result["tasks"].values() if "tasks" in result else [result]:
        print(f"{scored['task']} {scored['split']} ({scored['examples']:,} examples):")
        for name, value in scored["scores"].items():
            print(f"  {name:12} {value:.4f}")
        if scored.get("no_class"):
            print(f"  ({scored['no_class']:,} generated answers name no label: counted wrong)")
    if args.run is not None:
        print(f"written: {Path(args.run) / ('eval-' + args.split + '.json')}")


def cmd_generate(args) -> None:
    from .model.generate import check_sampling, generate_text
    from .train.checkpoint import load
    from .train.trainer import resolve_device

    if args.num_samples < 1:
        raise ConfigError(f"--num-samples must be at least 1 (got {args.num_samples})")
    temperature = 0.0 if args.greedy else args.temperature
    check_sampling(args.max_new_tokens, temperature, args.top_k, args.top_p)  # before a long load
    model, tokenizer, _ = load(args.checkpoint, resolve_device(args.device), archs=("decoder", "encoder_decoder"))
    if tokenizer is None:
        raise CheckpointError(f"'{args.checkpoint}' has no tokenizer.json; generating text needs the model's tokenizer")
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


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line, like every other user error, and takes no
    abbreviations (--resum would silently mean --resume)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message):
        raise PretrainerError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pretrainer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="fetch or read a corpus, train a tokenizer, write token shards")
    _config_args(p)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="pretrain a model from a config")
    _config_args(p)
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
    p.add_argument("checkpoint", help="a run folder (its latest checkpoint) or a checkpoint folder")
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

    p = sub.add_parser("convert", help="to and from Hugging Face transformers checkpoints (safetensors, GGUF)")
    p.add_argument(
        "source",
        help="a run/checkpoint folder of ours, a transformers folder, a .gguf file, or "
        "a built-in checkpoint: minilm (BERT), smollm2 (Llama GGUF)",
    )
    p.add_argument("destination", help="the folder to write (must not exist)")
    p.set_defaults(func=cmd_convert)
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
