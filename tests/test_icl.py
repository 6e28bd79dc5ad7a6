"""In-context learning building blocks: generated reasoning tasks, prompt assembly, answer extraction, voting."""

import json
import re

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pretrainer.config import ModelConfig
from pretrainer.data.reasoning import GENERATORS, generate_examples
from pretrainer.data.synthetic import Induction
from pretrainer.errors import ConfigError, DataError
from pretrainer.eval.icl import (
    REASONING,
    PromptTask,
    build_prompt,
    choose,
    continuation_logprobs,
    demonstrations,
    extract_answer,
    fill,
    majority_vote,
    reasoning_task,
    self_consistency,
    split_tokens,
    zero_shot_cot,
)
from pretrainer.model import build_model
from pretrainer.model.generate import generate_text


def test_generated_answers_are_right_and_each_rationale_reaches_its_answer():
    for name in GENERATORS:
        task, examples = reasoning_task(name, 200, seed=3)
        assert examples == generate_examples(name, 200, seed=3)  # reproducible
        assert len({repr(e) for e in examples}) > 150  # and varied
        for ex in examples:
            assert extract_answer(task, ex["rationale"]) == ex["answer"], (name, ex)
    for ex in generate_examples("addition", 50, 0):
        assert int(ex["answer"]) == ex["a"] + ex["b"]
    for ex in generate_examples("last-letters", 50, 0):
        assert ex["answer"] == "".join(word[-1] for word in ex["name"].split())
    for ex in generate_examples("reversal", 50, 0):
        assert json.loads(ex["answer"]) == json.loads(ex["list"])[::-1]
    answers = []
    for ex in generate_examples("coin-flip", 200, 0):
        flips = len(re.findall(r"\bflips\b", ex["story"]))
        assert ex["answer"] == ("yes" if flips % 2 == 0 else "no")
        answers.append(ex["answer"])
    assert 0.35 < answers.count("yes") / len(answers) < 0.65  # no answer a constant guess wins


def test_demonstrations_never_include_the_query_and_repeat_per_seed():
    for query in range(10):
        drawn = demonstrations(10, 9, seed=0, query=query)
        assert query not in drawn and sorted(drawn) == sorted(set(range(10)) - {query})
    assert demonstrations(50, 4, seed=1, query=7) == demonstrations(50, 4, seed=1, query=7)
    assert demonstrations(50, 4, seed=1, query=7) != demonstrations(50, 4, seed=2, query=7)
    assert demonstrations(5, 5, seed=0) != []  # a pool apart from the queries: all of it may be drawn
    with pytest.raises(DataError, match="8 demonstrations asked for, but the pool has 4"):
        demonstrations(5, 8, seed=0, query=2)


def test_a_prompt_is_description_demonstrations_then_the_open_query():
    task = PromptTask("sum", "Add the two numbers.", "Q: What is {a} + {b}?")
    demos = [{"a": 1, "b": 2, "answer": "3", "rationale": "1 plus 2 is 3."}, {"a": 5, "b": 5, "answer": "10"}]
    query = {"a": 7, "b": 8, "answer": "15"}
    assert build_prompt(task, demos, query) == (
        "Add the two numbers.\n\nQ: What is 1 + 2?\nA: 3\n\nQ: What is 5 + 5?\nA: 10\n\nQ: What is 7 + 8?\nA:"
    )
    assert build_prompt(task, [], query) == "Add the two numbers.\n\nQ: What is 7 + 8?\nA:"  # zero-shot
    assert build_prompt(task, demos[:1], query, cot=True).split("\n\n")[1] == "Q: What is 1 + 2?\nA: 1 plus 2 is 3."
    assert "15" not in build_prompt(task, demos, query)  # the query's answer is never shown


def test_a_template_field_the_examples_lack_is_named_with_those_they_have():
    with pytest.raises(DataError, match=r"asks for c, which the examples lack; their fields are a, answer, b"):
        fill("Q: {a} + {c}?", {"a": 1, "b": 2, "answer": "3"})


def test_answers_are_extracted_from_the_last_match():
    addition = REASONING["addition"]
    assert extract_answer(addition, "12 + 30: 2 + 0 = 2, 1 + 3 = 4. So the answer is 42.") == "42"
    assert extract_answer(addition, "no number here") is None
    assert extract_answer(REASONING["coin-flip"], "Yes it was flipped, so no.") == "no"
    assert extract_answer(REASONING["reversal"], "It is [3, 2, 1].") == "[3, 2, 1]"


def test_majority_vote_and_its_tie_break():
    assert majority_vote(["4", "5", "4", None, "5", "4"]) == ("4", {"4": 3, "5": 2})
    assert majority_vote(["7", "9", "9", "7"])[0] == "7"  # a tie: the answer reached first
    assert majority_vote([None, "9", "7", "7", "9"])[0] == "9"
    assert majority_vote([None, None]) == (None, {})


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(choices=("yes",)), "has one choice"),
        (dict(extract=r"\d+"), "needs a group"),
    ],
)
def test_a_task_that_cannot_be_scored_is_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        PromptTask("t", "", "Q: {x}", **fields)
    with pytest.raises(DataError, match="no generated task 'sums'; built in: addition, last-letters"):
        reasoning_task("sums", 1)


