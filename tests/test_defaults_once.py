"""Each default once: the loss functions' tunable defaults are DistillConfig's, and every flag's help text is its
field's comment."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields

import pytest

import kd_utils.train as train_mod
from kd_utils import losses
from kd_utils.config import FLAGS, field_comments
from kd_utils.data import DataConfig
from kd_utils.distill import DistillConfig
from kd_utils.train import TrainConfig

# {loss function: {keyword: the DistillConfig field that sets it}}
CONFIG_FIELDS = {
    "kd_loss": {"temperature": "temperature", "alpha": "alpha", "standardize": "logit_standardization"},
    "kd_loss_terms": {"temperature": "temperature", "alpha": "alpha", "standardize": "logit_standardization"},
    "dkd_loss": {"alpha": "dkd_alpha", "beta": "dkd_beta", "temperature": "temperature"},
    "dist_loss": {"beta": "dist_beta", "gamma": "dist_gamma", "temperature": "dist_temperature"},
    "hidden_state_loss": {
        "weights": "level_weights",
        "kind": "feature_kind",
        "channel_match": "channel_match",
        "spatial_size": "spatial_size",
    },  # fmt: skip
    "attention_transfer_loss": {"p": "at_p"},
    "attention_map": {"p": "at_p"},  # one side of attention_transfer_loss (the teacher cache's targets)
    "rkd_loss": {"distance_weight": "rkd_distance_weight", "angle_weight": "rkd_angle_weight"},
    "regressor_loss": {"weights": "level_weights"},
    "soft_target_kl": {},  # temperature has no default
    "masked_cross_entropy": {},
    "packed_cross_entropy": {},  # K students at once: each student's settings come as tensors, no defaults
    "packed_kd_loss_terms": {},
    "standardize_logits": {},
}


def keyword_defaults(fn) -> dict[str, object]:
    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def test_every_public_loss_function_is_in_the_table():
    public = {n for n, v in vars(losses).items() if inspect.isfunction(v) and not n.startswith("_")}
    assert public - {"level_weights"} == set(CONFIG_FIELDS)  # level_weights: a helper, no tunable default


@pytest.mark.parametrize("name", sorted(CONFIG_FIELDS))
def test_loss_defaults_are_the_config_defaults(name):
    defaults = keyword_defaults(getattr(losses, name))
    assert set(defaults) == set(CONFIG_FIELDS[name])  # a new default must be mapped to its field here
    cfg = DistillConfig()
    for keyword, field_name in CONFIG_FIELDS[name].items():
        assert defaults[keyword] == getattr(cfg, field_name), f"{name}({keyword}=) vs DistillConfig.{field_name}"


def test_hidden_state_loss_default_is_the_config_kind():
    assert DistillConfig().feature_kind == "cosine" == keyword_defaults(losses.hidden_state_loss)["kind"]


def test_eval_batch_size_is_one_constant():
    assert train_mod.EVAL_BATCH_SIZE == 512
    assert "512" not in inspect.getsource(train_mod.fit)


# --- help text from the field comments ----------------------------------------------------------------------


def test_every_flag_has_a_help_text():
    missing = [name for name, f in FLAGS.items() if not f.help.strip()]
    assert missing == []
    for name, f in FLAGS.items():
        assert "\n" not in f.help and not f.help.startswith("#"), name
        assert "%" not in f.help, name  # argparse %-formats help strings


def test_help_is_the_field_comment():
    assert FLAGS["dkd-warmup-epochs"].help.startswith("DKD: ")
    assert FLAGS["split-seed"].help == field_comments(DataConfig)["seed"]  # renamed flags keep their field's text
    assert FLAGS["seed"].help == field_comments(TrainConfig)["seed"]
    assert FLAGS["val-size"].help.endswith("None: the dataset's default_val_size")  # no hard-coded number
    assert set(field_comments(DistillConfig)) == {f.name for f in fields(DistillConfig)}


def test_field_comments_reads_trailing_comments_only():
    @dataclass
    class Example:
        # a comment on a line of its own belongs to no field
        plain: int = 1
        commented: str = "a # not a comment"  # the help
        spread: tuple = (
            1,
            2,
        )  # after the closing bracket

        def method(self) -> None:
            local: int = 0  # not a field
            del local

    assert field_comments(Example) == {"commented": "the help", "spread": "after the closing bracket"}
