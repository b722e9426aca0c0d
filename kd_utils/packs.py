"""Several runs of one experiment (its seeds, or sweep trials): packed into one network where they can be
(``packed_train``), one by one where not. Either way each run gets its own run folder, checkpoints and
``RunRecord``, and the record says how it trained: ``pack = {"k": K, "seeds": [...], "names": [...]}``
(``{"k": 1}``: apart).

Runs share a pack when they agree on every training setting but the seed, use a packable architecture
(``student_cnn``, ``teacher_cnn``) and, resumed, stand at the same epoch; a teacher or baseline already in its
cache is loaded, not trained. K is ``--pack`` (0: 16 on CUDA, 1 elsewhere: ``packed_train.resolve_pack``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from .config import ExperimentConfig
from .data import DataSplits
from .distill import TWO_STAGE, build_distiller
from .models import build_model, count_parameters
from .packed_train import SHARED_EXCEPT, Member, Outcome, fit_packed, resolve_pack, resumable_epoch
from .records import RunRecord
from .runs import (
    EXPERIMENTS,
    chain,
    finish_record,
    labels_suffix,
    run_dir,
    teacher_cache_for,
    train_experiment,
    training_data,
)
from .tensorboard_log import tensorboard_logger
from .train import FitResult, NonFiniteLossError, fit

PACKABLE_ARCHS = ("student_cnn", "teacher_cnn")  # plain CNNs (packed.PACKABLE layers only)

OnEpoch = Callable[[dict], bool | None] | None


@dataclass
class RunOutcome:
    """One run of ``train_runs``: its model and record, or why it has none."""

    model: nn.Module | None = None
    record: RunRecord | None = None
    error: NonFiniteLossError | None = None  # it diverged (its record is None)
    pruned: bool = False  # its on_epoch stopped it (the record holds the epochs it trained)


def train_runs(
    experiment: str,
    cfgs: Sequence[ExperimentConfig],
    data: DataSplits,
    teachers=None,
    log: Callable[[str], None] | None = print,
    names: Sequence[str | None] | None = None,
    roles: Sequence[str | None] | None = None,
    test: bool = True,
    on_epochs: Sequence[OnEpoch] | None = None,
) -> list[RunOutcome]:
    """``train_experiment(experiment, cfg, ...)`` for every ``cfg``, packed where they can be, in ``cfgs``' order.

    ``teachers``: one ``FrozenTeacher`` for all, or one per cfg. ``on_epochs[i]`` sees run ``i``'s history rows
    and stops it by returning False (a pruned trial). A diverged run is returned with its error, not raised.
    """
    n = len(cfgs)
    teachers = list(teachers) if isinstance(teachers, list | tuple) else [teachers] * n
    names, roles = list(names or [None] * n), list(roles or [None] * n)
    on_epochs = list(on_epochs or [None] * n)
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment '{experiment}'; choose from: {', '.join(EXPERIMENTS)}")
    outcomes: list[RunOutcome | None] = [None] * n
    groups: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        key = pack_key(experiment, cfg, teachers[i])
        if key is None:
            continue
        groups.setdefault(key, []).append(i)
    k = resolve_pack(cfgs[0].pack, cfgs[0].train.device) if n else 1
    packs = [group[j : j + k] for group in groups.values() for j in range(0, len(group), k)]
    for chunk in (c for c in packs if len(c) > 1):
        columns = [[items[i] for i in chunk] for items in (cfgs, teachers, names, roles, on_epochs)]
        chunk_cfgs, chunk_teachers, chunk_names, chunk_roles, chunk_hooks = columns
        trained = _train_pack(experiment, chunk_cfgs, data, chunk_teachers, chunk_names, chunk_roles, test,
                              chunk_hooks, log)  # fmt: skip
        for i, outcome in zip(chunk, trained):
            outcomes[i] = outcome
    for i in range(n):
        if outcomes[i] is None:
            outcomes[i] = _train_apart(experiment, cfgs[i], data, teachers[i], log, names[i], roles[i], test,
                                       on_epochs[i])  # fmt: skip
    return outcomes


def pack_key(experiment: str, cfg: ExperimentConfig, teacher) -> str | None:
    """Runs with one key may share a pack; None: this run trains apart (a cached teacher or baseline, an
    architecture that does not pack, --compile)."""
    arch = cfg.teacher if experiment == "teacher" else cfg.student
    train_cfg = cfg.teacher_train_config() if experiment == "teacher" else cfg.train
    folder = run_dir(cfg, experiment, teacher)
    cached = experiment in ("teacher", "baseline") and (folder / "run.json").exists() and (folder / "best.pt").exists()
    if (
        arch not in PACKABLE_ARCHS
        or train_cfg.compile
        or cached
        or (experiment != "teacher" and cfg.student_checkpoint)
    ):
        return None
    shared = {k: v for k, v in asdict(train_cfg).items() if k not in SHARED_EXCEPT}
    epochs = [resumable_epoch(folder / "hint", cfg.resume), resumable_epoch(folder, cfg.resume)]
    hint = cfg.distill.hint_epochs if experiment in TWO_STAGE else None
    return json.dumps([arch, shared, epochs, hint, cfg.data.labeled_fraction], sort_keys=True, default=str)


def _train_apart(experiment, cfg, data, teacher, log, name, role, test, on_epoch) -> RunOutcome:
    try:
        model, record = train_experiment(experiment, cfg, data, teacher, log, name, test, role, on_epoch=on_epoch)
    except NonFiniteLossError as err:
        return RunOutcome(error=err)
    stopped = on_epoch is not None and record.history and len(record.history) < record.epochs
    return RunOutcome(model, record, pruned=bool(stopped))


def _train_pack(experiment, cfgs, data, teachers, names, roles, test, on_epochs, log) -> list[RunOutcome]:
    """One pack: members built as ``runs._fit_method`` builds a run (so each starts from the same weights),
    trained by ``fit_packed`` (both stages for fitnets), each finished into its own record."""
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    info = data.info
    resume = cfgs[0].resume
    labels = [labels_suffix(name or experiment, cfg.data.labeled_fraction) for name, cfg in zip(names, cfgs)]
    teacher_models = [t.model if t is not None else None for t in teachers]
    folders = [run_dir(cfg, experiment, t) for cfg, t in zip(cfgs, teachers)]
    first, method = TWO_STAGE.get(experiment, (None, "baseline" if experiment == "teacher" else experiment))
    models, distillers, extras, stage1 = [], [], [{} for _ in cfgs], None
    for cfg, teacher_model in zip(cfgs, teacher_models):  # per run: its seed, its model, its adapters (as apart)
        torch.manual_seed(cfg.train.seed)
        arch = cfg.teacher if experiment == "teacher" else cfg.student
        models.append(build_model(arch, info.in_channels, info.num_classes))
        distillers.append(build_distiller(first or method, models[-1], teacher_model, cfg.distill))
    if first is not None:  # fitnets: stage 1 the hint (the whole pack), then stage 2 logit KD
        stage1 = fit_packed(
            [Member(d, replace(cfg.train, epochs=cfg.distill.hint_epochs), folder / "hint", f"{label} hint",
                    select_best=False) for d, cfg, folder, label in zip(distillers, cfgs, folders, labels)],
            data, resume, log,
        )  # fmt: skip
        for d, outcome, extra in zip(distillers, stage1, extras):
            for p in d.frozen:
                p.requires_grad_(True)
            extra.update(hint_history=outcome.result.history, hint_seconds=outcome.result.seconds,
                         hint_trained_on=outcome.result.trained_on)  # fmt: skip
        distillers = [build_distiller(method, m, t, cfg.distill) for m, t, cfg in zip(models, teacher_models, cfgs)]
    live = [i for i in range(len(cfgs)) if stage1 is None or stage1[i].finished]
    results = [RunOutcome(error=stage1[i].error if stage1 else None) for i in range(len(cfgs))]
    members, closers = [], []
    for i in live:
        cfg = cfgs[i]
        train_cfg = cfg.teacher_train_config() if experiment == "teacher" else cfg.train
        cache = teacher_cache_for(cfg, teachers[i]) if experiment != "teacher" else None
        board, close = tensorboard_logger(cfg.tensorboard, labels[i], cfg.train.seed)
        closers.append(close)
        members.append(Member(distillers[i], train_cfg, folders[i], labels[i], cache, chain(board, on_epochs[i])))
    try:
        fit_data = training_data(method, data)  # labels-only runs (teacher, baseline) walk the labeled images
        outcomes = fit_packed(members, fit_data, resume, log) if len(members) > 1 else [fit_alone(m, fit_data, resume, log)
                                                                                      for m in members]  # fmt: skip
    finally:
        for close in closers:
            close()
    pack_info = {"k": len(cfgs), "seeds": [cfg.train.seed for cfg in cfgs], "names": labels}
    for i, member, outcome in zip(live, members, outcomes):
        if outcome.error is not None:
            results[i] = RunOutcome(error=outcome.error)
            continue
        extra = extras[i]
        cache = member.cache
        if cache is not None and member.distiller.cacheable:
            extra["teacher_cache"] = {"hits": cache.hits, "misses": cache.misses, "folder": cache.folder.name}
        extra["adapter_params"] = count_parameters(member.distiller.adapters)
        extra["pack"] = pack_info
        extra["train_images"] = len(fit_data.train_y)
        role = roles[i] or (experiment if experiment in ("teacher", "baseline") else "method")
        record = finish_record(experiment, cfgs[i], data, teachers[i], models[i], outcome.result, extra, labels[i],
                               role, started, test)  # fmt: skip
        results[i] = RunOutcome(models[i], record, pruned=outcome.pruned)
    return results


def records_of(outcomes: list[RunOutcome], done: Callable[[RunRecord], None] | None = None) -> list[RunRecord]:
    """The records of ``outcomes``, each passed to ``done`` (saved) first; then the first diverged run's error
    is raised, so a pack's finished runs are kept when one of them diverged (as runs apart are)."""
    records = [o.record for o in outcomes if o.record is not None]
    for record in records:
        if done is not None:
            done(record)
    error = next((o.error for o in outcomes if o.error is not None), None)
    if error is not None:
        raise error
    return records


def fit_alone(member: Member, data: DataSplits, resume: bool, log) -> Outcome:
    """The one member left of a pack (its partner diverged in FitNets' first stage), trained by ``fit``."""
    m = member
    try:
        result = fit(m.distiller, data, m.cfg, m.folder, resume, log, m.desc, m.cache, m.on_epoch)
    except NonFiniteLossError as err:
        return Outcome(FitResult(), error=err)
    return Outcome(result, pruned=m.on_epoch is not None and len(result.history) < m.cfg.epochs)
