"""The packed trainer: K runs of one method trained at once as one network, each exactly as if alone.

A GPU is launch-bound on these small students: one run leaves it mostly idle. ``fit_packed`` trains K
*members* (each a distiller with its own student, training seed, loss settings and run folder) as one
``packed.PackedNet``: one forward, one backward and one optimiser step per step for all of them.

Each member is the run ``train.fit`` would make of it alone:
- the same initial weights (its distiller is built exactly as for a separate run, then packed);
- the same batches: one ``TensorLoader`` per distinct training seed (a *stream*: batch order and
  augmentation), so members of one seed (sweep trials) share a stream, and members of K seeds see K streams;
- the same loss: each member's own distiller (its temperature, alpha, weights) on its own slice of the packed
  logits and maps; baseline and logit KD in one vectorised call (``losses.packed_*``, per-member settings as
  ``(K,)`` tensors), every other method member by member;
- the same teacher targets: from the teacher cache, or one teacher forward per stream and target spec;
- the same updates: the packed loss is the sum of the members' losses, so each block of a packed parameter
  gets its member's gradient, and SGD (momentum, Nesterov, weight decay) and AdamW update elementwise.
The learning-rate schedule, optimiser and precision are shared, so members must agree on every training
setting but the seed (``pack_problem``). Under fp16 (older GPUs, the T4) the loss scale is shared too: a step
on which one member's gradients overflow is skipped for all of them.

Every member writes its own ``last.pt`` and ``best.pt`` in ``fit``'s format (its own optimiser state sliced
out of the packed one), so it resumes, reloads and reports as a run trained apart; members resume together
when their ``last.pt`` are at one epoch. A member that diverges, or that its ``on_epoch`` stops (a pruned
sweep trial), is retired: its block is zeroed and left out of the loss, the others go on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .data import DataSplits, TensorLoader
from .distill import Distiller, LogitDistiller
from .losses import packed_cross_entropy, packed_kd_loss_terms
from .metrics import classification_metrics
from .packed import PackedNet, join_blocks, pack, stack_inputs, student_block
from .results import remove_stray_temporaries
from .train import (
    EVAL_BATCH_SIZE,
    FitResult,
    NonFiniteLossError,
    TrainConfig,
    autocast,
    batch_targets,
    build_optimizer,
    build_scheduler,
    check_finite_state,
    epoch_images,
    format_epoch,
    load_checkpoint_file,
    load_resume_state,
    logit_metrics,
    machine_label,
    resolve_device,
    resolve_precision,
    save_checkpoint,
    set_deterministic,
    trainable_state,
)

SHARED_EXCEPT = ("seed", "progress", "log_every")  # training settings members may differ in
MAX_PACK = 16  # members per pack on a GPU by default (``--pack 0``); the benchmark measured K in {4, 8, 16}


def resolve_pack(pack: int, device: str) -> int:
    """Members per pack: ``pack`` when given (1: apart), else ``MAX_PACK`` on CUDA and 1 elsewhere (the CPU is
    compute-bound: packing measured 0.5-0.8x there)."""
    if pack < 0:
        raise ValueError(f"--pack {pack}: must be >= 0 (0: automatic, 1: apart, K: up to K runs as one network)")
    if pack:
        return pack
    return MAX_PACK if resolve_device(device).type == "cuda" else 1


@dataclass
class Member:
    """One run of a pack: what ``fit`` would be called with for it alone."""

    distiller: Distiller
    cfg: TrainConfig
    folder: Path | None = None  # its checkpoint folder (``fit``'s ``checkpoint_dir``)
    desc: str = "train"
    cache: object | None = None  # its ``TeacherCache`` (one per stream), or None
    on_epoch: Callable[[dict], bool | None] | None = None  # sees each history row; returns False to stop it
    select_best: bool = True


@dataclass
class Outcome:
    """How one member ended: its ``FitResult``, and why it stopped early, if it did."""

    result: FitResult
    error: NonFiniteLossError | None = None  # it diverged
    pruned: bool = False  # its on_epoch stopped it

    @property
    def finished(self) -> bool:
        return self.error is None and not self.pruned


def pack_problem(members: list[Member]) -> str | None:
    """Why ``members`` cannot train as one pack, or None: one distiller class and architecture, and every
    training setting shared but ``SHARED_EXCEPT``."""
    from .models import StagedNet

    if len(members) < 2:
        return "a pack needs at least two runs"
    if len({type(m.distiller) for m in members}) != 1:
        return "the runs use different methods"
    if any(type(m.distiller.student) is not StagedNet for m in members):
        return "only kd_utils' plain CNNs (student_cnn, teacher_cnn) are packed"
    if len({tuple((k, tuple(v.shape)) for k, v in m.distiller.student.state_dict().items()) for m in members}) != 1:
        return "the students differ in architecture"
    shared = [{k: v for k, v in asdict(m.cfg).items() if k not in SHARED_EXCEPT} for m in members]
    if any(s != shared[0] for s in shared):
        diff = sorted(k for k in shared[0] if any(s[k] != shared[0][k] for s in shared))
        return f"the runs differ in training settings ({', '.join(diff)})"
    if members[0].cfg.compile:
        return "--compile is not used with packing"
    try:
        pack([m.distiller.student for m in members[:1]])
    except ValueError as err:
        return str(err)
    return None


def resumable_epoch(folder: Path | None, resume: bool) -> int:
    """The epoch a run folder's ``last.pt`` holds (0: none, or not resuming): runs pack only at one epoch."""
    last = folder / "last.pt" if folder is not None else None
    if not resume or last is None or not last.exists():
        return 0
    return load_checkpoint_file(last)["epoch"]


