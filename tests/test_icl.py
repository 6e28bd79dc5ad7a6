"""In-context learning building blocks: generated reasoning tasks, prompt assembly, answer extraction, voting."""

import json
import re

import pytest
import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pretrainer.config import ModelConfig
from pretrainer.data.reasoning import GENERATORS, generate_examples
from pretrainer.data.synthetic import Induction
from pretrainer.errors import ConfigError, DataError
from pretrainer.eval.icl import (
    REASONING,
    PromptTask,
    answers_by_generation,
    build_prompt,
    choose,
    continuation_logprobs,
    demonstrations,
    extract_answer,
    fill,
    fit_prompt,
    load_prompt_task,
    majority_vote,
    self_consistency,
    split_tokens,
    zero_shot_cot,
)
from pretrainer.model import build_model
from pretrainer.model import generate as generation
from pretrainer.model.generate import DraftSchedule, generate, generate_text, generate_texts, lookup_drafts


def test_generated_answers_are_right_and_each_rationale_reaches_its_answer():
    for name in GENERATORS:
        task, examples = REASONING[name], generate_examples(name, 200, seed=3)
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


def test_demonstrations_repeat_per_seed_and_never_ask_the_query():
    task = PromptTask("t", "", "Q: {q}")
    pool = [{"q": i, "answer": str(i)} for i in range(50)]
    drawn = demonstrations(task, pool, 4, seed=1, query={"q": 99})
    assert len(drawn) == 4 and drawn == demonstrations(task, pool, 4, seed=1, query={"q": 98})  # shared by queries
    assert drawn != demonstrations(task, pool, 4, seed=2, query={"q": 99})
    for query in drawn:  # a query that was drawn is replaced by the next draw, the others stay
        again = demonstrations(task, pool, 4, seed=1, query=query)
        assert query not in again and len(set(map(repr, again)) & set(map(repr, drawn))) == 3
    small = pool[:10]
    for query in small:
        assert sorted(d["q"] for d in demonstrations(task, small, 9, 0, query)) == sorted(set(range(10)) - {query["q"]})
    with pytest.raises(DataError, match="8 demonstrations asked for, but the pool has 4"):
        demonstrations(task, pool[:5], 8, seed=0, query=pool[2])


def test_built_in_tasks_sample_their_queries_and_keep_them_apart_from_the_pool():
    data = load_prompt_task("addition", 30, seed=0)
    assert len(data.queries) == 30 and len(data.pool) == 1000 and data.task is REASONING["addition"]
    assert data.queries == generate_examples("addition", 30, seed=0)
    assert data.pool == generate_examples("addition", 1000, seed=1)  # its own seed


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
    assert build_prompt(task, [], query, trigger="Let's think step by step.").endswith("A: Let's think step by step.")


def test_a_prompt_too_long_drops_its_last_demonstrations_and_never_cuts_the_query():
    task = PromptTask("sum", "", "Q: {a}?")
    demos = [{"a": "x" * 10, "answer": "y"} for _ in range(4)]
    count = len  # one token per character
    prompt, dropped = fit_prompt(task, demos, {"a": "q"}, count, limit=50)
    assert dropped == 2 and prompt == build_prompt(task, demos[:2], {"a": "q"}) and len(prompt) == 50
    assert fit_prompt(task, demos, {"a": "q"}, count, limit=1000) == (build_prompt(task, demos, {"a": "q"}), 0)
    with pytest.raises(DataError, match="is 8 tokens without any demonstration, more than the 5 the model leaves"):
        fit_prompt(task, demos, {"a": "q"}, count, limit=5)


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
        (dict(choices=("a", "a")), "lists a choice twice"),
        (dict(answer="A: {label}"), "does not show the answer; put {answer} in it"),
    ],
)
def test_a_task_that_cannot_be_scored_is_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        PromptTask("t", "", "Q: {x}", **fields)
    with pytest.raises(ConfigError, match="no prompt task 'sums': give a task YAML file or a built-in task"):
        load_prompt_task("sums")


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
    with pytest.raises(DataError, match="the continuation '' has no tokens"):
        continuation_logprobs(model, tok, [("t1", "")])
    encoder = build_model(ModelConfig(arch="encoder", vocab_size=64, n_layer=1, n_head=4, d_model=32))
    with pytest.raises(ConfigError, match="an encoder-only model .BERT. fills in masked tokens; it cannot continue"):
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
    tok.add_special_tokens(["<|endoftext|>"])
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=320, n_layer=1, n_head=4, d_model=32, max_seq_len=512)
    return build_model(config).eval(), tok


