from ..errors import ConfigError
from .decoder import Decoder
from .encoder import Encoder
from .encoder_decoder import EncoderDecoder

__all__ = ["Decoder", "Encoder", "EncoderDecoder", "build_model"]

ARCHITECTURES = {"decoder": Decoder, "encoder": Encoder, "encoder_decoder": EncoderDecoder}


def build_model(config):
    """The model a ModelConfig describes."""
    if config.vocab_size is None:
        raise ConfigError("model.vocab_size must be set before building a model (the trainer sets it)")
    return ARCHITECTURES[config.arch](config)
