"""Run folders keep their data: lost pointers, diverged runs, finished runs, interrupted logging windows,
full disks and damaged checkpoint files."""

import errno
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import pretrainer
from pretrainer import cli
from pretrainer.errors import CheckpointError, TrainingError
from pretrainer.train import checkpoint
from pretrainer.train.metrics import read_metrics
from tests.conftest import assert_resume_is_exact, files_of, tiny_overrides


def test_lost_latest_pointer_falls_back_to_the_newest_checkpoint(tiny_config, tmp_path):
    run = tmp_path / "r"
    config = lambda **kw: tiny_config(**{"train.save_every": 2, "train.eval_every": 4, **kw})
    pretrainer.train(config(**{"train.max_steps": 8}), run)
    metrics = (run / "metrics.jsonl").read_text()
    pointer = run / "checkpoints" / "latest"
    pointer.unlink()

    # a fresh run must not start over this run (it would truncate its metrics and prune its checkpoints)
    with pytest.raises(CheckpointError, match=r"already holds a run with checkpoints \(newest: step-8\)"):
        pretrainer.train(config(**{"train.max_steps": 8}), run)
    assert (run / "metrics.jsonl").read_text() == metrics and checkpoint.steps(run)[-1].name == "step-8"

    with pytest.warns(UserWarning, match="latest' is missing; using the newest checkpoint, step-8"):
        result = pretrainer.train(config(**{"train.max_steps": 10}), run, resume=True)
    assert result.step == 10 and [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r] == list(
        range(1, 11)
    )
    assert pointer.read_text().strip() == "step-10"

    pointer.write_text("step-99\n")  # names a folder that is gone
    with pytest.warns(UserWarning, match="names a checkpoint that is gone; using the newest checkpoint, step-10"):
        assert checkpoint.latest(run) == run / "checkpoints" / "step-10"


def test_a_diverged_run_keeps_its_good_checkpoints_and_names_the_last(tiny_config, tmp_path):
    run = tmp_path / "r"
    good = {"train.save_every": 2, "train.log_every": 10, "train.eval_every": 100, "train.keep_last": 2}
    pretrainer.train(tiny_config(**good, **{"train.max_steps": 4}), run)
    diverging = tiny_config(**good, **{"train.max_steps": 30, "train.lr": 1e9, "train.grad_clip": 0})
    last_good = run / "checkpoints" / "step-4"
    with pytest.raises(TrainingError, match=rf"(loss is (nan|inf)|weights are no longer finite) at step \d+; "
                       rf"the last good checkpoint is {last_good}: lower train.lr"):  # fmt: skip
        pretrainer.train(diverging, run, resume=True)
    assert checkpoint.latest(run) == last_good
    for saved in checkpoint.steps(run):  # every checkpoint on disk loads, which needs finite weights
        pretrainer.load(saved)


def test_a_run_that_diverges_before_its_first_checkpoint_says_so(tiny_config, tmp_path):
    config = tiny_config(**{"train.lr": 1e9, "train.grad_clip": 0, "train.warmup_steps": 1})
    with pytest.raises(TrainingError, match=r"loss is (nan|inf) at step \d+; no checkpoint yet: lower train.lr"):
        pretrainer.train(config, tmp_path / "r")
    assert checkpoint.steps(tmp_path / "r") == []


def test_resuming_a_finished_run_says_so(tiny_config, corpus, tmp_path, capsys):
    run = tmp_path / "r"
    first = pretrainer.train(tiny_config(**{"train.max_steps": 6, "train.eval_every": 3}), run)
    metrics, saved_config = (run / "metrics.jsonl").read_text(), (run / "config.yaml").read_text()
    (run / "loss.png").unlink()  # as if killed between the last checkpoint and the plot

    again = pretrainer.train(tiny_config(**{"train.max_steps": 6, "train.eval_every": 3}), run, resume=True)
    assert again.already_finished and again.step == 6 and again.val_loss == first.val_loss
    assert (run / "metrics.jsonl").read_text() == metrics and (run / "loss.png").is_file()

    overrides = tiny_overrides(corpus, tmp_path / "data", **{"train.max_steps": 6, "train.eval_every": 3})
    assert cli.main(["train", "configs/gpt-tiny.yaml", "--run-dir", str(run), "--resume", *overrides]) == 0
    assert "already finished at step 6" in capsys.readouterr().out

    # a max_steps below the checkpoint is refused before anything is rewritten
    with pytest.raises(CheckpointError, match="step-6 is past train.max_steps=4; set train.max_steps to 6 or more"):
        pretrainer.train(tiny_config(**{"train.max_steps": 4, "train.lr": 1e-4}), run, resume=True)
    assert (run / "config.yaml").read_text() == saved_config and (run / "metrics.jsonl").read_text() == metrics