def test_zero_shot_chain_of_thought_asks_twice():
    """Stage one: the question, then "A: Let's think step by step." and the model's reasoning; stage two: all of
    that, "Therefore, the answer is" and a short answer, from which the answer is extracted."""
    model, tok = english_lm()
    task, (query,) = REASONING["addition"], generate_examples("addition", 1, 0)
    prompt = build_prompt(task, [], query, trigger="Let's think step by step.")
    assert prompt == f"Add the two numbers.\n\nQ: What is {query['a']} + {query['b']}?\nA: Let's think step by step."
    (out,) = zero_shot_cot(model, tok, task, [prompt], max_new_tokens=12, temperature=0)
    assert out["answer_prompt"] == prompt + out["reasoning"] + "\nTherefore, the answer is"
    assert out["reasoning"] == generate_text(model, tok, prompt, 12, ("\n\n",), temperature=0)
    assert out["text"] == generate_text(model, tok, out["answer_prompt"], 16, ("\n",), temperature=0)
    assert out["answer"] == extract_answer(task, out["text"])


def test_batched_generation_equals_one_prompt_at_a_time():
    model, tok = english_lm()
    prompts = ["Q: What is 12 + 30?\nA:", "Q: What is 12 + 31?\nA:", "Q: 7?", "Q: What is 12 + 30?\nA:"]
    alone = [generate_text(model, tok, p, 10, ("\n",), temperature=0) for p in prompts]
    assert generate_texts(model, tok, prompts, 10, ("\n",), batch_size=4, temperature=0) == alone
    same = [prompts[0]] * 3  # one prompt many times: its prefix computed once, shared by the rows
    assert generate_texts(model, tok, same, 10, ("\n",), batch_size=3, temperature=0) == [alone[0]] * 3


def test_self_consistency_votes_over_seeded_sampled_paths():
    model, tok = english_lm()
    task = PromptTask("any", "", "Q: {q}", extract=r"(\S+)")  # every path's first word is its answer

    def answer(prompts):
        return answers_by_generation(model, tok, task, prompts, 6, temperature=1.0, seed=3)

    prompts = ["Q: What is 12 + 30?\nA:", "Q: What is 2 + 2?\nA:"]
    out = self_consistency(answer, prompts, paths=5)
    assert len(out) == 2 and all(len(o["paths"]) == 5 for o in out)
    for o in out:
        assert (o["answer"], o["counts"]) == majority_vote([p["answer"] for p in o["paths"]])
    assert len({p["text"] for p in out[0]["paths"]}) > 1  # the paths are sampled, not one path five times
    assert self_consistency(answer, prompts, paths=5) == out  # seeded
    with pytest.raises(ConfigError, match="at least one sampled path"):
        self_consistency(answer, prompts, paths=0)


def test_scoring_with_a_shared_prefix_equals_scoring_each_request_alone():
    model, tok = tiny_lm()
    demos = "t5 t6 t7 t8 t9 t10 t11"  # the demonstrations every prompt shares, computed once when batched
    requests = [(f"{demos} t{q}", f" t{c}") for q in (1, 2, 3) for c in (20, 21)]  # one-token choices share rows
    requests += [(f"{demos} t4", " t22 t23"), (f"{demos} t4 t4", " t1")]
    alone = [continuation_logprobs(model, tok, [r])[0] for r in requests]
    for batch_size in (2, 8):
        for (a, greedy_a), (b, greedy_b) in zip(alone, continuation_logprobs(model, tok, requests, batch_size),
                                                strict=True):  # fmt: skip
            assert abs(a - b) < 1e-5 and greedy_a == greedy_b


def tiny_t5():
    torch.manual_seed(0)
    config = ModelConfig(arch="encoder_decoder", positions="relative", norm="rmsnorm", vocab_size=64, n_layer=1,
                         n_head=4, d_model=32, max_seq_len=16, decoder_start_id=0)  # fmt: skip
    return build_model(config).eval(), Induction.tokenizer()


def test_an_encoder_decoder_scores_the_continuation_as_its_target():
    model, tok = tiny_t5()
    requests = [("t1 t2 t3", " t4 t5"), ("t1 t2 t3", " t6"), ("t9", " t8")]
    scores = continuation_logprobs(model, tok, requests, batch_size=2)
    with torch.no_grad():
        logprobs = model(torch.tensor([[1, 2, 3]]), torch.tensor([[0, 4]]))[0].log_softmax(-1)[0]
    by_hand = logprobs[0, 4] + logprobs[1, 5]  # the start token predicts t4, t4 predicts t5
    assert scores[0][0] == pytest.approx(float(by_hand), rel=1e-6)  # a random T5's logits are large
    assert [s for s, _ in scores] == pytest.approx([s for s, _ in continuation_logprobs(model, tok, requests, 1)])


