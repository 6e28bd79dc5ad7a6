"""Many processes through PyTorch's own engine: `torchrun --nproc_per_node=N -m pretrainer train ...` starts N
copies of the one trainer, and this module is what they share. The model code stays single-device; DDP or FSDP2 is
applied to the built model from outside (`wrap`), and only this module knows which.

How the work is split: `train.batch_size` (times `train.grad_accum`) stays the global batch per optimizer step.
Every rank builds the same global batch from the data cursor (the batches are pure functions of it) and trains
on its own slice of the rows (`own_rows`), so 1 or N processes see the same examples per step, with the same
masks and spans. Rank 0 alone writes: metrics, the progress bar, plots and checkpoints.

Checkpoints are one format whatever the processes: the whole model and torch's own optimizer layout, as one process
saves them. DDP keeps every rank's weights and optimizer state equal, so rank 0's are the run's; FSDP2 gathers the
shards onto rank 0 (`full_model`, `optimizer_state`) and every rank takes its shard back from the file when it
resumes. So a run saved on N processes resumes on M, under either engine or none. (`torch.distributed.checkpoint`
would write in parallel without gathering; at the sizes this trainer is for, one gathered file that `eval`,
`generate` and `convert` read as they are is worth more.)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..config import Config, to_yaml
from ..errors import ConfigError
from ..model import build_model
from ..model.blocks import Block


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    parallel: str = "none"  # train.parallel: none | ddp | fsdp

    @property
    def sharded(self) -> bool:
        return self.parallel == "fsdp" and self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (it may write a shared cache: shards, a tokenizer), the others after it."""
        if not self.main:
            dist.barrier()
        yield
        if self.main and self.size > 1:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of `value` over the ranks (every rank must call it)."""
        if self.size == 1:
            return value
        total = value.detach().clone()
        dist.all_reduce(total)
        return total / self.size

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def join(config: Config, device: torch.device) -> World:
    """This process's place among those torchrun started (WORLD_SIZE, RANK, LOCAL_RANK), joining their process
    group: NCCL when training on CUDA, gloo on CPU. One process (no torchrun) is World()."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    t = config.train
    if size == 1:
        return World()
    if t.parallel == "none":
        raise ConfigError(
            f"started as {size} processes (WORLD_SIZE={size}) but train.parallel=none; set train.parallel=ddp"
        )
    if t.batch_size % size:
        raise ConfigError(
            f"train.batch_size={t.batch_size} is the global batch and does not split over {size} processes; make it "
            f"a multiple of {size}"
        )
    if t.parallel == "fsdp":
        if t.precision == "fp16":
            raise ConfigError(
                "train.parallel=fsdp trains in fp32 or bf16 (the fp16 gradient scaler is not wired to sharded "
                "gradients); use train.precision=bf16, or train.parallel=ddp"
            )
        if config.finetune.lora_rank:
            raise ConfigError("LoRA adapters (finetune.lora_rank) train in one process or under train.parallel=ddp")
        if config.objective.teacher:
            raise ConfigError("distillation (objective.teacher) trains in one process or under train.parallel=ddp")
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")), t.parallel)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=t.dist_timeout))
    _check_same_config(world, config)
    return world


def _check_same_config(world: World, config: Config) -> None:
    digest = hashlib.sha256(to_yaml(config).encode()).hexdigest()
    digests = [None] * world.size
    dist.all_gather_object(digests, digest)
    differ = [rank for rank, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise ConfigError(
            f"these ranks were given another config than rank 0: {', '.join(map(str, differ))}; start every process "
            "with the same recipe and overrides"
        )


def own_rows(world: World, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], float]:
    """This rank's slice of a global batch (rows rank·n … (rank+1)·n − 1 of every tensor, n = rows / world
    size), and the weight of its mean loss that makes the ranks' mean the whole batch's mean: where the batch has
    `targets` (-100 where nothing is predicted, as at an MLM's unmasked tokens), its share of the predicted targets
    times the world size; else 1. (BERT's NSP loss, a mean over rows, is weighted with its MLM loss: near, not
    exact.)"""
    if world.size == 1:
        return batch, 1.0
    n = next(iter(batch.values())).shape[0] // world.size
    rows = {k: v[world.rank * n : (world.rank + 1) * n] for k, v in batch.items()}
    if "targets" not in batch:
        return rows, 1.0
    total = int((batch["targets"] != -100).sum())
    return rows, int((rows["targets"] != -100).sum()) * world.size / total if total else 1.0


