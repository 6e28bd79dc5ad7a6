"""DistilBERT's distillation through the one trainer (model/distill.py): the losses against a hand computation, a
student started from every other teacher layer, a run that learns and resumes exactly, and the teachers refused."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import pretrainer
from pretrainer.config import ModelConfig
from pretrainer.errors import CheckpointError, ConfigError, DataError
from pretrainer.model import build_model
from pretrainer.model.distill import distillation_losses, init_from_teacher
from pretrainer.train.metrics import read_metrics
from tests.conftest import assert_resume_is_exact
from tests.test_modes import BERT

STUDENT = {"model.n_layer": 1, "model.type_vocab_size": 0, "model.pooler": False}


def test_the_losses_equal_a_hand_computation():
    """Two tokens, three classes, T = 2: soft cross-entropy × T² and 1 − cosine, written out."""
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    teacher = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    hs, ht = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    T = 2.0
    soft_by_hand = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        z_t = sum(math.exp(v / T) for v in t_row)
        z_s = sum(math.exp(v / T) for v in s_row)
        soft_by_hand -= sum(math.exp(t / T) / z_t * (s / T - math.log(z_s)) for s, t in zip(s_row, t_row, strict=True))
    soft_by_hand = soft_by_hand / 2 * T**2
    cosine_by_hand = 1 - (0.0 + 1.0) / 2  # orthogonal, then parallel
    soft, cosine = distillation_losses(student, teacher, hs, ht, T)
    assert soft.item() == pytest.approx(soft_by_hand, rel=1e-6) and cosine.item() == pytest.approx(cosine_by_hand)


def test_a_student_starts_from_every_other_teacher_layer():
    torch.manual_seed(0)
    common = dict(arch="encoder", vocab_size=64, d_model=32, n_head=4, max_seq_len=16, norm_position="post")
    teacher = build_model(ModelConfig(n_layer=4, type_vocab_size=2, **common))
    student = build_model(ModelConfig(n_layer=2, pooler=False, **common))
    assert init_from_teacher(student, teacher) == [0, 2]
    for i, j in ((0, 0), (1, 2)):
        theirs = teacher.blocks[j].state_dict()
        for name, mine in student.blocks[i].state_dict().items():
            assert torch.equal(mine, theirs[name]), name
    # one layer from one: the same model, the teacher's segment 0 folded into the student's positions
    teacher = build_model(ModelConfig(n_layer=1, type_vocab_size=2, **common)).eval()
    student = build_model(ModelConfig(n_layer=1, pooler=False, **common)).eval()
    init_from_teacher(student, teacher)
    x = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        assert (student(x)[0] - teacher(x)[0]).abs().max() < 1e-5
    with pytest.raises(ConfigError, match="give the student at most 1"):
        init_from_teacher(build_model(ModelConfig(n_layer=2, **common)), teacher)
    with pytest.raises(ConfigError, match="give the student the teacher's d_model, n_head and d_ff"):
        init_from_teacher(build_model(ModelConfig(n_layer=1, **{**common, "d_ff": 64})), teacher)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny BERT pretrained for 20 steps, and the overrides that made it."""
    from tests.conftest import make_corpus, tiny_overrides

    tmp = tmp_path_factory.mktemp("distill")
    overrides = tiny_overrides(make_corpus(tmp / "corpus"), tmp / "data", **BERT)
    pretrainer.train(pretrainer.load_config(None, overrides), tmp / "teacher")
    return tmp / "teacher", overrides


def student_config(teacher, **extra):
    run, overrides = teacher
    extra = {**STUDENT, "objective.teacher": run, "train.max_steps": 12, "train.save_every": 6, "train.keep_last": 5,
             **extra}  # fmt: skip
    return pretrainer.load_config(None, [*overrides, *(f"{k}={v}" for k, v in extra.items())])


def test_a_student_learns_from_its_teacher_and_resumes_exactly(teacher, tmp_path):
    own = tmp_path / "teacher"  # this test's own copy: it retrains it at the end
    shutil.copytree(teacher[0], own)
    config = lambda: student_config(teacher, **{"objective.teacher": own})
    pretrainer.train(config(), tmp_path / "full")
    losses = [r["loss"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if "loss" in r]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    student, _ = pretrainer.load(tmp_path / "full")  # a plain encoder: the teacher is not in its checkpoint
    assert len(student.blocks) == 1 and student.type_emb is None
    run = lambda r: pretrainer.train(config(), r, resume=True)
    assert_resume_is_exact(run, tmp_path / "full", tmp_path / "resumed", 6, 12)

    weights = own / "checkpoints" / "step-20" / "model.safetensors"
    tensors = load_file(weights)
    tensors["emb_norm.weight"] = tensors["emb_norm.weight"] * 2
    save_file(tensors, weights)
    (own / "checkpoints" / "step-20" / "SHA256SUMS").unlink()  # a teacher retrained, not a damaged one
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-12")
    (tmp_path / "resumed" / "checkpoints" / "latest").write_text("step-6\n")
    with pytest.raises(CheckpointError, match="has changed since step-6 was saved"):
        run(tmp_path / "resumed")


@pytest.mark.parametrize(
    "extra, error, says",
    [
        ({"model.d_model": 64}, ConfigError, "the teacher has model.d_model=32 and the student 64"),
        ({"data.vocab_size": 280}, DataError, "was trained with another tokenizer than data.tokenizer"),
    ],
)
def test_a_teacher_the_student_cannot_learn_from_is_refused(teacher, tmp_path, extra, error, says):
    with pytest.raises(error, match=says):
        pretrainer.train(student_config(teacher, **extra), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_teacher_must_be_a_masked_lm_encoder():
    with pytest.raises(ConfigError, match="objective.teacher distils a masked-LM encoder"):
        pretrainer.load_config(None, ["objective.teacher=runs/x"])