def fit_packed(
    members: list[Member], data: DataSplits, resume: bool = False, log: Callable[[str], None] | None = None
) -> list[Outcome]:
    """Train ``members`` as one packed network; each ends with its best epoch's weights loaded (its last
    epoch's with ``select_best=False``), as after ``fit``. See the module docstring for what is shared."""
    problem = pack_problem(members)
    if problem:
        raise ValueError(f"cannot pack these runs: {problem}")
    cfg, k = members[0].cfg, len(members)
    device = resolve_device(cfg.device)
    dtype = resolve_precision(cfg.precision, device)
    set_deterministic(device, cfg.deterministic)
    channels_last = cfg.channels_last and device.type in ("cuda", "cpu")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for m in members:
        m.distiller.to(device).to(memory_format=fmt)
    states = [load_member_state(m, resume) for m in members]
    starts = {s["epoch"] if s else 0 for s in states}
    if len(starts) != 1:
        raise ValueError("cannot pack these runs: their last.pt are at different epochs; resume them apart")
    for m, state in zip(members, states):
        if state is not None:
            m.distiller.student.load_state_dict(state["model"])
            m.distiller.adapters.load_state_dict(state["adapters"])
    packed = pack([m.distiller.student for m in members]).to(device).to(memory_format=fmt)
    student_params = dict(members[0].distiller.student.named_parameters())
    for name, p in packed.named_parameters():  # FitNets' stage 1 freezes the same layers of every member
        p.requires_grad_(student_params[name].requires_grad)
    seeds = list(dict.fromkeys(m.cfg.seed for m in members))
    streams = [TensorLoader(data.train_x, data.train_y, data.info, cfg.batch_size, device, train=True, seed=seed,
                            channels_last=channels_last, random_erasing=cfg.random_erasing) for seed in seeds]  # fmt: skip
    stream_of = [seeds.index(m.cfg.seed) for m in members]
    val_loader = TensorLoader(data.val_x, data.val_y, data.info, EVAL_BATCH_SIZE, device, channels_last=channels_last)
    plan = ParamPlan(packed, members)
    opt = build_optimizer(plan.params, cfg)
    scheduler = build_scheduler(opt, cfg, len(streams[0]))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    results = [FitResult(**s["result"]) if s else FitResult() for s in states]
    if states[0] is not None:
        opt.load_state_dict(plan.join_optimizer([s["optimizer"] for s in states]))
        scheduler.load_state_dict(states[0]["scheduler"])
        scaler.load_state_dict(states[0]["scaler"])
        if log:
            log(f"resumed a pack of {k} ({members[0].desc} ...) after epoch {states[0]['epoch']}")
    for m in members:
        if m.folder is not None:
            m.folder.mkdir(parents=True, exist_ok=True)
            for name in ("last.pt", "best.pt"):
                remove_stray_temporaries(m.folder / name)
    outcomes = [Outcome(r) for r in results]
    here = machine_label(device, dtype)
    start_epoch = starts.pop() + 1
    if start_epoch <= cfg.epochs:
        for r in results:
            if here not in r.trained_on:
                r.trained_on.append(here)
    best_states: list[dict | None] = [None] * k
    step = PackedStep(packed, members, stream_of, opt, scheduler, scaler, dtype, cfg)
    for epoch in range(start_epoch, cfg.epochs + 1):
        alive = [o.finished for o in outcomes]
        if not any(alive):
            break
        for loader in streams:
            loader.set_epoch(epoch)
        for m in members:
            m.distiller.start_epoch(epoch, len(streams[0]))
        t0 = time.perf_counter()
        step.epoch_targets = epoch_teacher_targets(members, streams, stream_of, dtype)
        desc = f"{members[0].desc} (pack of {k}) {epoch}/{cfg.epochs}"
        bar = tqdm(total=len(streams[0]), desc=desc, leave=False, disable=not cfg.progress)
        try:
            parts, errors = step.epoch(streams, epoch, alive, bar)
        finally:
            bar.close()
        step.epoch_targets = None
        train_seconds = time.perf_counter() - t0
        val_logits = packed_infer(packed, val_loader, dtype)  # (K, n, N)
        seconds = time.perf_counter() - t0
        for i, (m, outcome) in enumerate(zip(members, outcomes)):
            if not alive[i]:
                continue
            if errors[i] is not None:
                outcome.error = NonFiniteLossError(f"{m.desc}: {errors[i]}")
                retire(packed, opt, plan, i)
                continue
            m.distiller.student.load_state_dict(unpacked(packed, i))
            try:
                check_finite_state(m.distiller, f"after epoch {epoch} of {m.desc}")
            except NonFiniteLossError as err:
                outcome.error = err
                retire(packed, opt, plan, i)
                continue
            val = logit_metrics(val_logits[i], data.val_y.cpu(), data.info.classes)  # as train.evaluate
            row = {
                "epoch": epoch, **parts[i],
                "val_loss": val["loss"] if math.isfinite(val["loss"]) else None,
                "val_acc": val["accuracy"], "val_f1": val["f1"], "lr": opt.param_groups[0]["lr"], "seconds": seconds,
                "images_per_s": epoch_images(streams[0]) / train_seconds,  # this member's; the pack trained K times as many
            }  # fmt: skip
            result = outcome.result
            result.history.append(row)
            result.seconds += seconds
            improved = row["val_f1"] > result.best_val_f1 if m.select_best else True
            if improved:
                result.best_epoch, result.best_val_f1 = epoch, row["val_f1"]
            if log:
                log(format_epoch(m.desc, row, cfg.epochs, improved and m.select_best))
            if m.folder is not None:
                state = {
                    **trainable_state(m.distiller), "optimizer": plan.member_optimizer(opt, i),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                    "result": asdict(result), "train_config": asdict(m.cfg),
                }  # fmt: skip
                if improved:
                    save_checkpoint({**trainable_state(m.distiller), "epoch": epoch}, m.folder / "best.pt")
                save_checkpoint(state, m.folder / "last.pt")
            elif improved:
                best_states[i] = {n: v.detach().clone() for n, v in m.distiller.state_dict().items()}
            if m.on_epoch is not None and m.on_epoch(row) is False:
                outcome.pruned = True
                retire(packed, opt, plan, i)
    for i, m in enumerate(members):
        if outcomes[i].error is None:
            restore_best(m, best_states[i])
    return outcomes


