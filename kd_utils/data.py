"""Datasets as uint8 tensors, stratified splits, and a batched on-device augmenting loader.

Pipeline position: **data** -> models -> losses -> distill -> train -> metrics -> plots -> results.
Images are held as ``uint8`` tensors ``(N, C, H, W)`` on the training device; each batch is cropped,
flipped and normalised there in one vectorised step, so no per-sample PIL work runs while training.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about a dataset that the rest of the pipeline needs."""

    classes: tuple[str, ...]
    in_channels: int
    image_size: int
    mean: tuple[float, ...]  # per channel, on the [0, 1] scale
    std: tuple[float, ...]
    crop_padding: int  # pixels of zero padding for the random crop (0: no crop)
    hflip: bool  # horizontal flips keep the label
    default_val_size: int  # images carved from the training set for model selection
    target_accuracy: float  # validation accuracy whose time-to-reach is recorded (teacher and students)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        in_channels=3,
        image_size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        crop_padding=4,
        hflip=True,
        default_val_size=5000,
        target_accuracy=0.75,
    ),
    "fashion-mnist": DatasetInfo(
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),  # fmt: skip
        in_channels=1,
        image_size=28,
        mean=(0.2860,),
        std=(0.3530,),
        crop_padding=2,
        hflip=True,
        default_val_size=5000,
        target_accuracy=0.85,
    ),
    "synthetic": DatasetInfo(
        classes=tuple(f"class_{i}" for i in range(10)),
        in_channels=3,
        image_size=16,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        crop_padding=1,
        hflip=False,
        default_val_size=200,
        target_accuracy=0.9,
    ),
}
SYNTHETIC_SIZES = {True: 1200, False: 400}  # images in the synthetic train / test sets


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; choose from: {', '.join(DATASETS)}")
    return DATASETS[name]


def load_dataset(name: str, root: str | Path, train: bool, download: bool = False) -> tuple[Tensor, Tensor]:
    """Load a whole split as ``(images uint8 (N, C, H, W), labels int64 (N,))``."""
    dataset_info(name)
    if name == "cifar10":
        return _load_cifar10(Path(root), train, download)
    if name == "fashion-mnist":
        return _load_fashion_mnist(Path(root), train, download)
    return make_synthetic(train)


def _try_download(torchvision_name: str, root: Path, train: bool) -> str:
    """Fetch a dataset through torchvision; returns '' or a note on why it failed (e.g. offline)."""
    import torchvision  # only needed for the download itself

    try:
        getattr(torchvision.datasets, torchvision_name)(str(root), train=train, download=True)
    except (OSError, RuntimeError, ValueError) as err:  # URLError is an OSError
        return f" (download failed: {str(err).splitlines()[0] if str(err) else type(err).__name__})"
    return ""


# --- CIFAR-10: the python-format pickled batches -------------------------------------------------

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCHES = ("test_batch",)


def _load_cifar10(root: Path, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    folder = root / CIFAR10_FOLDER
    names = CIFAR10_TRAIN_BATCHES if train else CIFAR10_TEST_BATCHES
    failure = ""
    if download and not all((folder / n).exists() for n in names):
        failure = _try_download("CIFAR10", root, train)
    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 batches {', '.join(missing)} not found in {folder}{failure}; download them with "
            f"network access (torchvision does it on first use) or unpack cifar-10-python.tar.gz from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html into {root}"
        )
    images, labels = [], []
    for n in names:
        with open(folder / n, "rb") as f:
            batch = pickle.load(f, encoding="bytes")  # the official format is a pickled dict
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


# --- Fashion-MNIST: IDX files, torchvision's layout or Debian's package ---------------------------


