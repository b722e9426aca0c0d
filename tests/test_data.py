"""Dataset readers on files in the real on-disk formats, splits, and the batched augmenting loader."""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import re
import shlex
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CIFAR100_TEST, CIFAR100_TRAIN, cifar100_file, py2_cpickle  # the shared builders

from kd_utils.data import UNLABELED, DataConfig, TensorLoader, prepare_data, stratified_subset
from kd_utils.datasets import DATASETS, FASHION_MNIST_SYSTEM_DIR, load_dataset, make_synthetic, read_idx

# --- CIFAR-10: python-format pickled batches ------------------------------------------------------

CIFAR_TRAIN_PER_BATCH = 3
CIFAR_TEST = 4


def cifar_batch(n: int, first_label: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)  # row: 1024 R, 1024 G, 1024 B, row-major 32x32
    return {
        b"batch_label": b"fixture batch",
        b"labels": [(first_label + i) % 10 for i in range(n)],
        b"data": data,
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
    }


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        batch = cifar_batch(CIFAR_TRAIN_PER_BATCH, first_label=i, seed=i)
        if i == 1:
            batch[b"data"][0, 0 * 1024 + 0 * 32 + 1] = 201  # image 0, R channel, row 0, col 1
            batch[b"data"][0, 1 * 1024 + 5 * 32 + 7] = 77  # image 0, G channel, row 5, col 7
            batch[b"data"][0, 2 * 1024 + 31 * 32 + 0] = 13  # image 0, B channel, row 31, col 0
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch, f, protocol=2)
    test = cifar_batch(CIFAR_TEST, first_label=0, seed=99)
    test[b"data"][CIFAR_TEST - 1, 2 * 1024 + 2 * 32 + 3] = 250  # last test image, B channel, row 2, col 3
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(test, f, protocol=2)
    meta = {b"label_names": [c.encode() for c in DATASETS["cifar10"].classes], b"num_cases_per_batch": 10000}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return tmp_path


def test_cifar10_train_reader(cifar_root):
    images, labels = load_dataset("cifar10", cifar_root, train=True)
    assert images.dtype == torch.uint8 and images.shape == (5 * CIFAR_TRAIN_PER_BATCH, 3, 32, 32)
    assert labels.dtype == torch.int64 and labels.shape == (5 * CIFAR_TRAIN_PER_BATCH,)
    assert images[0, 0, 0, 1] == 201
    assert images[0, 1, 5, 7] == 77
    assert images[0, 2, 31, 0] == 13
    # batches are concatenated in order 1..5, each keeping its own label order
    expected_labels = [(b + i) % 10 for b in range(1, 6) for i in range(CIFAR_TRAIN_PER_BATCH)]
    assert labels.tolist() == expected_labels
    raw = cifar_batch(CIFAR_TRAIN_PER_BATCH, first_label=2, seed=2)[b"data"]  # batch 2 as written
    assert torch.equal(images[CIFAR_TRAIN_PER_BATCH + 1], torch.from_numpy(raw[1].reshape(3, 32, 32)))


def test_cifar10_test_reader(cifar_root):
    images, labels = load_dataset("cifar10", cifar_root, train=False)
    assert images.dtype == torch.uint8 and images.shape == (CIFAR_TEST, 3, 32, 32)
    assert labels.dtype == torch.int64 and labels.tolist() == list(range(CIFAR_TEST))
    assert images[CIFAR_TEST - 1, 2, 2, 3] == 250


def test_cifar10_missing_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("cifar10", tmp_path, train=True, download=False)
    assert str(tmp_path / "cifar-10-batches-py") in str(info.value)
    assert "data_batch_1" in str(info.value)
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_cifar10_missing_test_batch_only(cifar_root):
    (cifar_root / "cifar-10-batches-py" / "test_batch").unlink()
    load_dataset("cifar10", cifar_root, train=True)  # train batches are still there
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load_dataset("cifar10", cifar_root, train=False)


def test_unknown_dataset_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'mnist'") as info:
        load_dataset("mnist", tmp_path, train=True)
    assert all(name in str(info.value) for name in DATASETS)


