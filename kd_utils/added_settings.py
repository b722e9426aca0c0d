"""Settings added after runs were stored, each at the value that reproduces the behaviour from before it existed.

A run at these values is the run it was: its folder keeps its name (``runs.run_dir``), its ``last.pt`` resumes
(``train.check_resumable``), and a re-run's record replaces the stored one (``records.run_settings``). No torch
here: the report reads records without the trainer.
"""

TRAIN = {"milestones": (), "lr_decay": 0.1, "nesterov": True}  # the step schedule (2026-12-01), plain SGD
DISTILL = {"dkd_warmup_epochs": 0, "logit_standardization": False}  # DKD's warm-up, logit standardization


def at_old_value(value: object, old: object) -> bool:
    """``value`` is the field's old-behaviour value (a tuple read back from JSON is a list)."""
    return value == old or (isinstance(old, tuple) and isinstance(value, list) and tuple(value) == old)
