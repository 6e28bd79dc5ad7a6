"""Many processes (train/distributed.py), on CPU with gloo: two ranks spawned by the test train as one process does
on the same global batch, under DDP and FSDP2, for a decoder (with gradient accumulation), T5, BERT and fine-tuning;
checkpoints move between one process and two, and between the engines; ranks given different configs refuse to
start. One spawn runs every two-rank case, to keep the test's process start-ups (a torch import each) to two."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import socket

import pytest
import torch.multiprocessing as mp

import pretrainer
from pretrainer.errors import ConfigError, TrainingError
from pretrainer.train import checkpoint
from pretrainer.train.trainer import Trainer
from tests.conftest import tiny_overrides
from tests.test_finetune import sentiment_rows
from tests.test_modes import BERT

T5 = {"model.arch": "encoder_decoder", "model.positions": "relative", "objective.name": "span_corruption",
      "data.tokenizer": "unigram", "data.sentinels": 20}  # fmt: skip
# two-rank run -> (the one-process run it must equal, train.parallel, relative tolerance); under FSDP2 with bf16
# the weights are cast to bf16 once per gather, where one process's autocast casts them per matmul
TWO_RANKS = {"decoder": ("decoder", "ddp", 1e-5), "t5": ("t5", "ddp", 1e-5), "decoder-fsdp": ("decoder", "fsdp", 1e-5),
             "bert-fsdp": ("bert", "fsdp", 1e-5), "bf16-fsdp": ("bf16", "fsdp", 1e-3),
             "finetune": ("finetune", "ddp", 1e-5), "finetune-fsdp": ("finetune", "fsdp", 1e-5),
             "resumed-fsdp": ("decoder", "fsdp", 1e-5)}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cases(corpus, tmp):
    """name -> overrides of each one-process run (the two-rank runs add train.parallel)."""
    decoder = {"train.max_steps": 6, "train.batch_size": 4, "train.grad_accum": 2, "train.save_every": 3,
               "train.eval_every": 3}  # fmt: skip
    with open(tmp / "task.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["text", "label"])
        writer.writeheader()
        writer.writerows(sentiment_rows(40, random.Random(0)))
    finetune = {"objective.name": "task", "task.train": tmp / "task.csv", "task.validation": tmp / "task.csv",
                "task.max_len": 16, "finetune.source": tmp / "decoder-1", "finetune.eval_examples": 8,
                "train.max_steps": 4, "train.eval_every": 2, "train.save_every": 2}  # fmt: skip
    return {
        "decoder": tiny_overrides(corpus, tmp / "data", **decoder),
        "t5": tiny_overrides(corpus, tmp / "data", **{"train.max_steps": 4, "train.batch_size": 4, **T5}),
        "bf16": tiny_overrides(corpus, tmp / "data", **{"train.max_steps": 4, "train.precision": "bf16"}),
        "bert": tiny_overrides(corpus, tmp / "data", **{"train.max_steps": 4, "train.eval_every": 2, **BERT}),
        "finetune": tiny_overrides(corpus, tmp / "data", **finetune),
    }


def run(overrides: list[str], run_dir, resume: bool = False):
    config = pretrainer.load_config(None, overrides)
    if config.objective.name == "task":
        return pretrainer.finetune(config, run_dir, resume=resume)
    return pretrainer.train(config, run_dir, resume=resume)


def worker(rank: int, tmp, ports: dict, cases: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    for name, (reference, parallel, _) in TWO_RANKS.items():
        os.environ["MASTER_PORT"] = str(ports[name])
        run([*cases[reference], f"train.parallel={parallel}"], tmp / f"{name}-2", resume=name.startswith("resumed"))
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


def cut_back_to(run_dir, step: int) -> None:
    """Make `run_dir` a run stopped at `step`: later checkpoints gone, `latest` naming step-`step`."""
    for later in checkpoint.steps(run_dir, complete=False):
        if later.name != f"step-{step}":
            shutil.rmtree(later)
    (run_dir / "checkpoints" / "latest").write_text(f"step-{step}\n")


def losses(run, key="loss") -> list[float]:
    return [json.loads(line)[key] for line in (run / "metrics.jsonl").read_text().splitlines() if f'"{key}"' in line]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The two-rank runs of TWO_RANKS, and the one-process runs they must equal (run first, which also prepares
    the data once). resumed-fsdp resumes, on two ranks under FSDP2, the one-process decoder cut back to step 3."""
    tmp = tmp_path_factory.mktemp("ddp")
    from tests.conftest import make_corpus

    runs = cases(make_corpus(tmp / "corpus"), tmp)
    for name, overrides in runs.items():
        run(overrides, tmp / f"{name}-1")
    shutil.copytree(tmp / "decoder-1", tmp / "resumed-fsdp-2")
    cut_back_to(tmp / "resumed-fsdp-2", 3)
    ports = {name: free_port() for name in [*TWO_RANKS, "mismatch", "dying"]}
    mp.spawn(worker, args=(tmp, ports, runs), nprocs=2, join=True)
    return tmp, runs


@pytest.mark.parametrize("name", list(TWO_RANKS))
def test_two_ranks_train_as_one_process(two_ranks, name):
    tmp, _ = two_ranks
    reference, _, rel = TWO_RANKS[name]
    one, two = tmp / f"{reference}-1", tmp / f"{name}-2"
    assert losses(two) == pytest.approx(losses(one), rel=rel) and len(losses(two)) == len(losses(one))
    assert losses(two, "val_loss") == pytest.approx(losses(one, "val_loss"), rel=rel)


def test_fine_tuning_on_two_ranks_keeps_the_same_best_checkpoint(two_ranks):
    tmp, _ = two_ranks
    for name in ("finetune", "finetune-fsdp"):
        one, two = (pretrainer.load(tmp / run / "checkpoints" / "best")[0] for run in ("finetune-1", f"{name}-2"))
        for (key, a), b in zip(one.state_dict().items(), two.state_dict().values(), strict=True):
            assert (a - b).abs().max() < 1e-5, key


@pytest.mark.parametrize("engine", ["decoder", "decoder-fsdp"])
def test_a_checkpoint_of_two_ranks_resumes_in_one(two_ranks, engine):
    tmp, runs = two_ranks
    resumed = tmp / f"resumed-from-{engine}"
    shutil.copytree(tmp / f"{engine}-2", resumed)
    cut_back_to(resumed, 3)
    pretrainer.train(pretrainer.load_config(None, runs["decoder"]), resumed, resume=True)
    assert losses(resumed) == pytest.approx(losses(tmp / f"{engine}-2"), rel=1e-5)


def test_ranks_with_different_configs_refuse_to_start(two_ranks):
    tmp, _ = two_ranks
    for rank in (0, 1):
        assert "these ranks were given another config than rank 0: 1;" in (tmp / f"mismatch-{rank}.txt").read_text()


@pytest.mark.parametrize(
    "overrides, says",
    [
        ([], "started as 2 processes (WORLD_SIZE=2) but train.parallel=none; set train.parallel=ddp"),
        (["train.parallel=ddp", "train.batch_size=3"], "train.batch_size=3 is the global batch and does not split"),
        (["train.parallel=fsdp", "train.precision=fp16"], "train.parallel=fsdp trains in fp32 or bf16"),
        (["train.parallel=fsdp", "finetune.lora_rank=4"], "LoRA adapters (finetune.lora_rank) train in one process"),
        (
            ["train.parallel=fsdp", "model.arch=encoder", "objective.name=mlm", "objective.teacher=runs/x"],
            "distillation (objective.teacher) trains in one process or under train.parallel=ddp",
        ),
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
