"""The training loop: one loop for every objective.

AdamW with decay/no-decay groups, linear warmup then cosine decay, gradient accumulation, clipping,
bf16 autocast, periodic evaluation and checkpoints, and an exact resume: step, schedule, data cursor,
optimizer, RNG and the partly filled logging window all continue from a checkpoint as if the run had never
stopped. `Trainer` splits a run into setup, `train_step`, `log`, `evaluate` and `save`; the model is asked for
its own validation numbers (`eval_sums`), so the loop never branches on the kind of model.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import DEVICES, Config, ModelConfig, to_yaml, validate
from ..convert import load_any
from ..data.objectives import make_objective
from ..data.shards import Prefetcher, PretrainingBatches, Shards, TokenWindows, data_record, prepare
from ..data.synthetic import PREFIX, synthetic_corpus
from ..data.tasks import MixtureSplit, class_counts, load_mixture, load_splits, mixture_rates
from ..errors import CheckpointError, ConfigError, DataError, TrainingError
from ..eval.attention import plot_induction_heads
from ..eval.metrics import perplexity
from ..files import write_atomic
from ..model import build_model, lora
from ..model.blocks import moe_metrics
from ..model.distill import Distillation, init_from_teacher
from ..scaling.flops import model_flops, peak_flops
from . import checkpoint
from .distributed import (
    full_model,
    gradient_sync,
    join,
    leave,
    load_optimizer_state,
    local_parameters,
    optimizer_state,
    own_rows,
    peer_lost,
    reshard,
    wrap,
)
from .metrics import MetricsLog, NoMetrics, plot_loss
from .parallelize import apply_activation_checkpointing


@dataclass
class RunResult:
    run_dir: Path
    step: int
    val_loss: float | None
    shards: Shards | None  # a fine-tuning run has a task instead
    scores: dict  # the last evaluation's numbers
    already_finished: bool = False  # resumed a run that had already reached train.max_steps: nothing was done


def resolve_device(name: str, setting: str = "train.device") -> torch.device:
    """A device name (the config's `setting`, or a command's --device) as a torch device: auto (CUDA when present),
    cpu, cuda or cuda:N."""
    if not DEVICES.fullmatch(name):
        raise ConfigError(f"device '{name}' is not one of auto, cpu, cuda, cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{setting}={name} but CUDA is not available; use {setting}=cpu or auto")
    return torch.device(name)


def learning_rate(step: int, config: Config) -> float:
    """Linear warmup to train.lr over warmup_steps, then cosine decay to train.min_lr at max_steps."""
    t = config.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
    return t.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (t.lr - t.min_lr)


def make_optimizer(model: torch.nn.Module, config: Config) -> torch.optim.AdamW:
    """Weight decay on matrices (linear and embedding weights); none on biases and norm gains. A task head
    trains at train.lr; with finetune.body_lr the rest at that rate (each group's `lr_scale` of train.lr); with
    finetune.freeze_body the rest not at all."""
    t, f = config.train, config.finetune
    groups = []
    for is_head in (False, True):
        params = [p for name, p in model.named_parameters() if p.requires_grad and name.startswith("head.") == is_head]
        scale = 1.0 if is_head or f.body_lr is None else f.body_lr / t.lr
        for decay in (True, False):
            chosen = [p for p in params if (p.dim() >= 2) == decay]
            if chosen:
                groups.append({"params": chosen, "weight_decay": t.weight_decay if decay else 0.0, "lr_scale": scale})
    return torch.optim.AdamW(
        groups,
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
    """Refuse to resume under another config. A fine-tuning run's model comes from its source (and its task's
    labels from the data), so for it the source is compared instead."""
    if config.objective.name == "task":
        sections = ["objective", "task", "finetune"] + (["model", "data"] if config.finetune.source is None else [])
    else:
        sections = ["model", "data", "objective"]
    differences = []
    for section in sections:
        ours, theirs = dataclasses.asdict(getattr(config, section)), dataclasses.asdict(getattr(saved, section))
        if section == "task" and len(ours["mixture"]) == len(theirs["mixture"]):
            for now, then in zip(ours["mixture"], theirs["mixture"], strict=True):
                now.update({key: then[key] for key in ("labels", "prefix") if not now[key]})  # from the data
        for key, value in theirs.items():
            unset_now = key in ("vocab_size", "n_labels", "labels", "prefix") and not ours[key]  # from the data
            # these may change on resume, like train.*; not the model's source nor its adapters
            tuning = section == "finetune" and key != "source" and not key.startswith("lora_")
            if ours[key] != value and not unset_now and not tuning:
                differences.append(f"{section}.{key} is {value!r} in the checkpoint but {ours[key]!r} now")
    if differences:
        raise CheckpointError(
            f"checkpoint does not match the config: {', '.join(differences)}; resume with the run's own "
            "config.yaml or start a new --run-dir"
        )


def _set_vocab_size(model: ModelConfig, tokenizer_vocab: int) -> None:
    """model.vocab_size: the tokenizer's, rounded up to a multiple of 64, unless set (and large enough)."""
    if model.vocab_size is None:
        model.vocab_size = 64 * math.ceil(tokenizer_vocab / 64)
    elif model.vocab_size < tokenizer_vocab:
        raise ConfigError(
            f"model.vocab_size={model.vocab_size} is smaller than the tokenizer's {tokenizer_vocab} tokens; raise it "
            "or leave it unset"
        )


