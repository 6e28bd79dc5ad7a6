"""The lm-evaluation-harness adapter: its three request kinds on a tiny model, and a whole lm-eval run of a custom
task over a local JSONL file (no network)."""

import json

import pytest
import torch

from pretrainer.errors import ConfigError
from pretrainer.eval.icl import continuation_logprobs
from pretrainer.model.generate import generate_text

from .test_icl import english_lm

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is the optional extra [eval]")
from lm_eval.api.instance import Instance  # noqa: E402

from pretrainer.eval.harness import PretrainerLM  # noqa: E402


def requests(kind, *args):
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def test_loglikelihood_is_our_scoring_and_the_empty_context_is_end_of_text():
    model, tok = english_lm()
    lm = PretrainerLM.from_model(model, tok, batch_size=2)
    pairs = [("Q: What is 12 + 30?\nA:", " 42"), ("Q: What is 12 + 30?\nA:", " 43"), ("", "Q")]
    got = lm.loglikelihood(requests("loglikelihood", *pairs))
    assert got == continuation_logprobs(model, tok, pairs[:2]) + [got[2]]
    eos, q = tok.token_to_id("<|endoftext|>"), tok.encode("Q").ids
    with torch.no_grad():
        by_hand = model(torch.tensor([[eos]]))[0].log_softmax(-1)[0, 0, q[0]]
    assert got[2][0] == pytest.approx(float(by_hand), abs=1e-5)


def test_rolling_loglikelihood_scores_every_token_once_after_end_of_text():
    model, tok = english_lm()
    text = "Q: What is 12 + 30? A: Let's think step by step."
    ids = tok.encode(text).ids
    with torch.no_grad():
        logprobs = model(torch.tensor([[tok.token_to_id("<|endoftext|>"), *ids[:-1]]]))[0].log_softmax(-1)[0]
    by_hand = float(logprobs[torch.arange(len(ids)), torch.tensor(ids)].sum())
    (got,) = PretrainerLM.from_model(model, tok).loglikelihood_rolling(requests("loglikelihood_rolling", (text,)))
    assert got == pytest.approx(by_hand, abs=1e-4)
    small = model.__class__(model.config.__class__(**{**vars(model.config), "max_seq_len": 8})).eval()
    weights = model.state_dict()
    small.load_state_dict({**weights, "pos_emb.weight": weights["pos_emb.weight"][:8]})  # windows of 8 positions
    (windowed,) = PretrainerLM.from_model(small, tok).loglikelihood_rolling(requests("loglikelihood_rolling", (text,)))
    assert windowed < 0 and windowed != pytest.approx(got, abs=1e-3)  # less context per token, another sum


def test_generate_until_is_our_generation_cut_at_its_stop_strings():
    model, tok = english_lm()
    lm = PretrainerLM.from_model(model, tok)
    prompts = ["Q: What is 12 + 30?\nA:", "Q: 7?"]
    got = lm.generate_until(requests("generate_until", *[(p, {"until": ["\n"], "max_gen_toks": 12}) for p in prompts]))
    assert got == [generate_text(model, tok, p, 12, ("\n",), temperature=0) for p in prompts]


def test_lm_eval_runs_a_custom_multiple_choice_task_on_local_jsonl(tmp_path):
    model, tok = english_lm()
    docs = [{"question": f"Is {n} odd?", "choices": ["yes", "no"], "label": n % 2 == 0} for n in range(6)]
    (tmp_path / "odd.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "odd.yaml").write_text(
        "task: odd_local\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'odd.jsonl'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{question}}\\nAnswer:'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{label | int}}'\n"
        "metric_list:\n  - metric: acc\n"
    )
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(model=PretrainerLM.from_model(model, tok), tasks=["odd_local"],
                              task_manager=TaskManager(include_path=str(tmp_path)))  # fmt: skip
    acc = results["results"]["odd_local"]["acc,none"]
    right = 0  # the same by hand: the likelier of " yes" and " no" after each question
    for d in docs:
        (yes, _), (no, _) = continuation_logprobs(
            model, tok, [(f"{d['question']}\nAnswer:", f" {c}") for c in d["choices"]]
        )
        right += (0 if yes >= no else 1) == int(d["label"])
    assert acc == pytest.approx(right / len(docs))


def test_lm_evals_command_line_builds_the_model_from_its_arguments(tmp_path):
    """As `lm_eval --model pretrainer --model_args path=CKPT` does: model_args, plus the command line's own
    batch size and device (cuda:0 unless told; the CPU without CUDA, as lm-eval's own models fall back)."""
    import pretrainer
    from pretrainer.model import build_model
    from pretrainer.train import checkpoint

    _, tok = english_lm()
    sizes = ["model.vocab_size=320", "model.n_layer=1", "model.n_head=4", "model.d_model=32", "model.max_seq_len=64"]
    config = pretrainer.load_config(None, [*sizes, "objective.seq_len=64"])
    (tmp_path / "ckpt").mkdir()
    checkpoint.write_model(tmp_path / "ckpt", build_model(config.model), config, tok)
    cli = {"batch_size": 1, "max_batch_size": None, "device": "cuda:0"}
    if torch.cuda.is_available():
        lm = PretrainerLM.create_from_arg_string(f"path={tmp_path / 'ckpt'},precision=fp32", cli)
    else:
        with pytest.warns(UserWarning, match="asks for device cuda:0, but CUDA is not available: running on the CPU"):
            lm = PretrainerLM.create_from_arg_string(f"path={tmp_path / 'ckpt'},precision=fp32", cli)
        assert next(lm.model.parameters()).device.type == "cpu"
    assert lm.batch_size == 1 and lm.loglikelihood(requests("loglikelihood", ("Q: 7?", " A")))[0][0] < 0
    assert PretrainerLM.create_from_arg_string(f"path={tmp_path / 'ckpt'}", {"batch_size": "auto"}).batch_size == 16
    for args, message in ((",precision=fp16", "precision 'fp16' is not one of fp32, bf16"),
                          (",batch_size=0", "batch_size=0: give a number of 1 or more, or auto")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            PretrainerLM.create_from_arg_string(f"path={tmp_path / 'ckpt'}{args}", {"device": "cpu"})
