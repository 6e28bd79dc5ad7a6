"""Fine-tuning through the one trainer: heads on our pretrained encoder and decoder, T5 text to text, best
checkpoints, early stopping, exact resume, a frozen body, evaluation and prediction."""

import csv
import json
import random

import pytest
import torch
from safetensors.torch import load_file

import pretrainer
from pretrainer import cli
from pretrainer.config import ModelConfig
from pretrainer.errors import CheckpointError, ConfigError, DataError
from pretrainer.eval.tasks import load_finetuned
from pretrainer.model import build_model, lora
from pretrainer.model.generate import generate_text
from pretrainer.train import checkpoint
from pretrainer.train.metrics import read_metrics
from pretrainer.train.trainer import Trainer, spread_spans
from tests.conftest import WORDS, assert_resume_is_exact, make_corpus, tiny_overrides
from tests.test_modes import BERT, T5

GOOD, BAD = "good fair brave loves".split(), "bad foul hates old".split()


def sentiment_rows(n, rng):
    """Texts whose class shows in their words (three of one kind among four neutral ones)."""
    rows = []
    for _ in range(n):
        positive = rng.random() < 0.5
        words = [rng.choice(GOOD if positive else BAD) for _ in range(3)] + rng.sample(WORDS[:12], 4)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "pos" if positive else "neg"})
    return rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A corpus, a synthetic sentiment task as CSV, and tiny BERT and GPT runs pretrained on the corpus."""
    tmp = tmp_path_factory.mktemp("finetune")
    corpus = make_corpus(tmp / "corpus")
    rng = random.Random(0)
    for split, n in (("train", 300), ("validation", 60), ("test", 60)):
        with open(tmp / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, ["text", "label"])
            writer.writeheader()
            writer.writerows(sentiment_rows(n, rng))
    overrides = {
        "bert": tiny_overrides(corpus, tmp / "data", **BERT, **{"train.max_steps": 20}),
        "gpt": tiny_overrides(corpus, tmp / "data", **{"train.max_steps": 20}),
    }
    for name, kind in overrides.items():
        pretrainer.train(pretrainer.load_config(None, kind), tmp / name)
    return tmp, overrides


def task_config(tiny, kind="bert", **extra):
    tmp, overrides = tiny
    task = {
        "objective.name": "task",
        "task.train": tmp / "train.csv",
        "task.validation": tmp / "validation.csv",
        "task.test": tmp / "test.csv",
        "task.max_len": 16,
        "train.max_steps": 60,
        "train.eval_every": 20,
        "train.save_every": 20,
        "train.warmup_steps": 5,
        "train.lr": 2e-3,
    }
    task.update(extra)
    return pretrainer.load_config(None, [*overrides[kind], *(f"{k}={v}" for k, v in task.items())])


@pytest.mark.parametrize("kind", ["bert", "gpt"])
def test_a_pretrained_model_learns_the_task_and_reloads_with_its_labels(kind, tiny, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(task_config(tiny, kind, **{"finetune.source": tiny[0] / kind}), run)
    result = trainer.fit()
    labels = [row["label"] for row in csv.DictReader(open(tiny[0] / "validation.csv"))]
    majority = max(labels.count("pos"), labels.count("neg")) / len(labels)  # always answering the common class
    assert result.scores["val_accuracy"] > max(0.8, majority + 0.2)
    model, tokenizer, config, ckpt = load_finetuned(run)
    assert config.task.labels == ["neg", "pos"] and config.model.n_labels == 2 and ckpt.name == "best"
    with pytest.raises(ConfigError, match="fills in masked tokens|has a sequence head, not a language-model head"):
        generate_text(model, tokenizer, "good fair", 3)  # a classifier writes no text

    # the checkpoint of the last step gives the model the trainer ended with
    last, *_ = checkpoint.load(checkpoint.latest(run))
    batch = trainer.val_splits[""].make(0, 8)
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(trainer.model(**batch)[0], last(**batch)[0])

    texts = ["good fair brave the king", "bad foul hates the queen"]
    assert pretrainer.predict(run, texts) == ["pos", "neg"]
    assert pretrainer.predict(run, texts[0]) == ["pos"] and pretrainer.predict(run, []) == []  # a text alone: one
    scores = pretrainer.evaluate(run, "test")["scores"]
    assert scores["accuracy"] > 0.8 and json.loads((run / "eval-test.json").read_text())["scores"] == scores
    assert (run / "confusion-test.png").stat().st_size > 1000
    # its head answers neg or pos: a built-in task with other classes is refused, not scored in the wrong classes
    with pytest.raises(ConfigError, match=r"has a head for classification \(neg, pos\), and tweets-sentiment is "
                                          r"classification \(negative, neutral, positive\)"):  # fmt: skip
        pretrainer.evaluate(run, "test", task_name="tweets-sentiment")
    with pytest.raises(ConfigError, match=r"--task 'tweets' is not a built-in task \(tweets-sentiment, code-docs"):
        pretrainer.evaluate(run, "test", task_name="tweets")


def test_an_electra_run_is_fine_tuned_from_its_discriminator(tiny, tmp_path):
    from tests.test_modes import ELECTRA

    tmp, overrides = tiny
    electra = pretrainer.load_config(None, tiny_overrides(tmp / "corpus", tmp / "data", **ELECTRA,
                                                          **{"train.max_steps": 4}))  # fmt: skip
    pretrainer.train(electra, tmp_path / "electra")
    pretrained, *_ = checkpoint.load(tmp_path / "electra")
    trainer = Trainer(
        task_config(tiny, **{"finetune.source": tmp_path / "electra", "train.max_steps": 2}), tmp_path / "run"
    )
    body = trainer.model.state_dict()
    for key, value in pretrained.discriminator.state_dict().items():
        if key.startswith("blocks."):  # the body is the discriminator's, not the generator's
            assert torch.equal(body[key], value), key
    assert trainer.model.config.head == "sequence" and trainer.model.config.generator_fraction is None


def test_t5_learns_text_to_text_from_scratch(tiny, tmp_path):
    tmp, _ = tiny
    rng = random.Random(1)
    for split, n in (("train", 300), ("validation", 30)):
        rows = [[rng.choice(WORDS) for _ in range(4)] for _ in range(n)]
        (tmp_path / f"{split}.jsonl").write_text(
            "".join(json.dumps({"input": " ".join(r), "target": r[0]}) + "\n" for r in rows)
        )
    t5 = {k: v for k, v in T5.items() if k != "objective.name"}
    overrides = tiny_overrides(tmp / "corpus", tmp / "data", **t5, **{
        "objective.name": "task", "task.kind": "text2text", "task.train": tmp_path / "train.jsonl",
        "task.validation": tmp_path / "validation.jsonl", "task.prefix": "'first: '", "task.max_target_len": 6,
        "task.max_len": 24,
        "train.max_steps": 60, "train.eval_every": 20,
    })  # fmt: skip
    result = pretrainer.finetune(pretrainer.load_config(None, overrides), tmp_path / "run")
    losses = [r["val_loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "val_loss" in r]
    assert losses[-1] < losses[0] - 0.3 and result.step == 60
    scores = pretrainer.evaluate(tmp_path / "run", "validation")["scores"]
    assert set(scores) == {"rouge1", "rouge2", "rougeL"} and 0 <= scores["rougeL"] <= 100


def test_best_checkpoint_early_stopping_and_a_finished_resume(tiny, tmp_path):
    """With no learning (lr tiny) val_accuracy never improves on its first value: checkpoints/best is the first
    evaluation's, the run stops after `patience` more, and a resume says it is finished."""
    config = lambda: task_config(tiny, **{"train.lr": 1e-9, "train.min_lr": 0, "finetune.metric": "val_accuracy",
                                          "finetune.patience": 2, "train.eval_every": 10})  # fmt: skip
    result = pretrainer.finetune(config(), tmp_path / "run")
    evaluations = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "val_loss" in r]
    assert result.step == 30 and evaluations == [10, 20, 30]
    assert checkpoint.latest(tmp_path / "run").name == "step-30"
    assert load_finetuned(tmp_path / "run")[3].name == "best"
    again = pretrainer.finetune(config(), tmp_path / "run", resume=True)
    assert again.already_finished


