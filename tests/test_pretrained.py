"""Real checkpoints that registry packages ship: MiniLM (BERT weights) and SmolLM2-135M (Llama, GGUF)."""

import pytest
import torch

from pretrainer import cli
from pretrainer.convert import BUILTIN, convert, resolve_source
from pretrainer.errors import ConfigError
from pretrainer.model.generate import generate_text
from pretrainer.model.hf import ConversionError
from pretrainer.train.checkpoint import load

transformers = pytest.importorskip("transformers")
needs_minilm = pytest.mark.download(BUILTIN["minilm"][0])


@needs_minilm
def test_minilm_imports_with_a_fresh_tied_mlm_head(tmp_path):
    out, notes = convert("minilm", tmp_path / "minilm")
    assert any("no MLM head" in n and "tied to the word embeddings" in n for n in notes)
    sums = (out / "SHA256SUMS").read_text()  # a converted checkpoint is verified on load like a trained one
    assert all(f"  {name}\n" in sums for name in ("model.safetensors", "config.yaml", "tokenizer.json"))
    model, tokenizer, config = load(out)
    assert tokenizer.encode("hello there").ids == [101, 7592, 2045, 102]  # shipped padded to 128; we pad batches
    assert config.model.arch == "encoder" and config.model.n_layer == 6 and config.model.d_model == 384
    assert model.mlm_decoder.weight is model.tok_emb.weight

    source = resolve_source("minilm")
    theirs = transformers.BertModel.from_pretrained(source).eval()
    texts = ["The quick brown fox jumps over the lazy dog.", "Shall I compare thee to a summer's day?"]
    encodings = [tokenizer.encode(t).ids for t in texts]
    width = max(map(len, encodings))
    ids = torch.tensor([e + [0] * (width - len(e)) for e in encodings])
    pad = ids != 0
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=pad.long()).last_hidden_state
        got = model.encode(ids, padding_mask=pad)
    assert ids[0, 0] == tokenizer.token_to_id("[CLS]")  # the shipped tokenizer adds [CLS] ... [SEP]
    assert (expected - got)[pad].abs().max() <= 1e-4


@needs_minilm
def test_minilm_round_trip_to_bert_for_masked_lm(tmp_path):
    ours, _ = convert("minilm", tmp_path / "minilm")
    exported, _ = convert(str(ours), tmp_path / "hf")
    theirs = transformers.BertForMaskedLM.from_pretrained(exported).eval()
    model, tokenizer, _ = load(ours)
    ids = torch.tensor([tokenizer.encode("paris is the capital of [MASK].").ids])
    with torch.no_grad():
        assert (theirs(input_ids=ids).logits - model(ids)[0]).abs().max() <= 1e-4


@needs_minilm
def test_encoder_checkpoint_cannot_generate(tmp_path, capsys):
    out, _ = convert("minilm", tmp_path / "minilm")
    model, tokenizer, _ = load(out)
    with pytest.raises(ConfigError, match=r"an encoder-only model \(BERT\) fills in masked tokens"):
        generate_text(model, tokenizer, "hello", 3)
    for source in (str(out), "minilm"):  # ours, and the built-in transformers folder it came from
        assert cli.main(["generate", source, "--prompt", "hello"]) == 2
        assert "an encoder-only model (BERT) fills in masked tokens" in capsys.readouterr().err


@needs_minilm
def test_convert_refuses_an_existing_destination(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConversionError, match="already exists"):
        convert("minilm", tmp_path / "taken")


@pytest.mark.slow
@pytest.mark.download(BUILTIN["smollm2"][0])
def test_smollm2_gguf_imports_and_matches_transformers(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    # the conversion reads the GGUF through transformers; keep the model it reads (a second read takes ~25 s)
    read, from_pretrained = [], transformers.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(
        transformers.AutoModelForCausalLM,
        "from_pretrained",
        lambda *a, **k: read.append(from_pretrained(*a, **k)) or read[-1],
    )
    out, notes = convert("smollm2", tmp_path / "smol")
    model, tokenizer, config = load(out)
    assert config.model.arch == "decoder" and config.model.positions == "rope" and config.model.n_kv_head == 3
    (theirs,) = read
    theirs.eval()
    ids = torch.tensor([tokenizer.encode("The capital of France is").ids])
    with torch.no_grad():
        expected, got = theirs(input_ids=ids).logits, model(ids)[0]
    assert (expected - got).abs().max() <= 1e-3 * expected.abs().max()
    continuation = tokenizer.decode(model.generate(ids, 3, temperature=0)[0, ids.shape[1] :].tolist())
    assert "Paris" in continuation
