"""Checkpoints: weights in safetensors (no pickle, so a stranger's checkpoint cannot run code), the
config and tokenizer beside them, and the trainer's state for an exact resume.

RUN_DIR/checkpoints/step-N/ is written under a temporary name and renamed when complete; the file
`checkpoints/latest` names the last complete one, so a crash never leaves a half checkpoint as latest.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from tokenizers import Tokenizer

from ..config import Config, from_yaml_text, to_yaml
from ..errors import CheckpointError
from ..model import build_model


def write_model(folder: Path, model, config: Config, tokenizer: Tokenizer | None) -> None:
    """The loadable part of a checkpoint: weights, config and tokenizer."""
    save_model(model, str(folder / "model.safetensors"))
    (folder / "config.yaml").write_text(to_yaml(config))
    if tokenizer is not None:
        tokenizer.save(str(folder / "tokenizer.json"))


def save(run_dir: Path, step: int, model, config: Config, tokenizer: Tokenizer, state: dict, keep_last: int):
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_model(tmp, model, config, tokenizer)
    torch.save(state, tmp / "trainer_state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = root / "latest.tmp"
    pointer.write_text(final.name + "\n")
    os.replace(pointer, root / "latest")
    kept = sorted((p for p in root.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
    for old in kept[:-keep_last]:
        shutil.rmtree(old)
    return final


def latest(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / "model.safetensors").is_file() else None


def resolve(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder or a run folder (its latest checkpoint)."""
    p = Path(path)
    if (p / "model.safetensors").is_file():
        return p
    found = latest(p)
    if found is None:
        raise CheckpointError(
            f"'{p}' is neither a checkpoint (no model.safetensors) nor a run folder with checkpoints/latest"
        )
    return found


def read_config(ckpt: Path) -> Config:
    return from_yaml_text((Path(ckpt) / "config.yaml").read_text())


def load(path: str | Path, device: str | torch.device = "cpu", archs: tuple[str, ...] | None = None):
    """(model, tokenizer, config) from a checkpoint or run folder; the model is in eval mode. With `archs`,
    a checkpoint of another kind of model (an encoder where a generator is needed, say) is an error."""
    ckpt = resolve(path)
    config = read_config(ckpt)
    if archs is not None and config.model.arch not in archs:
        raise CheckpointError(
            f"'{path}' holds a model.arch={config.model.arch} model; this needs {' or '.join(archs)} "
            "(an encoder predicts masked tokens, it does not generate)"
        )
    model = build_model(config.model)
    load_model(model, str(ckpt / "model.safetensors"), device=str(device))
    tokenizer_file = ckpt / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(tokenizer_file)) if tokenizer_file.is_file() else None
    return model.to(device).eval(), tokenizer, config


def load_state(ckpt: Path) -> dict:
    return torch.load(Path(ckpt) / "trainer_state.pt", weights_only=True)