# --- Fashion-MNIST: IDX files ---------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def fashion_root(tmp_path: Path) -> tuple[Path, dict]:
    raw = tmp_path / "FashionMNIST" / "raw"
    rng = np.random.default_rng(0)
    arrays = {
        "train": (rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), np.array([0, 1, 2, 3, 4, 9], dtype=np.uint8)),
        "t10k": (rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), np.array([7, 8, 9], dtype=np.uint8)),
    }
    arrays["train"][0][0, 3, 20] = 123
    write_idx(raw / "train-images-idx3-ubyte", arrays["train"][0], gz=True)  # gzipped, as downloaded
    write_idx(raw / "train-labels-idx1-ubyte", arrays["train"][1], gz=True)
    write_idx(raw / "t10k-images-idx3-ubyte", arrays["t10k"][0], gz=False)  # plain, as torchvision unpacks
    write_idx(raw / "t10k-labels-idx1-ubyte", arrays["t10k"][1], gz=False)
    return tmp_path, arrays


@pytest.mark.parametrize("train", [True, False])
def test_fashion_mnist_reader(fashion_root, train):
    root, arrays = fashion_root
    expected_x, expected_y = arrays["train" if train else "t10k"]
    images, labels = load_dataset("fashion-mnist", root, train=train)
    assert images.dtype == torch.uint8 and images.shape == (len(expected_y), 1, 28, 28)
    assert labels.dtype == torch.int64 and labels.tolist() == expected_y.tolist()
    assert torch.equal(images[:, 0], torch.from_numpy(expected_x))
    if train:
        assert images[0, 0, 3, 20] == 123


def test_read_idx_rejects_non_uint8(tmp_path):
    path = tmp_path / "bad-idx"
    path.write_bytes(struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 1) + b"\0\0\0\0")  # float32 IDX
    with pytest.raises(ValueError, match="uint8"):
        read_idx(path)


def test_fashion_mnist_from_the_system_package(tmp_path):
    if not FASHION_MNIST_SYSTEM_DIR.exists():
        pytest.skip(f"{FASHION_MNIST_SYSTEM_DIR} not installed (apt-get install dataset-fashion-mnist)")
    images, labels = load_dataset("fashion-mnist", tmp_path / "empty", train=False)
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (10000,) and labels.dtype == torch.int64
    assert torch.bincount(labels, minlength=10).tolist() == [1000] * 10


# --- Synthetic ------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_uint8_and_balanced():
    x1, y1 = make_synthetic(train=True)
    x2, y2 = make_synthetic(train=True)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    info = DATASETS["synthetic"]
    assert x1.dtype == torch.uint8 and x1.shape == (1200, info.in_channels, info.image_size, info.image_size)
    assert y1.dtype == torch.int64
    counts = torch.bincount(y1, minlength=10)
    assert counts.min() >= 0.9 * counts.float().mean() and counts.max() <= 1.1 * counts.float().mean()
    x_test, _ = make_synthetic(train=False)
    assert x_test.shape[0] == 400
    assert not torch.equal(x_test[:10], x1[:10])  # the noise differs between the splits
    assert int(x1.max()) > 200 and int(x1.min()) < 50  # the uint8 range is used


def test_synthetic_num_samples():
    x, y = make_synthetic(train=True, num_samples=30)
    assert x.shape[0] == 30 and torch.bincount(y, minlength=10).tolist() == [3] * 10


# --- Splits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_stratified_subset_is_a_stratified_partition(seed):
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    rest, chosen = stratified_subset(labels, 20, seed)
    assert len(chosen) == 20 and len(rest) == 80
    assert set(rest.tolist()).isdisjoint(chosen.tolist())
    assert sorted(rest.tolist() + chosen.tolist()) == list(range(100))
    counts = torch.bincount(labels[chosen], minlength=3)
    for c, expected in enumerate([10, 6, 4]):  # 20% of each class
        assert abs(int(counts[c]) - expected) <= 1


