"""Stratified splits of a dataset and a batched on-device augmenting loader.

Pipeline position: datasets -> **data** -> models -> losses -> distill -> train -> metrics -> plots -> results.
Images are held as ``uint8`` tensors ``(N, C, H, W)`` on the training device; each batch is cropped,
flipped and normalised there in one vectorised step, so no per-sample PIL work runs while training.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor

from .datasets import DATASETS, DatasetInfo, dataset_info, load_dataset

# --- Splits ---------------------------------------------------------------------------------------


def stratified_subset(labels: Tensor, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices into ``(rest, chosen)`` with ``len(chosen) == size``, class proportions kept."""
    if not 0 < size < len(labels):
        raise ValueError(f"subset size {size} must be between 1 and {len(labels) - 1}")
    idx = np.arange(len(labels))
    rest, chosen = train_test_split(idx, test_size=size, stratify=labels.numpy(), random_state=seed)
    return torch.from_numpy(np.sort(rest)), torch.from_numpy(np.sort(chosen))


@dataclass
class DataConfig:
    dataset: str = "cifar10"  # cifar10 | cifar100 | fashion-mnist | synthetic (the others download via torchvision)
    data_dir: str = field(
        default_factory=lambda: os.environ.get("KD_DATA_DIR") or "./data"
    )  # where datasets live (or are downloaded to); $KD_DATA_DIR when set
    download: bool = True  # fetch through torchvision when files are missing (needs network)
    val_size: int | None = None  # validation images carved from train, stratified; None: the dataset's default_val_size
    train_size: int | None = None  # stratified training subset for quick runs; None: all
    test_size: int | None = None  # stratified test subset; None: all
    labeled_fraction: float = 1.0  # stratified share of training labels used, in (0, 1]; teacher terms see all images, validation keeps the same share of its images
    seed: int = 0  # seed of the validation split and the subsets (kept fixed across --seeds)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the CLI flag of the first setting that is wrong before any data is read.

        A stratified split puts at least one image of every class on each side, so every subset size must be
        at least the number of classes. Sizes against the splits' real lengths are checked once they are loaded.
        """
        if self.dataset not in DATASETS:
            raise ValueError(f"--dataset {self.dataset}: unknown dataset; choose from: {', '.join(DATASETS)}")
        k = DATASETS[self.dataset].num_classes
        for flag, size in (("--val-size", self.val_size), ("--train-size", self.train_size),
                           ("--test-size", self.test_size)):  # fmt: skip
            if size is not None and size < k:
                raise ValueError(f"{flag} {size}: fewer images than the {k} classes need for a stratified split")
        if not 0 <= self.seed <= 2**32 - 1:
            raise ValueError(f"--split-seed {self.seed}: must be in [0, {2**32 - 1}] (numpy's seed range)")
        if not self.data_dir:
            raise ValueError("--data-dir '': give the folder that holds (or will hold) the datasets")
        fraction = self.labeled_fraction
        if not (math.isfinite(fraction) and 0 < fraction <= 1):
            raise ValueError(
                f"--labeled-fraction {fraction}: must be in (0, 1] (the fraction of training images whose labels "
                "are used; 1 uses them all)"
            )


@dataclass
class DataSplits:
    """Tensors for one study. ``train_y`` holds -100 (ignored by cross-entropy) for unlabeled images."""

    info: DatasetInfo
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor

    @property
    def labeled(self) -> Tensor:
        return self.train_y >= 0

    def labeled_only(self) -> DataSplits:
        """These splits with the training images reduced to the labeled ones: what a labels-only run (the
        baseline, a teacher of the few-label setting) trains on, so that none of its steps is without labels."""
        keep = self.labeled
        if bool(keep.all()):
            return self
        return replace(self, train_x=self.train_x[keep], train_y=self.train_y[keep])

    def sizes(self) -> dict[str, int]:
        return {
            "train": len(self.train_y),
            "labeled": int(self.labeled.sum()),
            "val": len(self.val_y),
            "test": len(self.test_y),
        }


def class_counts(splits: DataSplits) -> dict[str, list[int]]:
    """Images per class in each split (train counts labeled images only)."""
    k = splits.info.num_classes
    return {
        name: torch.bincount(y[y >= 0], minlength=k).tolist()
        for name, y in (("train", splits.train_y), ("val", splits.val_y), ("test", splits.test_y))
    }


UNLABELED = -100  # the default ignore_index of torch's cross-entropy


def _subset_size_problem(size: int, n: int, split: str, k: int, when: str = "") -> str:
    """Why a stratified subset of ``size`` of the ``n`` images in ``split`` (``when``: at which stage) over ``k``
    classes cannot be drawn, or ''.

    ``size == n`` keeps the whole split; otherwise the images left out are a stratified sample too, so
    they must number at least ``k`` (sklearn's ``train_test_split`` needs every class on both sides).
    """
    if size > n:
        return f"the {split} has only {n:,} images{when}"
    if n - k < size < n:
        return (
            f"a stratified subset of the {n:,} images in the {split}{when} leaves out none or at least {k} "
            f"(one per class); use {n:,} or at most {n - k:,}"
        )
    return ""


def check_split_sizes(cfg: DataConfig, n_train: int, n_test: int) -> None:
    """Raise ``ValueError`` naming the flag whose size the loaded splits (``n_train``, ``n_test`` images) cannot give.

    Validation is carved from the ``n_train`` training images and must leave one image per class there;
    ``--train-size`` then draws from what is left, ``--test-size`` from the test split. A size equal to what
    is there keeps it all. Sizes below the number of classes are :meth:`DataConfig.validate`'s to refuse.
    """
    info = dataset_info(cfg.dataset)
    k = info.num_classes
    val_size = info.default_val_size if cfg.val_size is None else cfg.val_size
    if val_size > n_train - k:
        shown = f"{val_size}" if cfg.val_size is not None else f"{val_size} (the default)"
        raise ValueError(
            f"--val-size {shown}: the training split has only {n_train:,} images, and a stratified split must "
            f"leave {k} of them (one per class) for training; use at most {n_train - k:,}"
        )
    checks = (("--train-size", cfg.train_size, n_train - val_size, "training split", " after validation"),
              ("--test-size", cfg.test_size, n_test, "test split", ""))  # fmt: skip
    for flag, size, n, split, when in checks:
        problem = "" if size is None else _subset_size_problem(size, n, split, k, when)
        if problem:
            raise ValueError(f"{flag} {size}: {problem}")


def prepare_data(cfg: DataConfig) -> DataSplits:
    """Load a dataset and split it: validation carved from train, optional subsets, labeled fraction."""
    cfg.validate()
    info = dataset_info(cfg.dataset)
    train_x, train_y = load_dataset(cfg.dataset, cfg.data_dir, train=True, download=cfg.download)
    test_x, test_y = load_dataset(cfg.dataset, cfg.data_dir, train=False, download=cfg.download)
    check_split_sizes(cfg, len(train_y), len(test_y))
    val_size = info.default_val_size if cfg.val_size is None else cfg.val_size
    rest, val = stratified_subset(train_y, val_size, cfg.seed)
    val_x, val_y = train_x[val], train_y[val]
    train_x, train_y = train_x[rest], train_y[rest]
    if cfg.train_size is not None and cfg.train_size < len(train_y):
        _, keep = stratified_subset(train_y, cfg.train_size, cfg.seed + 1)
        train_x, train_y = train_x[keep], train_y[keep]
    if cfg.test_size is not None and cfg.test_size < len(test_y):
        _, keep = stratified_subset(test_y, cfg.test_size, cfg.seed + 2)
        test_x, test_y = test_x[keep], test_y[keep]
    if cfg.labeled_fraction < 1:
        # at least one labeled and one unlabeled image per class, as the stratified split needs
        n_labeled = min(
            len(train_y) - info.num_classes, max(info.num_classes, round(cfg.labeled_fraction * len(train_y)))
        )
        unlabeled, _ = stratified_subset(train_y, n_labeled, cfg.seed + 3)
        train_y = train_y.clone()
        train_y[unlabeled] = UNLABELED
        # a user with a fraction f of the labels has f of the validation labels too: selection sees no more
        n_val = min(len(val_y) - info.num_classes, max(info.num_classes, round(cfg.labeled_fraction * len(val_y))))
        _, keep = stratified_subset(val_y, n_val, cfg.seed + 4)
        val_x, val_y = val_x[keep], val_y[keep]
    return DataSplits(info, train_x, train_y, val_x, val_y, test_x, test_y)


FEW_LABEL_PROTOCOL = 2  # names few-label runs made since 2026-12-01: labeled-only epochs for labels-only runs,
# validation at the same fraction (protocol 1, the stored study's: every epoch walked all images, full validation)


def data_shaping(cfg: DataConfig, keys: tuple[str, ...]) -> dict:
    """The data settings that name a run's folder: ``keys``, and for a few-label run its protocol, so a run of
    the earlier protocol is never resumed or reloaded as one of this one (full-label runs keep their names)."""
    shaped = {k: getattr(cfg, k) for k in keys}
    if cfg.labeled_fraction < 1:
        shaped["few_label_protocol"] = FEW_LABEL_PROTOCOL
    return shaped


# --- Batches --------------------------------------------------------------------------------------


def translate(x: Tensor, offsets: Tensor, padding: int, dim: int) -> Tensor:
    """Shift image ``i`` of ``x`` by ``offsets[i] - padding`` pixels along ``dim``, filling with zeros.

    One contiguous slice copy per possible offset (2p + 1 of them) for the whole tensor: far cheaper than
    a per-pixel gather on CPUs and GPUs alike.
    """
    out = torch.zeros_like(x)
    size = x.shape[dim]
    for offset in range(2 * padding + 1):
        idx = (offsets == offset).nonzero().flatten().to(x.device)
        shift = offset - padding  # out[..., j] = x[..., j + shift]
        if len(idx) == 0 or abs(shift) >= size:
            continue
        src = x.index_select(0, idx)
        dst = torch.zeros_like(src)
        dst.narrow(dim, max(0, -shift), size - abs(shift)).copy_(src.narrow(dim, max(0, shift), size - abs(shift)))
        out.index_copy_(0, idx, dst)
    return out


def random_crop(x: Tensor, padding: int, g: torch.Generator) -> Tensor:
    """Random crop of the zero-padded image = a random translation by up to +-padding pixels per axis."""
    offsets = torch.randint(0, 2 * padding + 1, (2, len(x)), generator=g)
    return translate(translate(x, offsets[0], padding, dim=2), offsets[1], padding, dim=3)


def random_hflip(x: Tensor, g: torch.Generator) -> Tensor:
    """Mirror a random half of the images (in place)."""
    idx = (torch.rand(len(x), generator=g) < 0.5).nonzero().flatten().to(x.device)
    return x.index_copy_(0, idx, x.index_select(0, idx).flip(3))


def random_erasing(x: Tensor, p: float, fill: Tensor, g: torch.Generator) -> Tensor:
    """Random erasing (Zhong et al. 2020): with probability ``p`` an image gets one rectangle of area 2-33% and
    aspect ratio 0.3-3.3 (log-uniform) set to ``fill`` (the mean pixel, i.e. 0 after normalisation).

    Vectorised over the batch with one mask; sides are clipped to the image instead of re-drawn.
    """
    n, _, h, w = x.shape
    area = (0.02 + 0.31 * torch.rand(n, generator=g)) * h * w
    ratio = torch.exp(math.log(0.3) + (math.log(3.3) - math.log(0.3)) * torch.rand(n, generator=g))
    eh = (area * ratio).sqrt().round().clamp(1, h).long()
    ew = (area / ratio).sqrt().round().clamp(1, w).long()
    top = (torch.rand(n, generator=g) * (h - eh + 1)).long()
    left = (torch.rand(n, generator=g) * (w - ew + 1)).long()
    erase = torch.rand(n, generator=g) < p
    rows, cols = torch.arange(h), torch.arange(w)
    in_rows = (rows[None] >= top[:, None]) & (rows[None] < (top + eh)[:, None])  # (N, H)
    in_cols = (cols[None] >= left[:, None]) & (cols[None] < (left + ew)[:, None])  # (N, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :] & erase[:, None, None]).unsqueeze(1).to(x.device)
    return torch.where(mask, fill, x)


class TensorLoader:
    """Batches from uint8 tensors kept on ``device``; shuffling, crop, flip (and random erasing) run once per
    epoch on the whole tensor there (a few vectorised copies), normalisation per batch.

    The order and the augmentation of epoch ``e`` depend only on ``(seed, e)``, so a resumed run sees
    exactly the batches an uninterrupted one would.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        info: DatasetInfo,
        batch_size: int,
        device: str | torch.device = "cpu",
        train: bool = False,
        seed: int = 0,
        channels_last: bool = False,
        random_erasing: float = 0.0,
    ):
        self.device = torch.device(device)
        self.random_erasing = random_erasing  # probability per training image
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.info = info
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        mean = torch.tensor(info.mean, device=self.device).view(1, -1, 1, 1) * 255
        std = torch.tensor(info.std, device=self.device).view(1, -1, 1, 1) * 255
        self.scale, self.shift = 1 / std, -mean / std  # x_norm = x * scale + shift = (x - mean) / std
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.train and n >= self.batch_size else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_tensors(self) -> tuple[Tensor, Tensor]:
        """This epoch's images (shuffled and augmented when training, uint8) and labels."""
        if not self.train:
            return self.images, self.labels
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.labels), generator=g).to(self.device)
        images, labels = self.images[order], self.labels[order]
        if self.info.crop_padding > 0:
            images = random_crop(images, self.info.crop_padding, g)
        if self.info.hflip:
            images = random_hflip(images, g)
        if self.random_erasing > 0:
            fill = (torch.tensor(self.info.mean, device=self.device) * 255).round().to(torch.uint8).view(1, -1, 1, 1)
            images = random_erasing(images, self.random_erasing, fill, g)
        return images, labels

    def __iter__(self):
        images, labels = self.epoch_tensors()
        images = images.contiguous(memory_format=self.memory_format)  # float batches inherit the layout
        for b in range(len(self)):
            batch = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield torch.addcmul(self.shift, images[batch].float(), self.scale), labels[batch]
