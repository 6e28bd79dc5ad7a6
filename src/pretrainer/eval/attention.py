"""Attention patterns read out of a decoder: every layer's attention probabilities on one sequence, the heads
that look one token back (previous-token heads) or at the token after the previous occurrence of the current
one (induction heads), and a picture of the two (PNG)."""

from __future__ import annotations

from pathlib import Path

import torch


@torch.no_grad()
def attention_probs(model, input_ids: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's attention probabilities, (heads, query, key), on one sequence `input_ids` (1, time):
    recomputed from the queries and keys each attention hands to its kernel (the fused kernel returns none)."""
    seen = []

    def recording(attn):
        attend = attn._attend

        def record(q, k, *rest):
            seen.append((attn, q, k))
            return attend(q, k, *rest)

        return record

    attentions = [block.attn for block in model.blocks]
    for attn in attentions:
        attn._attend = recording(attn)  # an instance attribute, over the class's method until deleted
    try:
        model(input_ids)
    finally:
        for attn in attentions:
            del attn._attend
    probs = []
    for attn, q, k in seen:
        scores = (q @ k.transpose(-1, -2)).float() * (attn.scale or q.shape[-1] ** -0.5)
        if attn.causal:
            t = scores.shape[-1]
            scores.masked_fill_(~torch.ones(t, t, dtype=torch.bool, device=scores.device).tril(), float("-inf"))
        probs.append(scores.softmax(-1)[0])
    return probs


def head_scores(probs: torch.Tensor, offset: int, queries: range) -> torch.Tensor:
    """Per head, the mean attention a query at position i pays to the key at i - offset, over `queries`."""
    rows = torch.tensor(list(queries))
    return probs[:, rows, rows - offset].mean(-1)


def plot_induction_heads(model, input_ids: torch.Tensor, period: int, out: Path) -> dict[str, float]:
    """Draw, on one sequence that repeats itself after `period` tokens, the first layer's strongest
    previous-token head and the last layer's strongest induction head: a query at position i in the repeat
    attends to i - period + 1, the token that followed this one last time. Returns both heads' scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = attention_probs(model, input_ids)
    t = input_ids.shape[1]
    previous = head_scores(probs[0], 1, range(1, t))
    induction = head_scores(probs[-1], period - 1, range(period, t))
    shown = [
        (0, int(previous.argmax()), f"previous-token score {previous.max():.2f}"),
        (len(probs) - 1, int(induction.argmax()), f"induction score {induction.max():.2f}"),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    for ax, (layer, head, what) in zip(axes, shown, strict=True):
        ax.imshow(probs[layer][head].cpu().numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"layer {layer}, head {head}: {what}", fontsize=10)
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
        ax.axvline(period - 0.5, color="w", lw=0.5, alpha=0.5)
        ax.axhline(period - 0.5, color="w", lw=0.5, alpha=0.5)
    fig.suptitle(f"attention on one sequence that repeats after {period} tokens")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return {"previous_token_score": float(previous.max()), "induction_score": float(induction.max())}
