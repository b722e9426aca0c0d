"""One configuration for an experiment: the data, training and distillation configs composed, plus the
teacher/student choices. Every default is stated once, in its dataclass; the CLI flags, the ``--config`` TOML
file and the notebooks' parameters all map onto these fields, and each field's trailing comment is its flag's help
text (``Flag.help``), so a comment states what the setting means and never its default (the CLI shows that).

Flags are the field names with dashes (``level_weights`` -> ``--level-weights``); the data split's seed is
``--split-seed`` (``--seed`` is the training seed: weight init, batch order, augmentation). A record's
``config`` (``asdict``) converts back with ``from_dict`` and to a replayable TOML file with ``to_toml``
(``python -m kd_utils config``).
"""

from __future__ import annotations

import functools
import inspect
import io
import json
import math
import textwrap
import tokenize
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from .data import DataConfig
from .distill import DistillConfig
from .train import PRECISIONS, TrainConfig

SECTIONS = {"data": DataConfig, "train": TrainConfig, "distill": DistillConfig}
RENAMED = {("data", "seed"): "split_seed"}  # fields whose flag is not their name (two sections have `seed`)


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)  # dataset, split, label fraction
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation of every student (and the teacher)
    distill: DistillConfig = field(default_factory=DistillConfig)  # every method's loss settings
    teacher: str = "teacher_cnn"  # teacher architecture: a kd_utils model, timm:NAME or tv:NAME
    student: str = "student_cnn"  # student architecture (as --teacher)
    teacher_epochs: int = 30  # the teacher's epochs (its other training settings are the students')
    teacher_random_erasing: float = 0.0  # the teacher's random-erasing probability (students: --random-erasing)
    teacher_precision: str | None = None  # the teacher's training precision, if not the students' --precision
    teacher_checkpoint: str | None = None  # use these teacher weights (.pt) instead of training one
    student_checkpoint: str | None = None  # start students from these weights instead of random init
    checkpoint_dir: str = "checkpoints"  # teacher/baseline cache, run checkpoints, stored teacher outputs
    resume: bool = False  # continue interrupted runs from their last.pt
    allow_weak_teacher: bool = False  # distil even from a teacher near chance level (otherwise refused)
    fuse_teacher_bn: bool = True  # distil from a BN-folded copy of the teacher: same outputs, faster forward
    teacher_cache: bool = True  # store each epoch's teacher logits/pooled maps once per data stream and reuse them
    tensorboard: str | None = None  # write per-epoch TensorBoard scalars under this folder (needs tensorboard)
    pack: int = 0  # runs of one method trained at once as one network (seeds, sweep trials): 0 auto (16 on CUDA, 1 elsewhere), 1 apart (--no-pack)

    def teacher_train_config(self) -> TrainConfig:
        precision = self.teacher_precision or self.train.precision
        return replace(self.train, epochs=self.teacher_epochs, random_erasing=self.teacher_random_erasing,
                       precision=precision)  # fmt: skip

    def validate(self) -> None:
        """Raise ``ValueError`` naming the flag of the first bad setting; loads nothing, trains nothing."""
        self.data.validate()
        self.train.validate()
        self.distill.validate()
        if not math.isfinite(self.teacher_random_erasing) or not 0 <= self.teacher_random_erasing <= 1:
            raise ValueError(f"--teacher-random-erasing {self.teacher_random_erasing}: must be a probability in [0, 1]")
        if self.pack < 0:
            raise ValueError(
                f"--pack {self.pack}: must be >= 0 (0: automatic, 1: apart, K: up to K runs as one network)"
            )
        if self.teacher_precision is not None and self.teacher_precision not in PRECISIONS:
            raise ValueError(f"--teacher-precision {self.teacher_precision}: choose from: {', '.join(PRECISIONS)}")
        if self.teacher_epochs < 1:
            raise ValueError(f"--teacher-epochs {self.teacher_epochs}: must be >= 1")
        late = [m for m in self.train.milestones if m > self.teacher_epochs]
        if self.train.schedule == "step" and late:  # the teacher trains on the students' schedule, for its epochs
            raise ValueError(f"--teacher-epochs {self.teacher_epochs}: fewer than the step schedule's milestone "
                             f"{late[0]:g}; give at least {max(self.train.milestones):g} or lower --milestones")  # fmt: skip
        if not self.checkpoint_dir:
            raise ValueError("--checkpoint-dir '': give the folder for the teacher cache and run checkpoints")
        for flag, value in (("--teacher-checkpoint", self.teacher_checkpoint), ("--student-checkpoint",
                            self.student_checkpoint), ("--tensorboard", self.tensorboard)):  # fmt: skip
            if value == "":
                raise ValueError(f"{flag} '': give a path, or leave the option out")


# --- flags ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    name: str  # long option without dashes' prefix, e.g. "level-weights"
    section: str | None  # "data" | "train" | "distill" | None (a field of ExperimentConfig itself)
    attr: str  # the dataclass field
    type: str  # the annotation as written, e.g. "int | None"
    default: object
    help: str  # the field's trailing comment in its dataclass


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """``{field: its trailing comment}`` of a dataclass, read from its source: the help text of its flags.

    A field is a statement ``name: type = ...`` directly in the class body; its comment is the last one on
    that statement's lines, without the leading ``# ``.
    """
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source shipped (a frozen or bytecode-only install): flags without help
        return {}
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    comments, depth, code, comment = {}, 0, [], ""
    for tok in tokens:
        if tok.type == tokenize.INDENT:
            depth += 1
        elif tok.type == tokenize.DEDENT:
            depth -= 1
        elif tok.type == tokenize.COMMENT:
            comment = tok.string if code else comment  # a comment on a line of its own is no field's
        elif tok.type == tokenize.NEWLINE:
            is_field = depth == 1 and len(code) > 1 and code[0].type == tokenize.NAME and code[1].string == ":"
            if is_field and comment:
                comments[code[0].string] = comment.removeprefix("#").strip()
            code, comment = [], ""
        elif tok.type not in (tokenize.NL, tokenize.ENCODING):
            code.append(tok)
    return comments


