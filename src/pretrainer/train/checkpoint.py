"""Checkpoints: weights in safetensors (no pickle, so a stranger's checkpoint cannot run code), the config and
tokenizer beside them, the trainer's state for an exact resume, and a SHA-256 of every file (`SHA256SUMS`, as
`sha256sum -c` reads it) that loading verifies.

RUN_DIR/checkpoints/step-N/ is written under a temporary name and renamed when complete, and the file
`checkpoints/latest` names the last one saved; when that pointer is lost or names a folder that is gone, the
newest step-N folder stands in for it.
"""

from __future__ import annotations

import errno
import hashlib
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, save_model
from tokenizers import Tokenizer

from ..config import Config, from_yaml_text, to_yaml
from ..data.tokenizer import unpadded
from ..errors import CheckpointError, PretrainerError
from ..files import atomic_dir, write_atomic
from ..model import build_model, lora

CHECKSUMS = "SHA256SUMS"
ADAPTERS = "adapter.safetensors"  # a LoRA run's trained tensors; model.safetensors holds them merged


def not_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors that hold a NaN or an infinity."""
    return [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def write_model(folder: Path, model, config: Config, tokenizer: Tokenizer | None) -> None:
    """The loadable part of a checkpoint: weights, config and tokenizer (then `seal` the folder). A model with
    LoRA adapters is saved merged, as a plain model, and its adapters apart (adapter.safetensors, to resume)."""
    if lora.has_adapters(model):
        save_file(lora.adapter_tensors(model), str(folder / ADAPTERS))
        model = lora.merged(model)
    save_model(model, str(folder / "model.safetensors"))
    (folder / "config.yaml").write_text(to_yaml(config))
    if tokenizer is not None:
        tokenizer.save(str(folder / "tokenizer.json"))


def seal(folder: Path) -> None:
    """Record the SHA-256 of every file in `folder`, so that loading can tell a damaged file."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS)
    (folder / CHECKSUMS).write_text("".join(f"{_sha256(p)}  {p.name}\n" for p in files))


def verify(path: Path) -> None:
    """Check one file of a checkpoint against the SHA-256 saved with it (checkpoints from before checksums,
    which have no SHA256SUMS, are taken as they are)."""
    sums = path.parent / CHECKSUMS
    if not sums.is_file():
        return
    expected = dict(reversed(line.split(maxsplit=1)) for line in sums.read_text().splitlines() if line.strip())
    if not path.is_file():
        raise CheckpointError(f"'{path}' is missing from its checkpoint; use another checkpoint")
    if expected.get(path.name) != _sha256(path):
        raise CheckpointError(
            f"'{path}' is damaged: its SHA-256 differs from the one saved with it; use another checkpoint "
            "(delete this folder to resume from the one before)"
        )


def save(run_dir: Path, step: int, model, config: Config, tokenizer: Tokenizer, state: dict, keep_last: int) -> Path:
    """Write checkpoint step-`step` of the run, point `latest` at it, and keep only the newest `keep_last`
    (never the one `latest` names). A failed write leaves no trace and says which checkpoint is still good."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step}"
    _write(run_dir, step, final, model, config, tokenizer, state)
    for old in steps(run_dir)[:-keep_last]:
        shutil.rmtree(old)
    return final


def save_best(run_dir: Path, step: int, model, config: Config, tokenizer: Tokenizer) -> Path:
    """Write (or replace) checkpoints/best: the model at the run's best evaluation, for `eval` and `predict`."""
    best = Path(run_dir) / "checkpoints" / "best"
    _write(run_dir, step, best, model, config, tokenizer, None)
    return best


def _write(run_dir: Path, step: int, final: Path, model, config, tokenizer, state: dict | None) -> None:
    root = final.parent
    try:
        with atomic_dir(final, replace=True) as tmp:
            write_model(tmp, model, config, tokenizer)
            if state is not None:
                torch.save(state, tmp / "trainer_state.pt")
            seal(tmp)
        if state is not None:
            write_atomic(root / "latest", final.name + "\n")
    except OSError as e:
        good = latest(run_dir, warn=False)
        last = f"the last good checkpoint is {good}" if good else "no checkpoint was saved before"
        if e.errno == errno.ENOSPC:
            raise CheckpointError(f"no space left on device while saving step {step}; {last}") from None
        raise CheckpointError(f"could not write checkpoint step {step} in '{root}' ({e.strerror}); {last}") from None


def _step_of(path: Path) -> int | None:
    number = path.name.removeprefix("step-")
    return int(number) if path.name.startswith("step-") and number.isdigit() else None


def steps(run_dir: Path, complete: bool = True) -> list[Path]:
    """The run's checkpoint folders (only those with weights, when `complete`), oldest step first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _step_of(p) is not None and p.is_dir()]
    return sorted((p for p in found if not complete or (p / "model.safetensors").is_file()), key=_step_of)


def latest(run_dir: Path, warn: bool = True) -> Path | None:
    """The checkpoint `checkpoints/latest` names; when that pointer is missing or names a folder that is gone,
    the newest complete step-N folder (with a warning), or None when the run has none."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if pointer.is_file():
        path = pointer.parent / pointer.read_text().strip()
        if _step_of(path) is not None and (path / "model.safetensors").is_file():
            return path
    found = steps(run_dir)
    if found and warn:
        why = "names a checkpoint that is gone" if pointer.is_file() else "is missing"
        warnings.warn(f"'{pointer}' {why}; using the newest checkpoint, {found[-1].name}", stacklevel=2)
    return found[-1] if found else None


