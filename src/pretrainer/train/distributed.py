"""Many processes through PyTorch's own engine: `torchrun --nproc_per_node=N -m pretrainer train ...` starts N
copies of the one trainer, and this module is what they share. The model code stays single-device; DDP is applied
to the built model from outside (`wrap`).

How the work is split: `train.batch_size` (times `train.grad_accum`) stays the global batch per optimizer step.
Every rank builds the same global batch from the data cursor (the batches are pure functions of it) and trains
on its own slice of the rows (`own_rows`), so 1 or N processes see the same examples per step, with the same
masks and spans, and a checkpoint resumes on any number of processes. Rank 0 alone writes: metrics, the progress
bar, plots and checkpoints (DDP keeps every rank's weights and optimizer state equal, so rank 0's are the run's).
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


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

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
    if config.objective.name == "task":
        raise ConfigError("fine-tuning (objective.name=task) runs in one process for now; drop torchrun")
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
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


def own_rows(world: World, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This rank's slice of a global batch: rows rank·n … (rank+1)·n − 1 of every tensor, n = rows / world size."""
    if world.size == 1:
        return batch
    n = next(iter(batch.values())).shape[0] // world.size
    return {k: v[world.rank * n : (world.rank + 1) * n] for k, v in batch.items()}


def wrap(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """DDP over the ranks: gradients averaged in buckets while the backward pass runs."""
    if world.size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # an MLM step leaves the pooler (and a NSP head without NSP) without gradients: DDP must look for them
    unused = model.config.arch == "encoder"
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused)


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
