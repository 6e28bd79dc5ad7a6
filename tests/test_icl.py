"""In-context learning building blocks: generated reasoning tasks, prompt assembly, answer extraction, voting."""

import json
import re

import pytest

from pretrainer.data.reasoning import GENERATORS, generate_examples
from pretrainer.errors import ConfigError, DataError
from pretrainer.eval.icl import (
    REASONING,
    PromptTask,
    build_prompt,
    demonstrations,
    extract_answer,
    fill,
    majority_vote,
    reasoning_task,
)


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