def tiny_random(arch: str):
    """A random one-layer model (seeded) whose greedy text soon repeats itself, as random models' does."""
    torch.manual_seed(0)
    if arch == "encoder_decoder":
        config = ModelConfig(arch=arch, positions="relative", norm="rmsnorm", vocab_size=64, n_layer=1, n_head=4,
                             d_model=32, max_seq_len=64, decoder_start_id=0)  # fmt: skip
    else:
        config = ModelConfig(vocab_size=64, n_layer=1, n_head=4, d_model=32, max_seq_len=128)
    return build_model(config).eval()


def recording(searched: list):
    """`lookup_drafts`, noting the rows it searches."""
    return lambda tokens, live, k: searched.append(tokens.tolist()) or lookup_drafts(tokens, live, k)


def test_an_encoder_decoder_drafts_from_its_input_and_output_and_writes_the_same_tokens(monkeypatch):
    model = tiny_random("encoder_decoder")
    ids = torch.randint(3, 64, (1, 12))
    searched = []
    monkeypatch.setattr(generation, "lookup_drafts", recording(searched))
    plain, drafted, passes = decoded_both_ways(model, ids)
    assert torch.equal(drafted, plain) and len(passes) < 30  # a random model's greedy output cycles: drafts fit
    assert searched and all(t[0][:12] == ids[0].tolist() for t in searched)  # the input, then the output so far


def counting_passes(model) -> list[int]:
    """The widths of the passes the model is given from here on."""
    widths, forward = [], model.forward
    model.forward = lambda *a, **k: widths.append((a[1] if a[0] is None else a[0]).shape[1]) or forward(*a, **k)
    return widths


def decoded_both_ways(model, ids, **settings):
    """40 greedy tokens one per pass and with drafts, and the widths of the drafted decoding's passes."""
    passes = counting_passes(model)
    plain = generate(model, ids, 40, temperature=0, draft_tokens=0, **settings)
    assert len(passes) == 40
    passes.clear()
    return plain, generate(model, ids, 40, temperature=0, draft_tokens=8, **settings), passes


def test_a_batch_drafts_together_and_writes_what_one_token_per_pass_writes():
    model = tiny_random("decoder")
    ids = torch.randint(3, 64, (3, 12))
    plain, drafted, passes = decoded_both_ways(model, ids)
    assert torch.equal(drafted, plain) and len(passes) < 25 and max(passes) > 1  # random models' outputs cycle


def test_a_stop_token_inside_a_draft_ends_the_text_where_one_token_per_pass_would(monkeypatch):
    model = tiny_random("decoder")
    ids = torch.randint(3, 64, (3, 12))
    rows = generate(model, ids, 40, temperature=0, draft_tokens=0)[:, 12:].tolist()

    def foresight(tokens, live, k):  # drafts that are always right: every pass but the first is 9 tokens wide
        return torch.tensor([row[tokens.shape[1] - 12 :][:k] for row in rows])

    monkeypatch.setattr(generation, "lookup_drafts", foresight)
    # rows 0 and 2 stop at their first token, row 1 where its text first changes (a random model repeats itself)
    changes = next(at for at, token in enumerate(rows[1]) if token != rows[1][0])
    stops = [rows[0][0], rows[2][0], rows[1][changes]]
    assert changes % 9 != 0  # not the last token of a pass: the one where it stops is cut short
    plain = generate(model, ids, 40, temperature=0, draft_tokens=0, stop_ids=stops)
    drafted = generate(model, ids, 40, temperature=0, draft_tokens=8, stop_ids=stops)
    assert drafted.shape == plain.shape == (3, 12 + changes + 1)  # both end where the last row stops
    for row, reference in zip(drafted[:, 12:].tolist(), plain[:, 12:].tolist(), strict=True):
        end = next(i + 1 for i, token in enumerate(reference) if token in stops)
        assert row[:end] == reference[:end]  # the same tokens up to the row's stop; after it, unspecified