def test_stratified_subset_seeds():
    labels = torch.arange(200) % 10
    _, a = stratified_subset(labels, 50, 0)
    _, b = stratified_subset(labels, 50, 0)
    _, c = stratified_subset(labels, 50, 1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("size", [0, 100])
def test_stratified_subset_rejects_bad_size(size):
    with pytest.raises(ValueError, match="subset size"):
        stratified_subset(torch.arange(100) % 10, size, 0)


def test_prepare_data_default_synthetic_sizes(synthetic_splits):
    assert synthetic_splits.sizes() == {"train": 1000, "labeled": 1000, "val": 200, "test": 400}
    assert synthetic_splits.train_x.dtype == torch.uint8
    assert torch.bincount(synthetic_splits.val_y, minlength=10).tolist() == [20] * 10


def test_prepare_data_train_and_val_are_disjoint():
    # Which training images became validation images, read off the index sets (image contents may repeat).
    _, all_y = load_dataset("synthetic", ".", train=True)
    rest, val = stratified_subset(all_y, 200, seed=0)
    assert set(rest.tolist()).isdisjoint(val.tolist())
    assert len(rest) + len(val) == len(all_y) == len(set(rest.tolist()) | set(val.tolist()))
    data = prepare_data(DataConfig(dataset="synthetic", seed=0))
    all_x, _ = load_dataset("synthetic", ".", train=True)
    assert torch.equal(data.val_x, all_x[val]) and torch.equal(data.val_y, all_y[val])
    assert torch.equal(data.train_x, all_x[rest]) and torch.equal(data.train_y, all_y[rest])


def test_prepare_data_same_seed_same_split_other_seed_other_split():
    a = prepare_data(DataConfig(dataset="synthetic", seed=0))
    b = prepare_data(DataConfig(dataset="synthetic", seed=0))
    c = prepare_data(DataConfig(dataset="synthetic", seed=1))
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_x, b.train_x)
    assert not torch.equal(a.val_x, c.val_x)
    assert torch.equal(a.test_x, c.test_x)  # the test set is never re-split without test_size


def test_prepare_data_subsets_have_requested_sizes():
    data = prepare_data(DataConfig(dataset="synthetic", val_size=100, train_size=300, test_size=50))
    assert data.sizes() == {"train": 300, "labeled": 300, "val": 100, "test": 50}
    assert torch.bincount(data.train_y, minlength=10).tolist() == [30] * 10
    assert torch.bincount(data.test_y, minlength=10).tolist() == [5] * 10


def test_prepare_data_labeled_fraction_is_stratified():
    data = prepare_data(DataConfig(dataset="synthetic", labeled_fraction=0.1))
    assert data.sizes()["train"] == 1000 and data.sizes()["labeled"] == 100
    assert int((data.train_y == UNLABELED).sum()) == 900
    assert set(data.train_y.tolist()) == set(range(10)) | {UNLABELED}
    assert torch.bincount(data.train_y[data.labeled], minlength=10).tolist() == [10] * 10
    full = prepare_data(DataConfig(dataset="synthetic"))
    assert torch.equal(data.train_x, full.train_x)  # only the labels are hidden
    assert torch.equal(data.train_y[data.labeled], full.train_y[data.labeled])
    # validation keeps the same fraction of its images (all labeled), stratified: a few-label user's budget
    assert len(data.val_y) == 20 and torch.bincount(data.val_y, minlength=10).tolist() == [2] * 10


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_prepare_data_rejects_bad_labeled_fraction(fraction):
    with pytest.raises(ValueError, match="--labeled-fraction"):
        prepare_data(DataConfig(dataset="synthetic", labeled_fraction=fraction))


# --- TensorLoader ---------------------------------------------------------------------------------


def normalised(images: torch.Tensor, info) -> torch.Tensor:
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def test_eval_loader_returns_everything_in_order_normalised(synthetic_splits):
    info = synthetic_splits.info
    x_all, y_all = synthetic_splits.test_x[:70], synthetic_splits.test_y[:70]
    loader = TensorLoader(x_all, y_all, info, batch_size=32)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [len(y) for _, y in batches] == [32, 32, 6]
    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    assert xs.dtype == torch.float32 and xs.shape == (70, 3, 16, 16)
    assert torch.equal(ys, y_all)
    torch.testing.assert_close(xs, normalised(x_all, info), rtol=1e-5, atol=1e-5)
    assert list(loader)[0][0].shape == (32, 3, 16, 16)  # iterating again starts over