def test_resume_is_exact(tiny, tmp_path):
    config = lambda: task_config(tiny, **{"finetune.source": tiny[0] / "bert", "train.keep_last": 5})
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    pretrainer.finetune(config(), full)
    assert_resume_is_exact(lambda r: pretrainer.finetune(config(), r, resume=True), full, resumed, 20, 60)


def test_a_frozen_body_keeps_its_pretrained_weights(tiny, tmp_path):
    source = tiny[0] / "bert"
    config = task_config(tiny, **{"finetune.source": source, "finetune.freeze_body": True, "train.max_steps": 20})
    pretrainer.finetune(config, tmp_path / "run")
    before = pretrainer.load(source)[0].state_dict()
    after = pretrainer.load(tmp_path / "run")[0].state_dict()
    body = [k for k in after if not k.startswith("head.")]
    assert body and all(torch.equal(after[k], before[k]) for k in body)
    assert not torch.allclose(after["head.linear.weight"], torch.zeros_like(after["head.linear.weight"]))


def test_body_and_head_learning_rates(tiny, tmp_path):
    trainer = Trainer(task_config(tiny, **{"finetune.source": tiny[0] / "bert", "finetune.body_lr": 1e-4}), tmp_path)
    sizes = {}
    for group in trainer.optimizer.param_groups:
        scale = round(group["lr_scale"], 6)
        sizes[scale] = sizes.get(scale, 0) + sum(p.numel() for p in group["params"])
    head = sum(p.numel() for p in trainer.model.head.parameters())
    assert set(sizes) == {1.0, 0.05} and sizes[1.0] == head  # body_lr / lr = 1e-4 / 2e-3


