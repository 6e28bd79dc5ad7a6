"""`pretrainer prompt`: k-shot runs over seeds, their table, JSON and PNG, on tiny models."""

import json
import math
import statistics

import pytest
import torch

import pretrainer
from pretrainer import cli
from pretrainer.config import ModelConfig
from pretrainer.eval.icl import (
    build_prompt,
    choose,
    continuation_logprobs,
    demonstrations,
    extract_answer,
    load_prompt_task,
    same_answer,
)
from pretrainer.eval.prompting import PromptSettings, results_table, run_prompting, write_results
from pretrainer.model import build_model
from pretrainer.train import checkpoint

from .test_icl import english_lm, write_task


def test_scoring_runs_each_k_over_seeds_and_reports_the_mean_and_its_standard_error(tmp_path):
    model, tok = english_lm()
    data = load_prompt_task(write_task(tmp_path), limit=8)
    results = run_prompting(model, tok, data, PromptSettings(shots=(0, 2), seeds=3), progress=False)
    assert [(r["k"], r["seed"]) for r in results["runs"]] == [(0, 0), (2, 0), (2, 1), (2, 2)]  # k=0 draws nothing
    assert results["class_counts"] == {c: sum(q["label"] == c for q in data.queries) for c in ("yes", "no")}
    assert results["majority"] == max(results["class_counts"].values()) / 8
    run = results["runs"][2]  # k=2, seed 1, recomputed from the parts
    for query, prediction in zip(data.queries, run["predictions"], strict=True):
        prompt = build_prompt(data.task, demonstrations(data.task, data.pool, 2, 1, query), query)
        scores = continuation_logprobs(model, tok, [(prompt, " yes"), (prompt, " no")])
        best, best_norm = choose([s for s, _ in scores], ["yes", "no"])
        assert prediction == {
            "gold": query["label"],
            "pick": ("yes", "no")[best],
            "pick_norm": ("yes", "no")[best_norm],
        }
    assert run["acc"] == sum(p["pick"] == p["gold"] for p in run["predictions"]) / 8
    k0, k2 = results["table"]
    accs = [r["acc"] for r in results["runs"][1:]]
    assert k2["acc"] == pytest.approx(statistics.fmean(accs))
    assert k2["acc_se"] == pytest.approx(statistics.stdev(accs) / math.sqrt(3)) and k2["se_over"] == "seeds"
    assert k0["acc_se"] == pytest.approx(math.sqrt(k0["acc"] * (1 - k0["acc"]) / 8)) and k0["se_over"] == "queries"
    table = results_table(results)
    assert "always the commonest" in table and f"{k2['acc']:.3f} ± {k2['acc_se']:.3f}" in table
    json_path, png_path = write_results(results, tmp_path / "out" / "r.json")
    assert json.loads(json_path.read_text())["table"] == results["table"]
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_generation_modes_extract_answers_and_self_consistency_keeps_its_distribution(tmp_path):
    model, tok = english_lm()
    data = load_prompt_task(write_task(tmp_path), limit=4)
    cot = run_prompting(model, tok, data, PromptSettings(shots=(1,), cot=True, max_new_tokens=8), progress=False)
    assert cot["mode"] == "generation, then extraction"
    for p in cot["runs"][0]["predictions"]:
        assert p["answer"] == extract_answer(data.task, p["text"])
        assert p["correct"] == same_answer(p["answer"], p["gold"])
    settings = PromptSettings(shots=(0,), seeds=2, self_consistency=3, temperature=1.0, max_new_tokens=8)
    voted = run_prompting(model, tok, data, settings, progress=False)
    assert [r["seed"] for r in voted["runs"]] == [0, 1]  # sampling: k=0 runs once per seed
    for p in voted["runs"][0]["predictions"]:
        assert sum(p["counts"].values()) <= 3 and (p["answer"] is None) == (not p["counts"])
    zero = run_prompting(model, tok, data, PromptSettings(zero_shot_cot=True, max_new_tokens=6), progress=False)
    assert len(zero["runs"][0]["predictions"]) == 4 and "\n" in zero["runs"][0]["predictions"][0]["text"]


def test_demonstrations_that_do_not_fit_are_dropped_and_counted(tmp_path):
    model, tok = english_lm()
    small = build_model(model.config.__class__(**{**vars(model.config), "max_seq_len": 40})).eval()
    data = load_prompt_task(write_task(tmp_path), limit=3)
    with pytest.warns(UserWarning, match="k=8 seed 0: 3 of 3 prompts drop demonstrations"):
        results = run_prompting(small, tok, data, PromptSettings(shots=(8,)), progress=False)
    assert results["runs"][0]["prompts_with_dropped_demonstrations"] == 3


def test_the_prompt_command_runs_on_a_checkpoint_of_ours(tmp_path, capsys):
    _, tok = english_lm()
    config = pretrainer.load_config(None, ["model.vocab_size=320", "model.n_layer=1", "model.n_head=4",
                                           "model.d_model=32", "model.max_seq_len=512"])  # fmt: skip
    model = build_model(config.model)
    (tmp_path / "ckpt").mkdir()
    checkpoint.write_model(tmp_path / "ckpt", model, config, tok)
    task = write_task(tmp_path)
    out = tmp_path / "results.json"
    argv = ["prompt", str(tmp_path / "ckpt"), task, "--shots", "0,1", "--seeds", "2", "--limit", "6", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "task: 6 queries; log-likelihood of each choice" in printed and f"written: {out}" in printed
    results = json.loads(out.read_text())
    assert [row["k"] for row in results["table"]] == [0, 1] and out.with_suffix(".png").is_file()


def test_an_encoder_decoder_is_prompted_through_its_encoder(tmp_path):
    _, tok = english_lm()
    torch.manual_seed(0)
    config = ModelConfig(arch="encoder_decoder", positions="relative", norm="rmsnorm", vocab_size=320, n_layer=1,
                         n_head=4, d_model=32, max_seq_len=256, decoder_start_id=0)  # fmt: skip
    t5 = build_model(config).eval()
    data = load_prompt_task(write_task(tmp_path), limit=4)
    scored = run_prompting(t5, tok, data, PromptSettings(shots=(0, 2)), progress=False)
    query = data.queries[0]
    prompt = build_prompt(data.task, demonstrations(data.task, data.pool, 2, 0, query), query)
    (yes, _), (no, _) = continuation_logprobs(t5, tok, [(prompt, " yes"), (prompt, " no")])
    assert scored["runs"][1]["predictions"][0]["pick"] == ("yes" if yes >= no else "no")
    written = run_prompting(t5, tok, data, PromptSettings(shots=(2,), cot=True, max_new_tokens=5), progress=False)
    assert all(p["answer"] == extract_answer(data.task, p["text"]) for p in written["runs"][0]["predictions"])
