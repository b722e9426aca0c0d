"""Shared fixtures for the kd_utils test suite.

Everything runs on the CPU with tiny synthetic data. One intra-op thread is used: for these small
convolutions on a 2-core machine, thread contention makes two threads several times slower than one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# KD_TEST_WITHOUT=optuna,timm,tensorboard runs the suite as on a machine without those optional packages: each
# import of them raises ImportError (as a missing package does), so the tests that need one skip
# (pytest.importorskip) and every other test must pass. `make test` runs this pass too.
for _name in filter(None, os.environ.get("KD_TEST_WITHOUT", "").split(",")):
    sys.modules[_name] = None

from kd_utils.data import DataConfig, prepare_data
from kd_utils.datasets import DATASETS
from kd_utils.train import TrainConfig

torch.set_num_threads(1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than ~20 s (still runs by default and in CI)")


@pytest.fixture(scope="session")
def synthetic_splits():
    """The synthetic dataset split as the pipeline does by default (train 1000, val 200, test 400)."""
    return prepare_data(DataConfig(dataset="synthetic"))


@pytest.fixture(scope="session")
def small_splits():
    """A small synthetic study: 200 training, 50 validation and 50 test images."""
    return prepare_data(DataConfig(dataset="synthetic", train_size=200, val_size=50, test_size=50))


@pytest.fixture
def tiny_train_config() -> TrainConfig:
    """A fast, deterministic CPU training configuration (override fields with dataclasses.replace)."""
    return TrainConfig(
        epochs=1, batch_size=32, lr=0.05, device="cpu", precision="fp32", progress=False, warmup_epochs=0.5
    )


@pytest.fixture
def plain_info():
    """Synthetic dataset facts without augmentation (no crop, no flip)."""
    return dataclasses.replace(DATASETS["synthetic"], crop_padding=0, hflip=False)


# --- CIFAR-100 in torchvision's on-disk format (the readers' tests, the CIFAR-100 benchmark configs' smoke) -----


def py2_cpickle(batch: dict) -> bytes:
    """``batch`` as Python 2's cPickle wrote the real CIFAR files (protocol 2), opcode by opcode.

    Strings are SHORT_BINSTRING / BINSTRING (bytes under ``encoding="bytes"``), ints BININT1 / BININT2 / BININT,
    and the array goes through ``numpy.core.multiarray._reconstruct``, whichever numpy runs the test.
    """

    def string(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b

    def integer(n: int) -> bytes:
        if 0 <= n < 256:
            return b"K" + bytes([n])
        return b"M" + struct.pack("<H", n) if 0 <= n < 65536 else b"J" + struct.pack("<i", n)

    def array(a: np.ndarray) -> bytes:
        assert a.dtype == np.uint8 and a.ndim == 2
        return (
            b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + integer(0) + b"\x85" + string(b"b") + b"\x87R"
            b"(" + integer(1) + integer(a.shape[0]) + integer(a.shape[1]) + b"\x86"  # state: version, shape,
            b"cnumpy\ndtype\n" + string(b"u1") + integer(0) + integer(1) + b"\x87R"  # dtype,
            b"(" + integer(3) + string(b"|") + b"NNN" + integer(-1) + integer(-1) + integer(0) + b"tb"
            b"\x89" + string(a.tobytes()) + b"tb"  # Fortran order: False, the raw bytes
        )

    def value(v) -> bytes:
        if isinstance(v, np.ndarray):
            return array(v)
        if isinstance(v, list):
            return b"](" + b"".join(integer(x) if isinstance(x, int) else string(x) for x in v) + b"e"
        return string(v)

    return b"\x80\x02}(" + b"".join(string(k) + value(v) for k, v in batch.items()) + b"u."


def is_protocol_1_records(path: Path) -> bool:
    """True if ``path`` holds the stored study's records (protocol 1): the SHA-256 the Makefile's archive move
    checks before `make study` files them away for the re-run's."""
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    expected = re.search(r"^PROTOCOL_1_SHA256 := (\w+)$", makefile, re.M).group(1)
    return path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == expected


CIFAR100_TRAIN = 200  # every fine class twice: a stratified split of 100 needs two of each
CIFAR100_TEST = 100


def cifar100_file(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    fine = [(7 * i + seed) % 100 for i in range(n)]
    return {
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
        b"batch_label": b"fixture",
        b"fine_labels": fine,
        b"coarse_labels": [f // 5 for f in fine],  # not the real superclass map; only needs to differ from fine
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
    }


def write_cifar100(root: Path) -> Path:
    """torchvision's cifar-100-python layout under ``root``: ``train`` as Python 2 wrote it, ``test`` as Python 3
    does, ``meta`` with the fine label names; returns ``root`` (the data dir a run reads)."""
    folder = root / "cifar-100-python"
    folder.mkdir()
    train = cifar100_file(CIFAR100_TRAIN, seed=1)
    train[b"data"][5, 1 * 1024 + 3 * 32 + 30] = 222  # image 5, G channel, row 3, col 30
    (folder / "train").write_bytes(py2_cpickle(train))
    with open(folder / "test", "wb") as f:
        pickle.dump(cifar100_file(CIFAR100_TEST, seed=2), f, protocol=2)
    meta = {b"fine_label_names": [c.encode() for c in DATASETS["cifar100"].classes]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


@pytest.fixture
def cifar100_root(tmp_path: Path) -> Path:
    """A fresh CIFAR-100 folder (``write_cifar100``) per test: tests may tamper with its files."""
    return write_cifar100(tmp_path)


@pytest.fixture(scope="module")
def cifar100_module_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CIFAR-100 folder (``write_cifar100``) for a whole test module, read only."""
    return write_cifar100(tmp_path_factory.mktemp("cifar100"))
