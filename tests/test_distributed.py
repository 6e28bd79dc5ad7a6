"""Many processes (train/distributed.py), on CPU with gloo: two ranks spawned by the test train as one process does
on the same global batch, for a decoder (with gradient accumulation) and for T5; a checkpoint two ranks wrote
resumes in one; ranks given different configs refuse to start. One spawn runs every two-rank case, to keep the
test's process start-ups (a torch import each) to two."""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest
import torch.multiprocessing as mp

import pretrainer
from pretrainer.errors import ConfigError, TrainingError
from pretrainer.train import checkpoint
from pretrainer.train.trainer import Trainer
from tests.conftest import tiny_overrides

T5 = {"model.arch": "encoder_decoder", "model.positions": "relative", "objective.name": "span_corruption",
      "data.tokenizer": "unigram", "data.sentinels": 20}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cases(corpus, tmp):
    """name -> overrides of each two-rank run."""
    decoder = {"train.max_steps": 6, "train.batch_size": 4, "train.grad_accum": 2, "train.save_every": 3,
               "train.eval_every": 3}  # fmt: skip
    return {
        "decoder": tiny_overrides(corpus, tmp / "data", **decoder),
        "t5": tiny_overrides(corpus, tmp / "data", **{"train.max_steps": 4, "train.batch_size": 4, **T5}),
    }


def worker(rank: int, tmp, ports: dict, cases: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    for name, overrides in cases.items():
        os.environ["MASTER_PORT"] = str(ports[name])
        pretrainer.train(pretrainer.load_config(None, [*overrides, "train.parallel=ddp"]), tmp / f"{name}-2")
    os.environ["MASTER_PORT"] = str(ports["mismatch"])
    seed = f"train.seed={rank}"  # a different config on each rank
    try:
        pretrainer.train(pretrainer.load_config(None, [*cases["decoder"], "train.parallel=ddp", seed]), tmp / "bad")
    except ConfigError as e:
        (tmp / f"mismatch-{rank}.txt").write_text(str(e))
    # last, as rank 1 dies in it: at step 2 it exits, and rank 0 must stop with a message, not hang or trace back
    os.environ["MASTER_PORT"] = str(ports["dying"])
    step = Trainer.train_step

    def dying(self, batches):
        if rank == 1 and self.step == 2:
            os._exit(0)
        step(self, batches)

    Trainer.train_step = dying
    try:
        pretrainer.train(pretrainer.load_config(None, [*cases["decoder"], "train.parallel=ddp"]), tmp / "dying")
    except TrainingError as e:
        (tmp / "dying-0.txt").write_text(str(e))


def losses(run, key="loss") -> list[float]:
    return [json.loads(line)[key] for line in (run / "metrics.jsonl").read_text().splitlines() if f'"{key}"' in line]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The two-rank runs of `cases` (their data prepared first, by one process, with the one-process runs)."""
    tmp = tmp_path_factory.mktemp("ddp")
    from tests.conftest import make_corpus

    runs = cases(make_corpus(tmp / "corpus"), tmp)
    for name, overrides in runs.items():
        pretrainer.train(pretrainer.load_config(None, overrides), tmp / f"{name}-1")
    ports = {name: free_port() for name in [*runs, "mismatch", "dying"]}
    mp.spawn(worker, args=(tmp, ports, runs), nprocs=2, join=True)
    return tmp, runs


@pytest.mark.parametrize("name", ["decoder", "t5"])
def test_two_ranks_train_as_one_process(two_ranks, name):
    tmp, _ = two_ranks
    one, two = tmp / f"{name}-1", tmp / f"{name}-2"
    assert losses(two) == pytest.approx(losses(one), rel=1e-5) and len(losses(two)) == len(losses(one))
    assert losses(two, "val_loss") == pytest.approx(losses(one, "val_loss"), rel=1e-5)


def test_a_checkpoint_of_two_ranks_resumes_in_one(two_ranks):
    tmp, runs = two_ranks
    resumed = tmp / "resumed"
    shutil.copytree(tmp / "decoder-2", resumed)
    for later in checkpoint.steps(resumed, complete=False):
        if later.name != "step-3":
            shutil.rmtree(later)
    (resumed / "checkpoints" / "latest").write_text("step-3\n")
    pretrainer.train(pretrainer.load_config(None, runs["decoder"]), resumed, resume=True)
    assert losses(resumed) == pytest.approx(losses(tmp / "decoder-2"), rel=1e-5)


def test_ranks_with_different_configs_refuse_to_start(two_ranks):
    tmp, _ = two_ranks
    for rank in (0, 1):
        assert "these ranks were given another config than rank 0: 1;" in (tmp / f"mismatch-{rank}.txt").read_text()


@pytest.mark.parametrize(
    "overrides, says",
    [
        ([], "started as 2 processes (WORLD_SIZE=2) but train.parallel=none; set train.parallel=ddp"),
        (["train.parallel=ddp", "train.batch_size=3"], "train.batch_size=3 is the global batch and does not split"),
    ],
)
def test_a_world_that_cannot_work_is_refused_before_joining(monkeypatch, overrides, says):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(")", r"\)")):
        pretrainer.train(pretrainer.load_config("configs/gpt-tiny.yaml", overrides), "unused")


def test_a_rank_that_dies_stops_the_others_with_a_message(two_ranks):
    tmp, _ = two_ranks
    said = (tmp / "dying-0.txt").read_text()
    assert said.startswith("rank 0: another process of the run stopped or stopped answering (")
    assert said.endswith("the run continues from its last checkpoint with --resume") and "\n" not in said