def _load_body(model: torch.nn.Module, pretrained: torch.nn.Module, source: str) -> None:
    """Start `model` from `pretrained`'s weights: all but the task head, which stays fresh (the pretrained LM
    head's weights are left over), and the pooler the head reads if the source has none (ELECTRA's discriminator)."""
    missing, _ = model.load_state_dict(pretrained.state_dict(), strict=False)
    fresh = ("head.", "pooler.") if getattr(pretrained, "pooler", None) is None else ("head.",)
    lacking = [key for key in missing if not key.startswith(fresh)]
    if lacking:
        raise CheckpointError(f"'{source}' lacks {', '.join(lacking[:3])}: it is not the body of this model")


def _tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _split_summary(task, name: str, split, counts: dict[str, int], max_len: int) -> str:
    """One line on a task split: its size, its classes (`counts`), and what was cut or left out."""
    classes = f": {', '.join(f'{label} {n:,}' for label, n in counts.items())}" if counts else ""
    cuts = [
        (split.truncated, f"inputs cut to task.max_len={max_len} tokens"),
        (split.truncated_targets, "targets cut to task.max_target_len"),
        (split.skipped, "answers beyond the cut left out"),
    ]
    notes = "; ".join(f"{n:,} {what}" for n, what in cuts if n)
    return f"{task.name} {name}: {split.per_epoch:,} examples{classes}" + (f" ({notes})" if notes else "")


def _check_same_data(saved: dict, ckpt: Path, now: dict) -> None:
    """Refuse to resume on other data: the model's embeddings belong to its token ids, its data cursor to its
    examples."""
    parts = {
        "sources": f"the corpus (data.source: {saved['documents']} documents then, {now['documents']} now)",
        "tokenizer": "the tokenizer (data.tokenizer)",
        "val_fraction": "the validation split (data.val_fraction)",
    }
    changed = [what for key, what in parts.items() if saved[key] != now[key]]
    if changed:
        raise CheckpointError(
            f"{' and '.join(changed)} changed since {ckpt.name} was saved; a resumed run must see the data it was "
            "trained on: restore it, or start a new --run-dir"
        )


def train(config: Config, run_dir: str | Path = "runs/default", resume: bool = False) -> RunResult:
    """Pretrain the model `config` describes; write metrics, checkpoints and loss.png to `run_dir`. Under torchrun
    with train.parallel=ddp or fsdp, each process runs this, on its share of every batch (train/distributed.py)."""
    return _fit(Trainer(config, run_dir, resume))


def _fit(trainer: Trainer) -> RunResult:
    """trainer.fit(), and when it is one of many processes, its exit from their group; a collective that fails
    because another process died is a TrainingError (one line), not a traceback."""
    try:
        return trainer.fit()
    except RuntimeError as e:
        lost = peer_lost(trainer.world, e)
        if lost is None:
            raise
        raise TrainingError(
            f"rank {trainer.world.rank}: another process of the run stopped or stopped answering ({lost}); "
            "the run continues from its last checkpoint with --resume"
        ) from None
    finally:
        leave(trainer.world)


def finetune(
    config: Config, run_dir: str | Path = "runs/finetune", source: str | None = None, resume: bool = False
) -> RunResult:
    """Fine-tune on `config.task` (objective.name=task) through the same loop: from `source` (or
    finetune.source) — one of our runs or checkpoints, a transformers folder, a GGUF file, a built-in name —
    with a fresh task head, or from scratch. Writes checkpoints/best at the best validation metric."""
    if config.objective.name != "task":
        raise ConfigError(
            f"finetune needs a task recipe (objective.name=task, task.name or task.train), not objective.name="
            f"{config.objective.name}; use train to pretrain"
        )
    if source is not None:
        config.finetune.source = source
    return _fit(Trainer(config, run_dir, resume))


