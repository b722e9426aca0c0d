"""Datasets as uint8 tensors, stratified splits, and a batched on-device augmenting loader.

Pipeline position: **data** -> models -> losses -> distill -> train -> metrics -> plots -> results.
Images are held as ``uint8`` tensors ``(N, C, H, W)`` on the training device; each batch is cropped,
flipped and normalised there in one vectorised step, so no per-sample PIL work runs while training.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist
# CIFAR-100 fine labels in the meta file's order (``fine_label_names``, alphabetical), as torchvision has them.
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can
    castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
    elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster
    man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck
    pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk
    skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger
    tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
)


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
    "cifar100": DatasetInfo(
        classes=CIFAR100_CLASSES,
        in_channels=3,
        image_size=32,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        crop_padding=4,
        hflip=True,
        default_val_size=5000,
        target_accuracy=0.40,
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
    info = dataset_info(name)
    if name in CIFAR_FORMATS:
        return _load_cifar(CIFAR_FORMATS[name], info.num_classes, Path(root), train, download)
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


# --- CIFAR-10 and CIFAR-100: the python-format pickled batches ------------------------------------


@dataclass(frozen=True)
class CifarFormat:
    """Where torchvision unpacks one CIFAR archive and how its pickled batches are laid out."""

    title: str  # the dataset's name in messages
    folder: str  # under the data root
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes  # the batch dict's key for the labels trained on
    torchvision_name: str  # the torchvision.datasets class that downloads it
    archive: str  # its file on https://www.cs.toronto.edu/~kriz/cifar.html


CIFAR_FORMATS: dict[str, CifarFormat] = {
    "cifar10": CifarFormat(
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),  # 10,000 images each
        test_files=("test_batch",),
        label_key=b"labels",
        torchvision_name="CIFAR10",
        archive="cifar-10-python.tar.gz",
    ),
    "cifar100": CifarFormat(
        title="CIFAR-100",
        folder="cifar-100-python",
        train_files=("train",),  # 50,000 images
        test_files=("test",),  # 10,000 images
        label_key=b"fine_labels",  # the 100 classes; b"coarse_labels" holds the 20 superclasses
        torchvision_name="CIFAR100",
        archive="cifar-100-python.tar.gz",
    ),
}
CIFAR_IMAGE_BYTES = 3 * 32 * 32  # one row of a batch's data: 1024 R, then 1024 G, then 1024 B, each row-major


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a Python global outside the few that CIFAR batches contain."""


def _latin1_encoder():
    """A fresh ``_codecs.encode`` for how protocol-2 pickles from Python 3 spell bytes: ``encode(s, 'latin1')``.

    Any other codec is refused: codecs are looked up (and their modules imported) by name, and some decompress.
    Fresh per lookup because a pickle's BUILD opcode can set attributes on the function it is handed.
    """

    def encode(text: str, encoding: str) -> bytes:
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise RefusedGlobal(f"_codecs.encode({type(text).__name__}, {encoding!r})")
        return text.encode("latin1")

    return encode