def wrap(model: torch.nn.Module, world: World, device: torch.device, precision: str) -> torch.nn.Module:
    """DDP over the ranks (gradients averaged in buckets while the backward pass runs), or FSDP2: every block
    sharded on its own, then the root (embeddings, final norm, head), so a rank holds 1/N of the weights, gradients
    and optimizer state and gathers one block's weights at a time. With bf16, FSDP2 gathers and computes in bf16 and
    reduces gradients in fp32; the fp32 weights stay the master copy. Build the optimizer after this: FSDP2
    replaces the parameters by their shards."""
    if world.size == 1:
        return model
    if world.sharded:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

        policy = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if precision == "bf16" else None, reduce_dtype=torch.float32
        )
        for block in (m for m in model.modules() if isinstance(m, Block)):
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        register_fsdp_forward_method(model, "eval_sums")  # evaluation enters through it, not forward
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # an MLM step leaves the pooler (and a NSP head without NSP) without gradients: DDP must look for them
    unused = model.config.arch == "encoder"
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused)


@contextlib.contextmanager
def gradient_sync(wrapped: torch.nn.Module, world: World, sync: bool):
    """Gradients of the backward passes inside are reduced over the ranks only if `sync`: with gradient
    accumulation, the last micro-step alone reduces the sum of all of them."""
    if sync or world.size == 1:
        yield
    elif world.sharded:
        wrapped.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            wrapped.set_requires_gradient_sync(True)
    else:
        with wrapped.no_sync():
            yield


def reshard(model: torch.nn.Module, world: World) -> None:
    """After forward passes without a backward (evaluation): FSDP2 leaves the root's weights gathered then, as it
    expects the backward next; shard them again, so that the parameters are the optimizer's once more."""
    if world.sharded:
        model.reshard()


def local_parameters(model: torch.nn.Module):
    """This rank's share of every parameter: the whole of it, or its FSDP2 shard."""
    for p in model.parameters():
        yield p.to_local() if hasattr(p, "to_local") else p


def full_model(model: torch.nn.Module, world: World) -> torch.nn.Module | None:
    """The model with every weight whole, where rank 0 can save or draw it: `model` itself unless sharded; under
    FSDP2 a plain copy on the CPU of rank 0, gathered from the shards (every rank must call; the others get None)."""
    if not world.sharded:
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not world.main:
        return None
    plain = build_model(model.config)
    plain.load_state_dict(state)
    return plain.train(model.training)


def _names_in_optimizer_order(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The parameters' names in the order torch numbers them in an optimizer's state dict."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, world: World) -> dict:
    """The optimizer's state in torch's own layout, as one process saves it; under FSDP2 gathered onto rank 0
    (every rank must call; the others get {})."""
    if not world.sharded:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    full = get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )  # keyed by parameter name
    if not world.main:
        return {}
    number = {name: i for i, name in enumerate(_names_in_optimizer_order(model, optimizer))}
    return {
        "state": {number[name]: value for name, value in full["state"].items()},
        "param_groups": [{**g, "params": [number[name] for name in g["params"]]} for g in full["param_groups"]],
    }


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict, world: World):
    """Load `optimizer_state`'s layout; under FSDP2 every rank keeps its shard of it."""
    if not world.sharded:
        optimizer.load_state_dict(saved)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _names_in_optimizer_order(model, optimizer)
    full = {
        "state": {names[i]: value for i, value in saved["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))


def peer_lost(world: World, error: RuntimeError) -> str | None:
    """What the collective library said, when `error` is a collective failing because another rank died or hung
    (gloo's and NCCL's errors are plain RuntimeErrors); None for any other error, which is a bug."""
    text = str(error)
    if world.size == 1 or not ("/gloo/" in text or "NCCL" in text or isinstance(error, dist.DistError)):
        return None
    first = text.split("] ", 1)[-1].split(". ")[0]  # gloo prefixes its source line
    return first.strip()


def leave(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