def load_member_state(member: Member, resume: bool) -> dict | None:
    """A member's ``last.pt`` to resume from, checked as ``fit`` checks it, or None."""
    if not resume or member.folder is None or not (member.folder / "last.pt").exists():
        return None
    return load_resume_state(member.folder / "last.pt", asdict(member.cfg), member.distiller.student)


def restore_best(member: Member, best_state: dict | None) -> None:
    """The member's best epoch's weights (``best.pt``, or kept in memory without a folder), as ``fit`` ends."""
    best = member.folder / "best.pt" if member.folder is not None else None
    if best is not None and best.exists():
        state = load_checkpoint_file(best)
        member.distiller.student.load_state_dict(state["model"])
        member.distiller.adapters.load_state_dict(state["adapters"])
    elif best_state is not None:
        member.distiller.load_state_dict(best_state)


def unpacked(packed: PackedNet, i: int) -> dict[str, Tensor]:
    """Member ``i``'s weights and buffers (views), keyed as its student's state dict."""
    return {n: student_block(n, t, packed.k, i) for n, t in packed.state_dict().items()}


@dataclass
class ParamPlan:
    """Where each member's parameters sit among the packed optimiser's: the packed net's trainable parameters
    (a block each) first, then every member's adapters in member order (whole, untouched by packing)."""

    packed: PackedNet
    members: list[Member]
    names: list[str] = field(init=False)  # trainable packed parameters, in order
    params: list[nn.Parameter] = field(init=False)  # what the packed optimiser updates
    adapter_slots: list[range] = field(init=False)  # member i's adapters: these indices of ``params``

    def __post_init__(self):
        trainable = [(n, p) for n, p in self.packed.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in trainable]
        self.params = [p for _, p in trainable]
        self.adapter_slots = []
        for m in self.members:
            adapters = [p for p in m.distiller.adapters.parameters() if p.requires_grad]
            self.adapter_slots.append(range(len(self.params), len(self.params) + len(adapters)))
            self.params += adapters

    def member_optimizer(self, opt: torch.optim.Optimizer, i: int) -> dict:
        """Member ``i``'s optimiser state dict, as its own optimiser in ``fit`` would have it."""
        full = opt.state_dict()
        k, n = self.packed.k, len(self.names)
        state = {}
        for j, name in enumerate(self.names):
            if j in full["state"]:
                shape = self.params[j].shape
                state[j] = {key: student_block(name, v, k, i).clone() if _is_block(v, shape) else _copy(v)
                            for key, v in full["state"][j].items()}  # fmt: skip
        for j, slot in enumerate(self.adapter_slots[i]):
            if slot in full["state"]:
                state[n + j] = {key: _copy(v) for key, v in full["state"][slot].items()}
        groups = [{**g, "params": list(range(n + len(self.adapter_slots[i])))} for g in full["param_groups"]]
        return {"state": state, "param_groups": groups}

    def join_optimizer(self, member_states: list[dict]) -> dict:
        """The packed optimiser's state dict from each member's (``member_optimizer``'s inverse)."""
        n, state = len(self.names), {}
        for j, name in enumerate(self.names):
            if all(j in s["state"] for s in member_states):
                keys = member_states[0]["state"][j]
                shape = self.members[0].distiller.student.get_parameter(name).shape
                state[j] = {key: join_blocks(name, [s["state"][j][key] for s in member_states])
                            if _is_block(v, shape) else v for key, v in keys.items()}  # fmt: skip
        for i, s in enumerate(member_states):
            for j, slot in enumerate(self.adapter_slots[i]):
                if n + j in s["state"]:
                    state[slot] = s["state"][n + j]
        groups = [{**g, "params": list(range(len(self.params)))} for g in member_states[0]["param_groups"]]
        return {"state": state, "param_groups": groups}


