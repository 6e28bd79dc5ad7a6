from ..errors import ConfigError
from .decoder import Decoder
from .electra import Electra
from .encoder import Encoder
from .encoder_decoder import EncoderDecoder

__all__ = ["Decoder", "Electra", "Encoder", "EncoderDecoder", "build_model"]

ARCHITECTURES = {"decoder": Decoder, "encoder": Encoder, "encoder_decoder": EncoderDecoder}


def build_model(config):
    """The model a ModelConfig describes."""
    if config.vocab_size is None:
        raise ConfigError("model.vocab_size must be set before building a model (the trainer sets it)")
    if config.head in ("sequence", "token") and config.n_labels < 1:
        raise ConfigError(f"model.head={config.head} needs model.n_labels (classes; 1 for a regression)")
    if config.generator_fraction:  # ELECTRA's pretraining: a generator and the discriminator in one module
        return Electra(config)
    return ARCHITECTURES[config.arch](config)