def resolve(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder or a run folder (its latest checkpoint)."""
    p = Path(path)
    if (p / "model.safetensors").is_file():
        return p
    found = latest(p) if p.is_dir() else None
    if found is not None:
        return found
    if (p / "config.json").is_file():
        raise CheckpointError(
            f"'{p}' is a transformers model folder, not a checkpoint of ours; convert it first: "
            f"pretrainer convert {p} DEST"
        )
    if not p.exists():
        raise CheckpointError(f"'{p}' does not exist; give a run folder or a checkpoint folder")
    saved = steps(p, complete=False)
    if saved:
        raise CheckpointError(f"'{saved[-1]}/model.safetensors' is missing; use another checkpoint")
    if (p / "metrics.jsonl").is_file():
        raise CheckpointError(f"'{p}' is a run with no checkpoint yet; it saves one every train.save_every steps")
    if (p / "config.yaml").is_file():
        raise CheckpointError(f"'{p}/model.safetensors' is missing; use another checkpoint")
    raise CheckpointError(f"'{p}' is neither a checkpoint (no model.safetensors) nor a run folder with checkpoints")


def read_config(ckpt: Path) -> Config:
    path = Path(ckpt) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"'{path}' is missing; a checkpoint needs the config it was trained with")
    verify(path)
    try:
        return from_yaml_text(path.read_text())
    except PretrainerError as e:
        raise CheckpointError(f"'{path}' does not hold a valid config: {e}") from None
    except Exception as e:  # omegaconf and yaml raise many kinds for a garbled file
        raise CheckpointError(f"'{path}' cannot be read as a config ({type(e).__name__}); restore it") from None


def _read_tensors(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    """A checkpoint's safetensors file: verified, without pickle, and refused unless every tensor is finite."""
    verify(path)
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"'{path}' cannot be read as safetensors ({e}); use another checkpoint") from None
    bad = not_finite(tensors)
    if bad:
        raise CheckpointError(
            f"'{path}' holds weights that are not finite ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
            "use another checkpoint"
        )
    return tensors


def load_adapters(model, ckpt: Path, device: str | torch.device = "cpu") -> None:
    """Load the LoRA adapters and head `ckpt` saved into `model` (which has its body and adapters in place)."""
    path = Path(ckpt) / ADAPTERS
    if not path.is_file():
        raise CheckpointError(f"'{path}' is missing; without it a LoRA run cannot resume from {Path(ckpt).name}")
    tensors = _read_tensors(path, device)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    _, unexpected = model.load_state_dict(tensors, strict=False)
    missing = sorted(trained - tensors.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"'{path}' does not fit the run's adapters (missing {missing[:3]}, unexpected {unexpected[:3]}); resume "
            "with the run's own config.yaml"
        )


def load_weights(model, ckpt: Path, device: str | torch.device = "cpu") -> None:
    """Load `ckpt`'s weights into `model`: verified, without pickle, and refused unless every one is finite."""
    path = Path(ckpt) / "model.safetensors"
    tensors = _read_tensors(path, device)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # tied weights are stored once, under one of their names: the others are not missing
    names_of: dict[int, set[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), set()).add(name)
    missing = [k for k in missing if not any(k in names and names & tensors.keys() for names in names_of.values())]
    if missing or unexpected:
        raise CheckpointError(
            f"'{path}' does not fit its config.yaml (missing {missing[:3]}, unexpected {unexpected[:3]}); the two "
            "files come from different models"
        )


def load_tokenizer(ckpt: Path) -> Tokenizer | None:
    path = Path(ckpt) / "tokenizer.json"
    if not path.is_file():
        return None
    verify(path)
    try:
        return unpadded(Tokenizer.from_file(str(path)))
    except Exception as e:  # tokenizers raises a bare Exception for a malformed file
        raise CheckpointError(f"'{path}' cannot be read as a tokenizer ({e}); restore it") from None


def load(path: str | Path, device: str | torch.device = "cpu"):
    """(model, tokenizer, config) from a checkpoint or run folder; the model is in eval mode."""
    ckpt = resolve(path)
    config = read_config(ckpt)
    model = build_model(config.model)
    load_weights(model, ckpt, device)
    return model.to(device).eval(), load_tokenizer(ckpt), config


def load_state(ckpt: Path) -> dict:
    path = Path(ckpt) / "trainer_state.pt"
    if not path.is_file():
        raise CheckpointError(f"'{path}' is missing; without it the run cannot resume from {Path(ckpt).name}")
    verify(path)
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:  # torch.load raises many kinds for a garbled or truncated file
        raise CheckpointError(
            f"'{path}' cannot be read ({type(e).__name__}); delete {Path(ckpt).name} to resume from the "
            "checkpoint before it"
        ) from None