def _fashion_mnist_dirs(root: Path) -> list[Path]:
    return [root / "FashionMNIST" / "raw", root / "fashion-mnist", root, FASHION_MNIST_SYSTEM_DIR]


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not: big-endian magic, dims, then uint8 data."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _load_fashion_mnist(root: Path, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    prefix = "train" if train else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    failure = ""
    if download and not any(_find_idx(d, stems[0]) for d in _fashion_mnist_dirs(root)):
        failure = _try_download("FashionMNIST", root, train)
    for folder in _fashion_mnist_dirs(root):
        image_path, label_path = (_find_idx(folder, s) for s in stems)
        if image_path and label_path:
            images = torch.from_numpy(read_idx(image_path).copy()).unsqueeze(1)  # (N, 1, 28, 28)
            return images, torch.from_numpy(read_idx(label_path).astype(np.int64))
    looked = ", ".join(str(d) for d in _fashion_mnist_dirs(root))
    raise FileNotFoundError(
        f"Fashion-MNIST files {stems[0]}[.gz] not found (looked in {looked}){failure}; "
        "run `apt-get install dataset-fashion-mnist` or run with network access so torchvision can download them"
    )


# --- Synthetic: small, deterministic and learnable -----------------------------------------------


def make_synthetic(train: bool, num_samples: int | None = None) -> tuple[Tensor, Tensor]:
    """Class templates (smooth random patterns, fixed seed) plus per-image noise and brightness.

    The templates are shared by both splits; the noise differs (seeded by the split), so a model that
    learns the templates generalises from train to test.
    """
    info = DATASETS["synthetic"]
    n = num_samples or SYNTHETIC_SIZES[train]
    c, s, k = info.in_channels, info.image_size, info.num_classes
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(k, c, 4, 4, generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(1 if train else 2)
    labels = torch.arange(n) % k
    labels = labels[torch.randperm(n, generator=g)]
    brightness = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)
    noise = 0.15 * torch.randn(n, c, s, s, generator=g)
    images = (templates[labels] * brightness + noise).clamp(0, 1)
    return (images * 255).round().to(torch.uint8), labels.long()


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
    dataset: str = "cifar10"  # cifar10 | fashion-mnist | synthetic
    data_dir: str = "./data"  # where datasets live (or are downloaded to)
    download: bool = True  # fetch through torchvision when files are missing (needs network)
    val_size: int | None = None  # images carved from train for model selection; None: dataset default
    train_size: int | None = None  # stratified training subset for quick runs; None: all
    test_size: int | None = None  # stratified test subset; None: all
    labeled_fraction: float = 1.0  # stratified fraction of training images whose labels are used
    seed: int = 0  # seeds every split


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


def prepare_data(cfg: DataConfig) -> DataSplits:
    """Load a dataset and split it: validation carved from train, optional subsets, labeled fraction."""
    info = dataset_info(cfg.dataset)
    if not 0 < cfg.labeled_fraction <= 1:
        raise ValueError(f"labeled_fraction must be in (0, 1], got {cfg.labeled_fraction}")
    train_x, train_y = load_dataset(cfg.dataset, cfg.data_dir, train=True, download=cfg.download)
    test_x, test_y = load_dataset(cfg.dataset, cfg.data_dir, train=False, download=cfg.download)
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
        n_labeled = min(len(train_y) - 1, max(info.num_classes, round(cfg.labeled_fraction * len(train_y))))
        unlabeled, _ = stratified_subset(train_y, n_labeled, cfg.seed + 3)
        train_y = train_y.clone()
        train_y[unlabeled] = UNLABELED
    return DataSplits(info, train_x, train_y, val_x, val_y, test_x, test_y)


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


class TensorLoader:
    """Batches from uint8 tensors kept on ``device``; shuffling, crop and flip run once per epoch on the
    whole tensor there (a few vectorised copies), normalisation per batch.

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
    ):
        self.device = torch.device(device)
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
        return images, labels

    def __iter__(self):
        images, labels = self.epoch_tensors()
        images = images.contiguous(memory_format=self.memory_format)  # float batches inherit the layout
        for b in range(len(self)):
            batch = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield torch.addcmul(self.shift, images[batch].float(), self.scale), labels[batch]
