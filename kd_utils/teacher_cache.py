"""Teacher work shared across runs: each epoch's teacher targets computed once per data stream, then reused.

A *stream* is everything that fixes the batches a student sees: the teacher's weights, the dataset and its
split, the batch size, the seed (batch order and augmentation), the precision and the device type. Runs on
the same stream (logit KD, DKD, DIST, every sweep point over their settings) see the same images in the same
order, so the teacher's logits, pooled maps and attention maps for epoch ``e`` are the same tensors: computed by
the first run that needs them, stored as ``epoch{e:03d}-{spec}.pt`` in the stream's folder, and loaded by the
others. A reused target is the very tensor the teacher produced, so training is bit-identical to recomputing it.

Size on disk per epoch: ``N x (K x 4 + sum_l C_l x s^2 x 4)`` bytes for N training images, K classes and
pooled maps of C_l channels at s x s, all float32: 55,000 Fashion-MNIST images, logits alone 2.2 MB; with the
three pooled stages of teacher_cnn at s = 1, 101 MB; at s = 4, 1.6 GB; its attention maps (14x14, 7x7, 3x3),
56 MB). An epoch's targets larger than
``max_epoch_bytes`` (default 512 MB) are used but not stored: a 15-epoch, 3-seed study at s = 4 would
otherwise fill 72 GB of disk to save a teacher forward pass per batch.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch
from torch import Tensor, nn

from .data import TensorLoader
from .results import atomic_write
from .train import autocast, epoch_images

MAX_EPOCH_BYTES = 512 * 2**20  # larger epochs of targets are recomputed rather than stored


def state_hash(module: nn.Module) -> str:
    """sha256 over a module's parameters and buffers (names, shapes, dtypes, bytes): names the weights."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


class TeacherCache:
    """Teacher targets of one stream, one file per epoch and target spec, under ``root/<stream hash>``."""

    def __init__(self, root: str | Path, stream: dict, max_epoch_bytes: int = MAX_EPOCH_BYTES):
        key = hashlib.sha1(json.dumps(stream, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.folder = Path(root) / key
        self.stream = stream
        self.hits = 0  # epochs served from disk
        self.misses = 0  # epochs computed (and stored, when at most max_epoch_bytes)
        self.max_epoch_bytes = max_epoch_bytes

    def path(self, epoch: int, spec: str) -> Path:
        return self.folder / f"epoch{epoch:03d}-{spec}.pt"

    def epoch_targets(self, distiller, loader: TensorLoader, dtype: torch.dtype) -> dict:
        """This epoch's targets (``loader.epoch`` set by the trainer): from disk, or computed and stored."""
        path = self.path(loader.epoch, distiller.target_spec(tuple(loader.images.shape[1:])))
        if path.exists():
            try:
                stored = torch.load(path, map_location=loader.device, weights_only=True)
            except Exception:  # a damaged file is recomputed, never trusted
                stored = None
            if fits(stored, epoch_images(loader)):
                self.hits += 1
                return unflatten(stored)
            path.unlink(missing_ok=True)  # damaged, another shape or not finite: recomputed and replaced
        targets = compute_epoch_targets(distiller, loader, dtype)
        self.misses += 1
        flat = {k: v.cpu() for k, v in flatten(targets).items()}
        if sum(t.numel() * t.element_size() for t in flat.values()) > self.max_epoch_bytes:
            return targets  # too large to be worth the disk: computed again by the next run that needs it
        self.folder.mkdir(parents=True, exist_ok=True)
        stream_file = self.folder / "stream.json"
        if not stream_file.exists():
            atomic_write(stream_file, json.dumps(self.stream, indent=1, sort_keys=True, default=str))
        buffer = io.BytesIO()
        torch.save(flat, buffer)
        atomic_write(path, buffer.getvalue())
        return targets


def fits(stored: object, n_images: int) -> bool:
    """A stored epoch of targets is used only when it is a dict of finite float tensors, one row per image."""
    return (
        isinstance(stored, dict)
        and bool(stored)
        and all(
            isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() >= 1 and t.shape[0] == n_images
            and bool(torch.isfinite(t).all())
            for t in stored.values()
        )
    )  # fmt: skip


def compute_epoch_targets(distiller, loader: TensorLoader, dtype: torch.dtype) -> dict:
    """The teacher's targets for every batch of the loader's current epoch, concatenated in batch order.

    The batches and the autocast are those of the training loop, so each target equals what the distiller
    would compute inline for that batch.
    """
    chunks: list[dict] = []
    with torch.no_grad(), autocast(loader.device, dtype):
        for x, _ in loader:
            chunks.append(distiller.teacher_targets(x))
    return {
        k: [torch.cat([c[k][i] for c in chunks]) for i in range(len(v))]
        if isinstance(v, list)
        else torch.cat([c[k] for c in chunks])
        for k, v in chunks[0].items()
    }


def flatten(targets: dict[str, Tensor | list[Tensor]]) -> dict[str, Tensor]:
    """``{"pooled": [a, b]}`` -> ``{"pooled.0": a, "pooled.1": b}`` (what torch.save with weights_only keeps)."""
    out = {}
    for k, v in targets.items():
        if isinstance(v, list):
            out.update({f"{k}.{i}": t for i, t in enumerate(v)})
        else:
            out[k] = v
    return out


def unflatten(stored: dict[str, Tensor]) -> dict[str, Tensor | list[Tensor]]:
    out: dict[str, Tensor | list[Tensor]] = {}
    for k in sorted(stored, key=lambda name: (name.split(".")[0], int(name.split(".")[1]) if "." in name else -1)):
        base, _, index = k.partition(".")
        if index:
            out.setdefault(base, []).append(stored[k])
        else:
            out[base] = stored[k]
    return out