def tiny_lm(seed=0):
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=64, n_layer=1, n_head=4, d_model=32, max_seq_len=16)
    return build_model(config).eval(), Induction.tokenizer()  # tokens "t0" ... "t63", split at spaces


def test_a_continuations_log_probability_is_its_tokens_summed_by_hand_and_batching_changes_nothing():
    model, tok = tiny_lm()
    requests = [("t1 t2 t3", " t4 t5"), ("t9", " t8"), ("t3 t3 t3 t3 t3 ", "t7 t6 t5")]
    one_by_one = continuation_logprobs(model, tok, requests, batch_size=1)
    batched = continuation_logprobs(model, tok, requests, batch_size=3)  # padded to the longest
    for (a, greedy_a), (b, greedy_b) in zip(one_by_one, batched, strict=True):
        assert abs(a - b) < 1e-5 and greedy_a == greedy_b
    with torch.no_grad():
        ids = torch.tensor([[1, 2, 3, 4, 5]])
        logprobs = model(ids[:, :-1])[0].log_softmax(-1)[0]
        by_hand = logprobs[2, 4] + logprobs[3, 5]  # positions 2 and 3 predict t4 and t5
        greedy = bool(logprobs[2].argmax() == 4 and logprobs[3].argmax() == 5)
    assert abs(one_by_one[0][0] - float(by_hand)) < 1e-5 and one_by_one[0][1] == greedy
    assert split_tokens(tok, "t3 t3 ", "t7") == ([3, 3], [7])  # the context's last space goes with the choice


def test_the_greedy_flag_says_whether_each_token_is_the_models_first_choice():
    model, tok = tiny_lm()
    with torch.no_grad():
        first = int(model(torch.tensor([[1, 2]]))[0][0, -1].argmax())
    (_, greedy), (_, not_greedy) = continuation_logprobs(model, tok, [("t1 t2", f" t{first}"),
                                                                      ("t1 t2", f" t{(first + 1) % 64}")])  # fmt: skip
    assert greedy and not not_greedy


def test_acc_picks_the_likeliest_choice_and_acc_norm_the_likeliest_per_character():
    # "no" at -2.0 beats "not at all" at -3.0, but per character (-1.0 against -0.3) loses
    assert choose([-2.0, -3.0], ["no", "not at all"]) == (0, 1)


def test_scoring_refuses_what_it_cannot_score():
    model, tok = tiny_lm()
    with pytest.raises(DataError, match="18 tokens, more than the model.s 16 positions; shorten the prompt"):
        continuation_logprobs(model, tok, [(" ".join(["t1"] * 17), " t2")])
    with pytest.raises(DataError, match="the context has no tokens"):
        continuation_logprobs(model, tok, [("", "t2")])
    encoder = build_model(ModelConfig(arch="encoder", vocab_size=64, n_layer=1, n_head=4, d_model=32))
    with pytest.raises(ConfigError, match="takes a decoder-only language model, not a encoder"):
        continuation_logprobs(encoder, tok, [("t1", " t2")])


def english_lm():
    """A tiny random decoder with a byte-level tokenizer: it writes nonsense, but any text in and out."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        ["Q: What is 12 + 30? A: Let's think step by step. Therefore, the answer is 42."],
        trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=320, n_layer=1, n_head=4, d_model=32, max_seq_len=512)
    return build_model(config).eval(), tok


def test_zero_shot_chain_of_thought_asks_twice():
    """Stage one: the question, then "A: Let's think step by step." and the model's reasoning; stage two: all of
    that, "Therefore, the answer is" and a short answer, from which the answer is extracted."""
    model, tok = english_lm()
    task, (query,) = reasoning_task("addition", 1)
    out = zero_shot_cot(model, tok, task, query, max_new_tokens=12, temperature=0)
    question = f"Q: What is {query['a']} + {query['b']}?"
    assert out["reasoning_prompt"] == f"Add the two numbers.\n\n{question}\nA: Let's think step by step."
    assert out["answer_prompt"] == out["reasoning_prompt"] + out["reasoning"] + "\nTherefore, the answer is"
    assert out["reasoning"] == generate_text(model, tok, out["reasoning_prompt"], 12, ("\n\n",), temperature=0)
    assert out["text"] == generate_text(model, tok, out["answer_prompt"], 16, ("\n",), temperature=0)
    assert out["answer"] == extract_answer(task, out["text"])


def test_self_consistency_votes_over_seeded_sampled_paths():
    model, tok = english_lm()
    task = PromptTask("any", "", "Q: {q}", extract=r"(\S+)")  # every path's first word is its answer
    out = self_consistency(model, tok, task, "Q: What is 12 + 30?\nA:", paths=5, temperature=1.0, max_new_tokens=6)
    assert len(out["paths"]) == 5
    assert (out["answer"], out["counts"]) == majority_vote([p["answer"] for p in out["paths"]])
    assert len({p["text"] for p in out["paths"]}) > 1  # the paths are sampled, not one path five times
    again = self_consistency(model, tok, task, "Q: What is 12 + 30?\nA:", paths=5, temperature=1.0, max_new_tokens=6)
    assert again == out  # seeded: path i uses seed + i
    with pytest.raises(ConfigError, match="give a temperature above 0"):
        self_consistency(model, tok, task, "Q:", paths=3, temperature=0)
