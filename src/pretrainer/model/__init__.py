from .decoder import Decoder

__all__ = ["Decoder", "build_model"]


def build_model(config):
    """The model a ModelConfig describes."""
    return Decoder(config)