def test_train_loader_order_depends_on_seed_and_epoch(plain_info):
    n = 100
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    labels = torch.arange(n)  # the labels reveal the order

    def order(seed: int, epoch: int) -> list[int]:
        loader = TensorLoader(images, labels, plain_info, batch_size=16, train=True, seed=seed)
        loader.set_epoch(epoch)
        return torch.cat([y for _, y in loader]).tolist()

    first = order(0, 1)
    assert len(first) == 96  # 6 full batches; the last partial batch is dropped when training
    assert len(set(first)) == 96
    assert first == order(0, 1)
    assert first != order(0, 2)
    assert first != order(1, 1)
    assert first != sorted(first)  # shuffled
    loader = TensorLoader(images, labels, plain_info, batch_size=16, train=True)
    for x, y in loader:
        assert x.dtype == torch.float32 and x.shape == (16, 3, 2, 2)
        torch.testing.assert_close(x, normalised(images[y], plain_info), rtol=1e-5, atol=1e-5)


def test_augmentation_is_a_shift_and_maybe_a_flip(plain_info):
    p = 2
    info = dataclasses.replace(plain_info, crop_padding=p, hflip=True)
    image = (torch.arange(3 * 8 * 8) % 250 + 1).to(torch.uint8).view(1, 3, 8, 8)  # every pixel distinct, never 0
    n = 128
    loader = TensorLoader(
        image.expand(n, -1, -1, -1).contiguous(), torch.zeros(n, dtype=torch.long), info, n, train=True
    )
    (x, _) = next(iter(loader))
    padded = torch.nn.functional.pad(image[0], (p, p, p, p))  # zero padding, (3, 12, 12)
    candidates = {}
    for dy in range(2 * p + 1):
        for dx in range(2 * p + 1):
            crop = padded[:, dy : dy + 8, dx : dx + 8]
            candidates[(dy - p, dx - p, False)] = crop
            candidates[(dy - p, dx - p, True)] = crop.flip(2)
    cand = normalised(torch.stack(list(candidates.values())), info)  # (50, 3, 8, 8)
    seen = set()
    keys = list(candidates)
    for img in x:
        matches = [k for k, c in zip(keys, cand) if torch.allclose(img, c, atol=1e-5)]
        assert matches, "an augmented image is not a shifted (or flipped) copy of the original"
        seen.add(matches[0])
    assert len(seen) > 10  # many different shifts are drawn
    assert {k[2] for k in seen} == {False, True}  # both flipped and unflipped
    assert {k[0] for k in seen} == set(range(-p, p + 1))  # every vertical shift occurs


def test_augmentation_is_reproducible_per_epoch(synthetic_splits):
    def first_batch(epoch: int) -> torch.Tensor:
        loader = TensorLoader(
            synthetic_splits.train_x, synthetic_splits.train_y, synthetic_splits.info, 64, train=True, seed=3
        )
        loader.set_epoch(epoch)
        return next(iter(loader))[0]

    assert torch.equal(first_batch(2), first_batch(2))
    assert not torch.equal(first_batch(2), first_batch(3))


# --- CIFAR batches are read without running code from the data folder, and checked ---------------


def test_py2_cpickle_writes_what_plain_pickle_reads():
    batch = {b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), b"labels": [3, 300], b"name": b"x"}
    raw = py2_cpickle(batch)
    assert raw.startswith(b"\x80\x02}(U\x04datacnumpy.core.multiarray\n_reconstruct\n")  # real files, less memo ops
    loaded = pickle.loads(raw, encoding="bytes")
    assert loaded[b"labels"] == [3, 300] and loaded[b"name"] == b"x"
    assert loaded[b"data"].dtype == np.uint8 and np.array_equal(loaded[b"data"], batch[b"data"])


def test_cifar100_facts():
    info = DATASETS["cifar100"]
    assert info.num_classes == len(set(info.classes)) == 100
    assert list(info.classes) == sorted(info.classes)  # the meta file's fine_label_names are alphabetical
    assert info.classes[:3] == ("apple", "aquarium_fish", "baby") and info.classes[-1] == "worm"
    assert info.classes.index("lawn_mower") == 41 and info.classes.index("sweet_pepper") == 83
    assert (info.in_channels, info.image_size, info.crop_padding, info.hflip) == (3, 32, 4, True)
    assert (info.default_val_size, info.target_accuracy) == (5000, 0.40)


