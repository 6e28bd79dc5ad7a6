"""LoRA adapters (Hu et al. 2021) through the `peft` library, applied to a built model from outside.

    add_adapters(model, rank=8, alpha=16, dropout=0.0, targets=["qkv", "attn.proj"])   # in place
    plain = merged(model)           # a copy with W + (alpha/rank) B A in each adapted layer: an ordinary model

The model keeps its class and its forward; peft swaps each targeted nn.Linear for a layer that adds the low-rank
update, and freezes everything else. A task head (`head.*`) trains too. Checkpoints hold the merged model (any
loader reads it, no peft needed) and the adapters apart (`adapter_tensors`), from which a run resumes.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import ConfigError


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError(
            "finetune.lora_rank needs the peft package; install it (pip install 'pretrainer[lora]') or set "
            "finetune.lora_rank=0"
        ) from None
    return peft


def add_adapters(model: nn.Module, rank: int, alpha: float, dropout: float, targets: list[str]) -> None:
    """Put LoRA adapters of `rank` on the linear layers whose names end in one of `targets`; only they and the
    task head train. The adapters' B starts at zero, so the model computes what it did before."""
    peft = _peft()
    lora = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets))
    linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
    try:
        peft.inject_adapter_in_model(lora, model)
    except ValueError as e:
        if "not found" not in str(e):
            raise
        raise ConfigError(
            f"finetune.lora_targets={list(targets)} names no layer of this model; its linear layers are named "
            f"{', '.join(linear)} (use a name, or a dotted tail such as attn.proj)"
        ) from None
    for name, p in model.named_parameters():
        if name.startswith("head."):
            p.requires_grad_(True)


def has_adapters(model: nn.Module) -> bool:
    return any(".lora_A." in name for name, _ in model.named_parameters())


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a LoRA run trains (the adapters and the task head), by the model's own names: with the pretrained
    body, all a resume needs."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def merged(model: nn.Module) -> nn.Module:
    """A copy of `model` with every adapter merged into its layer's weight (peft's merge) and the adapter layers
    replaced by plain nn.Linear: the same outputs, the same parameter names as a model without adapters."""
    base_layer = _peft().tuners.lora.LoraLayer
    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        if isinstance(module, base_layer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(plain.get_submodule(parent), child, module.get_base_layer())
    return plain
