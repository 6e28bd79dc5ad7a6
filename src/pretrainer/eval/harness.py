"""Our models in lm-evaluation-harness: registered as its model `pretrainer` (`pip install -e .[eval]`).

    python -m pretrainer.eval.harness --model pretrainer --model_args path=runs/gpt-tiny --batch_size 16 \
        --tasks hellaswag

runs lm-eval's own command line with the model registered (lm-eval finds models by import, not by plugin);
in Python, `lm_eval.simple_evaluate(model=PretrainerLM("runs/gpt-tiny"), tasks=[...])`. The three request kinds
go to the library's own scoring and generation: `loglikelihood` to `continuation_logprobs` (a shared prefix
computed once), `loglikelihood_rolling` to the same over lm-eval's disjoint windows, `generate_until` to
`generate_texts`.
"""

from __future__ import annotations

import warnings

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from ..data.tokenizer import eos_id
from ..errors import ConfigError
from ..model.generate import generate_texts
from .icl import continuation_logprobs, prompting_model, token_logprobs


@register_model("pretrainer")
class PretrainerLM(LM):
    """A `pretrainer` model for lm-eval: a run or checkpoint folder, a transformers folder, a .gguf file or a
    built-in checkpoint name (`path`)."""

    def __init__(self, path: str, device: str | None = "auto", batch_size: int | str = 16,
                 max_batch_size: int | None = None, max_gen_toks: int = 256, precision: str = "fp32", model=None,
                 tokenizer=None):  # fmt: skip
        """lm-eval's command line adds its own `--batch_size` (default 1; "auto" here means `max_batch_size`, or
        16) and `--device` (default cuda:0, which falls back to the CPU without CUDA, as lm-eval's own models do)."""
        super().__init__()
        from ..convert import load_any

        if str(batch_size).startswith("auto"):
            self.batch_size = max_batch_size or 16
        elif str(batch_size).isdigit() and int(batch_size) >= 1:
            self.batch_size = int(batch_size)
        else:  # before a long load
            raise ConfigError(f"batch_size={batch_size!r}: give a number of 1 or more, or auto")
        if device is None or (device.startswith("cuda") and not torch.cuda.is_available()):
            if device is not None:
                warnings.warn(f"lm-eval asks for device {device}, but CUDA is not available: running on the CPU",
                              stacklevel=2)  # fmt: skip
            device = "auto"
        if model is None:
            model, tokenizer, _ = load_any(path)
        self.model = prompting_model(model, tokenizer, path, device, precision)
        self.tokenizer = tokenizer
        self.max_gen_toks = int(max_gen_toks)

    @classmethod
    def from_model(cls, model, tokenizer, **kwargs) -> PretrainerLM:
        """An adapter around a model already in memory."""
        return cls(path="(in memory)", model=model, tokenizer=tokenizer, **kwargs)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return continuation_logprobs(self.model, self.tokenizer, [r.args for r in requests], self.batch_size)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's summed log-probability, in windows of the model's length that each predict tokens no other
        predicts (lm-eval's rule), the first after the end-of-text token."""
        eos, length = eos_id(self.tokenizer), self.model.config.max_seq_len
        windows, owners = [], []  # every text's windows, scored in one call (batched across texts)
        for n, request in enumerate(requests):
            ids = self.tokenizer.encode(request.args[0], add_special_tokens=False).ids
            for window in get_rolling_token_windows(ids, eos, length, 1):
                windows.append(make_disjoint_window(window))
                owners.append(n)
        totals = [0.0] * len(requests)
        for n, (logprob, _) in zip(owners, token_logprobs(self.model, windows, self.batch_size), strict=True):
            totals[n] += logprob
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy unless the request asks to sample; cut before the first of its `until` strings. Requests with
        the same settings are generated together."""
        out = [""] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(i)
        for indices in groups.values():
            kwargs = dict(requests[indices[0]].args[1])
            until = kwargs.get("until", [])
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample", False) else 0.0
            texts = generate_texts(self.model, self.tokenizer, [requests[i].args[0] for i in indices],
                                   int(kwargs.get("max_gen_toks", self.max_gen_toks)), until, self.batch_size,
                                   temperature=temperature)  # fmt: skip
            for i, text in zip(indices, texts, strict=True):
                out[i] = text
        return out


if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