@pytest.mark.parametrize("train", [True, False])
def test_cifar100_reader_uses_the_fine_labels(cifar100_root, train):
    images, labels = load_dataset("cifar100", cifar100_root, train=train, download=False)
    n, seed = (CIFAR100_TRAIN, 1) if train else (CIFAR100_TEST, 2)
    expected = cifar100_file(n, seed)
    assert images.dtype == torch.uint8 and images.shape == (n, 3, 32, 32)
    assert labels.dtype == torch.int64 and labels.tolist() == expected[b"fine_labels"]
    assert labels.tolist() != expected[b"coarse_labels"]
    if train:
        assert images[5, 1, 3, 30] == 222
        expected[b"data"][5, 1 * 1024 + 3 * 32 + 30] = 222
    assert torch.equal(images, torch.from_numpy(expected[b"data"].reshape(n, 3, 32, 32)))


def test_prepare_data_on_cifar100(cifar100_root):
    data = prepare_data(DataConfig(dataset="cifar100", data_dir=str(cifar100_root), download=False, val_size=100))
    assert data.info.num_classes == 100
    assert data.sizes() == {"train": 100, "labeled": 100, "val": 100, "test": 100}
    assert torch.bincount(data.val_y, minlength=100).tolist() == [1] * 100  # stratified: one of each class
    assert torch.bincount(data.train_y, minlength=100).tolist() == [1] * 100
    assert data.train_x.shape == (100, 3, 32, 32)


def test_cifar100_missing_downloads_through_torchvision(tmp_path, monkeypatch):
    import torchvision

    calls = []

    def offline(root, train, download):
        calls.append((root, train, download))
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("cifar100", tmp_path, train=True, download=True)
    assert calls == [(str(tmp_path), True, True)]
    message = str(info.value)
    assert str(tmp_path / "cifar-100-python") in message and "train" in message
    assert "download failed: no network" in message and "cifar-100-python.tar.gz" in message


class ShellPayload:
    """Unpickling this runs ``touch path`` through ``os.system``."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.path))}",)


class ExecPayload:
    """Unpickling this writes ``path`` through the builtin ``exec``."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return exec, (f"open({str(self.path)!r}, 'w').close()",)


PAYLOADS = {  # payload class -> the global its protocol-2 pickle names
    ShellPayload: f"{os.system.__module__}.system",  # posix.system on Linux
    ExecPayload: "__builtin__.exec",  # protocol 2 writes Python 2's module name
}
TAMPERED_FILES = {"cifar10": "cifar-10-batches-py/data_batch_1", "cifar100": "cifar-100-python/train"}


@pytest.mark.parametrize("payload", list(PAYLOADS), ids=lambda p: p.__name__)
@pytest.mark.parametrize("dataset", list(TAMPERED_FILES))
def test_a_tampered_batch_runs_no_code(request, tmp_path, payload, dataset):
    root = request.getfixturevalue("cifar_root" if dataset == "cifar10" else "cifar100_root")
    live = tmp_path / "live-sentinel"
    pickle.loads(pickle.dumps(payload(live), protocol=2))
    assert live.exists(), "the payload does not work, so the test below proves nothing"

    sentinel = tmp_path / "SENTINEL"
    path = root / TAMPERED_FILES[dataset]
    label_key = b"labels" if dataset == "cifar10" else b"fine_labels"
    with open(path, "wb") as f:
        pickle.dump({b"data": payload(sentinel), label_key: [0]}, f, protocol=2)
    with pytest.raises(ValueError) as info:
        load_dataset(dataset, root, train=True, download=False)
    message = str(info.value)
    assert not sentinel.exists()
    assert len(message.splitlines()) == 1
    assert str(path) in message and PAYLOADS[payload] in message
    title = "CIFAR-10" if dataset == "cifar10" else "CIFAR-100"
    assert f"delete the folder {path.parent} and download {title} again" in message


def test_only_the_latin1_codec_is_allowed(cifar_root):
    path = cifar_root / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R.")
    assert pickle.loads(path.read_bytes()) == "nop"  # what the plain unpickler would have run
    with pytest.raises(ValueError, match=r"_codecs\.encode\(str, 'rot13'\)"):
        load_dataset("cifar10", cifar_root, train=True)


def valid_batch_bytes() -> bytes:
    return pickle.dumps(cifar_batch(CIFAR_TRAIN_PER_BATCH, first_label=1, seed=1), protocol=2)


def with_batch(**changes) -> bytes:
    batch = cifar_batch(CIFAR_TRAIN_PER_BATCH, first_label=1, seed=1)
    batch.update({k.encode(): v for k, v in changes.items()})
    return pickle.dumps(batch, protocol=2)


