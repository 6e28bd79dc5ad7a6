import json
import math
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import pretrainer
from pretrainer import cli
from pretrainer.config import ConfigError, ModelConfig
from pretrainer.model import build_model
from pretrainer.train.checkpoint import CheckpointError
from pretrainer.train.metrics import read_metrics
from pretrainer.train.parallelize import apply_activation_checkpointing
from tests.conftest import tiny_overrides, without_timings


def test_loss_decreases_and_run_dir_is_complete(tiny_config, tmp_path):
    run = tmp_path / "run"
    result = pretrainer.train(tiny_config(**{"train.max_steps": 40, "train.save_every": 20}), run)
    rows = read_metrics(run / "metrics.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 40 and all("step" in r for r in rows)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert result.val_loss is not None and [r["step"] for r in rows if "val_loss" in r] == [10, 20, 30, 40]
    assert all(0 <= r["data_wait"] < 1 for r in rows if "loss" in r)  # a share of each row's time
    assert (run / "loss.png").stat().st_size > 1000 and (run / "config.yaml").is_file()
    # keep_last=2: step-20 and step-40 remain, latest names step-40
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-20", "step-40"]
    ckpt = run / "checkpoints" / "step-40"
    assert {p.name for p in ckpt.iterdir()} == {
        "model.safetensors",
        "config.yaml",
        "tokenizer.json",
        "trainer_state.pt",
        "SHA256SUMS",
    }

    model, tokenizer = pretrainer.load(run)
    text = pretrainer.generate_text(model, tokenizer, "The king", 20, temperature=0)
    assert isinstance(text, str) and len(text) > 0


def test_bf16_autocast_trains_like_fp32(tiny_config, tmp_path):
    """In 20 steps both precisions get well below an untrained model's loss (ln of the vocabulary, 5.7 here)
    and to nearly the same validation loss."""
    fp32 = pretrainer.train(tiny_config(**{"train.max_steps": 20}), tmp_path / "fp32")
    bf16 = pretrainer.train(tiny_config(**{"train.max_steps": 20, "train.precision": "bf16"}), tmp_path / "bf16")
    untrained = math.log(fp32.shards.manifest["vocab_size"])
    assert fp32.val_loss < untrained - 0.8 and abs(bf16.val_loss - fp32.val_loss) < 0.1


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_exact(corpus, tmp_path):
    """kill -9 at three moments (just after a checkpoint, at a random time later, after the last checkpoint),
    each with the logging window (7 steps) cut across checkpoints (every 10): after --resume the metrics and
    the final weights equal the uninterrupted run's. Only the killed runs need a process of their own."""
    overrides = tiny_overrides(
        corpus,
        tmp_path / "data",
        **{
            "train.max_steps": 40,
            "train.save_every": 10,
            "train.eval_every": 20,
            "train.log_every": 7,
            "model.dropout": 0.1,
            "train.grad_accum": 2,
        },
    )
    full = tmp_path / "full"
    assert cli.main(["train", "configs/gpt-tiny.yaml", "--run-dir", str(full), *overrides]) == 0
    expected = without_timings(full)
    final = load_file(full / "checkpoints" / "step-40" / "model.safetensors")
    assert len(expected) == 6 + 2

    rng = random.Random(0)
    for trial, (when, delay) in enumerate([("step-10", 0.0), ("step-20", rng.uniform(0, 0.5)), ("step-40", 0.0)]):
        killed = tmp_path / f"killed{trial}"
        cmd = [sys.executable, "-m", "pretrainer", "train", "configs/gpt-tiny.yaml", "--run-dir", str(killed)]
        proc = subprocess.Popen(cmd + overrides, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        latest = killed / "checkpoints" / "latest"
        deadline = time.time() + 120
        while not (latest.is_file() and latest.read_text().strip() == when) and proc.poll() is None:
            assert time.time() < deadline
            time.sleep(0.002)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert cli.main(["train", "configs/gpt-tiny.yaml", "--run-dir", str(killed), "--resume", *overrides]) == 0
        assert without_timings(killed) == expected, when
        weights = load_file(killed / "checkpoints" / "step-40" / "model.safetensors")
        assert weights.keys() == final.keys() and all(torch.equal(weights[k], final[k]) for k in final)


def test_resume_without_checkpoint(tiny_config, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        pretrainer.train(tiny_config(), tmp_path / "empty", resume=True)


def test_existing_run_needs_resume(tiny_config, tmp_path):
    pretrainer.train(tiny_config(**{"train.max_steps": 2}), tmp_path / "r")
    before = (tmp_path / "r" / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError, match="pass --resume"):
        pretrainer.train(tiny_config(**{"train.max_steps": 2}), tmp_path / "r")
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == before


def test_resume_with_mismatched_config(tiny_config, tmp_path):
    pretrainer.train(tiny_config(**{"train.max_steps": 2}), tmp_path / "r")
    with pytest.raises(CheckpointError, match=r"model.d_model is 32 in the checkpoint but 64 now"):
        pretrainer.train(tiny_config(**{"model.d_model": 64}), tmp_path / "r", resume=True)


def test_resume_can_extend_a_finished_run(tiny_config, tmp_path):
    pretrainer.train(tiny_config(**{"train.max_steps": 10}), tmp_path / "r")
    result = pretrainer.train(tiny_config(**{"train.max_steps": 14}), tmp_path / "r", resume=True)
    steps = [r["step"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if "loss" in r]
    assert result.step == 14 and steps == list(range(1, 15))


def test_vocab_smaller_than_tokenizer(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="smaller than the tokenizer"):
        pretrainer.train(tiny_config(**{"model.vocab_size": 100}), tmp_path / "r")


def test_cli_data_train_generate(corpus, tmp_path, capsys):
    """The commands in-process, then `python -m pretrainer` itself once for text and once for an error."""
    overrides = tiny_overrides(corpus, tmp_path / "data", **{"train.max_steps": 4})
    assert cli.main(["data", "configs/gpt-tiny.yaml", *overrides]) == 0
    assert cli.main(["data", "configs/gpt-tiny.yaml", *overrides]) == 0
    first, second = capsys.readouterr().out.splitlines()
    assert "written" in first and "up to date" in second
    assert cli.main(["train", "configs/gpt-tiny.yaml", "--run-dir", str(tmp_path / "r"), *overrides]) == 0
    assert json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4

    generate = [sys.executable, "-m", "pretrainer", "generate", str(tmp_path / "r"), "--prompt", "The king"]
    flags = ["--max-new-tokens", "8", "--seed", "1", "--num-samples", "2"]
    out = subprocess.run(generate + flags, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.count("The king") == 2, out.stderr
    error = subprocess.run(generate + ["--top-p", "2"], capture_output=True, text=True)
    assert error.returncode == 2 and error.stdout == ""
    assert error.stderr == "error: top_p must be in (0, 1] (got 2.0); 0.9 is usual, 1 keeps every token\n"


@pytest.mark.parametrize("arch", ["decoder", "encoder_decoder"])
def test_activation_checkpointing_changes_memory_not_numbers(tiny_config, tmp_path, arch):
    t5 = {"model.arch": "encoder_decoder", "model.positions": "relative", "objective.name": "span_corruption",
          "data.tokenizer": "unigram", "data.sentinels": 20} if arch == "encoder_decoder" else {}  # fmt: skip
    runs = {}
    for checkpointed in (False, True):
        settings = {"train.max_steps": 6, "train.activation_checkpointing": checkpointed, **t5}
        runs[checkpointed] = tmp_path / str(checkpointed)
        pretrainer.train(tiny_config(**settings), runs[checkpointed])
    assert without_timings(runs[True]) == without_timings(runs[False])
    a, b = (load_file(run / "checkpoints" / "step-6" / "model.safetensors") for run in runs.values())
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpointed_blocks_recompute_in_the_backward_pass():
    model = build_model(ModelConfig(arch="decoder", vocab_size=64, n_layer=2, d_model=32, n_head=2, max_seq_len=16))
    calls = []
    for i, block in enumerate(model.blocks):
        forward = block.forward
        block.forward = lambda *a, _i=i, _f=forward, **k: calls.append(_i) or _f(*a, **k)
    assert apply_activation_checkpointing(model) == 2
    ids = torch.randint(0, 64, (2, 16))
    model(ids, targets=ids)[1].backward()
    assert calls == [0, 1, 1, 0]  # each block once forward, and again (last first) as the gradient reaches it
    with torch.no_grad():
        model(ids)
    assert calls == [0, 1, 1, 0, 0, 1]  # without gradients, nothing to recompute


KINDS = {
    "decoder": {},
    "encoder": {"model.arch": "encoder", "objective.name": "mlm", "data.tokenizer": "wordpiece"},
    "encoder_decoder": {"model.arch": "encoder_decoder", "model.positions": "relative",
                        "objective.name": "span_corruption", "data.tokenizer": "unigram", "data.sentinels": 20},
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.compile
@pytest.mark.parametrize("kind", KINDS)
def test_compiled_training_matches_eager(tiny_config, tmp_path, kind):
    """train.compile=true: 5 steps give the eager losses within 1e-4 (inductor fuses and reorders float sums)."""
    losses = {}
    for compiled in (False, True):
        run = tmp_path / str(compiled)
        pretrainer.train(tiny_config(**{"train.max_steps": 5, "train.compile": compiled, **KINDS[kind]}), run)
        losses[compiled] = [r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert len(losses[True]) == 5 and losses[True] == pytest.approx(losses[False], abs=1e-4)


def test_gradient_accumulation_equals_one_larger_batch(tiny_config, tmp_path):
    """4 micro-batches of 2 make the step one batch of 8 makes: the same examples, the same mean gradient."""
    runs = {}
    for batch, accum in ((8, 1), (2, 4)):
        runs[accum] = tmp_path / f"accum{accum}"
        settings = {"train.max_steps": 4, "train.batch_size": batch, "train.grad_accum": accum}
        pretrainer.train(tiny_config(**settings), runs[accum])
    one, four = ([r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r] for run in runs.values())
    assert four == pytest.approx(one, rel=1e-5) and len(one) == 4