def test_an_encoder_decoder_batch_drafts_from_each_rows_own_input(monkeypatch):
    model = tiny_random("encoder_decoder")
    ids = torch.randint(6, 64, (2, 12))
    ids[1, 8:] = 5  # padding, which drafts must not come from
    real = torch.ones_like(ids, dtype=torch.bool)
    real[1, 8:] = False
    searched = []
    monkeypatch.setattr(generation, "lookup_drafts", recording(searched))
    plain, drafted, passes = decoded_both_ways(model, ids, padding_mask=real)
    assert torch.equal(drafted, plain) and len(passes) < 30
    # each row: its input (the padding moved ahead of it, as -1, which matches nothing), then its output so far
    assert searched and all(t[0][:13] == ids[0].tolist() + [0] for t in searched)
    assert all(t[1][:13] == [-1] * 4 + ids[1, :8].tolist() + [0] for t in searched)


def test_a_batch_draft_is_as_long_as_its_shortest_live_row():
    out = torch.tensor([[1, 2, 3, 1, 2], [4, 5, 6, 4, 5], [9, 9, 9, 9, 9]])
    finished = torch.tensor([False, False, True])
    # row 0 drafts [3, 1, 2] (after "1 2"), row 1 [6, 4, 5] (after "4 5"), row 2 [9, 9] but it has ended
    assert lookup_drafts(out, ~finished, 4).tolist() == [[3, 1, 2], [6, 4, 5], [0, 0, 0]]
    assert lookup_drafts(out, torch.tensor([True, True, True]), 4).tolist() == [[3, 1], [6, 4], [9, 9]]
    # row 1's source comes first: "4 5" there has the most after it, [2, 7, 4, 5]; -1 is padding
    sources = torch.tensor([[-1, -1, -1, -1], [4, 5, 2, 7], [-1, -1, -1, -1]])
    assert lookup_drafts(torch.cat([sources, out], 1), ~finished, 4).tolist() == [[3, 1, 2], [2, 7, 4], [0, 0, 0]]
    assert lookup_drafts(out[:, :4], ~finished, 4) is None  # a live row without a draft: none for any


def test_the_draft_length_follows_what_the_last_drafts_got():
    schedule = DraftSchedule(8)
    assert schedule.wanted() and schedule.length == 8
    schedule.update(accepted=1)
    assert schedule.wanted() and schedule.length == 4  # twice the accepted tokens, plus two
    schedule.update(accepted=8)
    assert schedule.length == 8  # never above the most
    pauses = []
    for _ in range(6):  # drafts that get nothing: pauses of 1, 2, 4, 8, 16, 16 passes, then a draft of two
        schedule.update(accepted=0)
        pauses.append(0)
        while not schedule.wanted():
            pauses[-1] += 1
        assert schedule.length == 2
    assert pauses == [1, 2, 4, 8, 16, 16]
    schedule.update(accepted=2)
    assert schedule.wanted() and schedule.length == 6
    schedule.update(accepted=0)
    assert not schedule.wanted() and schedule.wanted()  # a success resets the pause to one pass
    assert DraftSchedule(1).length == 1


def write_task(tmp_path, **fields):
    rows = [{"word": f"t{i}", "label": "yes" if i % 2 else "no", "why": f"t{i} is {'odd' if i % 2 else 'even'}"}
            for i in range(12)]  # fmt: skip
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"description": "Is it odd?", "question": "Q: {word}", "answer": "A: {label}", "rationale": "A: {why}",
            "target": "label", "choices": ["yes", "no"], "extract": r"(yes|no)", "data": "data.jsonl"}  # fmt: skip
    spec.update(fields)
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(spec))
    return str(tmp_path / "task.yaml")


def test_a_task_file_names_its_templates_choices_and_data(tmp_path):
    data = load_prompt_task(write_task(tmp_path), limit=5, seed=1)
    assert data.task.name == "task" and data.task.choices == ("yes", "no") and data.task.target == "label"
    assert len(data.queries) == 5 and len(data.pool) == 12  # the pool defaults to the data; queries are sampled
    assert data.queries == load_prompt_task(write_task(tmp_path), limit=5, seed=1).queries
    assert data.queries != load_prompt_task(write_task(tmp_path), limit=5, seed=2).queries
    assert data.task.continuation(data.queries[0], "yes") == " yes"