BROKEN_BATCHES = {  # name -> (file contents, what the message says)
    "garbage": (b"\x00\x17 this is not a pickle \xff" * 8, "not a readable CIFAR-10 batch"),
    "truncated": (valid_batch_bytes()[: len(valid_batch_bytes()) // 2], "not a readable CIFAR-10 batch"),
    "empty": (b"", "not a readable CIFAR-10 batch (EOFError"),
    "not a dict": (pickle.dumps([1, 2, 3], protocol=2), "it holds a list"),
    "no labels": (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8)}, protocol=2), "lacks the key(s) b'labels'"),
    "int64 data": (with_batch(data=np.zeros((3, 3072), np.int64)), "int64 array of shape (3, 3072)"),
    "3071 columns": (with_batch(data=np.zeros((3, 3071), np.uint8)), "uint8 array of shape (3, 3071)"),
    "flat data": (with_batch(data=np.zeros(3 * 3072, np.uint8)), "shape (9216,)"),
    "data as bytes": (with_batch(data=bytes(3 * 3072)), "b'data' is a bytes"),
    "no images": (py2_cpickle({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}), "holds no images"),
    "label 10": (with_batch(labels=[0, 10, 3]), "labels range over [0, 10], outside [0, 9]"),
    "label -1": (with_batch(labels=[0, -1, 3]), "labels range over [-1, 3]"),
    "float labels": (with_batch(labels=[0.0, 1.0, 2.0]), "b'labels' is not a list of ints"),
    "2 labels": (with_batch(labels=[0, 1]), "2 labels for 3 images"),
}


@pytest.mark.parametrize("name", list(BROKEN_BATCHES))
def test_a_broken_batch_is_one_line_naming_the_file_and_the_fix(cifar_root, name):
    contents, needle = BROKEN_BATCHES[name]
    path = cifar_root / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(contents)
    with pytest.raises(ValueError) as info:
        load_dataset("cifar10", cifar_root, train=True)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(str(path)) and needle in message, message
    assert message.endswith(f"delete the folder {path.parent} and download CIFAR-10 again")
    load_dataset("cifar10", cifar_root, train=False)  # the test batch is untouched and still loads


def test_cifar100_file_with_cifar10_labels_is_refused(cifar100_root):
    path = cifar100_root / "cifar-100-python" / "test"
    path.write_bytes(valid_batch_bytes())  # a CIFAR-10 batch: b"labels", no b"fine_labels"
    with pytest.raises(ValueError, match=r"lacks the key\(s\) b'fine_labels'.*download CIFAR-100 again"):
        load_dataset("cifar100", cifar100_root, train=False)


# --- Settings are checked before data is loaded, naming the CLI flag ------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"dataset": "mnist"},
            "--dataset mnist: unknown dataset; choose from: cifar10, cifar100, fashion-mnist, synthetic",
        ),
        ({"val_size": 5}, "--val-size 5: fewer images than the 10 classes need for a stratified split"),
        ({"train_size": 9}, "--train-size 9: fewer images than the 10 classes need for a stratified split"),
        ({"test_size": 0}, "--test-size 0: fewer images than the 10 classes need for a stratified split"),
        ({"dataset": "cifar100", "val_size": 99}, "--val-size 99: fewer images than the 100 classes need"),
        ({"labeled_fraction": 0.0}, "--labeled-fraction 0.0: must be in (0, 1]"),
        ({"labeled_fraction": 1.5}, "--labeled-fraction 1.5: must be in (0, 1]"),
        ({"labeled_fraction": float("nan")}, "--labeled-fraction nan: must be in (0, 1]"),
        ({"labeled_fraction": float("inf")}, "--labeled-fraction inf: must be in (0, 1]"),
    ],
)
def test_data_config_validate_names_the_flag(changes, message):
    cfg = DataConfig(**{"dataset": "synthetic", **changes})
    with pytest.raises(ValueError) as info:
        cfg.validate()
    assert str(info.value).startswith(message), str(info.value)
    with pytest.raises(ValueError, match=re.escape(message)):
        prepare_data(cfg)  # refused before anything is loaded