def flag_table() -> list[Flag]:
    """Every configurable field as a flag, in the dataclasses' order."""
    defaults = ExperimentConfig()
    table = []
    for f in fields(ExperimentConfig):
        if f.name in SECTIONS:
            section, helps = SECTIONS[f.name], field_comments(SECTIONS[f.name])
            for g in fields(section):
                name = RENAMED.get((f.name, g.name), g.name).replace("_", "-")
                default = getattr(getattr(defaults, f.name), g.name)
                table.append(Flag(name, f.name, g.name, str(g.type), default, helps.get(g.name, "")))
        else:
            default, help_text = getattr(defaults, f.name), field_comments(ExperimentConfig).get(f.name, "")
            table.append(Flag(f.name.replace("_", "-"), None, f.name, str(f.type), default, help_text))
    return table


FLAGS = {flag.name: flag for flag in flag_table()}


def to_flags(cfg: ExperimentConfig) -> dict[str, object]:
    """``{flag name: value}`` for every field."""
    return {name: getattr(getattr(cfg, f.section) if f.section else cfg, f.attr) for name, f in FLAGS.items()}


def from_flags(values: dict[str, object]) -> ExperimentConfig:
    """An ``ExperimentConfig`` from ``{flag name: value}`` (missing flags keep their defaults)."""
    unknown = set(values) - set(FLAGS)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(sorted(unknown))}; see --help for the option names")
    parts: dict[str | None, dict] = {s: {} for s in (*SECTIONS, None)}
    for name, value in values.items():
        f = FLAGS[name]
        parts[f.section][f.attr] = tuple(value) if isinstance(value, list) else value
    return ExperimentConfig(**{s: SECTIONS[s](**parts[s]) for s in SECTIONS}, **parts[None])


def from_dict(config: dict) -> ExperimentConfig:
    """Rebuild the config saved in a results record (``asdict`` layout)."""
    values = {}
    for name, f in FLAGS.items():
        holder = config.get(f.section, {}) if f.section else config
        if f.attr in holder:
            values[name] = holder[f.attr]
    return from_flags(values)


def check_type(name: str, value: object) -> object:
    """A value read from TOML, checked against its flag's annotation (ints are accepted for floats)."""
    kind = FLAGS[name].type
    if value is None or (isinstance(value, str) and kind.startswith("str")):
        return value
    if kind.startswith("tuple") and isinstance(value, list) and all(isinstance(v, int | float) for v in value):
        return tuple(float(v) for v in value)
    if kind.startswith("bool") and isinstance(value, bool):
        return value
    if kind.startswith("int") and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind.startswith("float") and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"'{name} = {json.dumps(value)}' has the wrong type; expected {kind}")


def read_toml(path: str | Path) -> dict[str, object]:
    """``{flag name: value}`` from a TOML file whose keys are long option names (dashes or underscores).

    The keys ``experiment``, ``seeds`` and ``final-epochs`` (run options, not config fields) pass through.
    """
    if not str(path):
        raise ValueError("--config '': give a TOML file")
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ValueError(f"--config {path}: not a regular file; give a TOML file")
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"--config {path}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, IsADirectoryError) as err:
        raise ValueError(f"--config {path}: not a TOML file ({err})") from None
    values = {}
    for key, value in raw.items():
        name = key.replace("_", "-")
        if name in RUN_OPTIONS:
            values[name] = check_run_option(path, name, value)
        elif name in FLAGS:
            values[name] = check_type(name, value)
        else:
            raise ValueError(f"--config {path}: unknown key '{key}'; keys are the long option names of `run --help`")
    return values


RUN_OPTIONS = ("experiment", "seeds", "final-epochs", "results-path")


def check_run_option(path: Path, name: str, value: object) -> object:
    """A ``run`` option read from TOML, checked for its type (the CLI checks the experiment's name)."""
    ok = {
        "experiment": isinstance(value, str),
        "seeds": isinstance(value, list) and bool(value) and all(type(v) is int and v >= 0 for v in value),
        "final-epochs": type(value) is int and value >= 1,
        "results-path": isinstance(value, str) and bool(value),
    }[name]
    if not ok:
        expected = {"experiment": 'a name, e.g. "logit"', "seeds": "a list of seeds >= 0, e.g. [0, 1, 2]",
                    "final-epochs": "an integer >= 1", "results-path": 'a file name, e.g. "runs/results.json"'}  # fmt: skip
        raise ValueError(
            f"--config {path}: '{name} = {json.dumps(value)}' has the wrong type; expected {expected[name]}"
        )
    return value


def to_toml(values: dict[str, object]) -> str:
    """TOML text for ``{flag name: value}``; None values (the "not set" default) are left out."""
    lines = []
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value) if math.isfinite(value) else str(value)
        elif isinstance(value, str):
            text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        elif isinstance(value, tuple | list):
            text = "[" + ", ".join(repr(v) for v in value) + "]"
        else:
            raise ValueError(f"cannot write {name} = {value!r} as TOML")
        lines.append(f"{name} = {text}")
    return "\n".join(lines) + "\n"
