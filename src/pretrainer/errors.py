"""The one family of errors a user can cause. The CLI prints any of them as one line and exits 2; any other
exception is a bug and keeps its traceback."""


class PretrainerError(Exception):
    """Something the user gave or asked for cannot be used; the message names the problem and the fix."""


class ConfigError(PretrainerError):
    """A config value, alone or with others, cannot be used."""


class DataError(PretrainerError):
    """Input data (a corpus, a tokenizer, shards) cannot be used."""


class CheckpointError(PretrainerError):
    """A run folder or checkpoint is missing, damaged or does not fit what is asked of it."""


class ConversionError(PretrainerError):
    """A checkpoint cannot be converted to or from `transformers`."""


class TrainingError(PretrainerError):
    """A run cannot go on (its loss is no longer finite, say); the message names the last good checkpoint."""