def _is_block(value: object, shape: torch.Size) -> bool:
    return isinstance(value, Tensor) and value.dim() > 0 and value.shape == shape


def _copy(value: object) -> object:
    return value.clone() if isinstance(value, Tensor) else value


@torch.no_grad()
def retire(packed: PackedNet, opt: torch.optim.Optimizer, plan: ParamPlan, i: int) -> None:
    """Stop member ``i``: its block of every weight, statistic and optimiser buffer zeroed (so a diverged
    member's NaN cannot reach a shared fp16 overflow check), its adapters too; its loss is left out from now."""
    for name, tensor in packed.state_dict(keep_vars=True).items():
        if not name.endswith("num_batches_tracked"):
            block = student_block(name, tensor.data if isinstance(tensor, nn.Parameter) else tensor, packed.k, i)
            block.fill_(1.0 if name.endswith("running_var") else 0.0)
    for j, name in enumerate(plan.names):
        for v in opt.state.get(plan.params[j], {}).values():
            if _is_block(v, plan.params[j].shape):
                student_block(name, v, packed.k, i).zero_()
    for slot in plan.adapter_slots[i]:
        plan.params[slot].zero_()
        for v in opt.state.get(plan.params[slot], {}).values():
            if isinstance(v, Tensor) and v.dim() > 0:
                v.zero_()


