"""pretrainer: pretrain, adapt and study encoder, encoder-decoder and decoder-only transformers."""

from .config import Config, load_config
from .convert import convert
from .eval.tasks import evaluate, predict
from .model.generate import generate_text
from .train.checkpoint import load as _load
from .train.trainer import finetune, train

__version__ = "0.1.0"
__all__ = ["Config", "load_config", "train", "finetune", "evaluate", "predict", "load", "generate_text", "convert"]


def load(path, device="cpu"):
    """(model, tokenizer) from a checkpoint folder or a run folder (its latest checkpoint)."""
    model, tokenizer, _ = _load(path, device)
    return model, tokenizer
