from .decoder import Decoder
from .encoder import Encoder
from .encoder_decoder import EncoderDecoder

__all__ = ["Decoder", "Encoder", "EncoderDecoder", "build_model"]

ARCHITECTURES = {"decoder": Decoder, "encoder": Encoder, "encoder_decoder": EncoderDecoder}


def build_model(config):
    """The model a ModelConfig describes."""
    return ARCHITECTURES[config.arch](config)
