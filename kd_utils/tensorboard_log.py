"""Per-epoch scalars for TensorBoard (``--tensorboard DIR``; needs the optional ``tensorboard`` package)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

RUN_GROUPS = ("lr", "seconds", "images_per_s")  # scalars about the run itself, not the model


def event_folder(root: str | Path, name: str, seed: int) -> Path:
    """``<root>/<name>-seed<k>-<YYYYmmdd-HHMMSS>``, made new: a replay or a resumed session never writes its
    events into an earlier run's folder (TensorBoard would draw the two as one zig-zag curve)."""
    stem = f"{name}-seed{seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder, k = Path(root) / stem, 1
    while folder.exists():
        k += 1
        folder = Path(root) / f"{stem}-{k}"
    return folder


def tensorboard_logger(
    root: str | None, name: str, seed: int
) -> tuple[Callable[[dict], None] | None, Callable[[], None]]:
    """``(on_epoch, close)``: per-epoch scalars (every loss part, accuracy, F1, lr, images/s) of one run;
    ``(None, no-op)`` without a ``root``."""
    if root is None:
        return None, lambda: None
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(event_folder(root, name, seed)))

    def on_epoch(row: dict) -> None:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, int | float):
                group = "val" if key.startswith("val_") else "train" if key.startswith("train_") else "loss"
                group = "run" if key in RUN_GROUPS else group
                writer.add_scalar(f"{group}/{key}", value, row["epoch"])
        writer.flush()

    return on_epoch, writer.close
