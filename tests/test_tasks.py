"""Fine-tuning tasks: the task section of the config."""

import pytest

from pretrainer.config import load_config
from pretrainer.errors import ConfigError

# ---------------------------------------------------------------------------------------------------------------
# the task section of the config


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["task.kind=ner"], "task.kind='ner' is not one of classification, pair"),
        (["task.name=tweets"], "task.name='tweets' is not a built-in task .* did you mean 'tweets-sentiment'"),
        (["task.name=tweets-sentiment", "task.train=x.csv"], "built-in task with its own files; drop task.train"),
        (["task.name=code-docstrings", "task.kind=qa"], "code-docstrings is a text2text task, not qa"),
        (["task.validation=v.csv"], "task.validation and task.test need task.train"),
        (["task.columns.sentence=s"], "a classification task has no field 'sentence'; its fields are text, label"),
        (["task.max_len=0"], "task.max_len must be at least 1"),
        (["task.kind=regression", "task.labels=[a]"], "task.labels is for classification, pair and tagging"),
        (["task.labels=[a,b,a]"], "task.labels names a more than once"),
        (["task.train=t.csv", "task.kind=tagging"], "a tagging task is for model.arch=encoder, not decoder"),
        (["task.train=t.csv", "task.max_len=512"], r"task.max_len=512 is larger than the model's positions"),
        (["task.train=t.csv", "task.kind=pair", "task.max_len=2"], "too short for a pair task on a decoder; use at"),
    ],
)
def test_task_config_rules(overrides, says):
    with pytest.raises(ConfigError, match=says):
        load_config(None, overrides)


T5 = ["model.arch=encoder_decoder", "model.positions=relative", "objective.name=span_corruption"]


def test_a_pretraining_config_is_not_held_to_task_rules():
    config = load_config(None, T5)
    assert config.task.kind == "classification"  # the default kind would not fit this model, but no task is given
    assert load_config(None, [*T5, "task.name=code-docstrings"]).task.kind == "classification"  # the built-in's wins
    with pytest.raises(ConfigError, match="a text2text task is for model.arch=encoder_decoder, not decoder"):
        load_config(None, ["task.name=code-docstrings"])