def epoch_teacher_targets(members, streams, stream_of, dtype) -> dict:
    """This epoch's stored teacher targets per (stream, target spec, teacher), from each stream's teacher cache; groups
    without a cache (or whose method needs the full maps) are computed step by step in ``PackedStep``."""
    out = {}
    for i, m in enumerate(members):
        loader = streams[stream_of[i]]
        key = (stream_of[i], m.distiller.target_spec(tuple(loader.images.shape[1:])), id(m.distiller.teacher))
        if key not in out and m.cache is not None and m.distiller.cacheable:
            out[key] = m.cache.epoch_targets(m.distiller, loader, dtype)
    return out


@dataclass
class PackedStep:
    """One training epoch of a pack: the packed forward, each member's loss, one backward and one step."""

    packed: PackedNet
    members: list[Member]
    stream_of: list[int]
    opt: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    dtype: torch.dtype
    cfg: TrainConfig
    epoch_targets: dict | None = None

    def teacher_targets(self, xs: list[Tensor], step: int, batch_size: int) -> list[dict]:
        """Each member's teacher targets for this step: one slice or one teacher forward per (stream, spec, teacher)."""
        groups: dict[tuple, dict] = {}
        out = []
        for i, m in enumerate(self.members):
            x = xs[self.stream_of[i]]
            key = (self.stream_of[i], m.distiller.target_spec(tuple(x.shape[1:])), id(m.distiller.teacher))
            if key not in groups:
                if not m.distiller.needs:
                    groups[key] = {}
                elif self.epoch_targets and key in self.epoch_targets:
                    groups[key] = batch_targets(
                        self.epoch_targets[key], slice(step * batch_size, (step + 1) * batch_size)
                    )
                else:
                    groups[key] = m.distiller.teacher_targets(x)
            out.append(groups[key])
        return out

    def losses(self, logits: Tensor, maps: list[Tensor], ys: Tensor, targets: list[dict]):
        """``(K,)`` losses and ``{part: (K,)}``: baseline and logit KD vectorised, other methods member by member."""
        kind = type(self.members[0].distiller)
        if kind is Distiller:
            ce = packed_cross_entropy(logits, ys)
            return ce, {"ce": ce}
        if kind is LogitDistiller:
            teacher = torch.stack([t["logits"] for t in targets], dim=1)  # (B, K, N)
            temperature = logits.new_tensor([m.distiller.cfg.temperature for m in self.members], dtype=torch.float32)
            alpha = logits.new_tensor([m.distiller.cfg.alpha for m in self.members], dtype=torch.float32)
            standardize = torch.tensor([m.distiller.cfg.logit_standardization for m in self.members], device=ys.device)
            total, ce, kd = packed_kd_loss_terms(logits, teacher, ys, temperature, alpha, standardize)
            return total, {"ce": ce, "kd": kd}
        totals, parts = [], {}
        for i, m in enumerate(self.members):
            loss, member_parts = m.distiller.loss(logits[:, i], self.packed.student_maps(maps, i), ys[i], targets[i])
            totals.append(loss)
            for name, v in member_parts.items():
                parts.setdefault(name, []).append(v)
        return torch.stack(totals), {name: torch.stack(v) for name, v in parts.items()}

    def epoch(self, streams: list[TensorLoader], epoch: int, alive: list[bool], bar=None):
        """One pass; per member its mean loss parts, train accuracy and F1, and its error (None: finite)."""
        k, device = len(self.members), streams[0].device
        for m in self.members:
            m.distiller.train()  # adapters in train mode, the teacher stays in eval
        self.packed.train()
        mask = torch.tensor(alive, device=device)
        sums: dict[str, Tensor] = {}
        predictions, targets = [], []
        errors: list[str | None] = [None] * k
        check_every = 1 if device.type == "cpu" else self.cfg.log_every
        batch_size = streams[0].batch_size
        for step, batches in enumerate(zip(*streams)):
            xs = [x for x, _ in batches]
            ys = torch.stack([batches[s][1] for s in self.stream_of])  # (K, B)
            x = stack_inputs([xs[s] for s in self.stream_of])  # (B, K * C, H, W): member i in block i
            with autocast(device, self.dtype):
                teacher = self.teacher_targets(xs, step, batch_size)
                maps = self.packed.forward_features(x)
                logits = self.packed.forward_head(maps[-1])  # (B, K, N)
                if not self.members[0].distiller.trains_head:
                    logits = logits.detach()
                losses, parts = self.losses(logits, maps, ys, teacher)
            total = torch.where(mask, losses, torch.zeros_like(losses)).sum()
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            self.scheduler.step()
            for name, v in {"loss": losses, **parts}.items():
                sums[name] = sums.get(name, 0) + v.detach().float()
            predictions.append(logits.detach().argmax(2).T)  # (K, B)
            targets.append(ys)
            if (step + 1) % check_every == 0:
                bad = ~torch.isfinite(losses.detach()) & mask
                if bad.any():
                    for i in bad.nonzero().flatten().tolist():
                        detail = ", ".join(f"{n}={v[i].item():.4g}" for n, v in {"loss": losses, **parts}.items())
                        errors[i] = f"non-finite loss at epoch {epoch}, step {step + 1}: {detail}"
                        mask[i] = False
            if bar is not None:
                bar.update(1)
        n_steps = max(1, len(streams[0]))
        y_true, y_pred = torch.cat(targets, 1).cpu(), torch.cat(predictions, 1).cpu()  # (K, n)
        out = []
        for i in range(k):
            row = {name: (v[i] / n_steps).item() for name, v in sums.items()}
            if errors[i] is None and alive[i] and not math.isfinite(row["loss"]):
                detail = ", ".join(f"{n}={v:.4g}" for n, v in row.items())
                errors[i] = f"non-finite loss in epoch {epoch} (mean over its steps): {detail}"
            labeled = y_true[i] >= 0
            row["train_acc"], row["train_f1"] = float("nan"), float("nan")
            if labeled.any():
                train = classification_metrics(y_true[i][labeled], y_pred[i][labeled], streams[0].info.classes)
                row["train_acc"], row["train_f1"] = train["accuracy"], train["f1"]
            out.append(row)
        return out, errors


@torch.no_grad()
def packed_infer(packed: PackedNet, loader: TensorLoader, dtype: torch.dtype = torch.float32) -> Tensor:
    """Every member's logits for the loader's images, ``(K, n, N)`` float32 on the CPU (``train.infer``'s)."""
    was_training = packed.training
    packed.eval()
    outs = []
    with autocast(loader.device, dtype):
        for x, _ in loader:
            outs.append(packed(stack_inputs([x] * packed.k)).float())  # (B, K, N)
    packed.train(was_training)
    return torch.cat(outs).permute(1, 0, 2).cpu()