@pytest.mark.parametrize(
    "fields, error, message",
    [
        ({"question": "Q: {wrod}"}, DataError, "asks for wrod, which the examples lack; their fields are label, why"),
        ({"choices": ["yes"]}, ConfigError, "has one choice"),
        ({"choices": ["yes", "maybe"]}, DataError, "answers that are not among the choices .no."),
        ({"tempalte": "x"}, ConfigError, "unknown key tempalte; a task file has name, description, question"),
        ({"data": "none.jsonl"}, DataError, "data file '.*none.jsonl' not found"),
        ({"pool": "none.jsonl"}, DataError, "pool file '.*none.jsonl' not found"),
        ({"extract": "([0-9"}, ConfigError, r"extract='\(\[0-9' is not a regular expression \(unterminated"),
        ({"question": "Q: {question"}, ConfigError, "the template 'Q: {question' is malformed"),
        ({"question": "Q: {} {question}"}, ConfigError, "has a field without a name"),
    ],
)
def test_a_task_file_that_cannot_work_is_refused(tmp_path, fields, error, message):
    with pytest.raises(error, match=message):
        load_prompt_task(write_task(tmp_path, **fields))


def draft(tokens: list[int], k: int, **limits) -> list[int]:
    drafts = lookup_drafts(torch.tensor([tokens]), torch.tensor([True]), k, **limits)
    return [] if drafts is None else drafts[0].tolist()


def test_prompt_lookup_drafts_follow_earlier_occurrences():
    assert draft([5, 6, 7, 8, 9, 5, 6], k=2) == [7, 8]  # the last two tokens occurred: what came next
    assert draft([5, 6, 7, 1, 2, 3, 5, 6, 7, 4, 6, 7], k=3) == [4, 6, 7]  # the latest of two occurrences
    assert draft([1, 2, 3, 4, 5, 5, 5], k=3) == [5]  # "5 5" came once before, followed by one 5
    assert draft([1, 9, 9, 9, 9, 9, 9], k=4) == [9, 9, 9]  # a run: the occurrence with the most after it
    assert draft([1, 2, 3], k=4) == []
    assert draft([1, 2, 3, 2], k=4) == []  # one earlier token predicts too little
    assert draft([1, 2, 3, 2], k=4, shortest=1) == [3, 2]
    assert draft([7, 7], k=4) == [] and draft([7], k=4) == []
    # searched as bytes: 256 then 0 holds the bytes of 1 then 0 one byte in, which is no occurrence of "1 0"
    assert draft([256, 0, 0, 7, 1, 0], k=4) == []
    assert draft([1, 0, 5, 256, 0, 0, 7, 1, 0], k=4) == [5, 256, 0, 0]  # the latest whole-token occurrence
    assert draft([1, 0, 5, 256, 0, 0, 7, 1, 0], k=8) == [5, 256, 0, 0, 7, 1, 0]  # the earliest


def scanned_draft(tokens: list[int], k: int, longest: int = 3, shortest: int = 2) -> list[int]:
    """The same rule, written as the loop over earlier positions that it means."""
    for n in range(min(longest, len(tokens) - 1), shortest - 1, -1):
        tail, found = tokens[-n:], []
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start : start + n] == tail and len(tokens) - start - n > len(found):
                found = tokens[start + n : start + n + k]
                if len(found) == k:
                    break
        if found:
            return found
    return []


def test_a_batch_of_drafts_is_each_rows_own_cut_to_the_shortest():
    generator = torch.Generator().manual_seed(0)
    for trial in range(200):
        rows, time, k = 1 + trial % 4, int(torch.randint(2, 40, (1,), generator=generator)), 1 + trial % 8
        tokens = torch.randint(0, 1 + trial % 6, (rows, time), generator=generator)  # few symbols: many matches
        live = torch.rand(rows, generator=generator) < 0.8
        live[0] = True
        for shortest in (1, 2):
            each = [scanned_draft(row, k, shortest=shortest) for row in tokens.tolist()]
            common = min(len(found) for found, alive in zip(each, live.tolist(), strict=True) if alive)
            drafts = lookup_drafts(tokens, live, k, shortest=shortest)
            if common == 0:
                assert drafts is None
            else:
                expected = [found[:common] if alive else [0] * common for found, alive in zip(each, live, strict=True)]
                assert drafts.tolist() == expected


def test_greedy_decoding_with_drafts_writes_the_same_tokens_in_fewer_passes():
    model, tok = english_lm()
    ids = torch.tensor([tok.encode("Q: What is 12 + 30? A: 42. Q: What is 12 + 30? A:").ids])
    plain, drafted, passes = decoded_both_ways(model, ids)
    assert torch.equal(drafted, plain) and len(passes) < 30  # the tiny model repeats itself: drafts get accepted