def test_sources_that_cannot_do_the_task(tiny, tmp_path):
    tmp, overrides = tiny
    t5_run = tmp_path / "t5"
    t5 = tiny_overrides(tmp / "corpus", tmp / "data", **T5, **{"train.max_steps": 2})
    pretrainer.train(pretrainer.load_config(None, t5), t5_run)
    with pytest.raises(ConfigError, match="a regression task is for model.arch=encoder or decoder, not "
                                          "encoder_decoder"):  # fmt: skip
        pretrainer.finetune(
            task_config(tiny, **{"finetune.source": t5_run, "task.kind": "regression"}), tmp_path / "run"
        )
    with pytest.raises(DataError, match="the task has no validation split"):
        pretrainer.finetune(task_config(tiny, **{"task.validation": "null"}), tmp_path / "run2")
    with pytest.raises(ConfigError, match="finetune needs a task recipe"):
        pretrainer.finetune(pretrainer.load_config(None, overrides["bert"]), tmp_path / "run3")
    with pytest.raises(CheckpointError, match="is a pretraining run"):
        pretrainer.evaluate(tmp / "bert")
    assert cli.main(["eval", str(tmp / "bert")]) == 2


@pytest.mark.parametrize("arch", ["encoder", "decoder", "encoder_decoder"])
def test_lora_merged_weights_give_the_adapter_models_outputs(arch):
    extra = {"encoder": {"head": "sequence", "n_labels": 3}, "decoder": {}, "encoder_decoder": {"n_decoder_layer": 1}}
    positions = "relative" if arch == "encoder_decoder" else "learned"
    config = ModelConfig(arch=arch, n_layer=1, d_model=32, n_head=2, vocab_size=64, max_seq_len=16,
                         positions=positions, **extra[arch])  # fmt: skip
    torch.manual_seed(0)
    model = build_model(config)
    lora.add_adapters(model, rank=4, alpha=8, dropout=0.0, targets=["qkv", "q", "kv", "attn.proj", "mlp.fc"])
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in name or name.startswith("head.") for name in trained)
    for name, p in model.named_parameters():
        if ".lora_B." in name:  # B starts at zero; a trained one does not
            torch.nn.init.normal_(p, std=0.5)
    ids = torch.randint(0, 64, (2, 10))
    batch = {"input_ids": ids, **({"decoder_input_ids": ids[:, :6]} if arch == "encoder_decoder" else {})}
    model.eval()
    plain = build_model(config).eval()
    plain.load_state_dict(lora.merged(model).state_dict())  # the merged copy has a plain model's names, all of them
    with torch.no_grad():
        adapted, merged = model(**batch)[0], plain(**batch)[0]
        without = build_model(config).eval()
        without.load_state_dict(
            {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
        )
        assert not torch.allclose(adapted, without(**batch)[0], atol=1e-3)  # the adapters change the outputs
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)


def test_lora_trains_adapters_only_saves_them_merged_and_resumes_exactly(tiny, tmp_path):
    source = tiny[0] / "bert"
    config = lambda: task_config(tiny, **{"finetune.source": source, "finetune.lora_rank": 4, "train.lr": 3e-2,
                                          "train.keep_last": 5, "finetune.lora_targets": "[qkv,mlp.fc]"})  # fmt: skip
    full = tmp_path / "full"
    result = pretrainer.finetune(config(), full)
    assert result.scores["val_accuracy"] > 0.8
    adapters = load_file(full / "checkpoints" / "step-60" / "adapter.safetensors")
    assert adapters and all(".lora_" in k or k.startswith("head.") for k in adapters)
    before = pretrainer.load(source)[0].state_dict()
    after = pretrainer.load(full)[0].state_dict()  # a plain model: no peft needed to load it
    adapted = {k for k in after if k.endswith(("attn.qkv.weight", "mlp.fc.weight"))}
    body = [k for k in after if not k.startswith("head.") and k not in adapted]
    assert len(adapted) == 4 and all(not torch.equal(after[k], before[k]) for k in adapted)
    assert all(torch.equal(after[k], before[k]) for k in body)
    assert pretrainer.predict(full, ["good fair brave the king", "bad foul hates the queen"]) == ["pos", "neg"]
    assert_resume_is_exact(lambda r: pretrainer.finetune(config(), r, resume=True), full, tmp_path / "resumed", 20, 60)

    with pytest.raises(ConfigError, match="finetune.lora_rank adapts a pretrained model"):
        pretrainer.finetune(task_config(tiny, **{"finetune.lora_rank": 4}), tmp_path / "scratch")
    typo = task_config(tiny, **{"finetune.source": source, "finetune.lora_rank": 4, "finetune.lora_targets": "[query]"})
    with pytest.raises(ConfigError, match=r"names no layer of this model; its linear layers are named fc, .*qkv"):
        pretrainer.finetune(typo, tmp_path / "typo")


