"""The datasets and their files: what each dataset is (``DATASETS``), and readers that load a whole split as
``uint8`` tensors ``(N, C, H, W)``: CIFAR-10/100's pickled batches through a restricted unpickler (no code from
a data folder ever runs), Fashion-MNIST's IDX files (torchvision's layout or Debian's package), and a small
deterministic synthetic set. Splits and batches are ``kd_utils.data``'s.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
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
    if data.dtype == np.uint8 and (data.dtype.hasobject or data.dtype.fields is not None or data.dtype.str != "|u1"):
        return f"b'data' has the dtype {data.dtype!r} (object fields or a forged descriptor), not plain uint8"
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
    if not path.is_file():  # a FIFO would block the read forever
        raise ValueError(f"{path} is not a regular file (a FIFO, device or socket); {fix}")
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
