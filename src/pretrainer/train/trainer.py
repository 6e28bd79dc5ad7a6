"""The training loop: one loop for every objective.

AdamW with decay/no-decay groups, linear warmup then cosine decay, gradient accumulation, clipping,
bf16 autocast, periodic evaluation and checkpoints, and an exact resume: step, schedule, data cursor,
optimizer and RNG all continue from a checkpoint as if the run had never stopped.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import Config, to_yaml
from ..data.objectives import make_objective
from ..data.shards import Prefetcher, Shards, TokenWindows, batch_maker, prepare
from ..errors import ConfigError, TrainingError
from ..eval.metrics import perplexity
from ..model import build_model
from ..scaling.flops import count_params, flops_per_token, peak_flops
from . import checkpoint
from .metrics import MetricsLog, plot_loss


@dataclass
class RunResult:
    run_dir: Path
    step: int
    val_loss: float | None
    shards: Shards
    scores: dict  # the last evaluation's numbers


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available; use train.device=cpu or auto")
    return torch.device(name)


def learning_rate(step: int, config: Config) -> float:
    """Linear warmup to train.lr over warmup_steps, then cosine decay to train.min_lr at max_steps."""
    t = config.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
    return t.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (t.lr - t.min_lr)


def make_optimizer(model: torch.nn.Module, config: Config, device: torch.device) -> torch.optim.AdamW:
    """Weight decay on matrices (linear and embedding weights); none on biases and norm gains."""
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    t = config.train
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=t.lr,
        betas=(t.beta1, t.beta2),
        fused=True,  # one kernel for all tensors, on CPU too: ~3x faster than the loop over parameters
    )


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _check_resumable(saved: Config, config: Config) -> None:
    differences = []
    for section in ("model", "data", "objective"):
        ours, theirs = dataclasses.asdict(getattr(config, section)), dataclasses.asdict(getattr(saved, section))
        for key, value in theirs.items():
            if key == "vocab_size" and section == "model" and ours[key] is None:
                continue
            if ours[key] != value:
                differences.append(f"{section}.{key} is {value!r} in the checkpoint but {ours[key]!r} now")
    if differences:
        raise checkpoint.CheckpointError(
            f"checkpoint does not match the config: {', '.join(differences)}; resume with the run's own "
            "config.yaml or start a new --run-dir"
        )


@torch.no_grad()
def evaluate(model, make_batch, n_examples: int, config: Config, device, autocast) -> dict[str, float]:
    """Mean loss (and MLM accuracy for an encoder) over the same `eval.batches` validation batches every time
    (fewer if the validation split is small)."""
    model.eval()
    b = min(config.train.batch_size, n_examples)
    n_batches = max(1, min(config.eval.batches, n_examples // b))
    total = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    masked = torch.zeros((), device=device)
    for i in range(n_batches):
        batch = {k: v.to(device) for k, v in make_batch(i * b, b).items()}
        with autocast():
            _, loss = model(**batch)
            if config.model.arch == "encoder":
                inputs = {k: v for k, v in batch.items() if k != "nsp_labels"}
                targets = batch["targets"]
                correct += (model.mlm_predictions(**inputs) == targets[targets != -100]).sum()
                masked += (targets != -100).sum()
        total += loss.float()
    model.train()
    result = {"val_loss": total.item() / n_batches}
    if config.model.arch == "encoder":
        result["val_mlm_accuracy"] = correct.item() / max(1.0, masked.item())
    return result


def train(config: Config, run_dir: str | Path = "runs/default", resume: bool = False) -> RunResult:
    """Pretrain the model `config` describes; write metrics, checkpoints and loss.png to `run_dir`."""
    run_dir = Path(run_dir)
    t = config.train
    device = resolve_device(t.device)
    ckpt = None
    if resume:
        ckpt = checkpoint.latest(run_dir)
        if ckpt is None:
            raise checkpoint.CheckpointError(
                f"--resume: no checkpoint in '{run_dir}/checkpoints'; run without --resume to start it"
            )
        _check_resumable(checkpoint.read_config(ckpt), config)
    elif checkpoint.latest(run_dir) is not None:
        raise checkpoint.CheckpointError(
            f"'{run_dir}' already holds a run with checkpoints; pass --resume to continue it, or choose "
            "another --run-dir"
        )

    shards = prepare(config.data)
    tokenizer_vocab = shards.manifest["vocab_size"]
    if config.model.vocab_size is None:
        config.model.vocab_size = 64 * math.ceil(tokenizer_vocab / 64)
    elif config.model.vocab_size < tokenizer_vocab:
        raise ConfigError(
            f"model.vocab_size={config.model.vocab_size} is smaller than the tokenizer's {tokenizer_vocab} "
            "tokens; raise it or leave it unset"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(config))

    torch.manual_seed(t.seed)
    model = build_model(config.model).to(device)
    optimizer = make_optimizer(model, config, device)
    step, sample = 0, 0
    if ckpt is not None:
        from safetensors.torch import load_model

        load_model(model, str(ckpt / "model.safetensors"), device=str(device))
        state = checkpoint.load_state(ckpt)
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"], device)
        step, sample = state["step"], state["sample"]

    objective = make_objective(config, shards.tokenizer)
    train_windows = TokenWindows(shards.tokens("train"), objective.window, objective.stride, t.seed, "train")
    val_windows = TokenWindows(shards.tokens("val"), objective.window, objective.stride, t.seed + 1, "val")
    make_val_batch = batch_maker(objective, val_windows, t.seed + 1)
    dtype = torch.bfloat16 if t.precision == "bf16" else torch.float32

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16")

    forward = torch.compile(model) if t.compile else model
    tokens_per_step = t.batch_size * t.grad_accum * objective.tokens_per_example
    fpt = flops_per_token(config.model, count_params(model, embeddings=False), config.objective.seq_len)
    flops_per_step = fpt * tokens_per_step
    peak = peak_flops(device, dtype)
    log = MetricsLog(run_dir, keep_until_step=step if ckpt is not None else None)
    prefetch = Prefetcher(batch_maker(objective, train_windows, t.seed), sample, t.batch_size)
    bar = tqdm(total=t.max_steps, initial=step, disable=not t.progress, unit="step", dynamic_ncols=True)
    scores: dict = {}
    loss_sum = torch.zeros((), device=device)
    window_start, window_steps = time.perf_counter(), 0
    model.train()
    try:
        while step < t.max_steps:
            lr = learning_rate(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            for _ in range(t.grad_accum):
                batch = {k: v.to(device, non_blocking=True) for k, v in prefetch.next().items()}
                with autocast():
                    _, loss = forward(**batch)
                (loss / t.grad_accum).backward()
                loss_sum += loss.detach()
            sample += t.batch_size * t.grad_accum
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window_steps += 1

            if step % t.log_every == 0 or step == t.max_steps:
                loss_value = loss_sum.item() / (window_steps * t.grad_accum)  # the only sync per log interval
                if not math.isfinite(loss_value):
                    raise TrainingError(
                        f"loss is {loss_value} at step {step}; lower train.lr (or use train.precision=fp32) and "
                        "--resume from the last checkpoint, or start again"
                    )
                elapsed = time.perf_counter() - window_start
                tok_s = window_steps * tokens_per_step / elapsed
                row = {
                    "step": step,
                    "loss": loss_value,
                    "lr": lr,
                    "tokens": step * tokens_per_step,
                    "tok_per_s": round(tok_s, 1),
                }
                if peak:
                    row["mfu"] = round(window_steps * flops_per_step / elapsed / peak, 4)
                log.log(row)
                bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tok_s:,.0f}")
                loss_sum.zero_()
                window_start, window_steps = time.perf_counter(), 0
            bar.update(1)

            if step % t.eval_every == 0 or step == t.max_steps:
                scores = evaluate(model, make_val_batch, val_windows.per_epoch, config, device, autocast)
                val_loss = scores["val_loss"]
                log.log({"step": step, **scores, "val_ppl": round(perplexity(val_loss), 3)})
                accuracy = f", MLM accuracy {scores['val_mlm_accuracy']:.1%}" if "val_mlm_accuracy" in scores else ""
                bar.write(f"step {step}: val loss {val_loss:.4f} (ppl {perplexity(val_loss):.1f}){accuracy}")
            if step % t.save_every == 0 or step == t.max_steps:
                state = {"step": step, "sample": sample, "optimizer": optimizer.state_dict(), "rng": _rng_state(device)}
                checkpoint.save(run_dir, step, model, config, shards.tokenizer, state, t.keep_last)
                window_start = time.perf_counter()  # do not bill checkpoint time to throughput
    finally:
        prefetch.close()
        bar.close()
        log.close()
    plot_loss(run_dir)
    return RunResult(run_dir, step, scores.get("val_loss"), shards, scores)