def _allowed_global(module: str, name: str) -> object | None:
    """The object for ``module.name`` if a genuine or test-written CIFAR batch can name it, else None.

    Real batches were written by Python 2's cPickle (protocol 2): bytes keys, lists of ints and bytes, and one
    uint8 array, which numpy rebuilds as ``_reconstruct(ndarray, (0,), b'b')`` then ``__setstate__`` with a
    ``dtype('u1', False, True)``. Python 3 writes the same at protocol 2, but spells ``bytes`` as
    ``_codecs.encode(text, 'latin1')`` and, on numpy 2, puts ``_reconstruct`` in ``numpy._core``.
    The objects are taken from numpy itself, never imported by the name in the file; numpy's are immutable
    built-in types and functions, which a pickle's BUILD opcode cannot alter.
    """
    reconstruct = np.ndarray.__reduce__(np.zeros(0, np.uint8))[0]  # numpy's own, on numpy 1 and 2 alike
    allowed = {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,  # numpy 1 and Python 2 (the real files)
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,  # numpy 2
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encoder(),
    }
    return allowed.get((module, name))


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of :func:`_allowed_global`: no code from the file runs.

    The plain ``pickle.load`` calls whatever a file names (``os.system``, ``builtins.exec``, ...), so a tampered
    batch in the data folder could run code. Strings from Python 2 stay bytes (``encoding="bytes"``), as the
    batches' keys are.
    """

    def __init__(self, file):
        super().__init__(file, encoding="bytes")

    def find_class(self, module: str, name: str) -> object:
        found = _allowed_global(module, name)
        if found is None:
            raise RefusedGlobal(f"{module}.{name}")
        return found


def cifar_batch_problem(batch: object, label_key: bytes, num_classes: int) -> str:
    """What is wrong with an unpickled CIFAR batch, or '' when it is usable.

    Usable: a dict whose ``b"data"`` is a uint8 array ``(N, 3072)`` with ``N >= 1`` and whose ``label_key``
    holds ``N`` integers in ``[0, num_classes)``.
    """
    if not isinstance(batch, dict):
        return f"it holds a {type(batch).__name__}, not the dict of a CIFAR batch"
    missing = [key for key in (b"data", label_key) if key not in batch]
    if missing:
        return f"its dict lacks the key(s) {', '.join(map(repr, missing))} (it has {', '.join(map(repr, batch))})"
    data, labels = batch[b"data"], batch[label_key]
    if not isinstance(data, np.ndarray):
        return f"b'data' is a {type(data).__name__}, not a numpy array"
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR_IMAGE_BYTES:
        return f"b'data' is a {data.dtype} array of shape {data.shape}, not uint8 of shape (N, {CIFAR_IMAGE_BYTES})"
    if len(data) == 0:
        return "b'data' holds no images"
    if not isinstance(labels, list) or not all(type(y) is int for y in labels):  # bool is an int subclass: refused
        return f"{label_key!r} is not a list of ints"
    if len(labels) != len(data):
        return f"{len(labels)} labels for {len(data)} images"
    low, high = min(labels), max(labels)
    if low < 0 or high >= num_classes:
        return f"labels range over [{low}, {high}], outside [0, {num_classes - 1}]"
    return ""


def read_cifar_batch(path: Path, label_key: bytes, num_classes: int, title: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and check one pickled CIFAR batch: ``(data uint8 (N, 3072), labels int64 (N,))``.

    Every failure is a one-line ``ValueError`` naming the file, what is wrong and what to do.
    """
    fix = f"delete the folder {path.parent} and download {title} again"
    with open(path, "rb") as f:
        try:
            batch = CifarUnpickler(f).load()
        except RefusedGlobal as err:
            raise ValueError(
                f"{path} asks to call {err}, which no {title} batch contains, so it was not loaded "
                f"(the file is damaged or tampered with); {fix}"
            ) from None
        except Exception as err:  # a corrupt pickle raises nearly any built-in error: EOF, bad memo, bad REDUCE ...
            reason = str(err).splitlines()[0] if str(err) else ""
            raise ValueError(f"{path} is not a readable {title} batch ({type(err).__name__}: {reason}); {fix}") from err
    problem = cifar_batch_problem(batch, label_key, num_classes)
    if problem:
        raise ValueError(f"{path} is not a valid {title} batch: {problem}; {fix}")
    return batch[b"data"], np.asarray(batch[label_key], dtype=np.int64)


def _load_cifar(fmt: CifarFormat, num_classes: int, root: Path, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    folder = root / fmt.folder
    names = fmt.train_files if train else fmt.test_files
    failure = ""
    if download and not all((folder / n).exists() for n in names):
        failure = _try_download(fmt.torchvision_name, root, train)
    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"{fmt.title} files {', '.join(missing)} not found in {folder}{failure}; download them with "
            f"network access (torchvision does it on first use) or unpack {fmt.archive} from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html into {root}"
        )
    images, labels = [], []
    for n in names:
        data, batch_labels = read_cifar_batch(folder / n, fmt.label_key, num_classes, fmt.title)
        images.append(data.reshape(-1, 3, 32, 32))  # (N, C, H, W): each row is the R, G, B planes in turn
        labels.append(batch_labels)
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
    dataset: str = "cifar10"  # cifar10 | cifar100 | fashion-mnist | synthetic (the others download via torchvision)
    data_dir: str = field(
        default_factory=lambda: os.environ.get("KD_DATA_DIR") or "./data"
    )  # where datasets live (or are downloaded to); $KD_DATA_DIR when set
    download: bool = True  # fetch through torchvision when files are missing (needs network)
    val_size: int | None = None  # validation images carved from train, stratified; None: the dataset's default_val_size
    train_size: int | None = None  # stratified training subset for quick runs; None: all
    test_size: int | None = None  # stratified test subset; None: all
    labeled_fraction: float = 1.0  # stratified share of training labels used, in (0, 1]; teacher terms see all images
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