def spread_spans(n: int, size: int, wanted: int) -> list[tuple[int, int]]:
    """(first, size) batches of `wanted` of n examples (all, if wanted >= n), spread evenly over them: a file's
    order may group its classes, so its first examples may all be one class. Disjoint; fewer than `wanted` only
    where batches of `size` do not fit between their evenly spaced starts."""
    if wanted >= n:
        return [(first, min(size, n - first)) for first in range(0, n, size)]
    count = math.ceil(wanted / size)
    starts = [j * n // count for j in range(count)] + [n]
    return [(starts[j], min(size, wanted - j * size, starts[j + 1] - starts[j])) for j in range(count)]


def _check_run_dir(run_dir: Path) -> None:
    """Refuse a run folder that cannot be made or written before any work is done."""
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    if not existing.is_dir():
        what = "is a file" if existing == run_dir else f"cannot be made: '{existing}' is a file"
        raise CheckpointError(f"run folder '{run_dir}' {what}; choose another --run-dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write to '{existing}' (permission denied); choose another --run-dir")


class Trainer:
    """One run. Constructing it checks everything and loads what a resume needs, before anything is written;
    `fit` then repeats `train_step`, and at their intervals `log`, `evaluate` and `save`."""

    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False):
        self.config, self.run_dir = config, Path(run_dir)
        t = config.train
        self.device = resolve_device(t.device)
        self.world = join(config, self.device)
        if self.world.size > 1 and self.device.type == "cuda":  # one GPU per process, as torchrun numbers them
            self.device = torch.device("cuda", self.world.local_rank)
            torch.cuda.set_device(self.device)
        if t.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError(
                f"train.precision=fp16 needs CUDA (float16 autocast with a gradient scaler); on {self.device.type} "
                "use train.precision=bf16 or fp32"
            )
        if self.device.type == "cuda":  # process-wide: this process trains one model
            torch.set_float32_matmul_precision("high" if t.tf32 else "highest")
        _check_run_dir(self.run_dir)
        self.resumed_from, state = self._resume_point(resume)
        saved_data = state.get("data") if state else None  # checkpoints older than data records have none
        pretrained, self.corpus = None, None
        with self.world.main_first():  # rank 0 writes the shared caches (tokenizer, shards), the others read them
            if config.objective.name == "task":
                pretrained = self._prepare_task(saved_data)
            elif config.data.source.startswith(PREFIX):
                self._prepare_synthetic()
            else:
                self._prepare_pretraining(saved_data)

        torch.manual_seed(t.seed)
        self.model = build_model(config.model).to(self.device)
        f = config.finetune
        if pretrained is not None:  # a fresh run's start; a LoRA run's frozen body, on resume too
            _load_body(self.model, pretrained, f.source)
        if f.lora_rank:
            lora.add_adapters(self.model, f.lora_rank, f.lora_alpha, f.lora_dropout, f.lora_targets)
        elif f.freeze_body:
            for name, p in self.model.named_parameters():
                p.requires_grad_(name.startswith("head."))
        # what trains: the model, or with a teacher (DistilBERT) the model learning from it; loaded before the RNG
        # state is restored, as building the teacher draws from it
        trained = self._distillation(state) if config.objective.teacher else self.model
        self.step, self.sample, self.scores = 0, 0, {}
        # a fine-tuning run keeps checkpoints/best, and may stop early (finetune.metric, finetune.patience)
        self.best = {"value": None, "step": 0, "evals_since": 0} if config.objective.name == "task" else None
        # the loss summed over the steps since the last log row, kept on the device: read once per row
        self.loss_sum, self.window_steps = torch.zeros((), device=self.device), 0
        if state is not None:
            if f.lora_rank:
                checkpoint.load_adapters(self.model, self.resumed_from, self.device)
            else:
                checkpoint.load_weights(self.model, self.resumed_from, self.device)
            _set_rng_state(state["rng"], self.device)
            self.step, self.sample, self.scores = state["step"], state["sample"], state.get("scores", {})
            self.best = state.get("best", self.best)
            window = state.get("window", {"loss_sum": 0.0, "steps": 0})
            self.loss_sum.fill_(window["loss_sum"])
            self.window_steps = window["steps"]

        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[t.precision]
        # fp16 gradients underflow unless the loss is scaled up; a disabled scaler passes everything through
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        if state is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if t.activation_checkpointing:
            apply_activation_checkpointing(self.model)
        self.wrapped = wrap(trained, self.world, self.device, t.precision)
        self.optimizer = make_optimizer(self.model, config)  # after wrap: FSDP2 replaces parameters by shards
        if state is not None:
            load_optimizer_state(self.model, self.optimizer, state["optimizer"], self.world)
        self.forward = torch.compile(self.wrapped) if t.compile else self.wrapped
        examples_per_step = t.batch_size * t.grad_accum
        self.tokens_per_step = examples_per_step * self.train_batches.tokens_per_example
        targets = self.train_batches.target_tokens_per_example
        inputs = self.train_batches.tokens_per_example - targets
        # an MLM's head runs on the masked tokens only; a distilled student's on all, to match its teacher's
        head_share = config.objective.mask_prob if config.objective.name == "mlm" and trained is self.model else 1.0
        self.flops_per_step = model_flops(config.model, inputs, targets, head_share) * examples_per_step
        if trained is not self.model:  # and the teacher's forward pass: a third of its training FLOPs
            self.flops_per_step += model_flops(trained.teacher.config, inputs) / 3 * examples_per_step
        self.peak = peak_flops(self.device, self.dtype)
        if self.best is not None:
            self._check_metric()

    def _distillation(self, state: dict | None) -> Distillation:
        """The model (the student) learning from objective.teacher, refused unless the teacher is a masked-LM
        encoder of the student's vocabulary, tokenizer and width; a fresh student starts from every other layer
        of it. A resumed run checks that the teacher's weights have not changed."""
        o, student = self.config.objective, self.model
        teacher, tokenizer, _ = load_any(o.teacher)
        c = teacher.config
        if c.arch != "encoder" or c.head != "lm":
            raise ConfigError(f"the teacher '{o.teacher}' is a {c.arch} with head={c.head}; give a masked-LM encoder")
        if tokenizer is None or tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise DataError(
                f"the teacher '{o.teacher}' was trained with another tokenizer than data.tokenizer: the student must "
                "read the teacher's token ids; set data.tokenizer to the teacher's tokenizer.json"
            )
        for key in ("vocab_size", "d_model"):
            if getattr(c, key) != getattr(student.config, key):
                raise ConfigError(
                    f"the teacher has model.{key}={getattr(c, key)} and the student {getattr(student.config, key)}; "
                    f"a student learns from its teacher's {key.replace('_', ' ')}: set model.{key}={getattr(c, key)}"
                )
        self.data["teacher_sha256"] = _tensors_sha256(teacher.state_dict())
        saved = (state or {}).get("data", {}).get("teacher_sha256")
        if state is not None and saved != self.data["teacher_sha256"]:
            raise CheckpointError(
                f"the teacher '{o.teacher}' has changed since {self.resumed_from.name} was saved; a resumed run must "
                "learn from the same teacher: restore it, or start a new --run-dir"
            )
        if state is None:
            init_from_teacher(student, teacher)
        weights = (o.distill_ce, o.distill_mlm, o.distill_cos)
        return Distillation(student, teacher.to(self.device), o.distill_temperature, weights)

    def _prepare_pretraining(self, saved: dict | None) -> None:
        """The shards, refused when they differ from `saved` (the data record of the checkpoint resumed from), and
        the objective's batches over them; sets model.vocab_size from the tokenizer if unset."""
        config, t = self.config, self.config.train
        check = functools.partial(_check_same_data, saved, self.resumed_from) if saved else None
        self.shards = shards = prepare(config.data, check)
        self.tokenizer, self.summary = shards.tokenizer, []
        self.data = {**data_record(shards.manifest["inputs"]), "tokenizer_sha256": shards.manifest["tokenizer_sha256"]}
        if saved and saved["tokenizer_sha256"] != self.data["tokenizer_sha256"]:
            raise CheckpointError(
                f"the tokenizer of the shards (rebuilt since) differs from the one {self.resumed_from.name} was "
                "trained with; a resumed run needs its token ids: start a new --run-dir"
            )
        _set_vocab_size(config.model, shards.manifest["vocab_size"])
        objective = make_objective(config, shards.tokenizer)
        windows = {
            split: TokenWindows(shards.tokens(split), objective.window, objective.stride, seed, split)
            for split, seed in (("train", t.seed), ("val", t.seed + 1))
        }
        self.train_batches = PretrainingBatches(objective, windows["train"], t.seed)
        self.val_splits = {"": PretrainingBatches(objective, windows["val"], t.seed + 1)}

    def _prepare_synthetic(self) -> None:
        """A synthetic corpus's batches, drawn on the fly (data/synthetic.py); its validation groups, each logged
        apart (val_loss_first_half, ...)."""
        config, t = self.config, self.config.train
        self.corpus = corpus = synthetic_corpus(config)
        self.shards, self.tokenizer, self.summary = None, corpus.tokenizer(), []
        self.data = {"source": config.data.source}  # a resumed run's source was checked with its config
        _set_vocab_size(config.model, corpus.vocab_size)
        objective = make_objective(config, self.tokenizer)
        self.train_batches = PretrainingBatches(objective, corpus(t.seed), t.seed)
        self.val_splits = corpus.val_splits(PretrainingBatches(objective, corpus(t.seed + 1), t.seed + 1))

    def _prepare_task(self, saved: dict | None) -> torch.nn.Module | None:
        """The task's splits and the tokenizer and model config they go with: the run's own when resuming; else the
        pretrained source's (finetune.source) under the task's head, or from scratch the recipe's model with the
        data section's tokenizer. Returns the source model whose body a fresh run starts from, or None."""
        config, source, pretrained = self.config, self.config.finetune.source, None
        self.shards = None
        lora_rank = config.finetune.lora_rank
        if lora_rank and source is None:
            raise ConfigError("finetune.lora_rank adapts a pretrained model; give one with --from (finetune.source)")
        if self.resumed_from is not None:
            tokenizer = checkpoint.load_tokenizer(self.resumed_from)
            if lora_rank:  # the frozen body is the source's; the checkpoint holds the adapters
                pretrained, _, _ = load_any(source)
        elif source is not None:
            pretrained, tokenizer, notes = load_any(source)
            for note in notes:
                warnings.warn(f"{source}: {note}", stacklevel=2)
            config.model = dataclasses.replace(pretrained.config, head="lm", n_labels=0, dropout=config.model.dropout)
            validate(config)  # the source's kind must suit the task (a T5 takes no <cls> head) and gets its head
        else:
            shards = prepare(config.data)
            tokenizer = shards.tokenizer
            _set_vocab_size(config.model, shards.manifest["vocab_size"])
        if tokenizer is None:
            raise CheckpointError(f"'{source}' has no tokenizer.json; fine-tuning needs the one it was trained with")
        if config.task.mixture:
            tasks = load_mixture(config, tokenizer)
            for member, (task, _) in zip(config.task.mixture, tasks.values(), strict=True):
                member.labels, member.prefix = list(task.labels), task.prefix  # saved with the checkpoint
            examples = repr([task.splits for task, _ in tasks.values()])
        else:
            task, splits = load_splits(config, tokenizer)
            tasks = {"": (task, splits)}
            if config.model.head in ("sequence", "token"):
                config.model.n_labels = 1 if task.kind == "regression" else len(task.labels)
            config.task.labels, config.task.prefix = list(task.labels), task.prefix  # saved with the checkpoint
            examples = repr(task.splits)
        for name, (_, splits) in tasks.items():
            if "validation" not in splits:
                which = f"the task {name}" if name else "the task"
                raise DataError(
                    f"{which} has no validation split, which picks the best checkpoint; set task.validation"
                )
        self.data = {
            "task_sha256": hashlib.sha256(examples.encode()).hexdigest(),
            "tokenizer_sha256": hashlib.sha256(tokenizer.to_str().encode()).hexdigest(),
        }
        if lora_rank:  # a LoRA run resumes on its source's weights: they must not have changed
            self.data["body_sha256"] = _tensors_sha256(pretrained.state_dict())
        if saved and saved != self.data:
            raise CheckpointError(
                f"the task's examples, the tokenizer or the source's weights changed since {self.resumed_from.name} "
                "was saved; a resumed run must see the data it was trained on: restore them, or start a new --run-dir"
            )
        self.tokenizer = tokenizer
        self.val_splits = {name: splits["validation"] for name, (_, splits) in tasks.items()}
        self.summary = []
        for task, splits in tasks.values():
            counts = class_counts(task)
            self.summary += [
                _split_summary(task, name, split, counts.get(name, {}), config.task.max_len)
                for name, split in splits.items()
            ]
        if config.task.mixture:
            k = config.task
            sizes = [splits["train"].per_epoch for _, splits in tasks.values()]
            rates = mixture_rates(sizes, k.mixing, k.mixing_temperature, [m.weight for m in k.mixture])
            self.train_batches = MixtureSplit(
                [splits["train"] for _, splits in tasks.values()], rates, config.train.seed
            )
            how = {"proportional": "proportional to size", "temperature": f"temperature {k.mixing_temperature:g}"}
            shares = ", ".join(f"{name} {rate:.1%}" for name, rate in zip(tasks, rates, strict=True))
            self.summary.append(f"mixture ({how.get(k.mixing, 'fixed weights')}): {shares} of training examples")
        else:
            self.train_batches = tasks[""][1]["train"]
        return pretrained

    def _resume_point(self, resume: bool) -> tuple[Path | None, dict | None]:
        """(checkpoint, trainer state) to resume from, or (None, None) for a fresh run; refuses a resume that
        cannot work, and a fresh run in a folder that already holds checkpoints (it would overwrite them)."""
        if not resume:
            saved = checkpoint.steps(self.run_dir, complete=False)
            if saved:
                raise CheckpointError(
                    f"'{self.run_dir}' already holds a run with checkpoints (newest: {saved[-1].name}); pass --resume "
                    "to continue it, or choose another --run-dir"
                )
            return None, None
        ckpt = checkpoint.latest(self.run_dir)
        if ckpt is None:
            raise CheckpointError(
                f"--resume: no checkpoint in '{self.run_dir}/checkpoints'; run without --resume to start it"
            )
        saved = checkpoint.read_config(ckpt)
        _check_resumable(saved, self.config)
        if self.config.objective.name == "task":  # the model is the run's own: its source's, with the task's head
            self.config.model, self.config.task.labels = saved.model, saved.task.labels
            self.config.task.prefix, self.config.task.mixture = saved.task.prefix, saved.task.mixture
        state = checkpoint.load_state(ckpt)
        if state["step"] > self.config.train.max_steps:
            raise CheckpointError(
                f"--resume: the checkpoint {ckpt.name} is past train.max_steps={self.config.train.max_steps}; "
                f"set train.max_steps to {state['step']} or more"
            )
        return ckpt, state

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def fit(self) -> RunResult:
        t = self.config.train
        main = self.world.main
        if self.step >= t.max_steps or self._patience_lost():
            if main:
                plot_loss(self.run_dir)  # an interrupted run may have stopped between its last save and its plot
            return self._result(already_finished=True)
        try:
            if main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                write_atomic(self.run_dir / "config.yaml", to_yaml(self.config))
        except OSError as e:
            raise CheckpointError(f"cannot write the run folder '{self.run_dir}' ({e.strerror})") from None
        pin = self.device.type == "cuda"  # page-locked batches: their copies to the GPU overlap the step
        self.batches = batches = Prefetcher(self.train_batches.make, self.sample, t.batch_size, pin=pin)
        bar = tqdm(total=t.max_steps, initial=self.step, disable=not (t.progress and main), unit="step",
                   dynamic_ncols=True)  # fmt: skip
        kept = self.step if self.resumed_from else None
        self.metrics = MetricsLog(self.run_dir, keep_until_step=kept) if main else NoMetrics()
        self.window_start, self.window_waited = time.perf_counter(), 0.0
        self.model.train()
        with batches, bar, self.metrics:
            for line in self.summary if main else ():
                bar.write(line)
            while self.step < t.max_steps:
                self.train_step(batches)
                last = self.step == t.max_steps
                if self.step % t.log_every == 0 or last:
                    self.log(bar)
                bar.update(1)
                paused = time.perf_counter()  # evaluation and checkpoints are not billed to throughput
                if self.step % t.eval_every == 0 or last:
                    self.evaluate(bar)
                stop = self._patience_lost()
                if self.step % t.save_every == 0 or last or stop:
                    self.save()
                self.window_start += time.perf_counter() - paused
                if stop:
                    bar.write(f"step {self.step}: stopping early, no better {self.config.finetune.metric} since step "
                              f"{self.best['step']} (checkpoints/best)")  # fmt: skip
                    break
        model = full_model(self.model, self.world) if self.corpus is not None else None
        if main:
            plot_loss(self.run_dir)
            if model is not None:
                self._draw_induction_heads(model)
        return self._result()

    def _draw_induction_heads(self, model: torch.nn.Module) -> None:
        """RUN/attention.png: the heads that copy from the context, on the first validation sequence; their scores
        in RUN/attention.json."""
        sequences = self.corpus(self.config.train.seed + 1)
        tokens = torch.from_numpy(sequences.rows(0, 1)[:, :-1]).to(next(model.parameters()).device)
        model.eval()
        scores = plot_induction_heads(model, tokens, int(sequences.period_of(0, 1)[0]), self.run_dir / "attention.png")
        model.train()
        write_atomic(self.run_dir / "attention.json", json.dumps(scores, indent=1).encode())

    def _result(self, already_finished: bool = False) -> RunResult:
        return RunResult(
            self.run_dir, self.step, self.scores.get("val_loss"), self.shards, self.scores, already_finished
        )

    def train_step(self, batches: Prefetcher) -> None:
        """One optimizer step over train.grad_accum micro-batches."""
        t = self.config.train
        lr = learning_rate(self.step, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # checkpoints before body_lr have no scale
        for micro in range(t.grad_accum):
            rows, weight = own_rows(self.world, batches.next())
            batch = {k: v.to(self.device, non_blocking=True) for k, v in rows.items()}
            with gradient_sync(self.wrapped, self.world, sync=micro == t.grad_accum - 1):
                with self.autocast():
                    _, loss = self.forward(**batch)
                    loss = loss * weight
                self.scaler.scale(loss / t.grad_accum).backward()
            self.loss_sum += loss.detach()
        self.sample += t.batch_size * t.grad_accum
        if t.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.scaler.step(self.optimizer)  # skipped (and the scale lowered) when a gradient overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.window_steps += 1

    def _stop_if_diverged(self, weights: bool = False) -> None:
        """Raise TrainingError when a loss since the last log row (or, with `weights`, a weight) is not finite:
        one read from the device, at log, evaluation and save steps only."""
        bad_loss = not torch.isfinite(self.loss_sum)
        bad_weights = weights and not all(bool(torch.isfinite(p).all()) for p in local_parameters(self.model))
        if self.world.size > 1:  # every rank must stop, or the others wait on it until dist_timeout
            flags = self.world.mean(torch.tensor([bad_loss, bad_weights], dtype=torch.float32, device=self.device))
            bad_loss, bad_weights = (flags > 0).tolist()
        if not (bad_loss or bad_weights):
            return
        loss = self.loss_sum.item() / max(1, self.window_steps * self.config.train.grad_accum)
        what = f"loss is {loss if not math.isfinite(loss) else 'not finite on another rank'}" if bad_loss else None
        what = what or "weights are no longer finite"
        good = checkpoint.latest(self.run_dir, warn=False)
        fix = "lower train.lr (or use train.precision=fp32)"
        then = f"the last good checkpoint is {good}: {fix} and --resume from it, or start again"
        raise TrainingError(
            f"{what} at step {self.step}; " + (then if good else f"no checkpoint yet: {fix}, start again")
        )

    def log(self, bar) -> None:
        """One metrics row: the mean loss over the steps since the last row, throughput, MFU, and data_wait: the
        share of that time spent waiting for a batch the prefetcher had not built yet."""
        t = self.config.train
        self.loss_sum = self.world.mean(self.loss_sum)  # the ranks' rows make the batch: their mean is its loss
        self._stop_if_diverged()
        loss = self.loss_sum.item() / (self.window_steps * t.grad_accum)
        elapsed = time.perf_counter() - self.window_start
        tok_s = self.window_steps * self.tokens_per_step / elapsed
        row = {
            "step": self.step,
            "loss": loss,
            "lr": learning_rate(self.step - 1, self.config),
            "tokens": round(self.step * self.tokens_per_step),  # a task's examples differ in length: a mean
            "tok_per_s": round(tok_s, 1),
            "data_wait": round((self.batches.waited - self.window_waited) / elapsed, 4),
        }
        if self.peak:
            # every process has its own device (or share of the CPU), each measured or looked up alone
            row["mfu"] = round(self.window_steps * self.flops_per_step / elapsed / (self.peak * self.world.size), 4)
        row |= moe_metrics(self.model)  # a mixture of experts' balance, dropped tokens and loads (this rank's)
        self.metrics.log(row)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:,.0f}")
        self.loss_sum.zero_()
        self.window_start, self.window_steps, self.window_waited = time.perf_counter(), 0, self.batches.waited

    def _eval_spans(self, split) -> list[tuple[int, int]]:
        """The (first, size) batches of one evaluation: the same `eval.batches` every time (fewer if the split is
        small), or for a task every example once in order, or finetune.eval_examples of them (`spread_spans`)."""
        n, size = split.per_epoch, min(self.config.train.batch_size, split.per_epoch)
        if self.config.objective.name != "task":
            return [(i * size, size) for i in range(max(1, min(self.config.eval.batches, n // size)))]
        return spread_spans(n, size, self.config.finetune.eval_examples or n)

    @torch.no_grad()
    def evaluate(self, bar=None) -> dict[str, float]:
        """The model's validation numbers (`eval_sums`) over `_eval_spans`, logged as val_*, with val_ppl for a
        language model's loss; a mixture's also per task (val_loss_NAME, ...)."""
        self._stop_if_diverged()
        totals: dict[str, list] = {}
        self.model.eval()
        for group, split in self.val_splits.items():
            for first, rows in self._eval_spans(split):
                batch = {k: v.to(self.device) for k, v in split.make(first, rows).items()}
                with self.autocast():
                    sums = self.model.eval_sums(**batch)
                for name, (value, count) in sums.items():
                    for key in (name, f"{name}_{group}") if group else (name,):
                        total = totals.setdefault(key, [0.0, 0])
                        total[0] = total[0] + value.float()
                        total[1] = total[1] + count
        reshard(self.model, self.world)
        self.model.train()
        self.scores = {f"val_{name}": float(value) / max(1.0, float(count)) for name, (value, count) in totals.items()}
        if self.corpus is not None:
            self.scores |= self.corpus.derived_scores(self.scores)
        val_loss = self.scores["val_loss"]
        language_model = self.config.model.head == "lm"
        # an MLM's perplexity is that of its masked tokens: not of the sentence-order or span-boundary losses added
        ppl = {"val_ppl": round(perplexity(self.scores.get("val_mlm_loss", val_loss)), 3)} if language_model else {}
        self.metrics.log({"step": self.step, **self.scores, **ppl})
        if bar is not None and self.world.main:
            rates = "".join(f", {k[4:].replace('_', ' ')} {v:.1%}" for k, v in self.scores.items() if "accuracy" in k)
            shown_ppl = f" (ppl {ppl['val_ppl']:.1f})" if ppl else ""
            bar.write(f"step {self.step}: val loss {val_loss:.4f}{shown_ppl}{rates}")
        if self.best is not None:
            self._keep_best()
        return self.scores

    @torch.no_grad()
    def _check_metric(self) -> None:
        """Refuse a finetune.metric that `evaluate` will not log, before training rather than at the first evaluation:
        the names are those of `eval_sums` on one validation example (a T5 has no val_accuracy, a mixture has
        val_loss_NAME per task)."""
        example = next(iter(self.val_splits.values())).make(0, 1)
        self.model.eval()
        with self.autocast():
            names = self.model.eval_sums(**{k: v.to(self.device) for k, v in example.items()})
        reshard(self.model, self.world)
        self.model.train()
        known = [f"val_{name}{f'_{group}' if group else ''}" for group in ("", *self.val_splits) for name in names]
        if self.config.finetune.metric not in known:
            raise ConfigError(f"finetune.metric={self.config.finetune.metric} is not one of this run's validation "
                              f"numbers: {', '.join(dict.fromkeys(known))}")  # fmt: skip

    def _keep_best(self) -> None:
        """Write checkpoints/best when finetune.metric is better than at any evaluation before."""
        name = self.config.finetune.metric
        value, best = self.scores[name], self.best["value"]
        if best is None or (value < best if name.endswith("loss") else value > best):
            model = full_model(self.model, self.world)
            if self.world.main:
                checkpoint.save_best(self.run_dir, self.step, model, self.config, self.tokenizer)
            self.best = {"value": value, "step": self.step, "evals_since": 0}
        else:
            self.best["evals_since"] += 1

    def _patience_lost(self) -> bool:
        patience = self.config.finetune.patience
        return self.best is not None and patience > 0 and self.best["evals_since"] >= patience

    def save(self) -> None:
        """A checkpoint of everything an exact resume needs; never of a diverged model."""
        self._stop_if_diverged(weights=True)
        state = {
            "step": self.step,
            "sample": self.sample,
            "optimizer": optimizer_state(self.model, self.optimizer, self.world),
            "rng": _rng_state(self.device),
            "scores": self.scores,
            "window": {"loss_sum": self.world.mean(self.loss_sum).item(), "steps": self.window_steps},
            "best": self.best,
            "data": self.data,
        }
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        keep = self.config.train.keep_last
        model = full_model(self.model, self.world)
        if self.world.main:
            checkpoint.save(self.run_dir, self.step, model, self.config, self.tokenizer, state, keep)
        self.world.barrier()