def test_resume_refuses_a_corpus_edited_since_the_checkpoint(tiny_config, corpus, tmp_path):
    """Editing the corpus would retrain the tokenizer under the resumed model's embeddings (new token ids for
    old rows): the resume is refused before any shard is rewritten, and so is one on a new tokenizer file."""
    run = tmp_path / "r"
    pretrainer.train(tiny_config(**{"train.max_steps": 4, "train.save_every": 2}), run)
    before, shards = files_of(run), files_of(tmp_path / "data")
    with open(corpus / "doc0.txt", "a") as doc:
        doc.write("An added line of new words: zephyr quixotic.\n")
    with pytest.raises(CheckpointError, match=r"the corpus \(data.source: 6 documents then, 6 now\) changed since "
                       r"step-4 was saved; a resumed run must see the data it was trained on"):  # fmt: skip
        pretrainer.train(tiny_config(**{"train.max_steps": 6}), run, resume=True)
    assert files_of(run) == before and files_of(tmp_path / "data") == shards

    (corpus / "doc5.txt").unlink()  # and a document fewer
    with pytest.raises(CheckpointError, match=r"6 documents then, 5 now"):
        pretrainer.train(tiny_config(**{"train.max_steps": 6}), run, resume=True)


def test_metrics_after_resume_equal_the_uninterrupted_run_off_a_log_boundary(tiny_config, tmp_path):
    """Checkpoints at steps 4 and 8 fall inside logging windows of 3 steps: the partly filled window is saved
    with the checkpoint, so the rows after the resume average the same steps as the uninterrupted run's."""
    config = lambda: tiny_config(**{"train.max_steps": 12, "train.log_every": 3, "train.save_every": 4,
                                    "train.eval_every": 6, "train.keep_last": 5})  # fmt: skip
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    pretrainer.train(config(), full)
    assert_resume_is_exact(lambda r: pretrainer.train(config(), r, resume=True), full, resumed, 4, 12)


def test_a_full_disk_while_saving_leaves_no_trace_and_names_the_good_checkpoint(tiny_config, tmp_path, monkeypatch):
    run = tmp_path / "r"
    saves, real_save = [], torch.save

    def save_until_the_disk_fills(state, path):
        saves.append(path)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(state, path)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_the_disk_fills)
    with pytest.raises(CheckpointError) as error:
        pretrainer.train(tiny_config(**{"train.max_steps": 6, "train.save_every": 2}), run)
    monkeypatch.undo()
    assert str(error.value) == (
        f"no space left on device while saving step 4; the last good checkpoint is {run}/checkpoints/step-2"
    )
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-2"]
    assert checkpoint.latest(run).name == "step-2"


@pytest.fixture
def saved_run(tiny_config, tmp_path):
    run = tmp_path / "saved"
    pretrainer.train(tiny_config(**{"train.max_steps": 2}), run)
    return run


def test_a_damaged_weights_file_is_refused_by_its_checksum(saved_run):
    weights = saved_run / "checkpoints" / "step-2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte inside a tensor: still loads as safetensors
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors' is damaged: its SHA-256 differs"):
        pretrainer.load(saved_run)


def test_weights_that_are_not_finite_are_refused(saved_run):
    ckpt = saved_run / "checkpoints" / "step-2"
    tensors = load_file(ckpt / "model.safetensors")
    tensors["blocks.0.mlp.fc.weight"][0, 0] = float("nan")
    save_file(tensors, ckpt / "model.safetensors")
    checkpoint.seal(ckpt)  # a checksum that agrees: only the finiteness check can catch it
    with pytest.raises(CheckpointError, match=r"model.safetensors' holds weights that are not finite \(blocks.0.mlp"):
        pretrainer.load(saved_run)


def test_compare_draws_each_runs_validation_curve_and_prints_last_and_best(tmp_path, capsys):
    for name, losses in (("dense", [5.0, 4.0, 4.5]), ("moe", [5.0, 3.5, 3.8])):
        (tmp_path / name).mkdir()
        rows = [{"step": 10 * (i + 1), "loss": 9.0} for i in range(3)]
        rows += [{"step": 10 * (i + 1), "val_loss": v} for i, v in enumerate(losses)]
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pictures" / "compare.png"
    assert cli.main(["compare", str(tmp_path / "dense"), str(tmp_path / "moe"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out.splitlines()
    assert table[1].split() == ["dense", "30", "4.5000", "4.0000"] and table[2].split() == [
        "moe",
        "30",
        "3.8000",
        "3.5000",
    ]
