"""DistilBERT's distillation (Sanh et al., 2019): a student encoder learns from a frozen teacher encoder of the
same width, starting from every other one of its layers, with three losses over the real tokens: the soft
cross-entropy between their MLM distributions at temperature T (times T², so its gradients keep their scale as
T changes), the student's own MLM loss on the masked tokens, and 1 − the cosine between their last hidden states.
One module, so that the one trainer runs it; the trainer saves the student (the teacher never changes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

IGNORE = -100


def init_from_teacher(student: nn.Module, teacher: nn.Module) -> list[int]:
    """Copy the teacher into the student: embeddings, MLM head and blocks 0, 2, 4, ... of the teacher into the
    student's blocks 0, 1, 2, .... A teacher's segment embedding the student lacks is folded into its position
    table (BERT adds segment 0's row to every token of a single text, so nothing changes for one). Returns the
    teacher's layers taken. Raises ConfigError when the shapes differ (the widths, heads or MLP must match)."""
    taken = list(range(0, 2 * len(student.blocks), 2))
    if taken[-1] >= len(teacher.blocks):
        raise ConfigError(
            f"a student of {len(student.blocks)} layers takes every other layer of its teacher, which has "
            f"{len(teacher.blocks)}: give the student at most {(len(teacher.blocks) + 1) // 2} (model.n_layer)"
        )
    state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("blocks.")}
    if student.type_emb is None and teacher.type_emb is not None:
        state.pop("type_emb.weight")
        state["pos_emb.weight"] = state["pos_emb.weight"] + teacher.type_emb.weight[0]
    for i, j in enumerate(taken):
        state |= {f"blocks.{i}.{k}": v for k, v in teacher.blocks[j].state_dict().items()}
    ours = student.state_dict()
    differ = [k for k, v in state.items() if k in ours and ours[k].shape != v.shape]
    if differ:
        raise ConfigError(
            f"the student cannot start from its teacher: {differ[0]} is {tuple(ours[differ[0]].shape)} in the student "
            f"and {tuple(state[differ[0]].shape)} in the teacher; give the student the teacher's d_model, n_head "
            "and d_ff (only n_layer halves)"
        )
    student.load_state_dict({k: v for k, v in state.items() if k in ours}, strict=False)
    return taken


def distillation_losses(
    student_logits, teacher_logits, student_hidden, teacher_hidden, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(soft cross-entropy × T², 1 − mean cosine) over the rows given (the real tokens)."""
    teacher_probs = (teacher_logits.float() / temperature).softmax(-1)
    student_log_probs = (student_logits.float() / temperature).log_softmax(-1)
    soft = -(teacher_probs * student_log_probs).sum(-1).mean() * temperature**2
    cosine = 1 - F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1).mean()
    return soft, cosine


class Distillation(nn.Module):
    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float, weights: tuple[float, float, float]):
        super().__init__()
        self.student, self.teacher = student, teacher.requires_grad_(False).eval()
        self.temperature, self.weights = temperature, weights

    def train(self, mode: bool = True):
        self.student.train(mode)  # the teacher stays in eval mode: no dropout in its targets
        return self

    def forward(self, input_ids, targets, token_type_ids=None, padding_mask=None, **_):
        """(None, weights · (soft cross-entropy, student MLM loss, cosine loss))."""
        real = torch.ones_like(input_ids, dtype=torch.bool) if padding_mask is None else padding_mask.bool()
        with torch.no_grad():
            teacher_hidden = self.teacher.encode(input_ids, token_type_ids, padding_mask)[real]
            teacher_logits = self.teacher.mlm_logits(teacher_hidden)
        student_hidden = self.student.encode(input_ids, token_type_ids, padding_mask)[real]
        student_logits = self.student.mlm_logits(student_hidden)
        soft, cosine = distillation_losses(
            student_logits, teacher_logits, student_hidden, teacher_hidden, self.temperature
        )
        masked = targets[real] != IGNORE
        mlm = F.cross_entropy(student_logits[masked].float(), targets[real][masked])
        ce_weight, mlm_weight, cos_weight = self.weights
        return None, ce_weight * soft + mlm_weight * mlm + cos_weight * cosine