def test_a_t5_mixture_of_a_classification_as_text_and_a_text2text_task(tiny, tmp_path, capsys):
    """One T5 on two tasks at once, each example prefixed with its task: validation numbers per task, eval scores
    each task as its kind (accuracy of the label names it writes, ROUGE), and the resume stays exact."""
    tmp, _ = tiny
    rng = random.Random(2)
    for split, n in (("train", 200), ("validation", 20), ("test", 20)):
        rows = [[rng.choice(WORDS) for _ in range(4)] for _ in range(n)]
        (tmp_path / f"{split}.jsonl").write_text(
            "".join(json.dumps({"input": " ".join(r), "target": r[0]}) + "\n" for r in rows)
        )
    t5 = {k: v for k, v in T5.items() if k != "objective.name"}
    mixture = (f"[{{train: {tmp}/train.csv, validation: {tmp}/validation.csv, test: {tmp}/test.csv, prefix: 'mood: '}},"
               f" {{kind: text2text, train: {tmp_path}/train.jsonl, validation: {tmp_path}/validation.jsonl,"
               f" test: {tmp_path}/test.jsonl, prefix: 'first: '}}]")  # fmt: skip
    overrides = tiny_overrides(tmp / "corpus", tmp / "data", **t5, **{
        "objective.name": "task", "task.mixture": mixture, "task.mixing": "fixed", "task.max_target_len": 6,
        "task.max_len": 24, "train.max_steps": 60, "train.eval_every": 20, "train.save_every": 20,
        "train.keep_last": 5, "finetune.metric": "val_loss",
    })  # fmt: skip
    run = tmp_path / "run"
    pretrainer.finetune(pretrainer.load_config(None, overrides), run)
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "val_loss" in r]
    assert {"val_loss_mood", "val_loss_first"} <= rows[-1].keys()
    assert rows[-1]["val_loss_mood"] < rows[0]["val_loss_mood"] - 0.3
    result = pretrainer.evaluate(run, "test")
    assert set(result["tasks"]) == {"mood", "first"}
    mood = result["tasks"]["mood"]
    assert set(mood["scores"]) == {"accuracy", "macro_f1"} and mood["examples"] == 60
    assert mood["no_class"] + sum(map(sum, mood["confusion"])) == 60  # each answer names a label, or none
    assert set(result["tasks"]["first"]["scores"]) == {"rouge1", "rouge2", "rougeL"}
    assert (run / "confusion-test-mood.png").is_file()
    assert cli.main(["eval", str(run), "--split", "test", "--task", "first"]) == 0
    # one task's scores go beside the whole mixture's, which stay
    assert f"written: {run / 'eval-test-first.json'}" in capsys.readouterr().out
    assert json.loads((run / "eval-test-first.json").read_text())["tasks"].keys() == {"first"}
    assert json.loads((run / "eval-test.json").read_text())["tasks"].keys() == {"mood", "first"}
    assert_resume_is_exact(
        lambda r: pretrainer.finetune(pretrainer.load_config(None, overrides), r, resume=True),
        run, tmp_path / "resumed", 20, 60,
    )  # fmt: skip


@pytest.mark.parametrize("n, size, wanted", [(3636, 16, 512), (1000, 32, 100), (100, 16, 99), (10, 4, 20)])
def test_evaluating_a_few_examples_spreads_them_over_the_split(n, size, wanted):
    """finetune.eval_examples: a split in file order may be grouped by class, so its first examples will not do."""
    spans = spread_spans(n, size, wanted)
    examples = [i for first, rows in spans for i in range(first, first + rows)]
    assert len(examples) == len(set(examples)) and all(0 <= i < n for i in examples)  # disjoint, in the split
    assert all(0 < rows <= size for _, rows in spans)
    if wanted >= n:
        assert sorted(examples) == list(range(n))
    else:
        assert len(examples) >= 0.85 * wanted and len(examples) <= wanted
        assert examples[0] == 0 and max(examples) >= n * (1 - 2 / len(spans))  # from the start to near the end