def test_data_config_validate_accepts_the_smallest_sizes():
    DataConfig(dataset="synthetic", val_size=10, train_size=10, test_size=10, labeled_fraction=1.0).validate()
    DataConfig(dataset="cifar100", labeled_fraction=1e-6).validate()


@pytest.mark.parametrize(
    ("sizes", "message"),
    [  # synthetic: 1200 training images (200 go to validation by default), 400 test images, 10 classes
        ({"train_size": 1500}, "--train-size 1500: the training split has only 1,000 images after validation"),
        ({"test_size": 401}, "--test-size 401: the test split has only 400 images"),
        ({"val_size": 1191}, "--val-size 1191: the training split has only 1,200 images, and a stratified split"),
        (
            {"train_size": 995},
            "--train-size 995: a stratified subset of the 1,000 images in the training split after validation "
            "leaves out none or at least 10 (one per class); use 1,000 or at most 990",
        ),
        ({"val_size": 300, "train_size": 901}, "--train-size 901: the training split has only 900 images after"),
    ],
)
def test_prepare_data_names_the_flag_whose_size_the_splits_lack(sizes, message):
    with pytest.raises(ValueError) as info:
        prepare_data(DataConfig(dataset="synthetic", **sizes))
    assert str(info.value).startswith(message), str(info.value)


def test_prepare_data_default_val_size_larger_than_the_data(cifar_root):
    with pytest.raises(ValueError) as info:
        prepare_data(DataConfig(dataset="cifar10", data_dir=str(cifar_root), download=False))
    assert str(info.value) == (
        "--val-size 5000 (the default): the training split has only 15 images, and a stratified split must leave "
        "10 of them (one per class) for training; use at most 5"
    )


def test_prepare_data_sizes_at_the_limits():
    data = prepare_data(DataConfig(dataset="synthetic", val_size=1190, train_size=10, test_size=400))
    assert data.sizes() == {"train": 10, "labeled": 10, "val": 1190, "test": 400}
    data = prepare_data(DataConfig(dataset="synthetic", train_size=1000, test_size=390))  # all / all but 10
    assert data.sizes() == {"train": 1000, "labeled": 1000, "val": 200, "test": 390}


def test_prepare_data_labeled_fraction_near_one_leaves_one_unlabeled_per_class():
    data = prepare_data(DataConfig(dataset="synthetic", labeled_fraction=0.999))  # 999 of 1000 asked
    assert data.sizes()["labeled"] == 990
    true_labels = prepare_data(DataConfig(dataset="synthetic")).train_y
    assert torch.bincount(true_labels[~data.labeled], minlength=10).tolist() == [1] * 10


def test_random_erasing_fills_one_rectangle_per_chosen_image_with_the_mean_pixel():
    from kd_utils.data import random_erasing

    x = torch.full((64, 1, 28, 28), 255, dtype=torch.uint8)
    fill = torch.tensor([73], dtype=torch.uint8).view(1, -1, 1, 1)
    out = random_erasing(x, 1.0, fill, torch.Generator().manual_seed(0))
    for img in out:
        erased = (img[0] == 73).nonzero()
        assert len(erased) > 0
        rows, cols = erased[:, 0], erased[:, 1]
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert len(erased) == h * w  # one solid rectangle
        assert 0.02 * 784 * 0.5 <= h * w <= 0.33 * 784 * 1.5  # area fraction 2-33% (sides rounded and clipped)
    untouched = random_erasing(x, 0.0, fill, torch.Generator().manual_seed(0))
    assert torch.equal(untouched, x)
    half = random_erasing(x, 0.5, fill, torch.Generator().manual_seed(1))
    changed = (half != 255).flatten(1).any(1).float().mean().item()
    assert 0.25 < changed < 0.75


def test_loader_with_random_erasing_is_deterministic_per_epoch(plain_info):
    images = torch.full((40, 3, 16, 16), 200, dtype=torch.uint8)
    labels = torch.arange(40) % 10
    loader = TensorLoader(images, labels, plain_info, 40, train=True, seed=3, random_erasing=1.0)
    loader.set_epoch(2)
    first = loader.epoch_tensors()[0]
    assert torch.equal(first, loader.epoch_tensors()[0])
    assert (first != 200).flatten(1).any(1).all()  # every image erased at p = 1
    loader.set_epoch(3)
    assert not torch.equal(first, loader.epoch_tensors()[0])
