"""Teacher work shared across runs: each epoch's teacher outputs computed once per data stream, then reused.

A *stream* is everything that fixes the batches a student sees: the teacher's weights, the dataset and its
split, the batch size, the seed (batch order and augmentation), the precision and the device type. Runs on
the same stream (logit KD, DKD, DIST, every sweep point over their settings) see the same images in the same
order, so the teacher's outputs for epoch ``e`` are the same tensors: computed by the first run that needs them,
stored one file per output (``distill.TeacherOutput``: the logits, one stage's pooled map, one stage's attention
map) as ``epoch{e:03d}-{output}.pt`` in the stream's folder, and loaded by the others. A reused output is the
very tensor the teacher produced, so training is bit-identical to computing it inline.

One teacher pass per epoch for a whole comparison: the cache is told the outputs the runs ahead of it on the
stream will read (``also``, one group per run: ``study.compare_methods`` gives every method's), and whenever it
runs the teacher over an epoch it computes and stores those too. Without it, a comparison of logit KD,
hidden-state imitation, RKD and attention transfer ran the teacher four times an epoch, once per kind of output.

Size on disk per epoch: ``N x 4`` bytes times the floats per image, for N training images: 55,000
Fashion-MNIST images, logits 2.2 MB; teacher_cnn's three stages pooled to s = 1, 101 MB; to s = 4, 1.6 GB;
its attention maps (14x14, 7x7, 3x3), 56 MB. A run's outputs are stored together or not at all: not when
together larger than ``max_epoch_bytes`` (default 512 MB; a 15-epoch, 3-seed study at s = 4 would otherwise
fill 72 GB of disk to save a teacher forward pass per batch), nor when the disk would keep less than
``MIN_FREE_BYTES``; they are then used and computed again by the next run that needs them.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from .data import TensorLoader
from .distill import TeacherOutput, each_output, map_outputs
from .results import atomic_write
from .train import autocast, epoch_images

MAX_EPOCH_BYTES = 512 * 2**20  # a run's outputs larger than this an epoch are recomputed rather than stored
MIN_FREE_BYTES = 4 * 2**30  # nor stored where the disk would keep less free than this


def state_hash(module: nn.Module) -> str:
    """sha256 over a module's parameters and buffers (names, shapes, dtypes, bytes): names the weights."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


class TeacherCache:
    """Teacher outputs of one stream, one file per epoch and output, under ``root/<stream hash>``; ``also``: the
    outputs of the runs ahead, one group per run, computed with any epoch the cache computes."""

    def __init__(self, root: str | Path, stream: dict, max_epoch_bytes: int = MAX_EPOCH_BYTES,
                 also: Sequence[Sequence[TeacherOutput]] = ()):  # fmt: skip
        key = hashlib.sha1(json.dumps(stream, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.folder = Path(root) / key
        self.stream = stream
        self.hits = 0  # epochs served from disk
        self.misses = 0  # epochs for which the teacher ran
        self.max_epoch_bytes = max_epoch_bytes
        self.also = tuple(tuple(group) for group in also)

    def path(self, epoch: int, output: str) -> Path:
        return self.folder / f"epoch{epoch:03d}-{output}.pt"

    def load(self, epoch: int, output: TeacherOutput, n_images: int, device: torch.device) -> Tensor | None:
        """The stored output, or None when missing; a damaged one, of another shape or not finite is deleted."""
        path = self.path(epoch, output.name)
        if not path.exists():
            return None
        try:
            stored = torch.load(path, map_location=device, weights_only=True)
        except Exception:  # a damaged file is recomputed, never trusted
            stored = None
        if fits(stored, n_images):
            return stored
        path.unlink(missing_ok=True)
        return None

    def epoch_targets(self, distiller, loader: TensorLoader, dtype: torch.dtype) -> dict:
        """This epoch's targets (``loader.epoch`` set by the trainer): from disk, or computed (with ``also``) and
        stored."""
        outputs = distiller.teacher_outputs(tuple(loader.images.shape[1:]))
        n, epoch = epoch_images(loader), loader.epoch
        found = {o: self.load(epoch, o, n, loader.device) for o in dict.fromkeys(each_output(outputs))}
        if all(t is not None for t in found.values()):
            self.hits += 1
        else:
            self.misses += 1
            ahead = [g for g in self.also if not all(self.path(epoch, o.name).exists() for o in g)]
            todo = [o for o in dict.fromkeys([*found, *(o for g in ahead for o in g)]) if found.get(o) is None]
            values = {**found, **compute_epoch_outputs(distiller.teacher, todo, loader, dtype)}
            found = {o: values[o] for o in found}
            for group in [tuple(found), *ahead]:  # each run's outputs stored together or not at all
                self.store(epoch, {o: values[o] for o in group})
        return map_outputs(outputs, found.__getitem__)

    def store(self, epoch: int, group: dict[TeacherOutput, Tensor]) -> None:
        """One run's outputs of an epoch, each written whole (atomically); none when together larger than
        ``max_epoch_bytes`` or when the disk would keep less than ``MIN_FREE_BYTES``."""
        new = {o: t for o, t in group.items() if not self.path(epoch, o.name).exists()}
        size = sum(t.numel() * t.element_size() for t in group.values())
        if not new or size > self.max_epoch_bytes:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(self.folder).free - size < MIN_FREE_BYTES:
            return
        stream_file = self.folder / "stream.json"
        if not stream_file.exists():
            atomic_write(stream_file, json.dumps(self.stream, indent=1, sort_keys=True, default=str))
        for output, tensor in new.items():
            buffer = io.BytesIO()
            torch.save(tensor.cpu(), buffer)
            atomic_write(self.path(epoch, output.name), buffer.getvalue())


def fits(stored: object, n_images: int) -> bool:
    """A stored output is used only when it is a finite float tensor with one row per image."""
    return (
        isinstance(stored, torch.Tensor) and stored.is_floating_point() and stored.dim() >= 1
        and stored.shape[0] == n_images and bool(torch.isfinite(stored).all())
    )  # fmt: skip


def compute_epoch_outputs(
    teacher: nn.Module, outputs: Sequence[TeacherOutput], loader: TensorLoader, dtype: torch.dtype
) -> dict[TeacherOutput, Tensor]:
    """The teacher's ``outputs`` for every batch of the loader's current epoch, concatenated in batch order: one
    teacher forward per batch for all of them.

    The batches and the autocast are those of the training loop, so each output equals what a distiller would
    compute inline for that batch.
    """
    chunks: dict[TeacherOutput, list[Tensor]] = {o: [] for o in outputs}
    with torch.no_grad(), autocast(loader.device, dtype):
        for x, _ in loader:
            feats = teacher.forward_features(x)
            for output, parts in chunks.items():
                parts.append(output.of(teacher, feats))
    return {o: torch.cat(parts) for o, parts in chunks.items()}
